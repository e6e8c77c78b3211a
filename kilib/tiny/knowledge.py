"""What a tiny zoo model knows (docs/tiny-world.md, "A zoo of small models"): question items
about the world's facts, closed-book or with the fact's section in context, greedy answers
scored by exact match, and the most-common-answer baseline beside them.

:func:`kilib.tiny.zoo.knowledge_report` caches :func:`measure_knowledge` per zoo member; the
studies and tools score their own items with :func:`answer_accuracy`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from kilib.lm.data import qa_prompt
from kilib.lm.inference import generate
from kilib.lm.models import load_causal_lm
from kilib.lm.scoring import exact_match
from kilib.lm.training import render_prompt
from kilib.runtime import KilibError
from kilib.stats import accuracy_with_ci


def section_text(world, fact) -> str:
    """The text of the section that states ``fact`` (the passage RAG should retrieve)."""
    for section in world.articles[fact.doc_id].sections:
        if section.title == fact.section:
            return section.text
    raise KilibError(f"fact {fact.id} names section {fact.section!r}, absent from {fact.doc_id}")


def qa_items(world, fact_ids, split: str = "eval", per_fact: int = 1, with_passage: bool = False) -> list[dict]:
    """Question items for ``fact_ids``: prompt (closed-book, or with the fact's section in
    context), gold answer, relation."""
    items = []
    for fid in fact_ids:
        fact = world.facts[fid]
        for q in world.questions(fid, split)[:per_fact]:
            passages = [section_text(world, fact)] if with_passage else []
            items.append(
                {
                    "fact_id": fid,
                    "relation": fact.relation,
                    "question": q,
                    "prompt": qa_prompt(q, passages),
                    "answer": fact.object,
                }
            )
    return items


def majority_answers(world, period: str = "pre") -> dict[str, str]:
    """Each relation's most common object among ``period`` facts (the "always give the most
    common answer" baseline)."""
    by_relation: dict[str, Counter] = {}
    for fact in world.facts.values():
        if fact.period == period:
            by_relation.setdefault(fact.relation, Counter())[fact.object] += 1
    return {rel: sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] for rel, c in by_relation.items()}


def answer_accuracy(
    model, tokenizer, items: list[dict], batch_size: int = 32, max_new_tokens: int = 12
) -> dict[str, Any]:
    """Greedy answers scored by normalised exact match, with a bootstrap interval."""
    prompts = [render_prompt(tokenizer, it["prompt"]) for it in items]
    outputs = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return accuracy_with_ci([exact_match(o, it["answer"]) for o, it in zip(outputs, items)])


def baseline_accuracy(items: list[dict], answers: dict[str, str]) -> dict[str, Any]:
    """Accuracy of answering each item with its relation's entry of ``answers`` (a baseline such
    as :func:`majority_answers`), with a bootstrap interval."""
    return accuracy_with_ci([exact_match(answers.get(it["relation"], ""), it["answer"]) for it in items])


def measure_knowledge(world, name: str, folder: Path, per_fact: int) -> dict[str, Any]:
    """What the model saved in ``folder`` (zoo member ``name``) knows of ``world``, each with a
    bootstrap interval: the measurements :func:`kilib.tiny.zoo.knowledge_report` caches."""
    model, tok = load_causal_lm(folder)
    pre = [f for f in sorted(world.facts) if world.facts[f].period == "pre"]
    control = [f.id for f in world.facts_of(world.control_doc_id)]
    post = [f.id for d in world.post_cutoff_doc_ids for f in world.facts_of(d)]
    pre_items, post_items = qa_items(world, pre, "eval", per_fact), qa_items(world, post, "eval", per_fact)
    majority = majority_answers(world, "pre")
    return {
        "model": name,
        "pre_closed_book": answer_accuracy(model, tok, pre_items),
        "pre_majority_baseline": baseline_accuracy(pre_items, majority),
        "control_closed_book": answer_accuracy(model, tok, qa_items(world, control, "eval", per_fact)),
        "post_closed_book": answer_accuracy(model, tok, post_items),
        "post_majority_baseline": baseline_accuracy(post_items, majority),
        "post_with_passage": answer_accuracy(model, tok, qa_items(world, post, "eval", per_fact, with_passage=True)),
    }
