"""Notebook 01's study: knowledge injection by supervised fine-tuning (Mecklenburg et al., 2024).

The grid of adapters (:func:`grid_jobs`, one per document, rule, scale and seed; trained and
answered by :mod:`kilib.sft.adapters`), the baselines (the original model, and RAG), the
scores, the accuracy tables with bootstrap intervals and the paper's claims
(:func:`paper_claims`); the notebook's tables and figures are :mod:`kilib.sft.tables`. The
Q&A sets come from the rules of :mod:`kilib.sft.rules` on the tiny world, or from an LLM
(:mod:`kilib.sft.qa_generation`); see docs/methods.md, "## 01 SFT knowledge injection".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from transformers import AutoTokenizer

from kilib.lm import documents, llm
from kilib.lm.models import load_tokenizer
from kilib.lm.scoring import contains_answer, exact_match
from kilib.runtime import KilibError
from kilib.sft import qa_generation as qa
from kilib.sft.adapters import adapter_job, base_answers, question_items
from kilib.sft.judge import check_judge_family
from kilib.sft.presets import InjectionConfig
from kilib.sft.rules import (
    QASets,
    article_of,
    eval_sets,
    fact_based_sets,
    token_based_sets,
)
from kilib.standin import switch
from kilib.standin.writer import StandinWriter
from kilib.stats import accuracy_with_ci, difference_ci, verdict
from kilib.tiny import zoo

RULES = ("token", "fact")  # the two scaling rules, also the names of the two evaluation sets


# ---------------------------------------------------------------------------------------
# Scores, tables and the paper's claims
# ---------------------------------------------------------------------------------------
def score_rows(items: Sequence[dict], answers: Sequence[str], **tags: Any) -> list[dict]:
    """One row per question: the tags, the question, gold and predicted answers, and two
    deterministic scores: normalised exact match (the tiny profile's score) and normalised
    containment (the lexical score reported beside an LLM judge in the paper profile)."""
    if len(items) != len(answers):
        raise KilibError(
            f"{len(answers)} answers for {len(items)} questions: the cached answers are stale, run `make clean-cache`"
        )
    return [
        {
            **tags,
            "question": it["question"],
            "answer": it["answer"],
            "prediction": a,
            "exact": exact_match(a, it["answer"]),
            "contains": contains_answer(a, it["answer"]),
        }
        for it, a in zip(items, answers)
    ]


def _frame(rows):

    return rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))


def accuracy_table(rows, by: Sequence[str], score: str = "exact"):
    """Accuracy per group of ``by`` with a 95% bootstrap interval over *questions*: each
    question's score is first averaged over the seeds and adapters that answered it, since the
    questions, not the answers, are what was sampled (a question asked by two seeds is one
    draw, not two). Also the number of answers and the spread of the per-seed accuracies."""
    out = []
    for keys, group in _frame(rows).groupby(list(by), sort=False, dropna=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        per_item = group.groupby("question", sort=False)[score].mean()
        per_seed = group.groupby("seed")[score].mean() if "seed" in group else pd.Series(dtype=float)
        out.append(
            {
                **dict(zip(by, keys)),
                **accuracy_with_ci(per_item.tolist()),
                "answers": len(group),
                "seeds": int(per_seed.size),
                "seed_sd": float(per_seed.std()) if per_seed.size > 1 else 0.0,
            }
        )
    return pd.DataFrame(out)


def compare(rows, higher: Mapping[str, Any], lower: Mapping[str, Any], claim: str, score: str = "exact") -> dict:
    """Does the condition ``higher`` (a dict of column -> value selecting rows) score above
    ``lower``? Each side's per-question accuracy (averaged over seeds and adapters); where both
    answered the same questions, a paired bootstrap of the per-question differences, else the
    difference of two independent resamples. Verdict: **shown** where the 95% interval of the
    difference lies above 0, **opposite shown** where it lies below, **direction only** where
    only the mean difference is positive, **not shown** otherwise."""
    df = _frame(rows)

    def side(condition: Mapping[str, Any]):
        mask = True
        for column, value in condition.items():
            mask = mask & (df[column] == value)
        chosen = df[mask]
        if chosen.empty:
            raise KilibError(f"no answers for {dict(condition)}: run the whole grid first")
        return chosen.groupby("question", sort=True)[score].mean()

    a, b = side(higher), side(lower)
    paired = a.index.equals(b.index)
    diff, low, high = difference_ci(a.tolist(), b.tolist(), paired=paired)
    ca, cb = accuracy_with_ci(a.tolist()), accuracy_with_ci(b.tolist())
    return {
        "claim": claim,
        "higher": round(ca["accuracy"], 3),
        "lower": round(cb["accuracy"], 3),
        "difference": round(diff, 3),
        "difference_ci": [round(low, 3), round(high, 3)],
        "paired": paired,
        "questions": [int(a.size), int(b.size)],
        "verdict": verdict(diff, low, high),
    }


def paper_claims(rows, scales: Sequence[int], score: str = "exact") -> list[dict]:
    """Mecklenburg et al.'s claims, each checked by :func:`compare` on the answers about the new
    documents (rows with ``method`` original, rag, token or fact, ``scale`` and ``eval``)."""
    lo, hi = min(scales), max(scales)

    def c(method: str, scale: int, ev: str) -> dict:
        return {"method": method, "scale": scale, "eval": ev}

    checks = [
        ("accuracy rises with scale (token-trained, token eval)", c("token", hi, "token"), c("token", lo, "token")),
        ("accuracy rises with scale (fact-trained, fact eval)", c("fact", hi, "fact"), c("fact", lo, "fact")),
        (f"fact-based beats token-based at {hi}x (fact eval)", c("fact", hi, "fact"), c("token", hi, "fact")),
        (f"fact-based beats token-based at {hi}x (token eval)", c("fact", hi, "token"), c("token", hi, "token")),
        ("RAG beats the original model (token eval)", c("rag", 0, "token"), c("original", 0, "token")),
        ("RAG beats the original model (fact eval)", c("rag", 0, "fact"), c("original", 0, "fact")),
    ]
    return [compare(rows, a, b, claim, score) for claim, a, b in checks]


# ---------------------------------------------------------------------------------------
# The whole study on the tiny world
# ---------------------------------------------------------------------------------------
def study_documents(world, config: InjectionConfig) -> list[str]:
    """The documents to study: the preset's, or the five new ones and then the control."""
    docs = list(config.documents) or [*world.post_cutoff_doc_ids, world.control_doc_id]
    for doc_id in docs:
        article_of(world, doc_id)
    return docs


def world_training_sets(world, doc_ids: Sequence[str], tokenizer, config: InjectionConfig) -> dict[tuple, QASets]:
    """``{(doc_id, rule, seed): QASets}``: the token-based sets are redrawn per seed; the
    fact-based ones take the same paraphrases for every seed (only training is reseeded)."""
    sets = {}
    for doc_id in doc_ids:
        facts = fact_based_sets(
            world, doc_id, config.scales, per_fact_max=max(10, max(config.scales)), tokenizer=tokenizer
        )
        for seed in config.seeds:
            sets[(doc_id, "token", seed)] = token_based_sets(world, doc_id, tokenizer, config.scales, seed=seed)
            sets[(doc_id, "fact", seed)] = facts
    return sets


def grid_jobs(
    base: str,
    config: InjectionConfig,
    training_sets: Mapping[tuple, QASets],
    evaluation: Mapping[str, QASets],
    control_doc_id: str | None,
) -> list[dict]:
    """One job per (document, rule, seed, scale). Each adapter answers its document's two
    evaluation sets and, for a new document, the control's fact-based set (does injecting
    new knowledge disturb what the model knew?)."""
    control = question_items(evaluation[control_doc_id]["fact"]) if control_doc_id in evaluation else None
    jobs = []
    for (doc_id, rule, seed), sets in training_sets.items():
        eval_items = {name: question_items(evaluation[doc_id][name]) for name in RULES}
        if control is not None and doc_id != control_doc_id:
            eval_items["control"] = control
        for scale in config.scales:
            jobs.append(adapter_job(base, config, sets[scale], eval_items, seed, doc_id=doc_id, rule=rule, scale=scale))
    return jobs


def adapter_rows(results: Sequence[Mapping[str, Any]], jobs: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Scored rows of every adapter's answers (``method`` is the training rule)."""
    rows = []
    for res, job in zip(results, jobs):
        t = job["tags"]
        for name, items in job["eval_items"].items():
            rows += score_rows(
                items,
                res["answers"][name],
                doc_id=t["doc_id"],
                method=t["rule"],
                scale=t["scale"],
                seed=t["seed"],
                eval=name,
                train_pairs=t["pairs"],
                train_tokens=t["tokens"],
            )
    return rows


def baseline_rows(base: str, config: InjectionConfig, evaluation: Mapping[str, QASets], index) -> list[dict]:
    """The original model closed-book and with RAG (``index``: a
    :class:`kilib.lm.retrieval.SectionIndex` over every studied document's sections, top
    ``config.rag_k`` passages in the prompt), on every document's two evaluation sets."""
    item_sets, tags = {}, {}
    for doc_id, sets in evaluation.items():
        for name in RULES:
            pairs = sets[name]
            hits = index.search([p["question"] for p in pairs], k=config.rag_k)
            item_sets[f"original/{doc_id}/{name}"] = question_items(pairs)
            item_sets[f"rag/{doc_id}/{name}"] = question_items(pairs, [[index.passages[i] for i in h] for h in hits])
            for method in ("original", "rag"):
                tags[f"{method}/{doc_id}/{name}"] = dict(doc_id=doc_id, method=method, eval=name)
    answers = base_answers(base, config, item_sets)
    rows = []
    for name, items in item_sets.items():
        rows += score_rows(
            items, answers[name], scale=0, seed=config.seeds[0], train_pairs=0, train_tokens=0, **tags[name]
        )
    return rows


@dataclass
class StudyInputs:
    """What notebook 01 trains and asks, whichever profile made it: the trainee, the
    documents as section rows, the atomic facts of each document (for Fig 2), the training
    sets ``{(doc_id, rule, seed): QASets}`` and the evaluation sets ``{doc_id: QASets}``."""

    base: str  # the trainee: a model folder or a Hub id
    tokenizer: Any
    doc_ids: list[str]
    control_doc_id: str | None
    titles: dict[str, str]
    sections: list[dict]  # rows with doc_id, title, section, text
    facts: dict[str, list[str]]  # doc_id -> fact ids, in document order
    training_sets: dict[tuple, QASets]
    evaluation: dict[str, QASets]
    source: str  # one line on where the documents and the Q&A came from


def tiny_inputs(config: InjectionConfig, world_seed: int = 0) -> StudyInputs:
    """The tiny (or smoke) study: the generated world's five post-cutoff articles and its
    control, Q&A by rule from the world's paraphrases, a pretrained member of the zoo
    ``config.zoo`` as trainee."""
    zoo_config = dataclasses.replace(zoo.zoo_config(config.zoo), world_seed=world_seed)
    world = zoo.world_of(zoo_config)
    names = [m.name for m in zoo_config.models]
    if config.model not in names:
        raise KilibError(
            f"no zoo model {config.model!r}: choose one of {', '.join(names)}; to train a Hub model or "
            "a folder, also set DOCUMENTS (a folder, or paper) and GENERATOR"
        )
    base = str(zoo.model_dir(zoo_config, config.model))
    tokenizer = AutoTokenizer.from_pretrained(base)
    doc_ids = study_documents(world, config)
    return StudyInputs(
        base=base,
        tokenizer=tokenizer,
        doc_ids=doc_ids,
        control_doc_id=world.control_doc_id if world.control_doc_id in doc_ids else None,
        titles={d: world.articles[d].title for d in doc_ids},
        sections=world.documents(doc_ids).to_list(),
        facts={d: [f.id for f in world.facts_of(d)] for d in doc_ids},
        training_sets=world_training_sets(world, doc_ids, tokenizer, config),
        evaluation={d: eval_sets(world, d, tokenizer) for d in doc_ids},
        source=f"tiny world ({zoo_config.world_size}, seed {world_seed}), zoo model {config.model}, "
        "Q&A from the world's paraphrase templates",
    )


def study_inputs(config: InjectionConfig) -> StudyInputs:
    """The study's inputs from the tiny world (``config.corpus == "world"``, on the zoo
    ``config.zoo``), or from documents and an LLM generator."""
    if config.judge:  # a judge that cannot load should fail now, not after the adapters have trained
        if config.judge.startswith(llm.OPENAI_PREFIX):
            llm.make_generator(config.judge)._connected()  # the model name and the API key; no request is sent
        else:
            load_tokenizer(config.judge)
    if config.corpus == "world":
        if not config.zoo:  # a preset of Hub models has no generated world to read
            raise KilibError("the paper profile injects real documents: set corpus to wikipedia or a folder")
        return tiny_inputs(config)
    return llm_inputs(config)


def llm_inputs(config: InjectionConfig) -> StudyInputs:
    """The paper profile's inputs (Mecklenburg et al. §2): the six Wikipedia articles at a
    pinned revision, or a folder of your own documents; the Q&A sets written by
    ``config.generator`` by the two scaling rules (cached: a rerun asks nothing); the
    token-based pairs mapped to the generator's atomic facts by a lexical rule for Fig 2.

    Deviation: the paper seeds the token-based list with hand-written overview Q&A; none are
    written here, so the lists start with the first generated pairs."""
    if not config.generator:
        raise KilibError(
            "documents outside the tiny world need an LLM to write their Q&A: set GENERATOR to a "
            "local instruct model (Hub id or folder) or openai:<model>"
        )
    if config.judge:  # before hours of generation and training, not after
        check_judge_family(config.judge, config.generator)
    if config.model in {m.name for preset in zoo.ZOO_PRESETS.values() for m in preset.models}:
        raise KilibError(
            f"zoo model {config.model!r} knows only the tiny world: set MODEL to a Hub id or a model "
            "folder to inject your own documents"
        )
    docs = documents.load_documents("paper" if config.corpus in ("wikipedia", "paper") else config.corpus)
    if config.sections:  # the first sections of each document only (the stand-in profile's cut)
        docs = documents.Documents([r for d in docs.doc_ids() for r in docs.of(d)[: config.sections]], docs.sources)
    doc_ids = list(config.documents) or docs.doc_ids()
    unknown = [d for d in doc_ids if d not in docs.doc_ids()]
    if unknown:
        raise KilibError(f"unknown document(s) {', '.join(unknown)}: choose among {', '.join(docs.doc_ids())}")
    tokenizer = load_tokenizer(config.model, revision=config.revision)
    # random-weight stand-ins cannot follow the generation prompts: a stand-in run's Q&A comes from
    # kilib.standin's writer, in the generator's reply format (docs/standins.md)
    generator = StandinWriter(config.generator) if switch.scale() else llm.make_generator(config.generator)
    training, evaluation, facts = {}, {}, {}
    try:
        for doc_id in doc_ids:
            rows = docs.of(doc_id)
            token = qa.generate_token_based(generator, rows, tokenizer, config.scales, doc_id=doc_id)
            fact_list = qa.list_atomic_facts(generator, rows, doc_id=doc_id)
            fact = qa.generate_fact_based(generator, fact_list, scales=config.scales, tokenizer=tokenizer)
            evaluation[doc_id] = qa.generate_eval_sets(
                generator, rows, tokenizer, fact_list, [token, fact], doc_id=doc_id
            )
            kept = {fid for pairs in fact.values() for p in pairs for fid in p["fact_ids"]}
            facts[doc_id] = [f["fact_id"] for f in fact_list if f["fact_id"] in kept]
            mapped = QASets(
                {
                    s: qa.map_pairs_to_facts(token[s], [f for f in fact_list if f["fact_id"] in kept])
                    for s in config.scales
                },
                rule="token",
                doc_id=doc_id,
                section_tokens=token.section_tokens,
                shortfalls=token.shortfalls,
            )
            for seed in config.seeds:
                training[(doc_id, "token", seed)] = mapped
                training[(doc_id, "fact", seed)] = fact
    finally:
        if hasattr(generator, "close"):
            generator.close()
    control = [d for d in doc_ids if docs.sources.get(d, {}).get("post_cutoff") is False]  # the 2018 World Cup
    return StudyInputs(
        base=config.model,
        tokenizer=tokenizer,
        doc_ids=doc_ids,
        control_doc_id=next((d for d in control if d in doc_ids), None),
        titles={d: docs.of(d)[0]["title"] for d in doc_ids},
        sections=[r for d in doc_ids for r in docs.of(d)],
        facts=facts,
        training_sets=training,
        evaluation=evaluation,
        source=f"{config.corpus} documents, Q&A by {generator.name}",
    )
