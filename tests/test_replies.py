"""The three read-back rules on realistic replies (written for these tests): letters and rule pinned."""

from __future__ import annotations

import pytest

from huatuo.evaluation.replies import read_reply

# A single-answer question: which drug reverses heparin overdose (options invented for the tests).
SINGLE = {"A": "维生素K", "B": "氨甲环酸", "C": "鱼精蛋白", "D": "酚磺乙胺", "E": "垂体后叶素"}
# A multi-answer question: which drugs induce liver enzymes.
MULTI = {"A": "西咪替丁", "B": "利福平", "C": "酮康唑", "D": "苯巴比妥", "E": "卡马西平"}

SINGLE_CASES = [
    # rule 1: an answer phrase
    ("答案是C。", "C", "phrase"),
    ("肝素过量时应使用鱼精蛋白中和。答案为：C", "C", "phrase"),
    ("正确答案：C", "C", "phrase"),
    ("答案：C. 鱼精蛋白", "C", "phrase"),
    ("**答案是C**", "C", "phrase"),
    ("答案应该是（C）", "C", "phrase"),
    ("答案选C项。", "C", "phrase"),
    ("本题答案为 C 鱼精蛋白，它能与肝素结合使其失活。", "C", "phrase"),
    ("答案是C，A选项维生素K用于华法林过量。", "C", "phrase"),  # a later "A选项" is discussion, not the answer
    ("答案是Ｃ。", "C", "phrase"),  # full-width letter
    ("初看答案是A，但维生素K对肝素无效，所以答案是C。", "C", "phrase"),  # the last stated answer wins
    ("答案是A和C。", "AC", "phrase"),  # two letters for a single-answer question: read as given (wrong), not cut to A
    # rule 2: option texts
    ("应该使用鱼精蛋白，它带正电荷，可与肝素形成复合物。", "C", "option_text"),
    ("首选鱼精蛋白", "C", "option_text"),
    # rule 3: bare letters
    ("C", "C", "letters"),
    ("选C", "C", "letters"),
    ("我选择 C ，理由如上。", "C", "letters"),
    ("C. 是正确的，C 能中和肝素。", "C", "letters"),  # the same letter twice is one answer
    # misses: no rule can read an answer (never guessed)
    ("", "", None),
    ("这个问题需要结合临床具体分析。", "", None),
    ("A选项错误，B选项也错误，C正确。", "C", "letters"),  # the rejected letters count for nothing
    # letters and option texts the reply rejects count for nothing: alone, they are a miss, never the answer
    ("答案不是A", "", None),
    ("C不是正确答案", "", None),
    ("A项错误。", "", None),
    ("不应选A", "", None),
    ("排除A。", "", None),
    ("选项A不正确", "", None),
    ("The answer is not A.", "", None),
    ("A is wrong.", "", None),
    ("鱼精蛋白不对", "", None),  # a rejected option text
    ("答案不是A，而是C。", "C", "letters"),
    ("维生素K不对，应使用鱼精蛋白。", "C", "option_text"),
    ("维生素K和鱼精蛋白都可以考虑。", "", None),  # two option texts for a single-answer question
    ("请回答下面选择题。A. 维生素K B. 氨甲环酸 C. 鱼精蛋白 D. 酚磺乙胺 E. 垂体后叶素", "", None),  # an echo
    ("B超和CT检查无助于此题。", "", None),  # B超 is an ultrasound, CT is not an option run
    ("患者需补充维生素B12和DNA修复。", "", None),  # letters inside words or before digits
    ("答案是ABCDE中的一个", "ABCDE", "phrase"),  # read as stated, hence wrong; not a miss
]

MULTI_CASES = [
    ("答案是BDE。", "BDE", "phrase"),
    ("答案为B、D、E。", "BDE", "phrase"),
    ("答案：B,D,E", "BDE", "phrase"),
    ("答案是B、D和E", "BDE", "phrase"),
    ("答案是：B D E", "BDE", "phrase"),
    ("答案是EDB", "BDE", "phrase"),  # any order: the letters are a set
    ("答案是BDE，A选项西咪替丁是抑制剂。", "BDE", "phrase"),
    ("答案是B,A选项西咪替丁是抑制剂。", "B", "phrase"),  # a comma list must end the clause; "A选项..." does not
    ("利福平、苯巴比妥和卡马西平都是典型的肝药酶诱导剂。", "BDE", "option_text"),
    ("利福平和卡马西平属于诱导剂。", "BE", "option_text"),
    ("卡马西平和利福平属于诱导剂。", "", None),  # found out of alphabetical order: not trusted (the paper's check)
    ("BDE", "BDE", "letters"),
    ("正确的是BDE", "BDE", "letters"),
    ("选BD", "BD", "letters"),
    ("BD或者BDE都有可能", "", None),  # two different runs: ambiguous
    ("A、C、D", "", None),  # separate bare letters without an answer phrase: ambiguous
    ("都不对", "", None),
]


# Why each miss above is one: an empty reply, no answer named (rejected letters name none), or several named.
MISS_REASON = {
    "": "empty",
    "维生素K和鱼精蛋白都可以考虑。": "ambiguous",
    "请回答下面选择题。A. 维生素K B. 氨甲环酸 C. 鱼精蛋白 D. 酚磺乙胺 E. 垂体后叶素": "ambiguous",
    "卡马西平和利福平属于诱导剂。": "ambiguous",
    "BD或者BDE都有可能": "ambiguous",
    "A、C、D": "ambiguous",
}


@pytest.mark.parametrize(("reply", "letters", "rule"), SINGLE_CASES)
def test_single_answer_replies(reply, letters, rule):
    result = read_reply(reply, SINGLE, multi=False)
    assert (result.letters, result.rule) == (letters, rule)
    assert result.miss == (rule is None)
    assert result.reason == (None if rule else MISS_REASON.get(reply, "no_answer"))


@pytest.mark.parametrize(("reply", "letters", "rule"), MULTI_CASES)
def test_multi_answer_replies(reply, letters, rule):
    result = read_reply(reply, MULTI, multi=True)
    assert (result.letters, result.rule) == (letters, rule)
    assert result.reason == (None if rule else MISS_REASON.get(reply, "no_answer"))


def test_rules_apply_in_order_phrase_before_option_text_before_letters():
    # The reply names an option text (C) and a bare letter (A), but its answer phrase says C: the phrase decides.
    phrase = read_reply("鱼精蛋白可以，答案是C，A不行", SINGLE, multi=False)
    assert (phrase.letters, phrase.rule) == ("C", "phrase")
    # Without a phrase the option text decides before the bare letter would.
    text = read_reply("鱼精蛋白（见教材A章）", SINGLE, multi=False)
    assert (text.letters, text.rule) == ("C", "option_text")


def test_only_the_questions_own_letters_count():
    four = {"A": "甲", "B": "乙", "C": "丙", "D": "丁"}
    assert read_reply("答案是E", four, multi=False).miss
    assert read_reply("E", four, multi=False).miss
    assert read_reply("答案是D", four, multi=False).letters == "D"


def test_one_character_options_are_not_matched_as_text():
    yes_no = {"A": "是", "B": "否"}
    assert read_reply("我认为是这样的", yes_no, multi=False).miss  # "是" appears by chance
    assert read_reply("答案是B", yes_no, multi=False).letters == "B"


def test_an_option_inside_a_longer_option_does_not_count_on_its_own():
    nested = {"A": "高血压", "B": "继发性高血压", "C": "低血压"}
    assert read_reply("考虑继发性高血压", nested, multi=False).letters == "B"


# Replies read as a person reads them (written for these tests in the styles exam replies take: terse, explained,
# step by step, English, hedging, refusing). Each: (reply, letters, rule, miss reason).
AS_A_PERSON_MULTI = [
    ("本题正确选项是B、D、E。", "BDE", "choice_phrase", None),
    ("选项B、D、E正确。", "BDE", "choice_phrase", None),
    ("B、D、E选项正确。", "BDE", "choice_phrase", None),
    ("选项A、C不正确，选项B、D、E正确。", "BDE", "choice_phrase", None),  # the negated list marks nothing
    ("选项B、D正确，选项A、C为肝药酶抑制剂。", "BD", "choice_phrase", None),  # read as stated (wrong)
    ("正确的选项为：B、D、E", "BDE", "choice_phrase", None),
    ("利福平（B）、苯巴比妥（D）和卡马西平（E）是肝药酶诱导剂，故选BDE。", "BDE", "choice_phrase", None),
    ("正确答案是B、D、E，它们都是肝药酶诱导剂。", "BDE", "phrase", None),
    ("答案：BDE\n解析：利福平、苯巴比妥、卡马西平均为肝药酶诱导剂；西咪替丁和酮康唑是抑制剂。", "BDE", "phrase", None),
    ("答案为B，D，E。", "BDE", "phrase", None),  # full-width commas
    ("答案为B，D，E，因为它们都是诱导剂", "BDE", "phrase", None),  # a comma list may end at a comma
    ("答案是B、D、E，因为这三种药物都能诱导CYP450。", "BDE", "phrase", None),
    ("答案是B和D，因为利福平和苯巴比妥是诱导剂。", "BD", "phrase", None),
    ("正确答案为：B D E", "BDE", "phrase", None),
    ("答案：B、D、E。\n\nA. 西咪替丁：肝药酶抑制剂\nC. 酮康唑：肝药酶抑制剂", "BDE", "phrase", None),
    ("答案是BDE。A和C是肝药酶抑制剂。", "BDE", "phrase", None),
    ("答案是BDE。A或C都不对。", "BDE", "phrase", None),  # ruling options out is no hedge
    ("The answers are B, D and E.", "BDE", "english_phrase", None),
    ("The correct answers are B, D, and E.", "BDE", "english_phrase", None),
    ("Answer: B, D, E", "BDE", "english_phrase", None),
    ("Options B, D and E are correct.", "BDE", "english_phrase", None),
    ("The answer is B and D.", "BD", "english_phrase", None),
    ("The options are A, B, C, D and E. Rifampin induces CYP3A4.", "", None, "ambiguous"),  # a list of the choices
    ("答案可能是B和D，也可能是BDE。", "", None, "hedge"),
    ("答案：BD（也可能包括E）", "", None, "hedge"),
    ("答案是B或D", "", None, "hedge"),
    ("我无法确定正确答案，建议查阅药理学教材。", "", None, "no_answer"),
    ("以上选项都正确。", "", None, "no_answer"),  # no letters and no option text: not guessed as ABCDE
    ("B和D和E", "", None, "ambiguous"),  # a bare list without a phrase stays ambiguous, like "A、C、D"
]

AS_A_PERSON_SINGLE = [
    ("本题正确选项是C。", "C", "choice_phrase", None),
    ("选项C正确。", "C", "choice_phrase", None),
    ("选项C是正确的。", "C", "choice_phrase", None),
    ("C是正确答案，鱼精蛋白可中和肝素。", "C", "choice_phrase", None),
    ("肝素过量应首选鱼精蛋白，故选C。", "C", "choice_phrase", None),
    ("A项维生素K用于华法林过量，B项氨甲环酸是抗纤溶药，所以选C。", "C", "choice_phrase", None),
    ("根据题意，应选C。", "C", "choice_phrase", None),
    ("应选C，不应选A。", "C", "choice_phrase", None),  # 不应选A rules A out
    ("选项A、B、D、E均不正确，选项C正确。", "C", "choice_phrase", None),
    ("故选项A错误，选项C正确。", "C", "choice_phrase", None),
    (
        "答案：C\n解析：鱼精蛋白为强碱性蛋白，能与强酸性的肝素结合形成稳定的复合物，使肝素失去抗凝活性。",
        "C",
        "phrase",
        None,
    ),
    ("首先排除A，维生素K是华法林的拮抗剂；B和D是止血药；E用于咯血。因此正确答案是C。", "C", "phrase", None),
    ("正确答案：C（鱼精蛋白）", "C", "phrase", None),
    ("答案是C。B超检查也可能有帮助。", "C", "phrase", None),  # 也可能 about an ultrasound, not a letter
    ("答案应该是C吧，不过我也不太确定。", "C", "phrase", None),  # unsure, but one answer and no alternative
    ("综合分析，我的答案是C", "C", "phrase", None),
    ("The answer is C.", "C", "english_phrase", None),
    ("The correct answer is (C) protamine sulfate.", "C", "english_phrase", None),
    ("Answer: C. Protamine binds heparin.", "C", "english_phrase", None),
    ("The best answer is C, protamine.", "C", "english_phrase", None),
    ("Option C is correct.", "C", "english_phrase", None),
    ("C is correct because protamine neutralizes heparin.", "C", "english_phrase", None),
    ("Both A and C are wrong; the answer is E.", "E", "english_phrase", None),
    ("I would choose C.", "C", "letters", None),
    ("My answer is C.", "C", "english_phrase", None),
    ("选C。鱼精蛋白。", "C", "option_text", None),
    ("答案是C，也可能是A。", "", None, "hedge"),
    ("答案是C还是A，需要结合临床。", "", None, "hedge"),
    ("我认为答案可能是C或者A。", "", None, "hedge"),
    ("答案：A（或C）", "", None, "hedge"),
    ("答案选C或D都可以", "", None, "hedge"),
    ("我选C，也可以选A。", "", None, "hedge"),
    ("The answer is C or possibly A.", "", None, "hedge"),
    ("Either A or C could be right.", "", None, "hedge"),
    ("抱歉，作为AI助手，我不能提供医疗建议。", "", None, "no_answer"),
    ("这道题我不会。", "", None, "no_answer"),
    ("   ", "", None, "empty"),
]


@pytest.mark.parametrize(("reply", "letters", "rule", "reason"), AS_A_PERSON_MULTI)
def test_multi_answer_replies_read_as_a_person_reads_them(reply, letters, rule, reason):
    result = read_reply(reply, MULTI, multi=True)
    assert (result.letters, result.rule, result.reason) == (letters, rule, reason)


@pytest.mark.parametrize(("reply", "letters", "rule", "reason"), AS_A_PERSON_SINGLE)
def test_single_answer_replies_read_as_a_person_reads_them(reply, letters, rule, reason):
    result = read_reply(reply, SINGLE, multi=False)
    assert (result.letters, result.rule, result.reason) == (letters, rule, reason)


def test_every_miss_has_a_reason_and_every_reading_a_rule():
    from huatuo.evaluation.replies import MISS_REASONS, RULES

    single = [(r, SINGLE, False) for r, *_ in SINGLE_CASES + AS_A_PERSON_SINGLE]
    multi = [(r, MULTI, True) for r, *_ in MULTI_CASES + AS_A_PERSON_MULTI]
    for reply, options, is_multi in single + multi:
        result = read_reply(reply, options, multi=is_multi)
        assert (result.rule in RULES and result.reason is None) or (
            result.rule is None and result.reason in MISS_REASONS
        ), reply
