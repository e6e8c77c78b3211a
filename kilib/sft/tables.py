"""Notebook 01's tables and figures, one function per cell's work: the documents, the Q&A
sets' sizes and their coverage of the facts (Mecklenburg et al. Fig 2), training, the scored
answers, accuracy per document (Figs 1, 3 and 4), equal token budgets, the control, the claims
and what run.json records. The computations are :mod:`kilib.sft.study`'s."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns

from kilib.plots import _pyplot, bars_with_ci, lines_with_ci
from kilib.sft.judge import judge_rows
from kilib.sft.presets import InjectionConfig
from kilib.sft.rules import fact_coverage, question_key
from kilib.sft.study import (
    RULES,
    StudyInputs,
    accuracy_table,
    adapter_rows,
    baseline_rows,
    compare,
    paper_claims,
)


def coverage_figure(coverage, scales: Sequence[int], titles: Mapping[str, str]):
    """Mecklenburg et al. Fig 2: pairs per fact in each token-based set (one dot per fact),
    per document and scale, with the fact-based sets' constant coverage as dashed lines.
    ``coverage`` has columns ``doc_id``, ``scale`` ("1x"...), ``pairs``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.5, 1.3 * coverage["doc_id"].nunique() + 2), 4))
    data = coverage.assign(document=coverage["doc_id"].map(titles))
    state = np.random.get_state()  # seaborn jitters with numpy's global generator: seeded, so the figure repeats
    np.random.seed(0)
    try:
        sns.stripplot(
            data=data,
            x="document",
            y="pairs",
            hue="scale",
            dodge=True,
            jitter=0.25,
            size=4,
            ax=ax,
            palette="colorblind",
            hue_order=[f"{s}x" for s in scales],
        )
    finally:
        np.random.set_state(state)
    for s in scales:
        ax.axhline(s, ls="--", lw=0.8, color="grey")
    ax.set_ylabel("Q&A pairs about the fact")
    ax.set_xlabel("")
    ax.set_title("Fig 2: fact coverage of the token-based sets (dashed: fact-based, by construction)")
    ax.tick_params(axis="x", labelrotation=20)
    ax.legend(title="token-based set", frameon=False, fontsize="small")
    fig.tight_layout()
    return fig


def document_table(inputs: StudyInputs) -> pd.DataFrame:
    """One row per document: title, sections, tokens, facts, and its role (new or control)."""
    sections = pd.DataFrame(inputs.sections)
    sections["tokens"] = [len(inputs.tokenizer.encode(t, add_special_tokens=False)) for t in sections["text"]]
    docs = (
        sections.groupby("doc_id", sort=False)
        .agg(title=("title", "first"), sections=("section", "size"), tokens=("tokens", "sum"))
        .reset_index()
    )
    docs["facts"] = [len(inputs.facts[d]) for d in docs["doc_id"]]
    docs["role"] = ["control (known)" if d == inputs.control_doc_id else "new" for d in docs["doc_id"]]
    return docs


def figure_labels(inputs: StudyInputs) -> dict[str, str]:
    """Each document's title as the figures name it, the control marked."""
    return {d: t + (" (control)" if d == inputs.control_doc_id else "") for d, t in inputs.titles.items()}


def first_section(inputs: StudyInputs) -> str:
    """The first document's title and the text of its first section."""
    first = inputs.doc_ids[0]
    text = next(r["text"] for r in inputs.sections if r["doc_id"] == first)
    return f"\n{inputs.titles[first]}, first section:\n{text}"


def set_sizes(inputs: StudyInputs, config: InjectionConfig) -> pd.DataFrame:
    """Pairs and tokens of every training set: one row per (document, rule, seed, scale)."""
    rows = []
    for (doc_id, rule, seed), sets in inputs.training_sets.items():
        for scale in config.scales:
            pairs = sets[scale]
            rows.append(
                {
                    "doc_id": doc_id,
                    "rule": rule,
                    "seed": seed,
                    "scale": scale,
                    "pairs": len(pairs),
                    "tokens": sum(p["tokens"] for p in pairs),
                }
            )
    return pd.DataFrame(rows)


def set_sizes_pivot(sizes: pd.DataFrame, config: InjectionConfig) -> pd.DataFrame:
    """The first seed's set sizes, a row per document and a column per (rule, scale)."""
    return sizes[sizes.seed == config.seeds[0]].pivot_table(
        index="doc_id", columns=["rule", "scale"], values=["pairs", "tokens"], sort=False
    )


def eval_overlap(inputs: StudyInputs) -> int:
    """How many evaluation questions are also training questions (as duplicates are detected)."""
    train_questions = {
        question_key(p["question"]) for sets in inputs.training_sets.values() for pairs in sets.values() for p in pairs
    }
    return sum(
        question_key(p["question"]) in train_questions
        for ev in inputs.evaluation.values()
        for name in RULES
        for p in ev[name]
    )


def example_pairs(inputs: StudyInputs, config: InjectionConfig, n: int = 3) -> list[str]:
    """The first ``n`` pairs of the first document's largest token-based set, as Q: ... A: ... lines."""
    example = inputs.training_sets[(inputs.doc_ids[0], "token", config.seeds[0])][max(config.scales)][:n]
    return [f"Q: {p['question']}  A: {p['answer']}" for p in example]


def coverage_table(inputs: StudyInputs, config: InjectionConfig) -> pd.DataFrame:
    """Pairs per fact in every token-based set (:func:`kilib.sft.rules.fact_coverage`), for Fig 2."""
    return pd.DataFrame(
        [
            {"doc_id": doc_id, "seed": seed, "scale": f"{scale}x", "fact_id": fid, "pairs": n}
            for (doc_id, rule, seed), sets in inputs.training_sets.items()
            if rule == "token"
            for scale in config.scales
            for fid, n in fact_coverage(sets[scale], inputs.facts[doc_id]).items()
        ]
    )


def coverage_spread(coverage: pd.DataFrame) -> pd.DataFrame:
    """Min, median and max pairs per fact, per scale."""
    spread = coverage.groupby(["scale"], sort=False)["pairs"].describe()[["min", "50%", "max"]]
    return spread.rename(columns={"50%": "median"})


def training_steps(jobs: Sequence[Mapping[str, Any]], config: InjectionConfig) -> float:
    """Optimiser steps over the whole grid (batch size 1: a step per pair and epoch)."""
    return sum(len(j["train_key"]["pairs"]) for j in jobs) * config.train.epochs


def training_table(results: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per adapter: its tags, steps, final loss and training seconds."""
    return pd.DataFrame(
        [
            {
                **{k: r[k] for k in ("doc_id", "rule", "scale", "seed", "pairs", "tokens")},
                "steps": r["train"]["steps"],
                "final_loss": r["train"]["losses"][-1]["loss"],
                "seconds": round(r["train"]["seconds"], 1),
            }
            for r in results
        ]
    )


def training_summary(training: pd.DataFrame) -> pd.DataFrame:
    """Adapters, mean steps, final loss and seconds per (rule, scale)."""
    return (
        training.groupby(["rule", "scale"])
        .agg(
            adapters=("steps", "size"),
            steps=("steps", "mean"),
            final_loss=("final_loss", "mean"),
            seconds=("seconds", "mean"),
        )
        .round(3)
    )


def answer_rows(
    inputs: StudyInputs,
    config: InjectionConfig,
    results: Sequence[Mapping[str, Any]],
    jobs: Sequence[Mapping[str, Any]],
    index,
    labels: Mapping[str, str],
) -> tuple[pd.DataFrame, dict | None]:
    """Every scored answer: the adapters', then the original model's and RAG's (``index``: the
    sections' BM25 index), with ``document`` and ``condition`` columns; judged by
    ``config.judge`` where there is one (:func:`kilib.sft.judge.judge_rows`, whose summary is
    returned beside the rows; None without a judge)."""
    rows = pd.DataFrame(adapter_rows(results, jobs) + baseline_rows(inputs.base, config, inputs.evaluation, index))
    rows["document"] = rows["doc_id"].map(labels)
    rows["condition"] = [m if m in ("original", "rag") else f"{s}x" for m, s in zip(rows["method"], rows["scale"])]
    judging = None
    if config.judge:
        judged, judging = judge_rows(rows.to_dict("records"), config)
        rows = pd.DataFrame(judged)
    return rows, judging


def judging_line(judging: Mapping[str, Any]) -> str:
    """One line on the judge: its agreement with the lexical score, and its unparseable replies."""
    return (
        f"judge {judging['judge']}: agrees with the lexical score on {judging['agreement']:.0%} of answers "
        f"(Cohen's kappa {judging['cohen_kappa']:.2f}); {judging['unparseable']} unparseable replies count as wrong"
    )


def retrieval_recall(inputs: StudyInputs, index, k: int) -> float:
    """The share of fact-based evaluation questions whose fact's section is among the top ``k`` passages."""
    hits = index.search([p["question"] for d in inputs.doc_ids for p in inputs.evaluation[d]["fact"]], k=k)
    gold = [f"{d}/{p['section']}" for d in inputs.doc_ids for p in inputs.evaluation[d]["fact"]]
    return sum(g in {index.ids[i] for i in h} for g, h in zip(gold, hits)) / len(gold)


def sample_answers(rows: pd.DataFrame, config: InjectionConfig, n: int = 5) -> pd.DataFrame:
    """The first ``n`` answers of the largest fact-based adapters on the fact-based evaluation set."""
    sample = rows[(rows.method == "fact") & (rows.scale == max(config.scales)) & (rows["eval"] == "fact")].head(n)
    return sample[["document", "question", "answer", "prediction", "exact"]]


FIGURES = {  # Mecklenburg et al. Figs 1, 3 and 4: (training rule, evaluation set, title)
    "fig1_token_on_token": ("token", "token", "Fig 1: token-based training, token-based evaluation"),
    "fig3_fact_on_fact": ("fact", "fact", "Fig 3: fact-based training, fact-based evaluation"),
    "fig4_token_on_fact": ("token", "fact", "Fig 4: token-based training, fact-based evaluation"),
}


def accuracy_figures(per_doc: pd.DataFrame, scales: Sequence[int], labels: Mapping[str, str]) -> dict[str, Any]:
    """Figs 1, 3 and 4: accuracy per document and condition (original, each scale, RAG)."""
    conditions = ["original"] + [f"{s}x" for s in scales] + ["rag"]
    figures = {}
    for name, (rule, ev, title) in FIGURES.items():
        sub = per_doc[(per_doc["eval"] == ev) & per_doc["method"].isin([rule, "original", "rag"])]
        figures[name] = bars_with_ci(
            sub,
            x="document",
            y="accuracy",
            hue="condition",
            hue_order=conditions,
            title=title,
            order=list(labels.values()),
        )
    return figures


def accuracy_pivot(per_doc: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per (evaluation set, document) and (method, condition)."""
    return per_doc.pivot_table(
        index=["eval", "document"], columns=["method", "condition"], values="accuracy", sort=False
    ).round(2)


def equal_budget(new: pd.DataFrame, training: pd.DataFrame, inputs: StudyInputs, score: str) -> pd.DataFrame:
    """Accuracy of the trained adapters on the new documents per (rule, scale, evaluation set),
    beside the mean tokens each was trained on: the two rules compared at equal token budgets."""
    trained = new[new["method"].isin(RULES) & new["eval"].isin(RULES)]
    budget = accuracy_table(trained, ["method", "scale", "eval"], score=score)
    tokens = training[training["doc_id"] != inputs.control_doc_id].groupby(["rule", "scale"])["tokens"].mean()
    budget["tokens"] = [tokens[(m, s)] for m, s in zip(budget["method"], budget["scale"])]
    budget["label"] = [f"{s}x" for s in budget["scale"]]
    return budget


def equal_budget_figures(budget: pd.DataFrame) -> dict[str, Any]:
    """Per evaluation set, accuracy against training tokens for both rules."""
    return {
        ev: lines_with_ci(
            budget[budget["eval"] == ev],
            x="tokens",
            y="accuracy",
            hue="method",
            labels="label",
            xlabel="training tokens per document (mean)",
            title=f"new documents, {ev}-based evaluation: accuracy against training tokens",
        )
        for ev in RULES
    }


def control_table(rows: pd.DataFrame, inputs: StudyInputs, score: str) -> pd.DataFrame:
    """The control's fact questions: the original model's accuracy, then after each adapter
    trained on a new document."""
    before = rows[(rows["doc_id"] == inputs.control_doc_id) & (rows["method"] == "original") & (rows["eval"] == "fact")]
    after = rows[(rows["eval"] == "control")]
    return pd.concat(
        [
            accuracy_table(before.assign(condition="original"), ["condition"], score=score),
            accuracy_table(
                after.assign(condition=[f"after {m} {s}x" for m, s in zip(after.method, after.scale)]),
                ["condition"],
                score=score,
            ),
        ]
    )


def control_figure(control: pd.DataFrame):
    """The control table as bars with their intervals."""
    return bars_with_ci(
        control,
        x="condition",
        y="accuracy",
        title="control questions: original model, and after training on a new document",
    )


def control_drops(rows: pd.DataFrame, inputs: StudyInputs, config: InjectionConfig) -> list[dict]:
    """Does the control's accuracy fall after the largest training of each rule on a new document?"""
    known = {"doc_id": inputs.control_doc_id, "method": "original", "eval": "fact"}
    return [
        compare(
            rows,
            known,
            {"method": rule, "scale": max(config.scales), "eval": "control"},
            f"control accuracy falls after {rule}-based {max(config.scales)}x training on a new document",
            config.score,
        )
        for rule in RULES
    ]


def study_claims(
    rows: pd.DataFrame, new: pd.DataFrame, inputs: StudyInputs, config: InjectionConfig, drops: list[dict] | None
) -> list[dict]:
    """The paper's claims (:func:`paper_claims`) on the new documents; with a control, also that
    the original model already knows it, and the ``drops`` (:func:`control_drops`)."""
    claims = paper_claims(new, config.scales, config.score)
    if inputs.control_doc_id:
        claims.append(
            compare(
                rows,
                {"new": False, "method": "original", "eval": "fact"},
                {"new": True, "method": "original", "eval": "fact"},
                "the control is already known to the original model (fact eval, control vs new)",
                config.score,
            )
        )
        claims += drops
    return claims


def run_metrics(inputs: StudyInputs, config: InjectionConfig, **parts: Any) -> dict[str, Any]:
    """What run.json records, from the notebook's tables (``parts``: jobs, judging, recall,
    overlap, claims, summary, per_doc, control, budget, coverage, training)."""
    control = parts["control"]
    return dict(
        documents=inputs.doc_ids,
        control=inputs.control_doc_id,
        source=inputs.source,
        adapters=len(parts["jobs"]),
        score=config.score,
        judging=parts["judging"],
        retrieval_recall=parts["recall"],
        eval_overlap=parts["overlap"],
        claims=parts["claims"],
        accuracy=parts["summary"].to_dict("records"),
        per_document=parts["per_doc"].to_dict("records"),
        control_before_after=control.to_dict("records") if inputs.control_doc_id else None,
        equal_budget=parts["budget"].to_dict("records"),
        coverage={
            s: {"min": int(g.min()), "max": int(g.max())} for s, g in parts["coverage"].groupby("scale")["pairs"]
        },
        training_seconds=float(parts["training"]["seconds"].sum()),
    )
