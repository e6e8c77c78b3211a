"""Claims as text: the Markdown a notebook shows under "What this run shows".

A claim is a dict from a study's ``compare`` (``kilib.stats.paired_comparison`` underneath):
``claim``, ``verdict``, ``higher``, ``lower``, ``difference`` and ``difference_ci``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def claim_line(claim: Mapping[str, Any], digits: int = 1, scale: float = 1.0) -> str:
    """One bullet: the claim, its verdict, both means, the difference and its 95% interval.

    ``scale`` multiplies every number (100 turns a share into points); ``digits`` is the number
    of decimals shown."""
    low, high = claim["difference_ci"]
    return (
        f"* {claim['claim']}: **{claim['verdict']}** ({scale * claim['higher']:.{digits}f} vs "
        f"{scale * claim['lower']:.{digits}f}, difference {scale * claim['difference']:+.{digits}f}, 95% interval "
        f"{scale * low:+.{digits}f} to {scale * high:+.{digits}f})"
    )


def claims_markdown(claims: Iterable[Mapping[str, Any]], digits: int = 1, scale: float = 1.0) -> str:
    """A bullet per claim (:func:`claim_line`), one per line."""
    return "\n".join(claim_line(c, digits, scale) for c in claims)
