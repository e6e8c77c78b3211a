"""Answer metrics and strict parsing, shared by every study.

Lexical metrics mirror the SQuAD v1.1/v2.0 evaluation script (normalisation, exact match,
token F1), extended so numbers and scores survive normalisation. GSM8K is scored by exact match
on the last number (Zhong et al. §4, after the open-instruct evaluation they use). FEVER answers
and MMLU letters are parsed strictly (the FEVER lab note's rule: unparseable = wrong; docs/methods.md,
"## 04 Memory modules on FEVER").
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Sequence

from kilib.runtime import KilibError

# ----------------------------------------------------------------------------------------------
# Lexical answer metrics (SQuAD style)
# ----------------------------------------------------------------------------------------------

# Separators that carry meaning between two digits: "3-1" (a score), "2.5" (a decimal).
# Dashes of every kind between digits become "-"; a comma between digits is a thousands
# separator and is dropped ("1,000" -> "1000"), which is what SQuAD's punctuation removal does.
_DASHES = "-\u2010\u2011\u2012\u2013\u2014\u2212"
_DIGIT_DASH_DIGIT = re.compile(rf"(?<=\d)[{re.escape(_DASHES)}](?=\d)")
_DIGIT_DOT_DIGIT = re.compile(r"(?<=\d)\.(?=\d)")
_KEEP_DASH = "\x00"  # placeholders that survive punctuation removal
_KEEP_DOT = "\x01"
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _is_punctuation(char: str) -> bool:
    return char in string.punctuation or unicodedata.category(char).startswith("P")


def normalize_answer(text: str) -> str:
    """SQuAD answer normalisation, keeping numbers intact.

    Steps, in the SQuAD script's order: Unicode NFKC and lowercase; remove punctuation (ASCII
    ``string.punctuation`` as SQuAD does, plus Unicode punctuation); remove the articles
    a/an/the as whole words; collapse whitespace. Punctuation is deleted, not replaced by a
    space, as in SQuAD ("don't" -> "dont", "well-known" -> "wellknown").

    Deviation from SQuAD, for numbers and scores: a dash between two digits is kept as "-"
    ("3-1" and "3–1" -> "3-1", where SQuAD gives "31") and a point between two digits is kept
    ("2.5" stays "2.5", where SQuAD gives "25"). A comma between digits is dropped as in SQuAD
    ("1,000" -> "1000"). A sign before a number is punctuation and is dropped ("-5" -> "5"); use
    :func:`last_number` where signs matter.
    """
    text = unicodedata.normalize("NFKC", str(text)).lower()
    text = _DIGIT_DASH_DIGIT.sub(_KEEP_DASH, text)
    text = _DIGIT_DOT_DIGIT.sub(_KEEP_DOT, text)
    text = "".join(ch for ch in text if not _is_punctuation(ch))
    text = text.replace(_KEEP_DASH, "-").replace(_KEEP_DOT, ".")
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _golds(gold: str | Sequence[str]) -> list[str]:
    golds = [gold] if isinstance(gold, str) else list(gold)
    if not golds:
        raise KilibError("no gold answer given: pass a string or a non-empty list of gold answers")
    return [str(g) for g in golds]


def exact_match(prediction: str, gold: str | Sequence[str]) -> float:
    """SQuAD exact match: 1.0 where the normalised prediction equals a normalised gold answer.

    With several gold answers the best one counts (max over golds, as in SQuAD).
    """
    pred = normalize_answer(prediction)
    return max(float(pred == normalize_answer(g)) for g in _golds(gold))


def contains_answer(prediction: str, gold: str | Sequence[str]) -> float:
    """1.0 where a normalised gold answer occurs in the normalised prediction as whole tokens.

    "Whole tokens" means at token boundaries of the normalised text: gold "paris" is in
    "it is paris france" but not in "parisian". A gold answer that normalises to the empty
    string never counts (it would be contained in everything). This is the lenient lexical
    score reported beside the LLM judge for the SFT-scaling study (Mecklenburg et al., judging).
    """
    pred = f" {normalize_answer(prediction)} "
    best = 0.0
    for g in _golds(gold):
        g = normalize_answer(g)
        if g and f" {g} " in pred:
            best = 1.0
    return best


def token_f1(prediction: str, gold: str | Sequence[str]) -> float:
    """SQuAD token F1 between normalised prediction and gold, max over gold answers.

    Tokens are the whitespace-split normalised text; overlap counts multiplicity (bag of
    tokens). Where either side has no tokens, F1 is 1.0 if both are empty, else 0.0 (SQuAD v2).
    """
    pred_tokens = normalize_answer(prediction).split()
    best = 0.0
    for g in _golds(gold):
        gold_tokens = normalize_answer(g).split()
        if not pred_tokens or not gold_tokens:
            score = float(pred_tokens == gold_tokens)
        else:
            same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
            if same == 0:
                score = 0.0
            else:
                precision = same / len(pred_tokens)
                recall = same / len(gold_tokens)
                score = 2 * precision * recall / (precision + recall)
        best = max(best, score)
    return best


# A sign counts only where "-" is not preceded by a word character ("x = -5" but not "3-1").
# Thousands groups must have exactly three digits ("1,000,000"); "1, 2" is two numbers.
_NUMBER = re.compile(r"(?:(?<![\w.])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def _canonical_number(token: str) -> str:
    sign = "-" if token.startswith("-") else ""
    body = token.lstrip("-").replace(",", "")
    whole, _, frac = body.partition(".")
    whole = whole.lstrip("0") or "0"
    frac = frac.rstrip("0")
    number = f"{whole}.{frac}" if frac else whole
    return number if number == "0" else sign + number


def last_number(text: str) -> str | None:
    """The last number in ``text``, canonicalised, or None where there is none.

    GSM8K scoring: exact match on the last number of the output, as in Zhong et al. §4
    (open-instruct's GSM8K evaluation takes the last number after removing commas). Compare
    ``last_number(output) == last_number(gold)``.

    Recognised: optional minus sign (only where "-" is not preceded by a letter or digit, so
    "3-1" gives "1"), digits with comma thousands separators ("1,000" -> "1000"), a decimal
    part ("2.5"). Canonical form: no commas, no leading zeros, no trailing decimal zeros
    ("18.00" -> "18", "2.50" -> "2.5", "-0" -> "0"), so equal numbers compare equal as strings.
    A sentence-final point is not a decimal ("is 18." -> "18").
    """
    matches = _NUMBER.findall(str(text))
    if not matches:
        return None
    return _canonical_number(matches[-1])


# ----------------------------------------------------------------------------------------------
# Strict choice parsing (FEVER lab note, MMLU)
# ----------------------------------------------------------------------------------------------

# An answer prefix the model may echo from the prompt: "A:" (the FEVER template, capital A
# only), "Answer:", "The answer is", "Answer is".
_ANSWER_PREFIX = re.compile(r"(?:A\s*:|(?i:(?:the\s+)?answer(?:\s+is)?\s*:?))\s*")


def _leading_choice(text: str, labels: Sequence[str], flags: int) -> tuple[str, int] | None:
    for label in labels:
        lab = re.escape(label)
        for pattern in (
            rf"\(\s*{lab}\s*\)",  # "(b)" followed by anything
            rf"{lab}\)",  # "b)" followed by anything
            rf"{lab}\.(?=\s|$)",  # "B." followed by whitespace or the end
            rf"{lab}(?=\s*$|\s*\n)",  # "B" alone on its line
        ):
            match = re.match(pattern, text, flags)
            if match:
                return label, match.end()
    return None


def parse_choice(text: str | None, labels: Sequence[str]) -> str | None:
    """Parse a generated answer strictly into one of ``labels``; None if unparseable or ambiguous.

    FEVER lab note: strict parsing, unparseable = wrong (callers count None as wrong). Also used
    for MMLU letters. Accepted, after stripping surrounding whitespace and at most one answer
    prefix ("A:" with a capital A as in the FEVER template, or "Answer:", "The answer is",
    case-insensitive), the answer must START the text in one of these forms, with x a label:

    - ``(x)`` followed by anything: "(a)", " (b) refutes", "A: (c)", "( b )";
    - ``x)`` followed by anything: "b) refutes";
    - ``x.`` followed by whitespace or the end: "B.", "B. Paris";
    - ``x`` alone on its line: "B", "B\\n...".

    Rejected: anything else ("The claim is supported", "b refutes", "Bx", "B: Paris"); and any
    text whose remainder contains a bracketed different label "(y)" (ambiguous: "(a) or (b)",
    or a continued next demonstration "(a)\\nClaim: ... A: (b)" -- pass ``stop=["\\n"]`` to
    :func:`generate` to cut those). The label's meaning words ("supports") are not checked.

    Matching ignores case where the labels stay distinct under casefolding (so "(A)" is label
    "a"); otherwise it is case-sensitive. The text is tried as it is first, then with the
    prefix stripped, so MMLU "A" and "A." still mean option A.
    """
    labels = [str(label) for label in labels]
    if not labels or any(not label or label != label.strip() for label in labels):
        raise KilibError("parse_choice needs non-empty labels without surrounding spaces, e.g. ('a', 'b', 'c')")
    if len(set(labels)) != len(labels):
        raise KilibError(f"parse_choice got duplicate labels {labels}: pass each label once")
    if text is None:
        return None
    folded = [label.casefold() for label in labels]
    flags = re.IGNORECASE if len(set(folded)) == len(folded) else 0
    # Longer labels first, so a label that is a prefix of another never wins by accident.
    ordered = sorted(labels, key=len, reverse=True)

    text = str(text).strip()
    candidates = [text]
    prefix = _ANSWER_PREFIX.match(text)
    if prefix and prefix.end() > 0:
        candidates.append(text[prefix.end() :])
    for candidate in candidates:
        found = _leading_choice(candidate, ordered, flags)
        if found is None:
            continue
        label, end = found
        rest = candidate[end:]
        for other in labels:
            same = other.casefold() == label.casefold() if flags else other == label
            if not same and re.search(rf"\(\s*{re.escape(other)}\s*\)", rest, flags):
                return None
        return label
    return None
