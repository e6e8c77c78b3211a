"""What the tiny zoo reads (docs/tiny-world.md, "A zoo of small models"): the pretraining
corpus made of the pre-cutoff world, and the reading stage's examples, passages about editions
no world holds (with names renamed onto this world's) and closed-book replay.

:mod:`kilib.tiny.zoo` trains on them (``config`` below is its :class:`~kilib.tiny.zoo.ZooConfig`); every
draw is seeded, so a corpus is the same each time.
"""

from __future__ import annotations

import random

from kilib.lm.data import fever_answer, fever_prompt, qa_prompt
from kilib.lm.training import render_answer, render_prompt
from kilib.runtime import KilibError
from kilib.tiny.knowledge import section_text
from kilib.tiny.world import generate_world, whole_items_pattern


def chat_example(tokenizer, prompt: str, answer: str) -> str:
    return render_prompt(tokenizer, prompt) + render_answer(tokenizer, prompt, answer)


def pretraining_claims(world, config, seed: int = 0):
    """The FEVER-like claims the zoo reads in pretraining (few-shot prompts with answers, on
    every pre-cutoff page): notebook 04 evaluates only claims outside them."""
    return world.claims(doc_ids=world.pretraining_doc_ids(), per_page=config.claims_per_page, seed=seed)


def pretraining_texts(world, tokenizer, config, seed: int = 0) -> list[str]:
    """The pre-cutoff world as documents: articles, closed-book Q&A in the chat format,
    reading comprehension with the section in context, few-shot FEVER-like claims and
    numeric arithmetic. Post-cutoff facts never appear (they are the new knowledge)."""
    rng = random.Random(seed)
    doc_ids = world.pretraining_doc_ids()
    texts = [world.articles[d].text for d in doc_ids]
    pre_facts = [world.facts[f] for f in sorted(world.facts) if world.facts[f].period == "pre"]
    for fact in pre_facts:
        questions = world.questions(fact.id, "train")
        for q in rng.sample(questions, min(config.qa_per_fact, len(questions))):
            texts.append(chat_example(tokenizer, qa_prompt(q), fact.object))
        section = section_text(world, fact)
        for q in rng.sample(questions, min(config.rc_per_fact, len(questions))):
            texts.append(chat_example(tokenizer, qa_prompt(q, [section]), fact.object))
    claims = pretraining_claims(world, config, seed).to_list()
    for i, row in enumerate(claims):
        k = rng.randint(0, 3)
        demos = [(d["claim"], d["label"]) for d in rng.sample(claims[:i] + claims[i + 1 :], k)]
        texts.append(fever_prompt(row["claim"], demos) + " " + fever_answer(row["label"]))
    for row in world.numeric_arithmetic(config.arithmetic_examples, seed=seed).to_list():
        texts.append(f"{row['prompt']} = {row['target']}")
    rng.shuffle(texts)
    return texts


def reading_examples(
    world, n: int, seed: int = 0, split: str = "train", first_world: int = 1, known_series: float = 0.0
) -> list[dict]:
    """``n`` reading-comprehension rows (prompt with the section in context, answer) about
    editions that do not exist in ``world`` (:class:`ReadingStage`).

    Each row comes from a fresh world (seeds ``world.seed + first_world``, then the next ones) whose teams,
    players, cities, venues and countries are renamed, one to one per fresh world, to a
    random entity of the same type in ``world``; series names stay fresh (but see
    ``known_series`` below), and a fact whose edition title ``world`` has too is skipped. Only
    edition facts are used (an entity page would be about one of ``world``'s entities and
    contradict it). Fresh worlds are added
    until ``n`` rows are reached, so no fact repeats. ``split="eval"`` asks with eval
    paraphrases (a development set, with ``first_world`` far from the training worlds).

    A share ``known_series`` of the fresh worlds (drawn per world) is renamed further: its
    series to ``world``'s series of the same sport, and each series' teams and players to
    that series' own, so the editions read as unseen editions of series ``world`` has."""
    if n <= 0:
        return []

    rng = random.Random(seed)
    titles = {a.title for a in world.articles.values()}
    our_names, our_series = world.entity_names, world.series
    series_names = {s["name"] for s in our_series}
    rows: list[dict] = []
    k = first_world - 1
    while len(rows) < n:
        k += 1
        fresh = generate_world(seed=world.seed + k, size=world.size, cutoff_year=world.cutoff_year)
        mapping: dict[str, str] = {}
        for kind in ("cities", "venues", "teams", "players", "countries"):
            targets = list(our_names[kind])
            rng.shuffle(targets)
            mapping.update(zip(fresh.entity_names[kind], targets))
        known = known_series > 0 and random.Random(f"known-series|{seed}|{k}").random() < known_series
        if known:
            for ours, theirs in zip(our_series, fresh.series):
                mapping[theirs["name"]] = ours["name"]
                for kind in ("teams", "players"):
                    targets = list(ours[kind])
                    rng.shuffle(targets)
                    mapping.update(zip(theirs[kind], targets))
        pattern = whole_items_pattern(mapping)

        def rename(text: str, pattern=pattern, mapping=mapping) -> str:  # this fresh world's renaming
            return pattern.sub(lambda m: mapping[m.group(0)], text)

        batch = []
        for fid in sorted(fresh.facts):
            fact = fresh.facts[fid]
            if (
                fresh.articles[fact.doc_id].kind != "edition"
                or (rename(fact.subject) if known else fact.subject) in titles
                or (not known and fact.subject.split(" ", 1)[1] in series_names)
            ):
                continue
            question = rng.choice(fresh.questions(fid, split))
            batch.append(
                {
                    "prompt": qa_prompt(rename(question), [rename(section_text(fresh, fact))]),
                    "answer": rename(fact.object),
                    "relation": fact.relation,
                }
            )
        if not batch:
            raise KilibError(f"fresh world {world.seed + k} gave no reading example: the world sizes are too small")
        rng.shuffle(batch)
        rows += batch[: n - len(rows)]
    return rows


def closed_book_examples(world, n: int, seed: int = 0) -> list[dict]:
    """``n`` closed-book rows on pre-cutoff facts with train paraphrases, cycling through the
    facts in a shuffled order (each fact as evenly often as ``n`` allows)."""
    rng = random.Random(seed)
    pre = [world.facts[f] for f in sorted(world.facts) if world.facts[f].period == "pre"]
    rows: list[dict] = []
    while len(rows) < n:
        rng.shuffle(pre)
        for fact in pre[: n - len(rows)]:
            rows.append(
                {
                    "prompt": qa_prompt(rng.choice(world.questions(fact.id, "train"))),
                    "answer": fact.object,
                    "relation": fact.relation,
                    "fact_id": fact.id,
                }
            )
    return rows
