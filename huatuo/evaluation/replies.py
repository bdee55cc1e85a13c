"""Reading the chosen letters back from a generated reply: the paper's three rules, in order, and no guessing.

1. ``phrase``: an answer phrase (答案是 / 答案为 / 答案应该是 / 答案选 / 答案：) followed by option letters. The
   letters are a contiguous run (``ACD``), a run joined by 、 / 和 / 及 / 与 / spaces (``A、C、D``), or a
   comma list that ends the clause (``A,C,D。``). When a reply states several answer phrases the **last** one
   that names letters wins: replies that reason step by step restate their conclusion at the end.
2. ``option_text``: the texts of the options found in the reply. An option counts only if its text (2+
   characters) occurs outside every occurrence of a longer found option; a reply naming every option is an echo,
   not an answer; as in the paper, the letters must appear in alphabetical order of first occurrence. A
   single-answer question needs exactly one option found.
3. ``letters``: bare runs of option letters not glued to other Latin letters or digits (``DNA``, ``B12``) nor
   to 超/型 (``B超``, ``A型``). Runs with repeated or out-of-order letters are ignored; single-answer questions
   only take one-letter runs. The reply must name exactly one distinct such run: several different ones are
   ambiguous.

When no rule reads an answer the reply is a miss: scored wrong and counted in the miss rate. (The paper's scorer
answered "B" or "A" for such replies, and took the first letter of a multi-letter reading of a single-answer
question; both are guesses, and neither happens here: ``答案是A和B`` on a single-answer question reads "AB",
which is simply wrong.)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from huatuo.evaluation.exams import normalize_text

_PHRASE = re.compile(r"答案(?:应该|应当|应|可能)?(?:是|为|选)[:：]?|答案\s*[:：]")
_FILLER = r"[\s*`\"'“”‘’「」『』【】\[\]()（）]*(?:选项|选)?[\s*`\"'“”‘’「」『』【】\[\]()（）]*"
_CLAUSE_END = r"(?=\s*(?:$|[。.;；!！?？\n)）\]】*]))"
_WORD_EDGE = r"(?![A-Za-z0-9])"
_NOT_LETTER_USE = "超型"  # B超 (ultrasound), A型 (blood type): letters that are not answers


@dataclass(frozen=True)
class Readback:
    """The letters read from a reply (sorted, "" for a miss) and the rule that read them."""

    letters: str
    rule: str | None  # "phrase" | "option_text" | "letters" | None (miss)

    @property
    def miss(self) -> bool:
        """True when no rule could read an answer."""
        return self.rule is None


def _letter_class(letters: str) -> str:
    return "[" + re.escape(letters) + "]"


def _phrase_letters(reply: str, letters: str) -> str | None:
    cls = _letter_class(letters)
    comma_list = re.compile(_FILLER + f"({cls}(?:\\s*,\\s*{cls})+){_CLAUSE_END}")
    joined = re.compile(_FILLER + f"({cls}(?:\\s*[、/和及与]?\\s*{cls})*){_WORD_EDGE}")
    found = None
    for match in _PHRASE.finditer(reply):
        tail = reply[match.end() :]
        group = comma_list.match(tail) or joined.match(tail)
        if group:
            found = group.group(1)
    if found is None:
        return None
    return "".join(sorted(set(re.findall(cls, found))))


def _option_text_letters(reply: str, options: Mapping[str, str], multi: bool) -> str | None:
    spans: dict[str, list[tuple[int, int]]] = {}
    for letter, text in options.items():
        if len(re.sub(r"\W", "", text)) < 2:  # one-character options ("是", "钙") match too much by chance
            continue
        positions = [m.start() for m in re.finditer(re.escape(text), reply)]
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
    if not kept or (len(kept) == len(options) and len(options) > 2):
        return None
    order = "".join(sorted(kept, key=kept.get))
    if order != "".join(sorted(order)):
        return None
    if not multi and len(order) != 1:
        return None
    return order


def _bare_letters(reply: str, letters: str, multi: bool) -> str | None:
    cls = _letter_class(letters)
    pattern = re.compile(f"(?<![A-Za-z0-9])({cls}+)(?![A-Za-z0-9{_NOT_LETTER_USE}])")
    runs = set()
    for match in pattern.finditer(reply):
        run = match.group(1)
        if len(set(run)) != len(run) or run != "".join(sorted(run)):
            continue
        if not multi and len(run) != 1:
            continue
        runs.add(run)
    return runs.pop() if len(runs) == 1 else None


def read_reply(reply: str, options: Mapping[str, str], multi: bool) -> Readback:
    """Apply the three rules in order to a reply for a question with ``options``; never guesses."""
    text = normalize_text(reply)
    letters = "".join(options)
    if not text or not letters:
        return Readback("", None)
    found = _phrase_letters(text, letters)
    if found:
        return Readback(found, "phrase")
    found = _option_text_letters(text, {k: normalize_text(v) for k, v in options.items()}, multi)
    if found:
        return Readback(found, "option_text")
    found = _bare_letters(text, letters, multi)
    if found:
        return Readback(found, "letters")
    return Readback("", None)
