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
    ("A选项错误，B选项也错误，C正确。", "", None),  # several different bare letters: ambiguous
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


@pytest.mark.parametrize(("reply", "letters", "rule"), SINGLE_CASES)
def test_single_answer_replies(reply, letters, rule):
    result = read_reply(reply, SINGLE, multi=False)
    assert (result.letters, result.rule) == (letters, rule)
    assert result.miss == (rule is None)


@pytest.mark.parametrize(("reply", "letters", "rule"), MULTI_CASES)
def test_multi_answer_replies(reply, letters, rule):
    result = read_reply(reply, MULTI, multi=True)
    assert (result.letters, result.rule) == (letters, rule)


def test_rules_apply_in_order_phrase_before_option_text_before_letters():
    # The reply names an option text (C) and a bare letter (A), but its answer phrase says C: the phrase decides.
    assert read_reply("鱼精蛋白可以，答案是C，A不行", SINGLE, multi=False).rule == "phrase"
    # Without a phrase the option text decides before the bare letter would.
    assert read_reply("鱼精蛋白（见教材A章）", SINGLE, multi=False) == read_reply("鱼精蛋白", SINGLE, multi=False)


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
