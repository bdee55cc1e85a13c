"""Reading the chosen letters back from a generated reply as a person would: answer phrases, then option texts, then
bare letters, and no guessing.

1. An **answer phrase** and the letters it names; when a reply states several, the **last** one wins (replies that
   reason step by step restate their conclusion at the end). Three families, reported as their own rules:

   - ``phrase``: 答案是 / 答案为 / 答案应该是 / 答案选 / 答案： followed by letters (the paper's first rule).
   - ``choice_phrase``: 正确选项是 / 正确的选项为, 故选 / 所以选 / 本题选, and letters marked right after them:
     选项A、C正确, A、C选项正确, C是正确答案. A negation (选项A不正确) marks nothing.
   - ``english_phrase``: "the answer is B", "the answers are A, B and D", "Answer: C", "options A and C are
     correct", "C is correct".

   The letters form one answer: a contiguous run (``ACD``), a list joined by 、 / 和 / 及 / 与 / 以及 / "and" /
   spaces (``A、C和D``, ``A and C``), or a list with commas (``A,C,D``, ``A, B and D``), which must end its clause so
   that ``答案是B,A选项是抑制剂`` reads ``B``.
2. ``option_text``: the texts of the options found in the reply. An option counts only if its text (2+
   characters) occurs outside every occurrence of a longer found option; a reply naming every option is an echo,
   not an answer; as in the paper, the letters must appear in alphabetical order of first occurrence. A
   single-answer question needs exactly one option found.
3. ``letters``: bare runs of option letters not glued to other Latin letters or digits (``DNA``, ``B12``) nor to
   超/型 (``B超``, ``A型``). Runs with repeated or out-of-order letters are ignored; single-answer questions
   only take one-letter runs. The reply must name exactly one distinct such run: several different ones are
   ambiguous.

In rules 2 and 3 a letter or option text the reply rejects counts for nothing: ``不是A``, ``不应选A``, ``排除A``,
``A项错误``, ``C不对``, ``维生素C不正确``, "not A", "A is wrong". ``A错误，B错误，C对`` reads C; ``答案不是A`` alone is
a miss.

A **hedge** makes the reply a miss whatever the rules read: letters offered as alternatives (``A或C``, ``A还是C``,
"A or C") or a second answer held open (``也可能是C``, "or possibly C"), after the answer phrase that would have
decided (before it, it is reasoning) or anywhere in a reply without one. ``A或B都不对`` is no hedge.

When no rule reads an answer the reply is a miss: scored wrong and counted in the miss rate, with its reason
(``empty``, ``hedge``, ``ambiguous``: letters or option texts were named but no single answer; ``no_answer``). The
paper's scorer answered "B" or "A" for such replies, and took the first letter of a multi-letter reading of a
single-answer question; both are guesses, and neither happens here: ``答案是A和B`` on a single-answer question reads
"AB", which is simply wrong.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from huatuo.evaluation.exams import normalize_text

RULES = ("phrase", "choice_phrase", "english_phrase", "option_text", "letters")
MISS_REASONS = ("empty", "hedge", "ambiguous", "no_answer")

# Replies are NFKC-normalised first: full-width ，：（）；？！ are ASCII here, 、 and 。 stay.
_ANSWER = r"答案(?:应该|应当|应|可能)?(?:是|为|选择?)[:]?|答案\s*[:]"
_CHOICE = (
    r"正确(?:的)?(?:选项|选择)(?:应该|应当|应)?(?:是|为|有|包括)[:]?"
    r"|(?:故|所以|因此|因而|本题|此题|(?<!不)应该?)选择?(?!项)"  # 故选C; "故选项A错误" is about option A
)
# "the options are A, B, C, D and E" lists the choices; only an answer, or an option called correct, answers.
_ENGLISH = (
    r"(?i:\b(?:(?:the\s+)?(?:correct|right|best|final)\s+(?:answers?|options?|choices?)|(?:the\s+)?answers?"
    r"|my\s+(?:answer|choice))\s+(?:is|are|would\s+be|should\s+be|will\s+be)\b\s*[:]?|\banswers?\s*[:])"
)
_FILLER = r"[\s*`\"'“”‘’「」『』【】\[\]()]*(?:选项|选|(?i:options?|choices?))?[\s*`\"'“”‘’「」『』【】\[\]()]*"
_JOIN = r"(?:项|选项)?(?:\s*(?:、|/|和|及|与|以及|&)\s*|\s*,?\s*(?i:and)\s+|\s+)"
_COMMA = r"(?:项|选项)?\s*,\s*"
_CLAUSE_END = r"(?=(?:项|选项)?\s*(?:$|[。.;!?\n)\]】*,:]))"
_WORD_EDGE = r"(?![A-Za-z0-9])"
_NOT_LETTER_USE = "超型"  # B超 (ultrasound), A型 (blood type): letters that are not answers
_NEGATED = r"(?!\s*(?:都|均|皆|也)?\s*(?:不|错|非|无))"  # "A或B都不对" rules options out; it offers no choice
# A letter or option text that the reply rejects ("不是A", "排除A", "A项错误", "维生素C不对", "not A") names no answer.
_REJECTED_BEFORE = re.compile(
    r"(?:不是|不选|不应该?选|不该选|不能选|不可选|排除|并非|而非|(?<![A-Za-z])(?i:not|isn't|except))\s*(?:选项|选)?\s*$"
)
_REJECTED_AFTER = re.compile(
    r"^\s*(?:项|选项)?\s*(?:是|为|也|都|均)?\s*(?:不正确|错误|不对|不符合?|有误|不选|不是正确|不是答案|错(?!过)"
    r"|(?i:(?:is|are)\s+(?:wrong|incorrect|not\s+(?:correct|right|the\s+answer))|incorrect\b|wrong\b))"
)


def _rejected(text: str, start: int, end: int) -> bool:
    """Whether the reply rejects what it names at ``text[start:end]`` (before or right after it)."""
    return bool(_REJECTED_BEFORE.search(text[max(0, start - 8) : start]) or _REJECTED_AFTER.match(text[end : end + 24]))


@dataclass(frozen=True)
class Readback:
    """The letters read from a reply (sorted, "" for a miss), the rule that read them, and why a miss is one."""

    letters: str
    rule: str | None  # one of RULES, or None (miss)
    reason: str | None = None  # one of MISS_REASONS for a miss, None when read

    @property
    def miss(self) -> bool:
        """True when no rule could read an answer."""
        return self.rule is None


@dataclass(frozen=True)
class _Patterns:
    phrases: list[tuple[str, re.Pattern]]  # (rule, keyword) whose letters follow the keyword
    marked: list[tuple[str, re.Pattern]]  # (rule, letters + keyword) whose letters come first
    comma_list: re.Pattern
    joined_list: re.Pattern
    hedges: list[re.Pattern]
    bare: re.Pattern
    letter: re.Pattern


@lru_cache(maxsize=64)
def _patterns(letters: str) -> _Patterns:
    cls = "[" + re.escape(letters) + "]"
    item = f"{cls}+"
    joined = f"{item}(?:{_JOIN}{item})*"
    any_list = f"{item}(?:(?:{_COMMA}|{_JOIN}){item})*"
    start = r"(?<![A-Za-z0-9])"
    marked_zh = [
        rf"选项\s*({any_list})\s*(?:是|为|均|都|均为|都是|皆)?\s*正确(?!与否)",
        rf"{start}({any_list})\s*(?:项|选项)\s*(?:是|为|均|都|均为|都是|皆)?\s*正确(?!与否)",
        rf"{start}({any_list})\s*(?:项|选项)?\s*(?:是|为)\s*(?:正确|本题)的?(?:答案|选项)",
    ]
    marked_en = [
        rf"(?i:\b(?:options?|choices?)\s+)({any_list})\s+(?i:(?:is|are)\s+(?:both\s+|all\s+)?(?:the\s+)?(?:correct|right)\b)",
        rf"{start}({any_list})\s+(?i:(?:is|are)\s+(?:both\s+|all\s+)?(?:the\s+)?(?:correct|right)\b)",
    ]
    letter_then = rf"{cls}\s*(?:项|选项)?"
    return _Patterns(
        phrases=[
            ("phrase", re.compile(_ANSWER)),
            ("choice_phrase", re.compile(_CHOICE)),
            ("english_phrase", re.compile(_ENGLISH)),
        ],
        marked=[("choice_phrase", re.compile(p)) for p in marked_zh]
        + [("english_phrase", re.compile(p)) for p in marked_en],
        comma_list=re.compile(_FILLER + f"({any_list}){_CLAUSE_END}"),
        joined_list=re.compile(_FILLER + f"({joined}){_WORD_EDGE}"),
        hedges=[
            re.compile(
                rf"{letter_then}[\s(\[]*(?:或者?|或是|还是|(?i:\bor\b))\s*(?:选项)?{cls}(?![A-Za-z0-9]){_NEGATED}"
            ),
            re.compile(
                rf"(?:也|亦|或|还|又)(?:有)?可能(?:会)?(?:是|为|选|包括|包含|有)?{_FILLER}{cls}+"
                rf"(?![A-Za-z0-9{_NOT_LETTER_USE}])(?!\s*(?:吗|\?))"  # "还有可能是A吗?" asks, it does not offer
            ),
            re.compile(rf"(?:也可以|也可|或者)(?:选|是){_FILLER}{cls}(?![A-Za-z0-9{_NOT_LETTER_USE}])"),
            re.compile(rf"(?i:\bor\s+(?:possibly|maybe|perhaps)\s+(?:options?\s+)?){cls}{_WORD_EDGE}"),
        ],
        bare=re.compile(f"(?<![A-Za-z0-9])({cls}+)(?![A-Za-z0-9{_NOT_LETTER_USE}])"),
        letter=re.compile(cls),
    )


def _phrase_letters(reply: str, p: _Patterns) -> tuple[str, str, int] | None:
    """(letters, rule, where the phrase starts) of the last answer phrase that names letters, or None."""
    found: tuple[str, str, int] | None = None
    for rule, keyword in p.phrases:
        for match in keyword.finditer(reply):
            tail = reply[match.end() :]
            group = p.comma_list.match(tail) or p.joined_list.match(tail)
            if group and (found is None or match.start() >= found[2]):
                found = (group.group(1), rule, match.start())
    for rule, pattern in p.marked:
        for match in pattern.finditer(reply):
            if found is None or match.start() >= found[2]:
                found = (match.group(1), rule, match.start())
    if found is None:
        return None
    return "".join(sorted(set(p.letter.findall(found[0])))), found[1], found[2]


def _option_text_letters(reply: str, options: Mapping[str, str], multi: bool) -> tuple[str | None, bool]:
    spans: dict[str, list[tuple[int, int]]] = {}
    for letter, text in options.items():
        if len(re.sub(r"\W", "", text)) < 2:  # one-character options ("是", "钙") match too much by chance
            continue
        positions = [m.start() for m in re.finditer(re.escape(text), reply) if not _rejected(reply, m.start(), m.end())]
        if positions:
            spans[letter] = [(p, p + len(text)) for p in positions]
    kept = {}
    for letter, own in spans.items():
        longer = [
            s for other, ss in spans.items() if other != letter for s in ss if s[1] - s[0] > own[0][1] - own[0][0]
        ]
        outside = [s for s in own if not any(o[0] <= s[0] and s[1] <= o[1] for o in longer)]
        if outside:
            kept[letter] = outside[0][0]
    if not kept:
        return None, False
    if len(kept) == len(options) and len(options) > 2:
        return None, True
    order = "".join(sorted(kept, key=kept.get))
    if order != "".join(sorted(order)) or (not multi and len(order) != 1):
        return None, True
    return order, False


def _bare_letters(reply: str, p: _Patterns, multi: bool) -> tuple[str | None, bool]:
    runs = set()
    for match in p.bare.finditer(reply):
        run = match.group(1)
        if _rejected(reply, match.start(1), match.end(1)):
            continue
        if len(set(run)) != len(run) or run != "".join(sorted(run)):
            continue
        if not multi and len(run) != 1:
            continue
        runs.add(run)
    if len(runs) == 1:
        return runs.pop(), False
    return None, len(runs) > 1


def _hedged(text: str, p: _Patterns) -> bool:
    return any(h.search(text) for h in p.hedges)


def read_reply(reply: str, options: Mapping[str, str], multi: bool) -> Readback:
    """Apply the rules in order to a reply for a question with ``options``; never guesses."""
    text = normalize_text(reply)
    letters = "".join(options)
    if not text or not letters:
        return Readback("", None, "empty")
    p = _patterns(letters)
    phrase = _phrase_letters(text, p)
    if phrase:
        found, rule, start = phrase
        return Readback("", None, "hedge") if _hedged(text[start:], p) else Readback(found, rule)
    if _hedged(text, p):
        return Readback("", None, "hedge")
    found, unclear = _option_text_letters(text, {k: normalize_text(v) for k, v in options.items()}, multi)
    if found:
        return Readback(found, "option_text")
    bare, several = _bare_letters(text, p, multi)
    if bare:
        return Readback(bare, "letters")
    return Readback("", None, "ambiguous" if unclear or several else "no_answer")
