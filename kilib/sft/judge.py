"""Judging answers with an LLM, beside a lexical score (docs/methods.md, "## 01 SFT knowledge
injection"; Mecklenburg et al.'s judging is not public).

The judge reads :data:`JUDGE_PROMPT` and replies "Correct: yes" or "Correct: no"
(:func:`parse_verdict`); it comes from another model family than the Q&A generator
(:func:`check_judge_family`), and its agreement with the lexical score is reported
(:func:`judge_agreement`). :func:`judge_rows` judges a study's scored answers, cached.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kilib.lm import llm
from kilib.lm.llm import Generator, ask, check_generator, family_of, fill_prompt
from kilib.lm.scoring import normalize_answer
from kilib.results import cached_dir, read_json, stable_hash, write_json
from kilib.runtime import KilibError
from kilib.standin import switch

__all__ = [
    "JUDGE_PROMPT",
    "parse_verdict",
    "JudgeVerdicts",
    "judge_answers",
    "judge_agreement",
    "check_judge_family",
    "judge_rows",
]

JUDGE_PROMPT = """You are grading an answer to a quiz question.

Question: {question}
Expected answer: {expected}
Candidate answer: {candidate}

The candidate answer is correct if it states the expected answer, in any wording. It is wrong if it gives another answer, leaves the expected answer out, or hedges between several answers.
Reply with exactly one line: "Correct: yes" or "Correct: no"."""  # noqa: E501 (the lines are the text the judge reads)


_VERDICT = re.compile(r"\bcorrect\b\s*\**\s*[:=\-]?\s*\**\s*(yes|no)\b", re.IGNORECASE)


def parse_verdict(reply: str) -> bool | None:
    """The judge's verdict: True for "Correct: yes", False for "Correct: no" (any case, bold
    or not); a reply that is only "yes" or "no" counts too. None where there is no verdict or
    the reply gives both."""
    found = {m.group(1).lower() for m in _VERDICT.finditer(str(reply or ""))}
    if len(found) == 1:
        return found.pop() == "yes"
    if not found:
        bare = normalize_answer(reply or "")
        if bare in ("yes", "no"):
            return bare == "yes"
    return None


class JudgeVerdicts(list):
    """The judge's verdicts (True, False, or None where a reply had none), with ``replies``
    (the raw replies) and ``unparseable`` (how many are None)."""

    def __init__(self, verdicts: Iterable[bool | None], replies: Iterable[str]) -> None:
        super().__init__(verdicts)
        self.replies = list(replies)
        self.unparseable = sum(v is None for v in self)


def judge_answers(
    judge: Generator,
    items: Iterable[Mapping[str, Any]],
    *,
    qa_generator: Generator | str | None = None,
    allow_same_family: bool = False,
    prompt: str = JUDGE_PROMPT,
) -> JudgeVerdicts:
    """LLM judging (docs/methods.md, "## 01 SFT knowledge injection"; the paper's judge is not
    public): for each item
    ``{"question", "expected", "candidate"}`` the judge reads :data:`JUDGE_PROMPT` and replies
    "Correct: yes" or "Correct: no" (:func:`parse_verdict`; an unparseable reply is None and
    counted in ``.unparseable``). Use a judge with ``temperature=0``. With ``qa_generator``
    (the model that wrote the Q&A), :func:`check_judge_family` first makes sure the two come
    from different model families. Report a lexical score beside the verdicts
    (:func:`judge_agreement`)."""
    check_generator(judge)
    if qa_generator is not None:
        check_judge_family(judge, qa_generator, allow_same_family=allow_same_family)
    items = [dict(i) for i in items]
    for i, item in enumerate(items):
        missing = [k for k in ("question", "expected", "candidate") if k not in item]
        if missing:
            raise KilibError(
                f"judge item {i} lacks {', '.join(missing)}: pass dicts with question, expected, candidate"
            )
    prompts = [
        fill_prompt(prompt, question=i["question"], expected=i["expected"], candidate=i["candidate"]) for i in items
    ]
    replies = ask(judge, prompts) if prompts else []
    return JudgeVerdicts([parse_verdict(r) for r in replies], replies)


def judge_agreement(judge: Sequence[bool | None], lexical: Sequence[bool | float]) -> dict[str, float | int]:
    """How often the judge and a lexical score agree, and Cohen's kappa (agreement beyond what
    the two marginal rates give by chance), over the items the judge gave a verdict on.

    ``lexical`` holds booleans or scores; a score counts as correct at >= 0.5 (containment and
    exact match are 0 or 1). kappa = (p_o - p_e) / (1 - p_e) with p_o the observed agreement and
    p_e = p_judge(yes) p_lexical(yes) + p_judge(no) p_lexical(no); it is NaN where p_e = 1
    (both always say the same one thing). Returns ``{"agreement", "n", "cohen_kappa"}``."""
    judge, lexical = list(judge), list(lexical)
    if len(judge) != len(lexical):
        raise KilibError(
            f"{len(judge)} judge verdicts against {len(lexical)} lexical scores: pass one of each per answer"
        )
    both = [(bool(j), float(x) >= 0.5) for j, x in zip(judge, lexical) if j is not None]
    n = len(both)
    if n == 0:
        raise KilibError("the judge gave no parseable verdict: check its replies (JudgeVerdicts.replies)")
    observed = sum(j == x for j, x in both) / n
    judge_yes = sum(j for j, _ in both) / n
    lexical_yes = sum(x for _, x in both) / n
    chance = judge_yes * lexical_yes + (1 - judge_yes) * (1 - lexical_yes)
    kappa = float("nan") if chance == 1 else (observed - chance) / (1 - chance)
    return {"agreement": observed, "n": n, "cohen_kappa": kappa}


def check_judge_family(
    judge: Generator | str, generator: Generator | str, *, allow_same_family: bool = False
) -> tuple[str | None, str | None]:
    """Make sure the judge comes from another model family than the Q&A generator (docs/methods.md,
    "## 01 SFT knowledge injection": a judge that shares the generator's family may favour its phrasing). Returns both
    families; a :class:`KilibError` where they are the same, unless ``allow_same_family``
    (then report it as a deviation); a warning where a family cannot be told from the name."""
    judge_name = judge if isinstance(judge, str) else judge.name
    generator_name = generator if isinstance(generator, str) else generator.name
    judge_family, generator_family = family_of(judge_name), family_of(generator_name)
    if judge_family is None or generator_family is None:
        unknown = judge_name if judge_family is None else generator_name
        warnings.warn(
            f"cannot tell the model family of {unknown!r} from its name: check by hand that the judge "
            "and the generator come from different families",
            stacklevel=2,
        )
    elif judge_family == generator_family and not allow_same_family:
        raise KilibError(
            f"the judge {judge_name!r} and the generator {generator_name!r} are both {judge_family} models: "
            "pick a judge from another family, or pass allow_same_family=True and report it"
        )
    return judge_family, generator_family


def judge_rows(rows, config: Any, qa_generator: str | None = None):
    """Add a ``judge`` score (1 or 0; an unparseable reply scores 0 and is counted) to scored rows with
    ``config.judge`` (Mecklenburg et al.'s judging is not public; docs/methods.md), and return the
    rows with the judge's agreement with the lexical ``contains`` score. Each distinct
    (question, gold, answer) is judged once, and the verdicts are cached."""
    rows = [dict(r) for r in rows]
    triples = sorted({(r["question"], r["answer"], r["prediction"]) for r in rows})
    key = {
        "kind": "judgements",
        "version": 1,
        "judge": config.judge,
        "generator": qa_generator or config.generator,
        "prompt": JUDGE_PROMPT,
        "items": stable_hash(triples),
    }

    def build(folder: Path) -> None:
        judge = llm.make_generator(config.judge, temperature=0.0, max_new_tokens=16)
        try:
            verdicts = judge_answers(
                judge,
                [{"question": q, "expected": a, "candidate": p} for q, a, p in triples],
                qa_generator=key["generator"] or None,
            )
        finally:
            if hasattr(judge, "close"):
                judge.close()
        write_json(
            folder / "verdicts.json",
            {
                "judge": judge.name,
                "items": [list(t) for t in triples],
                "verdicts": list(verdicts),
                "replies": verdicts.replies,
            },
        )

    stored = read_json(cached_dir("judgements", key, build) / "verdicts.json")
    by_triple = {tuple(t): v for t, v in zip(stored["items"], stored["verdicts"])}
    verdicts = [by_triple[(r["question"], r["answer"], r["prediction"])] for r in rows]
    out = [dict(r, judge=float(v is True)) for r, v in zip(rows, verdicts)]  # unparseable counts as wrong
    if switch.scale() and all(v is None for v in verdicts):
        # a random-weight stand-in judge (kilib.standin) writes no verdict: every answer counts as wrong,
        # and the agreement with the lexical score is undefined
        nan = float("nan")
        agreement = {"agreement": nan, "n": 0, "cohen_kappa": nan}
    else:
        agreement = judge_agreement(verdicts, [r["contains"] for r in rows])
    return out, dict(
        agreement, unparseable=sum(v is None for v in verdicts), judge=stored["judge"], prompt=JUDGE_PROMPT
    )
