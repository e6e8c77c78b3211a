"""Evaluation primitives shared by every study: answer metrics, strict parsing, confidence
intervals, batched greedy generation and log-likelihood scoring.

Lexical metrics mirror the SQuAD v1.1/v2.0 evaluation script (normalisation, exact match,
token F1), extended so numbers and scores survive normalisation. GSM8K is scored by exact match
on the last number (Zhong et al. §4, after the open-instruct evaluation they use). FEVER answers
and MMLU letters are parsed strictly (the lab note's rule: unparseable = wrong). Intervals are
percentile bootstraps of the mean (``scipy.stats.bootstrap``), because gains of 0.01 on a few
thousand claims are within noise (lab note, §4 of ``methods.md``).

The model helpers (:func:`generate`, :func:`sequence_logprob`, :func:`choose_by_loglik`) take any
Hugging Face causal LM and its tokenizer; torch and transformers are imported inside them, so
``import kilib.evaluation`` stays cheap.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from typing import Sequence

from kilib.runtime import KilibError

__all__ = [
    "normalize_answer",
    "exact_match",
    "contains_answer",
    "token_f1",
    "last_number",
    "parse_choice",
    "bootstrap_ci",
    "accuracy_with_ci",
    "f1_scores",
    "generate",
    "sequence_logprob",
    "choose_by_loglik",
]

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


# ----------------------------------------------------------------------------------------------
# Confidence intervals and classification scores
# ----------------------------------------------------------------------------------------------


def bootstrap_ci(
    values: Sequence[float],
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean and its percentile-bootstrap confidence interval.

    Uses ``scipy.stats.bootstrap(method="percentile")`` with a generator seeded by ``seed``, so
    the interval is deterministic. Degenerate samples (one value, or all values equal) give
    ``(m, m, m)``: every resample has the same mean. A percentile interval that misses the mean
    (possible on small or skewed samples) is widened to contain it. Reported beside every
    accuracy because the FEVER memory gains (0.01 on 3,045 claims) are within noise.
    """
    import numpy as np
    from scipy import stats

    data = np.asarray(list(values), dtype=float).ravel()
    if data.size == 0:
        raise KilibError("bootstrap_ci got no values: evaluate at least one example first")
    if not np.all(np.isfinite(data)):
        raise KilibError("bootstrap_ci got NaN or infinite values: drop or fix them before computing an interval")
    if not 0.0 < confidence < 1.0:
        raise KilibError(f"confidence must lie strictly between 0 and 1 (got {confidence}), e.g. 0.95")
    if int(n_resamples) < 1:
        raise KilibError(f"n_resamples must be at least 1 (got {n_resamples}), e.g. 2000")
    mean = float(data.mean())
    if data.size == 1 or np.all(data == data[0]):
        return mean, mean, mean
    # Resample in batches so memory stays near 2e7 floats whatever the sample size.
    batch = max(1, min(int(n_resamples), int(2e7 // data.size)))
    result = stats.bootstrap(
        (data,),
        np.mean,
        n_resamples=int(n_resamples),
        batch=batch,
        vectorized=True,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    low = float(result.confidence_interval.low)
    high = float(result.confidence_interval.high)
    return mean, min(low, mean), max(high, mean)


def difference_ci(
    a: Sequence[float],
    b: Sequence[float],
    paired: bool,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``(diff, low, high)``: mean(a) - mean(b) and its percentile-bootstrap interval.

    ``paired``: ``a[i]`` and ``b[i]`` score the same item under two conditions, so the items are
    resampled together (the interval of the mean per-item difference, which removes the
    items' shared difficulty); otherwise the two samples are resampled independently."""
    import numpy as np
    from scipy import stats

    a = np.asarray(list(a), dtype=float)
    b = np.asarray(list(b), dtype=float)
    if a.size == 0 or b.size == 0:
        raise KilibError("difference_ci needs values on both sides: evaluate both conditions first")
    if paired and a.size != b.size:
        raise KilibError(f"paired samples differ in size ({a.size} vs {b.size}): pair each item once")
    if paired:
        return bootstrap_ci(a - b, confidence=confidence, n_resamples=n_resamples, seed=seed)
    diff = float(a.mean() - b.mean())
    if (a.size == 1 or np.all(a == a[0])) and (b.size == 1 or np.all(b == b[0])):
        return diff, diff, diff
    result = stats.bootstrap((a, b), lambda x, y, axis=-1: x.mean(axis=axis) - y.mean(axis=axis),
                             n_resamples=int(n_resamples), paired=False, vectorized=True,
                             confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed))
    return diff, min(float(result.confidence_interval.low), diff), max(float(result.confidence_interval.high), diff)


VERDICTS = ("shown", "direction only", "not shown", "opposite shown")


def verdict(difference: float, low: float, high: float) -> str:
    """How a claim "A scores above B" fares, from the difference A - B and its 95% interval:
    **shown** where the interval lies above 0, **opposite shown** where it lies below,
    **direction only** where only the mean difference is positive, **not shown** otherwise."""
    return "shown" if low > 0 else "opposite shown" if high < 0 else "direction only" if difference > 0 else "not shown"


def paired_comparison(df, by: str, better: str, worse: str, column: str = "correct", margin: float = 0.0) -> dict:
    """Condition ``better`` against ``worse`` (values of column ``by`` in the DataFrame ``df``) on
    the same items: each item's ``column`` averaged (over seeds), then the mean difference with a
    95% paired bootstrap interval, and the verdict on "``better`` - ``worse`` > -``margin``"."""
    per_item = df.groupby([by, "item"])[column].mean()
    a, b = per_item[better].sort_index(), per_item[worse].sort_index()
    diff, low, high = difference_ci(a.values, b.values, paired=True)
    return {"higher": float(a.mean()), "lower": float(b.mean()), "difference": diff, "difference_ci": [low, high],
            "verdict": verdict(diff + margin, low + margin, high + margin)}


def accuracy_with_ci(correct: Sequence[float | bool], **kw) -> dict:
    """``{"accuracy", "ci_low", "ci_high", "n"}`` for 0/1 correctness values.

    Keyword arguments go to :func:`bootstrap_ci` (``confidence``, ``n_resamples``, ``seed``).
    """
    values = [float(c) for c in correct]
    mean, low, high = bootstrap_ci(values, **kw)
    return {"accuracy": mean, "ci_low": low, "ci_high": high, "n": len(values)}


def f1_scores(
    predictions: Sequence[str | None],
    golds: Sequence[str],
    labels: Sequence[str],
) -> dict:
    """Accuracy, micro-F1 and macro-F1 over ``labels`` (FEVER lab note's table columns).

    Definitions, per label c: TP_c = #(pred = c and gold = c), FP_c = #(pred = c and
    gold != c), FN_c = #(gold = c and pred != c), F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c), and
    F1_c = 0 where that denominator is 0 (a label never gold and never predicted; as
    scikit-learn with ``labels=`` and ``zero_division=0``). Macro-F1 is the plain mean of F1_c
    over all ``labels``. Micro-F1 pools the counts: 2 sum TP / (2 sum TP + sum FP + sum FN).

    A None prediction (unparseable) is wrong: it adds a false negative for its gold label and
    a false positive for no label. So micro-F1 equals accuracy when every prediction is a label,
    and exceeds it when some are None (2 TP / (2 n - n_none) against TP / n).

    Returns ``accuracy``, ``micro_f1``, ``macro_f1``, ``per_label_f1`` (dict), ``n`` and
    ``n_unparsed``.

    The lab note's f1.micro equals its accuracy in every row, zero-shot rows with mostly
    unparseable answers included, so it counted an unparseable answer as a class of its own:
    compare the note's F1 with ``accuracy``, not with this micro-F1.
    """
    import numpy as np

    labels = [str(label) for label in labels]
    if not labels or len(set(labels)) != len(labels):
        raise KilibError("f1_scores needs a non-empty list of distinct labels, e.g. ['a', 'b', 'c']")
    predictions = list(predictions)
    golds = [str(g) for g in golds]
    if len(predictions) != len(golds):
        raise KilibError(f"f1_scores got {len(predictions)} predictions and {len(golds)} golds: pass one of each per example")
    if not golds:
        raise KilibError("f1_scores got no examples: evaluate at least one example first")
    label_set = set(labels)
    bad_gold = sorted({g for g in golds if g not in label_set})
    if bad_gold:
        raise KilibError(f"gold labels {bad_gold} are not in labels {labels}: pass every gold label in labels")
    bad_pred = sorted({str(p) for p in predictions if p is not None and p not in label_set})
    if bad_pred:
        raise KilibError(f"predictions {bad_pred} are not in labels {labels}: parse them with parse_choice (None = unparseable)")

    pred = np.array(["" if p is None else p for p in predictions], dtype=object)
    gold = np.array(golds, dtype=object)
    tp = np.array([np.sum((pred == c) & (gold == c)) for c in labels], dtype=float)
    fp = np.array([np.sum((pred == c) & (gold != c)) for c in labels], dtype=float)
    fn = np.array([np.sum((gold == c) & (pred != c)) for c in labels], dtype=float)
    denom = 2 * tp + fp + fn
    per_label = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    micro_denom = 2 * tp.sum() + fp.sum() + fn.sum()
    return {
        "accuracy": float(np.mean(pred == gold)),
        "micro_f1": float(2 * tp.sum() / micro_denom) if micro_denom > 0 else 0.0,
        "macro_f1": float(per_label.mean()),
        "per_label_f1": {c: float(f) for c, f in zip(labels, per_label)},
        "n": len(golds),
        "n_unparsed": int(sum(p is None for p in predictions)),
    }


def classification_ci(
    predictions: Sequence[str | None],
    golds: Sequence[str],
    labels: Sequence[str],
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict:
    """:func:`f1_scores` with a percentile-bootstrap interval for each of accuracy, micro-F1 and
    macro-F1: the examples are resampled with replacement ``n_resamples`` times (seeded) and
    each score recomputed on every resample, as :func:`f1_scores` defines it. Returns
    ``accuracy``, ``micro_f1``, ``macro_f1``, each with ``<name>_low`` and ``<name>_high``,
    plus ``n`` and ``n_unparsed``. As :func:`bootstrap_ci`, an interval that misses its point
    estimate (a small or skewed sample) is widened to contain it."""
    import numpy as np

    point = f1_scores(predictions, golds, labels)
    labels = [str(label) for label in labels]
    if not 0.0 < confidence < 1.0:
        raise KilibError(f"confidence must lie strictly between 0 and 1 (got {confidence}), e.g. 0.95")
    index = {c: i for i, c in enumerate(labels)}
    pred = np.array([-1 if p is None else index[p] for p in predictions])
    gold = np.array([index[str(g)] for g in golds])
    rng = np.random.default_rng(seed)
    out = {"n": point["n"], "n_unparsed": point["n_unparsed"]}
    draws = {"accuracy": [], "micro_f1": [], "macro_f1": []}
    batch = max(1, min(int(n_resamples), int(2e6 // max(1, len(gold)))))
    done = 0
    while done < int(n_resamples):
        size = min(batch, int(n_resamples) - done)
        pick = rng.integers(0, len(gold), size=(size, len(gold)))
        p, g = pred[pick], gold[pick]
        tp = np.stack([((p == c) & (g == c)).sum(1) for c in range(len(labels))], 1).astype(float)
        fp = np.stack([((p == c) & (g != c)).sum(1) for c in range(len(labels))], 1).astype(float)
        fn = np.stack([((g == c) & (p != c)).sum(1) for c in range(len(labels))], 1).astype(float)
        denom = 2 * tp + fp + fn
        per_label = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
        micro = 2 * tp.sum(1) + fp.sum(1) + fn.sum(1)
        draws["accuracy"].append((p == g).mean(1))
        draws["micro_f1"].append(np.divide(2 * tp.sum(1), micro, out=np.zeros(size), where=micro > 0))
        draws["macro_f1"].append(per_label.mean(1))
        done += size
    tail = 100 * (1 - confidence) / 2
    for name, values in draws.items():
        low, high = np.percentile(np.concatenate(values), [tail, 100 - tail])
        out[name] = point[name]
        out[f"{name}_low"] = min(float(low), point[name])
        out[f"{name}_high"] = max(float(high), point[name])
    return out


# ----------------------------------------------------------------------------------------------
# Model helpers: generation and log-likelihood
# ----------------------------------------------------------------------------------------------


def _model_device(model):
    device = getattr(model, "device", None)
    if device is None:
        device = next(model.parameters()).device
    return device


def _batches(order: list[int], batch_size: int, progress: bool, desc: str):
    if int(batch_size) < 1:
        raise KilibError(f"batch_size must be at least 1 (got {batch_size})")
    starts = range(0, len(order), int(batch_size))
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=desc, unit="batch")
    for start in starts:
        yield order[start : start + int(batch_size)]


def _cut_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = len(text)
    for s in stop:
        index = text.find(s)
        if index != -1:
            cut = min(cut, index)
    return text[:cut]


def _eos_ids(model, tokenizer) -> list[int]:
    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is not None:
        ids.extend([configured] if isinstance(configured, int) else list(configured))
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(int(i) for i in ids))


def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 32,
    stop: Sequence[str] = (),
    batch_size: int = 16,
    progress: bool = False,
) -> list[str]:
    """Greedy generation for each prompt; returns only the new text, cut before the first stop string.

    Prompts are tokenised as the tokenizer does by default (special tokens such as BOS
    included), left-padded in batches (``tokenizer.padding_side`` is set to "left" for the
    call and restored afterwards) with an attention mask, and decoded with
    ``skip_special_tokens=True``. Generation stops at the model's or the tokenizer's EOS token,
    after ``max_new_tokens``, or once the new text of a row contains a stop string (a stopping
    criterion that decodes only the generated tokens, so a stop string never matches across
    the prompt); the text is then truncated at the first occurrence of any stop string, which is
    the reference behaviour. Prompts are batched longest first to limit padding; the output
    for a prompt does not depend on its batch (tested against batch size 1). The model runs
    in eval mode under ``torch.inference_mode()``; its previous mode is restored.

    transformers' own ``stop_strings=`` is not used: it matches stop strings against the tail
    of the whole sequence, prompt included, so it can stop where post-hoc truncation would not.
    """
    import copy

    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    from kilib.models import padding_side

    prompts = [str(p) for p in prompts]
    if not prompts:
        return []
    if tokenizer.pad_token_id is None:
        raise KilibError("the tokenizer has no pad token: set tokenizer.pad_token = tokenizer.eos_token before generating")
    if int(max_new_tokens) < 1:
        raise KilibError(f"max_new_tokens must be at least 1 (got {max_new_tokens})")
    stop = [s for s in ([stop] if isinstance(stop, str) else list(stop)) if s]

    class _StopOnText(StoppingCriteria):
        """Marks a row finished once its decoded new text contains a stop string."""

        def __init__(self, prompt_length: int, rows: int):
            self.prompt_length = prompt_length
            self.done = [False] * rows

        def __call__(self, input_ids, scores, **kwargs):
            for row in range(input_ids.shape[0]):
                if not self.done[row]:
                    new = tokenizer.decode(input_ids[row, self.prompt_length :], skip_special_tokens=True)
                    self.done[row] = any(s in new for s in stop)
            return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)

    # transformers 5 fills every None field of a passed config from model.generation_config, so
    # sampling fields a chat model ships (temperature 0.6, top_p 0.9) are set to their neutral
    # values here rather than to None; greedy decoding ignores them either way.
    config = copy.deepcopy(model.generation_config)
    config.do_sample = False
    config.num_beams = 1
    config.num_return_sequences = 1
    config.temperature = 1.0
    config.top_p = 1.0
    config.top_k = 50
    config.typical_p = 1.0
    config.repetition_penalty = 1.0
    config.no_repeat_ngram_size = 0
    config.min_new_tokens = None
    config.min_length = 0
    config.max_length = None
    config.max_new_tokens = int(max_new_tokens)
    config.pad_token_id = tokenizer.pad_token_id
    eos = _eos_ids(model, tokenizer)
    config.eos_token_id = eos or None

    device = _model_device(model)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), padding_side(tokenizer, "left"):
            for batch in _batches(order, batch_size, progress, "generate"):
                encoded = tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True)
                encoded = {k: v.to(device) for k, v in encoded.items() if k in ("input_ids", "attention_mask")}
                prompt_length = encoded["input_ids"].shape[1]
                criteria = StoppingCriteriaList([_StopOnText(prompt_length, len(batch))]) if stop else None
                generated = model.generate(**encoded, generation_config=config, stopping_criteria=criteria)
                texts = tokenizer.batch_decode(generated[:, prompt_length:], skip_special_tokens=True)
                for i, text in zip(batch, texts):
                    outputs[i] = _cut_at_stop(text, stop)
    finally:
        model.train(was_training)
    return outputs


def _pair_ids(tokenizer, prompt: str, continuation: str) -> tuple[list[int], int]:
    prompt_ids = list(tokenizer(prompt)["input_ids"])
    continuation_ids = list(tokenizer(continuation, add_special_tokens=False)["input_ids"])
    if not prompt_ids:
        raise KilibError(
            f"prompt {prompt[:40]!r} tokenises to no tokens, so the first continuation token has no context: "
            "use a non-empty prompt or a tokenizer that adds a BOS token"
        )
    if not continuation_ids:
        raise KilibError(f"continuation {continuation!r} tokenises to no tokens: pass a non-empty continuation")
    return prompt_ids + continuation_ids, len(continuation_ids)


def _right_padded(rows: list[list[int]], pad_id: int):
    """(input_ids, attention_mask) for token id lists, right-padded to the longest."""
    import torch

    width = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, ids in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


def _continuation_logprobs(model, tokenizer, prompts, continuations, batch_size, progress=False):
    """(sum of log-probs, token count) per pair; see :func:`sequence_logprob`."""
    import torch

    if len(prompts) != len(continuations):
        raise KilibError(f"got {len(prompts)} prompts and {len(continuations)} continuations: pass one continuation per prompt")
    pairs = [_pair_ids(tokenizer, str(p), str(c)) for p, c in zip(prompts, continuations)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = _model_device(model)
    order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]))
    results: list[tuple[float, int]] = [(0.0, 0)] * len(pairs)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in _batches(order, batch_size, progress, "log-likelihood"):
                input_ids, attention_mask = _right_padded([pairs[i][0] for i in batch], pad_id)
                logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
                for row, i in enumerate(batch):
                    ids, n_cont = pairs[i]
                    start = len(ids) - n_cont
                    # logits at position t predict token t + 1
                    step_logits = logits[row, start - 1 : len(ids) - 1].float()
                    targets = torch.tensor(ids[start:], dtype=torch.long, device=step_logits.device)
                    logprobs = torch.log_softmax(step_logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)
                    results[i] = (float(logprobs.sum()), n_cont)
                del logits
    finally:
        model.train(was_training)
    return results


def sequence_logprob(
    model,
    tokenizer,
    prompts: Sequence[str],
    continuations: Sequence[str],
    batch_size: int = 16,
) -> list[float]:
    """Sum of log p(continuation tokens | prompt) for each (prompt, continuation) pair.

    The prompt is tokenised as the tokenizer does by default (BOS included) and the
    continuation without special tokens, separately, and the ids are concatenated, so the
    boundary is exact (tokenising the joined string could merge tokens across it). Batches are
    right-padded with an attention mask; padding never enters a score. Log-softmax is taken in
    float32. The model runs in eval mode under ``torch.inference_mode()``.
    """
    prompts, continuations = list(prompts), list(continuations)
    return [score for score, _ in _continuation_logprobs(model, tokenizer, prompts, continuations, batch_size)]


def choose_by_loglik(
    model,
    tokenizer,
    prompt: str | Sequence[str],
    choices: Sequence[Sequence[str]] | Sequence[str],
    normalize: bool = False,
    batch_size: int = 16,
) -> list[int]:
    """Multiple choice by log-likelihood (MMLU-style): the index of the best choice per prompt.

    Forms: one prompt and a list of choices (returns one index in a list); a list of prompts
    and one shared list of choices (e.g. [" A", " B", " C", " D"] for MMLU); or a list of
    prompts and a list of choice lists, one per prompt. Each choice is scored with
    :func:`sequence_logprob`; ``normalize=True`` divides by the choice's token count (the
    per-token average, which removes the bias towards short answers). Ties go to the first.
    """
    prompts = [prompt] if isinstance(prompt, str) else [str(p) for p in prompt]
    choices = list(choices)
    if not choices:
        raise KilibError("choose_by_loglik got no choices: pass at least one choice per prompt")
    if isinstance(choices[0], str):
        if not all(isinstance(c, str) for c in choices):
            raise KilibError("choices mixes strings and lists: pass one list of strings, or one list per prompt")
        per_prompt = [list(choices)] * len(prompts)
    else:
        per_prompt = [list(c) for c in choices]
        if len(per_prompt) != len(prompts):
            raise KilibError(f"got {len(prompts)} prompts and {len(per_prompt)} choice lists: pass one choice list per prompt")
    if any(not c for c in per_prompt):
        raise KilibError("a prompt has an empty choice list: pass at least one choice per prompt")
    flat_prompts = [p for p, cs in zip(prompts, per_prompt) for _ in cs]
    flat_choices = [str(c) for cs in per_prompt for c in cs]
    scored = _continuation_logprobs(model, tokenizer, flat_prompts, flat_choices, batch_size)
    best: list[int] = []
    position = 0
    for cs in per_prompt:
        scores = [s / n if normalize else s for s, n in scored[position : position + len(cs)]]
        position += len(cs)
        best.append(max(range(len(scores)), key=lambda k: (scores[k], -k)))
    return best


def next_token_choice(
    model,
    tokenizer,
    prompts: Sequence[str],
    candidates: Sequence[int],
    batch_size: int = 16,
) -> list[tuple[int, list[float]]]:
    """Multiple choice by the next token (open-instruct's MMLU evaluation, which Zhong et al. use):
    per prompt, the index of the candidate token the model finds most likely right after the prompt
    (ties go to the first), and each candidate's probability under the softmax over the whole
    vocabulary, so their sum says how much of the model's next-token mass falls on the choices.

    One forward pass per prompt, where :func:`choose_by_loglik` takes one per choice. Prompts are
    tokenised as :func:`generate` tokenises them (BOS included) and right-padded, so that every
    row's last real position keeps its own position ids. Softmax in float32, eval mode,
    ``torch.inference_mode()``.
    """
    import torch

    prompts, candidates = [str(p) for p in prompts], [int(c) for c in candidates]
    if not candidates or len(set(candidates)) != len(candidates):
        raise KilibError(f"next_token_choice needs distinct candidate token ids, got {candidates}: "
                         "pick choices whose first tokens differ")
    encoded = [list(tokenizer(p)["input_ids"]) for p in prompts]
    if any(not ids for ids in encoded):
        raise KilibError("a prompt tokenises to no tokens, so nothing predicts its next token: use non-empty prompts")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = _model_device(model)
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    out: list[tuple[int, list[float]]] = [(0, [])] * len(encoded)
    index = torch.tensor(candidates, dtype=torch.long)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in _batches(order, batch_size, False, "next token"):
                input_ids, attention_mask = _right_padded([encoded[i] for i in batch], pad_id)
                logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
                last = torch.tensor([len(encoded[i]) - 1 for i in batch], device=logits.device)
                probs = torch.softmax(logits[torch.arange(len(batch), device=logits.device), last].float(), dim=-1)
                chosen = probs[:, index.to(probs.device)].cpu()
                for row, i in enumerate(batch):
                    values = chosen[row].tolist()
                    out[i] = (max(range(len(values)), key=lambda k: (values[k], -k)), values)
                del logits
    finally:
        model.train(was_training)
    return out
