"""Q&A sets written by an LLM: the paper profile of notebook 01.

Mecklenburg et al., "Injecting New Knowledge into Large Language Models via Supervised
Fine-Tuning" (arXiv 2404.00213), §2 has GPT-4 write the training data:

- **Token-based scaling** (§2, :func:`generate_token_based`): hand-written Q&A from the overview
  section seed the list; then, per section, the generator writes unique Q&A pairs until their
  tokens exceed 10x the section's tokens; 1x and 5x are per-section prefixes of 10x.
- **Fact-based scaling** (§2, :func:`list_atomic_facts`, :func:`generate_fact_based`): the
  generator lists the document's atomic facts, skipping broad, unclear or off-topic ones, then
  writes 10 unique Q&A pairs per fact (a duplicate question is regenerated); 1x and 5x take 1 and
  5 per fact.
- **Evaluation sets** (§2, :func:`generate_eval_sets`): 1x scale by each rule, every question
  absent from every training set of the document.

Judging the answers is :mod:`kilib.sft.judge`. The sets have the structure the tiny profile's
rule-based sets have (:mod:`kilib.sft.rules`, which also holds the budget rule both follow):
a :class:`~kilib.sft.rules.QASets` of pairs ``{"question", "answer", "fact_ids", "doc_id",
"section", "tokens", "origin"}``, tokens counted the same way, so training, evaluation and the
figures read either. Each generated pair also says what wrote it: ``generator``, ``revision``
and ``prompt_id`` (the prompt texts are saved beside the pairs). Token-based pairs come without
fact ids: :func:`map_pairs_to_facts` assigns them afterwards, for the coverage figure (Fig 2).

A generator is anything with ``name``, ``revision`` and ``complete(prompts) -> replies``
(:class:`kilib.lm.llm.Generator`): a local instruct model or any OpenAI-compatible endpoint
(OpenAI itself, which is how to match GPT-4, or a vLLM or Ollama server). Prompts, reply
parsing and the cache's files are :mod:`kilib.sft.qa_format`. Generated sets are expensive, so each is cached under
``<cache>/qa-sets/`` by the hash of everything that made it (document text, generator name,
revision and settings, prompt, scales, tokenizer); a cache hit loads no model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kilib.lm.llm import Generator, ask, check_generator, fill_prompt
from kilib.lm.scoring import normalize_answer, token_f1
from kilib.results import cached_dir, read_json, stable_hash, write_json
from kilib.runtime import KilibError
from kilib.sft.qa_format import (
    CACHE_VERSION,
    FACT_FIELDS,
    FACT_QA_PROMPT,
    FACTS_PROMPT,
    QA_CACHE,
    TOKEN_QA_PROMPT,
    AtomicFacts,
    GeneratedQASets,
    avoid_block,
    cached_sets,
    document_facts,
    document_rows,
    generator_identity,
    make_pair,
    new_report,
    parse_fact_lines,
    parse_qa_reply,
    positive_int,
    prompt_id_of,
    read_lines,
    tokenizer_identity,
    write_lines,
)
from kilib.sft.rules import DEFAULT_SCALES, TokenBudget, TokenCounter, check_scales, scale_token_sets

__all__ = [
    "generate_token_based",
    "list_atomic_facts",
    "generate_fact_based",
    "generate_eval_sets",
    "map_pairs_to_facts",
]


# ---------------------------------------------------------------------------------------
# The generation loops
# ---------------------------------------------------------------------------------------
def _section_pairs(
    generator,
    rows: list[dict],
    count,
    budgets: Mapping[str, int],
    used: set[str],
    prior: Mapping[str, list[str]],
    template: str,
    prompt_id: str,
    pairs_per_request: int,
    max_rounds: int,
    report: dict,
) -> dict[str, list[dict]]:
    """Per section, rounds of requests for ``pairs_per_request`` new pairs until the kept pairs'
    tokens first exceed the section's budget (:class:`kilib.sft.rules.TokenBudget`), or
    ``max_rounds`` requests were made. One request
    per unfinished section per round, sent together; replies are read in section order. A pair
    whose normalised question is in ``used`` (the document's questions so far, and whatever
    must be avoided) is dropped; every kept question joins ``used``."""
    taken = {r["section"]: TokenBudget(budgets[r["section"]]) for r in rows}
    rounds = dict.fromkeys(taken, 0)
    open_rows = list(rows)
    while open_rows:
        prompts = []
        for r in open_rows:
            asked = list(prior.get(r["section"], [])) + [p["question"] for p in taken[r["section"]].pairs]
            prompts.append(
                fill_prompt(
                    template,
                    title=r["title"],
                    section=r["section"],
                    text=r["text"],
                    n=pairs_per_request,
                    avoid=avoid_block(asked),
                )
            )
        replies = ask(generator, prompts)
        report["requests"] += len(prompts)
        for row, reply in zip(open_rows, replies):
            name = row["section"]
            rounds[name] += 1
            pairs, malformed = parse_qa_reply(reply)
            report["malformed_lines"] += malformed
            for question, answer in pairs:
                if taken[name].exceeded:
                    break
                key = normalize_answer(question)
                if not key or key in used:
                    report["duplicate_questions"] += 1
                    continue
                used.add(key)
                taken[name].take(
                    make_pair(
                        question,
                        answer,
                        doc_id=row["doc_id"],
                        section=name,
                        fact_ids=[],
                        count=count,
                        origin="generated",
                        generator=generator,
                        prompt_id=prompt_id,
                    )
                )
        open_rows = [r for r in open_rows if not taken[r["section"]].exceeded and rounds[r["section"]] < max_rounds]
    report["rounds"] = {**report.get("rounds", {}), **rounds}
    return {name: budget.pairs for name, budget in taken.items()}


def _fact_pairs(
    generator,
    facts: list[dict],
    per_fact: int,
    count,
    used: set[str],
    prior: Mapping[str, list[str]],
    template: str,
    prompt_id: str,
    max_rounds: int,
    report: dict,
) -> tuple[dict[str, list[dict]], list[str]]:
    """Per fact, requests for the pairs still missing until it has ``per_fact`` unique ones, or
    ``max_rounds`` requests were made (then it is skipped). Duplicates as in :func:`_section_pairs`."""
    got: dict[str, list[dict]] = {f["fact_id"]: [] for f in facts}
    rounds = dict.fromkeys(got, 0)
    open_facts = list(facts)
    while open_facts:
        prompts = []
        for f in open_facts:
            asked = list(prior.get(f["fact_id"], [])) + [p["question"] for p in got[f["fact_id"]]]
            prompts.append(
                fill_prompt(
                    template,
                    title=f.get("title") or f["doc_id"],
                    fact=f["text"],
                    n=per_fact - len(got[f["fact_id"]]),
                    avoid=avoid_block(asked),
                )
            )
        replies = ask(generator, prompts)
        report["requests"] += len(prompts)
        for fact, reply in zip(open_facts, replies):
            fid = fact["fact_id"]
            rounds[fid] += 1
            pairs, malformed = parse_qa_reply(reply)
            report["malformed_lines"] += malformed
            for question, answer in pairs:
                if len(got[fid]) == per_fact:
                    break
                key = normalize_answer(question)
                if not key or key in used:
                    report["duplicate_questions"] += 1
                    continue
                used.add(key)
                got[fid].append(
                    make_pair(
                        question,
                        answer,
                        doc_id=fact["doc_id"],
                        section=fact["section"],
                        fact_ids=[fid],
                        count=count,
                        origin="generated",
                        generator=generator,
                        prompt_id=prompt_id,
                    )
                )
        open_facts = [f for f in open_facts if len(got[f["fact_id"]]) < per_fact and rounds[f["fact_id"]] < max_rounds]
    report["regenerations"] = report.get("regenerations", 0) + sum(r - 1 for r in rounds.values())
    skipped = [fid for fid, pairs in got.items() if len(pairs) < per_fact]
    return {fid: pairs for fid, pairs in got.items() if len(pairs) == per_fact}, skipped


def generate_token_based(
    generator: Generator,
    sections_rows: Iterable[Mapping[str, Any]],
    tokenizer,
    scales: Sequence[int] = DEFAULT_SCALES,
    overview_pairs: Iterable[Mapping[str, Any]] = (),
    *,
    doc_id: str | None = None,
    max_rounds: int = 100,
    pairs_per_request: int = 10,
    prompt: str = TOKEN_QA_PROMPT,
    cache: bool = True,
) -> GeneratedQASets:
    """Token-based scaling by an LLM, Mecklenburg et al. §2 ("Token-based scaling").

    ``overview_pairs`` (hand-written Q&A about the overview section, ``{"question", "answer"}``)
    open every scale and sit outside every budget, as in the tiny profile. Then, for each
    section with T its token count under ``tokenizer`` (question and answer each encoded alone,
    no special tokens, as :mod:`kilib.sft.rules` counts): the generator is asked for
    ``pairs_per_request`` pairs at a time (JSON lines, :data:`TOKEN_QA_PROMPT`, the section's
    latest questions listed to avoid); malformed lines are skipped and a question whose
    normalised form (:func:`kilib.lm.scoring.normalize_answer`) the document already has is
    dropped; requests repeat until the kept pairs' tokens first exceed ``max(scales) * T``.
    Scale s takes each section's pairs in order until their tokens first exceed ``s * T``, so
    1x ⊂ 5x ⊂ 10x per section. A section still under budget after ``max_rounds`` requests is
    recorded in ``.shortfalls``. ``fact_ids`` stay empty (:func:`map_pairs_to_facts` fills them).

    ``sections_rows``: rows of :mod:`kilib.lm.documents` (``doc_id`` picks one document where they
    hold several). Cached by document text, generator, prompt, scales and tokenizer.
    Returns a :class:`GeneratedQASets`, rule ``"token"``: scale -> pairs, seeds first.
    """
    check_generator(generator)
    scales = check_scales(scales)
    positive_int("max_rounds", max_rounds)
    positive_int("pairs_per_request", pairs_per_request)
    doc_id, rows = document_rows(sections_rows, doc_id)
    count = TokenCounter(tokenizer)
    t_of = {r["section"]: count(r["text"]) for r in rows}
    overview = next((r["section"] for r in rows if r["section"] == "Overview"), rows[0]["section"])
    seeds = [dict(p) for p in overview_pairs]
    for i, seed in enumerate(seeds):
        if not str(seed.get("question", "")).strip() or not str(seed.get("answer", "")).strip():
            raise KilibError(f"overview pair {i} needs a non-empty question and answer")
    prompt_id = prompt_id_of("token_qa", prompt)
    key = {
        "kind": "token",
        "doc_id": doc_id,
        "sections": stable_hash(rows),
        "section_tokens": t_of,
        "seeds": stable_hash(seeds),
        "generator": generator_identity(generator),
        "prompt": prompt,
        "scales": scales,
        "max_rounds": max_rounds,
        "pairs_per_request": pairs_per_request,
        "tokenizer": tokenizer_identity(tokenizer),
    }

    def make() -> GeneratedQASets:
        head, used = [], set()
        for seed in seeds:
            question, answer = " ".join(str(seed["question"]).split()), " ".join(str(seed["answer"]).split())
            norm = normalize_answer(question)
            if norm in used:
                raise KilibError(
                    f"overview pair question {question!r} repeats another: make the hand-written questions unique"
                )
            used.add(norm)
            head.append(
                make_pair(
                    question,
                    answer,
                    doc_id=doc_id,
                    section=seed.get("section") or overview,
                    fact_ids=list(seed.get("fact_ids") or []),
                    count=count,
                    origin="overview_seed",
                    generator=None,
                    prompt_id=None,
                )
            )
        report = new_report()
        budgets = {name: max(scales) * t for name, t in t_of.items()}
        drawn = _section_pairs(
            generator, rows, count, budgets, used, {}, prompt, prompt_id, pairs_per_request, max_rounds, report
        )
        sets, shortfalls = scale_token_sets(drawn, t_of, scales, head)
        if not sets[max(scales)]:
            raise KilibError(
                f"the generator {generator.name!r} wrote no usable Q&A pair for {doc_id!r}: check its "
                "replies (they must be JSON lines with question and answer)"
            )
        report["pairs"] = {name: len(pairs) for name, pairs in drawn.items()}
        return GeneratedQASets(
            sets, rule="token", doc_id=doc_id, section_tokens=t_of, shortfalls=shortfalls, report=report
        )

    return cached_sets(key, make, {prompt_id: prompt}, cache)


def list_atomic_facts(
    generator: Generator,
    sections_rows: Iterable[Mapping[str, Any]],
    *,
    doc_id: str | None = None,
    prompt: str = FACTS_PROMPT,
    cache: bool = True,
) -> AtomicFacts:
    """A document's atomic facts, Mecklenburg et al. §2 ("Fact-based scaling": the generator
    lists the document's atomic facts; too broad, unclear or off-topic ones are skipped).

    One request per section (:data:`FACTS_PROMPT`): one fact per line, the vague or off-topic
    ones marked ``SKIP:`` by the generator and kept apart in ``.skipped``. Facts are deduplicated
    across the document by their normalised text and numbered in the order the sections state
    them (``<doc_id>.fact000``...). Cached as ``facts.jsonl`` (with the prompt beside it) by
    document text, generator and prompt.
    """
    check_generator(generator)
    doc_id, rows = document_rows(sections_rows, doc_id)
    prompt_id = prompt_id_of("atomic_facts", prompt)

    def make() -> AtomicFacts:
        replies = ask(
            generator, [fill_prompt(prompt, title=r["title"], section=r["section"], text=r["text"]) for r in rows]
        )
        report = {"requests": len(rows), "malformed_lines": 0, "duplicate_facts": 0}
        facts, skipped, seen = [], [], set()
        for row, reply in zip(rows, replies):
            listed, marked, malformed = parse_fact_lines(reply)
            report["malformed_lines"] += malformed
            skipped += [{"section": row["section"], "text": t} for t in marked]
            for text in listed:
                norm = normalize_answer(text)
                if norm in seen:
                    report["duplicate_facts"] += 1
                    continue
                seen.add(norm)
                facts.append(
                    {
                        "fact_id": f"{doc_id}.fact{len(facts):03d}",
                        "doc_id": doc_id,
                        "title": row["title"],
                        "section": row["section"],
                        "text": text,
                        "generator": generator.name,
                        "revision": generator.revision,
                        "prompt_id": prompt_id,
                    }
                )
        if not facts:
            raise KilibError(
                f"the generator {generator.name!r} listed no atomic fact for {doc_id!r}: check its replies "
                "(one fact per line)"
            )
        return AtomicFacts(facts, skipped, report)

    if not cache:
        return make()

    def build(folder: Path) -> None:
        facts = make()
        write_lines(folder / "facts.jsonl", facts)
        write_json(folder / "prompts.json", {prompt_id: prompt})
        write_json(folder / "facts.json", {"skipped": facts.skipped, "report": facts.report})

    key = {
        "version": CACHE_VERSION,
        "kind": "facts",
        "doc_id": doc_id,
        "sections": stable_hash(rows),
        "generator": generator_identity(generator),
        "prompt": prompt,
    }
    folder = cached_dir(QA_CACHE, key, build)
    meta = read_json(folder / "facts.json")
    return AtomicFacts(read_lines(folder / "facts.jsonl"), meta["skipped"], meta["report"])


def generate_fact_based(
    generator: Generator,
    facts: Iterable[Mapping[str, Any]],
    per_fact: int = 10,
    scales: Sequence[int] = DEFAULT_SCALES,
    *,
    tokenizer=None,
    max_rounds: int = 5,
    prompt: str = FACT_QA_PROMPT,
    cache: bool = True,
) -> GeneratedQASets:
    """Fact-based scaling by an LLM, Mecklenburg et al. §2 ("Fact-based scaling").

    For every fact (one document's, from :func:`list_atomic_facts`), the generator is asked for
    ``per_fact`` Q&A pairs (:data:`FACT_QA_PROMPT`); a malformed line or a question the
    document already has (normalised) is dropped and the missing pairs are asked for again,
    up to ``max_rounds`` requests per fact. A fact that still has fewer than ``per_fact``
    unique pairs is skipped entirely (``.report["skipped_facts"]``), so every scale covers the
    same facts evenly. Scale s is the first s pairs of every kept fact: 1x ⊂ 5x ⊂ 10x.
    ``tokenizer`` is optional: with one, ``tokens`` is counted; without, it is None.

    Returns a :class:`GeneratedQASets`, rule ``"fact"``: scale -> pairs, facts in order.
    """
    check_generator(generator)
    scales = check_scales(scales)
    positive_int("per_fact", per_fact)
    positive_int("max_rounds", max_rounds)
    if per_fact < max(scales):
        raise KilibError(f"per_fact must be at least the largest scale ({max(scales)}), got {per_fact}")
    doc_id, facts = document_facts(facts)
    count = TokenCounter(tokenizer) if tokenizer is not None else None
    prompt_id = prompt_id_of("fact_qa", prompt)
    key = {
        "kind": "fact",
        "doc_id": doc_id,
        "facts": stable_hash([{k: f[k] for k in FACT_FIELDS} for f in facts]),
        "generator": generator_identity(generator),
        "prompt": prompt,
        "per_fact": per_fact,
        "scales": scales,
        "max_rounds": max_rounds,
        "tokenizer": tokenizer_identity(tokenizer),
    }

    def make() -> GeneratedQASets:
        report = new_report()
        kept, skipped = _fact_pairs(generator, facts, per_fact, count, set(), {}, prompt, prompt_id, max_rounds, report)
        if not kept:
            raise KilibError(
                f"no fact of {doc_id!r} got {per_fact} unique Q&A pairs in {max_rounds} requests: raise "
                "max_rounds, or check the generator's replies"
            )
        report["skipped_facts"] = skipped
        report["kept_facts"] = list(kept)
        sets = {s: [p for pairs in kept.values() for p in pairs[:s]] for s in scales}
        return GeneratedQASets(sets, rule="fact", doc_id=doc_id, short_facts={s: [] for s in scales}, report=report)

    return cached_sets(key, make, {prompt_id: prompt}, cache)


def generate_eval_sets(
    generator: Generator,
    sections_rows: Iterable[Mapping[str, Any]],
    tokenizer,
    facts: Iterable[Mapping[str, Any]],
    training_sets: Iterable[Mapping[Any, list[dict]]],
    *,
    doc_id: str | None = None,
    max_rounds: int = 20,
    pairs_per_request: int = 10,
    token_prompt: str = TOKEN_QA_PROMPT,
    fact_prompt: str = FACT_QA_PROMPT,
    cache: bool = True,
) -> GeneratedQASets:
    """The two evaluation sets, Mecklenburg et al. §2 (1x scale; questions unique and absent
    from training): ``"token"``, per section, pairs until their tokens exceed 1x T, as
    :func:`generate_token_based` writes them; ``"fact"``, one pair per fact, as
    :func:`generate_fact_based` writes them. No question of either is, once normalised, a
    question of any set in ``training_sets`` (pass both rules' training sets: Fig 4 asks the
    fact-based eval questions of the token-trained models), nor of the other eval set; the
    section's (or fact's) training questions are listed in the prompt to steer the generator
    away, and a repeat is dropped and regenerated. Where a fact-based training set is among
    ``training_sets``, only the facts it kept are asked about, so Fig 3 scores trained facts.

    Returns a :class:`GeneratedQASets`, rule ``"eval"``, keys ``"token"`` and ``"fact"``;
    ``.shortfalls["token"]`` and ``.short_facts["fact"]`` (facts with no new question) record
    what ran out.
    """
    check_generator(generator)
    positive_int("max_rounds", max_rounds)
    positive_int("pairs_per_request", pairs_per_request)
    doc_id, rows = document_rows(sections_rows, doc_id)
    fact_doc, facts = document_facts(facts)
    if fact_doc != doc_id:
        raise KilibError(f"the facts are about {fact_doc!r} and the sections about {doc_id!r}: pass one document's")
    training_sets = list(training_sets)
    training = [pair for sets in training_sets for pairs in sets.values() for pair in pairs]
    if not training:
        raise KilibError("no training pairs given: pass the document's token- and fact-based training sets")
    fact_sets = [sets for sets in training_sets if getattr(sets, "rule", None) == "fact"]
    if fact_sets:
        kept = {fid for sets in fact_sets for pair in sets.get(max(sets)) for fid in pair["fact_ids"]}
        facts = [f for f in facts if f["fact_id"] in kept]
        if not facts:
            raise KilibError("no fact has pairs in the fact-based training set: pass the facts it was generated from")
    count = TokenCounter(tokenizer)
    t_of = {r["section"]: count(r["text"]) for r in rows}
    token_id, fact_id = prompt_id_of("token_qa", token_prompt), prompt_id_of("fact_qa", fact_prompt)
    key = {
        "kind": "eval",
        "doc_id": doc_id,
        "sections": stable_hash(rows),
        "section_tokens": t_of,
        "facts": stable_hash([{k: f[k] for k in FACT_FIELDS} for f in facts]),
        "training_questions": stable_hash(sorted({normalize_answer(p["question"]) for p in training})),
        "generator": generator_identity(generator),
        "prompts": [token_prompt, fact_prompt],
        "max_rounds": max_rounds,
        "pairs_per_request": pairs_per_request,
        "tokenizer": tokenizer_identity(tokenizer),
    }

    def make() -> GeneratedQASets:
        used = {normalize_answer(p["question"]) for p in training}
        by_section: dict[str, list[str]] = {}
        by_fact: dict[str, list[str]] = {}
        for pair in training:
            by_section.setdefault(pair.get("section"), []).append(pair["question"])
            for fid in pair.get("fact_ids") or []:
                by_fact.setdefault(fid, []).append(pair["question"])
        report = new_report()
        drawn = _section_pairs(
            generator,
            rows,
            count,
            t_of,
            used,
            by_section,
            token_prompt,
            token_id,
            pairs_per_request,
            max_rounds,
            report,
        )
        token_sets, shortfalls = scale_token_sets(drawn, t_of, (1,), [])
        per_fact, short = _fact_pairs(
            generator, facts, 1, count, used, by_fact, fact_prompt, fact_id, max_rounds, report
        )
        data = {"token": token_sets[1], "fact": [p for pairs in per_fact.values() for p in pairs]}
        empty = [name for name, pairs in data.items() if not pairs]
        if empty:  # nothing to score: better said here than as missing bars hours later
            raise KilibError(
                f"the {' and '.join(empty)} evaluation set of {doc_id!r} came out empty (every reply "
                "repeated a training question or was malformed): raise max_rounds or use another generator"
            )
        return GeneratedQASets(
            data,
            rule="eval",
            doc_id=doc_id,
            section_tokens=t_of,
            shortfalls={"token": shortfalls[1]},
            short_facts={"fact": short},
            report=report,
        )

    return cached_sets(key, make, {token_id: token_prompt, fact_id: fact_prompt}, cache)


# ---------------------------------------------------------------------------------------
# Which fact a pair asks about (Fig 2)
# ---------------------------------------------------------------------------------------
def map_pairs_to_facts(
    pairs: Iterable[Mapping[str, Any]], facts: Iterable[Mapping[str, Any]], min_f1: float = 0.3
) -> list[dict]:
    """Copies of ``pairs`` with ``fact_ids`` set to the one fact each asks about, for the
    coverage figure (Mecklenburg et al. Fig 2: how many token-based pairs touch each fact).

    The rule is lexical: the fact of the pair's document whose statement has the highest SQuAD
    token F1 (:func:`kilib.lm.scoring.token_f1`, on normalised words) with the pair's question
    and answer joined, provided that F1 is at least ``min_f1``; ties go to the fact listed
    first, and a pair below ``min_f1`` for every fact gets no fact (``[]``). A pair restates
    its fact in other words, so shared names, numbers and dates carry the match; 0.3 keeps
    the pairs that share the fact's key words and drops those about something the fact list
    left out. It is a heuristic: report it as one."""
    if not 0.0 <= float(min_f1) <= 1.0:
        raise KilibError(f"min_f1 must lie in [0, 1], got {min_f1!r}")
    facts = [dict(f) for f in facts]
    for i, fact in enumerate(facts):
        if "fact_id" not in fact or "text" not in fact:
            raise KilibError(f"fact {i} lacks fact_id or text: pass the facts list_atomic_facts returns")
    out = []
    for pair in pairs:
        pair = dict(pair)
        text = f"{pair['question']} {pair['answer']}"
        candidates = [f for f in facts if pair.get("doc_id") is None or f.get("doc_id") in (None, pair.get("doc_id"))]
        best, best_f1 = None, -1.0
        for fact in candidates:
            f1 = token_f1(text, fact["text"])
            if f1 > best_f1:
                best, best_f1 = fact, f1
        pair["fact_ids"] = [best["fact_id"]] if best is not None and best_f1 >= float(min_f1) else []
        out.append(pair)
    return out
