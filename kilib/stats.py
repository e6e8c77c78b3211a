"""Confidence intervals, paired comparisons and verdicts, shared by every study.

Intervals are percentile bootstraps of the mean (``scipy.stats.bootstrap``), because gains of
0.01 on a few thousand claims are within noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

from kilib.runtime import KilibError

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
    result = stats.bootstrap(
        (a, b),
        lambda x, y, axis=-1: x.mean(axis=axis) - y.mean(axis=axis),
        n_resamples=int(n_resamples),
        paired=False,
        vectorized=True,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
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
    return {
        "higher": float(a.mean()),
        "lower": float(b.mean()),
        "difference": diff,
        "difference_ci": [low, high],
        "verdict": verdict(diff + margin, low + margin, high + margin),
    }


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
    """Accuracy, micro-F1 and macro-F1 over ``labels`` (the FEVER lab note's table columns;
    docs/methods.md, "## 04 Memory modules on FEVER").

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
    labels = [str(label) for label in labels]
    if not labels or len(set(labels)) != len(labels):
        raise KilibError("f1_scores needs a non-empty list of distinct labels, e.g. ['a', 'b', 'c']")
    predictions = list(predictions)
    golds = [str(g) for g in golds]
    if len(predictions) != len(golds):
        raise KilibError(
            f"f1_scores got {len(predictions)} predictions and {len(golds)} golds: pass one of each per example"
        )
    if not golds:
        raise KilibError("f1_scores got no examples: evaluate at least one example first")
    label_set = set(labels)
    bad_gold = sorted({g for g in golds if g not in label_set})
    if bad_gold:
        raise KilibError(f"gold labels {bad_gold} are not in labels {labels}: pass every gold label in labels")
    bad_pred = sorted({str(p) for p in predictions if p is not None and p not in label_set})
    if bad_pred:
        raise KilibError(
            f"predictions {bad_pred} are not in labels {labels}: parse them with parse_choice (None = unparseable)"
        )

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
