"""Figures shared by the notebooks: grouped bars with confidence intervals, loss curves.

Figures are drawn from the tables the notebooks save (never from printed output) and
saved with :meth:`kilib.results.Run.save_figure`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from kilib.runtime import KilibError


def _pyplot():
    # matplotlib and seaborn load only where a figure is drawn, and the backend is chosen
    # before pyplot is first imported.
    import matplotlib

    if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline", "agg"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    return plt


def _value_axis(ax, df, y: str, high: str, ylabel: str, percent: bool) -> None:
    """A 0-1 axis, or 0-100 with ``percent``; values beyond it are an error, not a clipped mark."""
    top = 100.0 if percent else 1.0
    beyond = np.nanmax(df[[y, high]].to_numpy(dtype=float), initial=0.0)
    if beyond > top * (1 + 1e-9):
        raise KilibError(
            f"{y} goes up to {beyond:g}, beyond the axis' {top:g}: "
            + ("pass fractions, or percent=True for percentages" if not percent else "pass percentages")
        )
    ax.set_ylabel(ylabel + (" (%)" if percent else ""))
    ax.set_ylim(0, 1.02 * top)


def bars_with_ci(
    df,
    x: str,
    y: str,
    hue: str | None = None,
    low: str = "ci_low",
    high: str = "ci_high",
    title: str = "",
    ylabel: str = "accuracy",
    order: Sequence[str] | None = None,
    hue_order: Sequence[str] | None = None,
    ax=None,
    percent: bool = False,
):
    """Grouped bars of ``y`` with asymmetric error bars from the ``low``/``high`` columns, on a
    0-1 axis, or 0-100 with ``percent`` (values beyond it are an error, not a clipped bar)."""
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(max(6, 0.9 * df[x].nunique() * (df[hue].nunique() if hue else 1) ** 0.5 + 3), 4))
    xs = list(order or dict.fromkeys(df[x]))
    hues = list(hue_order or (dict.fromkeys(df[hue]) if hue else [None]))
    width = 0.8 / len(hues)
    palette = _palette(len(hues))
    for j, h in enumerate(hues):
        sub = df if h is None else df[df[hue] == h]
        rows = [sub[sub[x] == v] for v in xs]
        vals = np.array([r[y].iloc[0] if len(r) else np.nan for r in rows], dtype=float)
        lo = np.array([r[low].iloc[0] if len(r) else np.nan for r in rows], dtype=float)
        hi = np.array([r[high].iloc[0] if len(r) else np.nan for r in rows], dtype=float)
        pos = np.arange(len(xs)) + (j - (len(hues) - 1) / 2) * width
        ax.bar(pos, vals, width, label=None if h is None else str(h), color=palette[j])
        ax.errorbar(pos, vals, yerr=[vals - lo, hi - vals], fmt="none", ecolor="black", capsize=2, lw=1)
    ax.set_xticks(range(len(xs)))
    ax.set_xticklabels(
        [str(v) for v in xs],
        rotation=20 if max(len(str(v)) for v in xs) > 8 else 0,
        ha="right" if max(len(str(v)) for v in xs) > 8 else "center",
    )
    _value_axis(ax, df, y, high, ylabel, percent)
    ax.set_title(title)
    if hue:
        ax.legend(title=hue, fontsize="small", frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.figure.tight_layout()
    return ax.figure


def lines_with_ci(
    df,
    x: str,
    y: str,
    hue: str,
    low: str = "ci_low",
    high: str = "ci_high",
    title: str = "",
    xlabel: str | None = None,
    ylabel: str = "accuracy",
    labels: str | None = None,
    ax=None,
    percent: bool = False,
):
    """One line per ``hue`` value through (``x``, ``y``) with interval bars, on a 0-1 axis (0-100
    with ``percent``); ``labels`` names a column whose text is written beside each point (e.g. the scale)."""
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4))
    hues = list(dict.fromkeys(df[hue]))
    for h, color in zip(hues, _palette(len(hues))):
        sub = df[df[hue] == h].sort_values(x)
        ax.errorbar(
            sub[x],
            sub[y],
            yerr=[sub[y] - sub[low], sub[high] - sub[y]],
            marker="o",
            capsize=3,
            color=color,
            label=str(h),
        )
        if labels:
            for _, row in sub.iterrows():
                ax.annotate(
                    str(row[labels]),
                    (row[x], row[y]),
                    textcoords="offset points",
                    xytext=(4, -10),
                    fontsize="x-small",
                    color=color,
                )
    ax.set_xlabel(xlabel or x)
    _value_axis(ax, df, y, high, ylabel, percent)
    ax.set_title(title)
    ax.legend(title=hue, frameon=False, fontsize="small")
    ax.figure.tight_layout()
    return ax.figure


def loss_curves(curves: Mapping[str, Sequence[Mapping[str, float]]], title: str = "training loss", x: str = "step"):
    """One line per run from ``[{"step", "loss"}, ...]`` logs."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for (name, log), color in zip(curves.items(), _palette(len(curves))):
        ax.plot([h[x] for h in log], [h["loss"] for h in log], label=name, color=color)
    ax.set_xlabel(x)
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(frameon=False, fontsize="small")
    fig.tight_layout()
    return fig


def _palette(n: int):
    import seaborn as sns  # drawing only, as in _pyplot

    return sns.color_palette("colorblind", max(n, 1))
