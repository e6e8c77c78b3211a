"""The two Q&A scaling rules of SFT knowledge injection, token-based and fact-based.

See docs/methods.md, "## 01 SFT knowledge injection".

Mecklenburg et al., "Injecting New Knowledge into Large Language Models via Supervised
Fine-Tuning" (arXiv 2404.00213), §2 builds two kinds of Q&A training sets per document:

- **Token-based scaling** (§2, "Token-based scaling"): hand-written Q&A from the overview
  section seed the list; then, section by section, a generator writes unique Q&A pairs until
  their tokens exceed 10x the section's tokens. The 1x and 5x sets are subsets of 10x, per
  section (:func:`token_based_sets`).
- **Fact-based scaling** (§2, "Fact-based scaling"): the document's atomic facts each get 10
  unique Q&A pairs (a duplicate question is regenerated); 1x and 5x take 1 and 5 per fact
  (:func:`fact_based_sets`).
- **Evaluation sets** at 1x scale by the same two rules, from questions absent from training
  (:func:`eval_sets`). Fig 2 counts how many pairs touch each fact (:func:`fact_coverage`).

What the tiny profile changes: the generator is rule-based. A "generated" Q&A pair is one of the
world's question paraphrases for a fact (``World.questions``: train paraphrases for training,
the disjoint eval paraphrases for evaluation) with the fact's object as the answer, instead of a
GPT-4 completion. GPT-4 attends to a text unevenly; here each draw picks one of the section's
facts with probability proportional to its ``salience`` (how many sentences of the article
state it), which is what makes token-based coverage uneven, as in the paper's Fig 2. The paper
profile's LLM generator is meant to produce the same pair format, so training, evaluation and
the coverage figure read either.

A pair is a dict ``{"question", "answer", "fact_ids", "doc_id", "section", "tokens",
"origin"}``: ``tokens`` is the token count of the question plus that of the answer (each
encoded alone, no special tokens) and ``origin`` is ``"overview_seed"`` for the seeded pairs,
``"generated"`` otherwise. Everything is deterministic for a ``seed``: draws use
``random.Random`` seeded by a string (hashed with SHA-512, so independent of
``PYTHONHASHSEED``), and nothing iterates a set.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from kilib.lm.scoring import normalize_answer
from kilib.runtime import KilibError

__all__ = [
    "DEFAULT_SCALES",
    "QASets",
    "TokenCounter",
    "TokenBudget",
    "take_until_exceeded",
    "check_scales",
    "section_tokens",
    "overview_seed_pairs",
    "scale_token_sets",
    "token_based_sets",
    "fact_based_sets",
    "eval_sets",
    "question_key",
    "questions_of",
    "fact_coverage",
    "coverage_summary",
    "budget_report",
]

DEFAULT_SCALES = (1, 5, 10)  # the paper's 1x, 5x and 10x


class QASets(dict):
    """The Q&A sets of one document: a plain ``dict`` (scale, or eval kind, -> list of pairs)
    that also carries what the rule recorded, so a notebook can show it:

    - ``rule``: ``"token"``, ``"fact"`` or ``"eval"``;
    - ``section_tokens``: each section's token count T (title -> T; token rule only);
    - ``shortfalls``: ``{scale: {section: {"budget", "tokens", "pairs"}}}``, the sections whose
      unique questions ran out before the pairs' tokens exceeded ``scale * T``;
    - ``short_facts``: ``{scale: [fact_id, ...]}``, facts with fewer than ``scale`` unique
      questions (fact rule).
    """

    def __init__(
        self,
        data: Mapping[Any, list[dict]],
        *,
        rule: str,
        doc_id: str,
        section_tokens: dict[str, int] | None = None,
        shortfalls: dict[Any, dict[str, dict]] | None = None,
        short_facts: dict[Any, list[str]] | None = None,
    ) -> None:
        super().__init__(data)
        self.rule = rule
        self.doc_id = doc_id
        self.section_tokens = dict(section_tokens or {})
        self.shortfalls = dict(shortfalls or {})
        self.short_facts = dict(short_facts or {})


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------
class TokenCounter:
    """Token counts under any tokenizer with ``encode(text, add_special_tokens=False)``
    (every ``transformers`` tokenizer), cached per string."""

    def __init__(self, tokenizer: Any) -> None:
        if tokenizer is None or not callable(getattr(tokenizer, "encode", None)):
            raise KilibError(
                "tokenizer must have an encode() method: pass a transformers tokenizer "
                "(e.g. kilib.tiny.zoo.build_tokenizer or AutoTokenizer.from_pretrained)"
            )
        self.tokenizer = tokenizer
        self._cache: dict[str, int] = {}

    def __call__(self, text: str) -> int:
        if text not in self._cache:
            self._cache[text] = len(self.tokenizer.encode(text, add_special_tokens=False))
        return self._cache[text]


def check_scales(scales: Iterable[int]) -> tuple[int, ...]:
    """Scales as a sorted tuple of distinct positive integers, or a clear error."""
    scales = tuple(scales)
    if not scales or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in scales):
        raise KilibError(f"scales must be positive integers such as (1, 5, 10), got {scales!r}")
    if len(set(scales)) != len(scales):
        raise KilibError(f"scales must not repeat, got {scales!r}")
    return tuple(sorted(scales))


def article_of(world, doc_id: str):
    if doc_id not in world.articles:
        raise KilibError(f"unknown doc_id {doc_id!r}: use one of world.post_cutoff_doc_ids or world.control_doc_id")
    return world.articles[doc_id]


def _pair(world, fact_id: str, question: str, section: str, count: TokenCounter | None, origin: str) -> dict:
    fact = world.facts[fact_id]
    tokens = None if count is None else count(question) + count(fact.object)
    return {
        "question": question,
        "answer": fact.object,
        "fact_ids": [fact_id],
        "doc_id": fact.doc_id,
        "section": section,
        "tokens": tokens,
        "origin": origin,
    }


def _overview(article):
    """The overview section: the one titled "Overview", else the article's first section
    (person pages open with "Early life")."""
    for section in article.sections:
        if section.title == "Overview":
            return section
    return article.sections[0]


def section_tokens(world, doc_id: str, tokenizer) -> dict[str, int]:
    """Each section's token count T (title -> T, article order): the unit of the token-based
    budget, Mecklenburg et al. §2 ("until their tokens exceed 10x the section's tokens")."""
    count = tokenizer if isinstance(tokenizer, TokenCounter) else TokenCounter(tokenizer)
    return {s.title: count(s.text) for s in article_of(world, doc_id).sections}


def overview_seed_pairs(world, doc_id: str, tokenizer) -> list[dict]:
    """The pairs that seed the token-based list, Mecklenburg et al. §2 ("Token-based
    scaling": hand-written Q&A from the overview section). Tiny profile: the first train
    paraphrase of every fact the overview section states, in the order it states them."""
    count = tokenizer if isinstance(tokenizer, TokenCounter) else TokenCounter(tokenizer)
    overview = _overview(article_of(world, doc_id))
    pairs = []
    for fid in overview.fact_ids:
        questions = world.questions(fid, "train")
        if not questions:
            raise KilibError(f"fact {fid!r} has no train question to seed the overview with")
        pairs.append(_pair(world, fid, questions[0], overview.title, count, "overview_seed"))
    return pairs


class TokenBudget:
    """One section's share of a token-based set, Mecklenburg et al. §2 ("Token-based scaling"):
    pairs are taken in order until their tokens first exceed the budget ``s * T`` (T the
    section's tokens, s the scale). The pair that crosses the budget is kept; none after it."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.pairs: list[dict] = []
        self.tokens = 0

    def take(self, pair: dict) -> None:
        self.pairs.append(pair)
        self.tokens += pair["tokens"]

    @property
    def exceeded(self) -> bool:
        return self.tokens > self.budget  # tokens > s * T: the section is full


def take_until_exceeded(pairs: Iterable[dict], budget: int) -> tuple[list[dict], bool]:
    """The pairs in order until their tokens first exceed ``budget`` (:class:`TokenBudget`), and
    whether they do. ``pairs`` may be lazy: nothing past the pair that crosses is drawn."""
    taken = TokenBudget(budget)
    for pair in pairs:
        taken.take(pair)
        if taken.exceeded:
            break
    return taken.pairs, taken.exceeded


def _draws(
    world, section, count: TokenCounter, remaining: dict[str, list[str]], rng: random.Random, used: set[str]
) -> Iterator[dict]:
    """Salience-weighted draws of unique questions about the facts ``section`` states, until its
    unused questions run out (a shortfall: the caller records it)."""
    while True:
        live = [fid for fid in section.fact_ids if remaining[fid]]
        if not live:
            return
        fid = rng.choices(live, weights=[world.facts[f].salience for f in live])[0]
        question = remaining[fid].pop(rng.randrange(len(remaining[fid])))
        if question in used:  # another fact asks it in the same words: never twice
            continue
        used.add(question)
        yield _pair(world, fid, question, section.title, count, "generated")


def _draw_sections(
    world, doc_id: str, count: TokenCounter, split: str, scales: tuple[int, ...], rng: random.Random, used: set[str]
) -> tuple[dict[str, list[dict]], dict[str, int]]:
    """Per section, salience-weighted draws of unique questions until the drawn pairs' tokens
    first exceed ``max(scales) * T`` or the section's unused questions run out.

    ``used`` holds the document's questions so far (membership only, never iterated); each
    fact's unused questions are kept as a list in paraphrase order, so the draw is a function
    of ``rng`` alone."""
    article = article_of(world, doc_id)
    budget_scale = max(scales)
    t_of = section_tokens(world, doc_id, count)
    remaining: dict[str, list[str]] = {}
    drawn: dict[str, list[dict]] = {}
    for section in article.sections:
        for fid in section.fact_ids:
            if fid not in remaining:
                remaining[fid] = [q for q in world.questions(fid, split) if q not in used]
        budget = budget_scale * t_of[section.title]
        drawn[section.title], _ = take_until_exceeded(_draws(world, section, count, remaining, rng, used), budget)
    return drawn, t_of


def scale_token_sets(
    drawn: dict[str, list[dict]], t_of: dict[str, int], scales: tuple[int, ...], head: list[dict]
) -> tuple[dict[int, list[dict]], dict[int, dict[str, dict]]]:
    """The token-based sets from each section's pairs in draw order (``drawn``) and token
    counts ``t_of``: ``head`` (the overview seeds) then, per section, the prefix whose tokens
    first exceed ``scale * T``; and the sections that fell short, per scale. Shared with the
    LLM generator of the paper profile (:mod:`kilib.sft.qa_generation`)."""
    sets: dict[int, list[dict]] = {}
    shortfalls: dict[int, dict[str, dict]] = {}
    for s in scales:
        pairs = list(head)
        short: dict[str, dict] = {}
        for title, section_pairs in drawn.items():
            taken, exceeded = take_until_exceeded(section_pairs, s * t_of[title])
            pairs += taken
            if not exceeded:
                short[title] = {
                    "budget": s * t_of[title],
                    "tokens": sum(p["tokens"] for p in taken),
                    "pairs": len(taken),
                }
        sets[s] = pairs
        shortfalls[s] = short
    return sets, shortfalls


# ---------------------------------------------------------------------------------------
# The two scaling rules
# ---------------------------------------------------------------------------------------
def token_based_sets(world, doc_id: str, tokenizer, scales: Sequence[int] = DEFAULT_SCALES, seed: int = 0) -> QASets:
    """Token-based scaling, Mecklenburg et al. §2 ("Token-based scaling").

    The list starts with the overview-seeded pairs (:func:`overview_seed_pairs`; they are in
    every scale and, being hand-written in the paper, do not count against any budget). Then,
    for each section in article order, with T its token count: draw unique Q&A pairs about the
    facts the section states (train paraphrases; a question is never used twice in the
    document), each draw choosing a fact with probability proportional to its salience, until
    the drawn pairs' tokens first exceed ``max(scales) * T``. Scale s takes each section's pairs
    in draw order until their tokens first exceed ``s * T``, so 1x ⊂ 5x ⊂ 10x per section.

    Tiny profile: paraphrases instead of GPT-4 completions, salience-weighted sampling in place
    of GPT-4's uneven attention to the text. A section whose unique questions run out before
    its budget is recorded in ``.shortfalls`` (per scale) rather than padded.

    Returns a :class:`QASets`: scale -> pairs (seeds first, then sections in article order).
    """
    scales = check_scales(scales)
    count = TokenCounter(tokenizer)
    head = overview_seed_pairs(world, doc_id, count)
    used = {p["question"] for p in head}
    rng = random.Random(f"kilib.sft_scaling/token/{doc_id}/{seed}")
    drawn, t_of = _draw_sections(world, doc_id, count, "train", scales, rng, used)
    sets, shortfalls = scale_token_sets(drawn, t_of, scales, head)
    return QASets(sets, rule="token", doc_id=doc_id, section_tokens=t_of, shortfalls=shortfalls)


def _per_fact(world, doc_id: str, split: str, per_fact: int, count: TokenCounter | None) -> dict[str, list[dict]]:
    """Up to ``per_fact`` unique questions per fact, in paraphrase order; a question already
    used in the document is skipped and the next paraphrase taken (the paper regenerates)."""
    facts = world.facts_of(doc_id)
    if not facts:
        raise KilibError(f"document {doc_id!r} states no facts: pick an article with facts")
    used: set[str] = set()
    out: dict[str, list[dict]] = {}
    for fact in facts:
        pairs: list[dict] = []
        for question in world.questions(fact.id, split):
            if len(pairs) == per_fact:
                break
            if question in used:
                continue
            used.add(question)
            pairs.append(_pair(world, fact.id, question, fact.section, count, "generated"))
        if not pairs:
            raise KilibError(
                f"fact {fact.id!r} has no unique {split} question: every paraphrase repeats "
                f"another fact's; add paraphrases for relation {fact.relation!r} in kilib/tiny/world.py"
            )
        out[fact.id] = pairs
    return out


def fact_based_sets(
    world, doc_id: str, scales: Sequence[int] = DEFAULT_SCALES, per_fact_max: int = 10, tokenizer=None
) -> QASets:
    """Fact-based scaling, Mecklenburg et al. §2 ("Fact-based scaling").

    For every fact of the document (in the order the article first states it), ``per_fact_max``
    unique train paraphrases; a question already used in the document is skipped and the next
    paraphrase taken, as the paper regenerates a duplicate. Scale s is the first s pairs of
    every fact, so 1x ⊂ 5x ⊂ 10x. Each pair's section is the first section stating its fact.

    Tiny profile: the world's atomic facts stand in for GPT-4's fact list, and no fact is vague
    (the paper skips broad, unclear or off-topic ones): a fact with no question at all raises
    :class:`KilibError`; facts with fewer than s questions are listed in ``.short_facts[s]``.
    ``tokenizer`` is optional: with one, ``tokens`` is counted; without, it is ``None``.
    """
    scales = check_scales(scales)
    if isinstance(per_fact_max, bool) or not isinstance(per_fact_max, int) or per_fact_max < max(scales):
        raise KilibError(f"per_fact_max must be an integer >= the largest scale ({max(scales)}), got {per_fact_max!r}")
    article_of(world, doc_id)
    count = TokenCounter(tokenizer) if tokenizer is not None else None  # no tokenizer: tokens None
    per_fact = _per_fact(world, doc_id, "train", per_fact_max, count)
    sets = {s: [p for pairs in per_fact.values() for p in pairs[:s]] for s in scales}
    short = {s: [fid for fid, pairs in per_fact.items() if len(pairs) < s] for s in scales}
    return QASets(sets, rule="fact", doc_id=doc_id, short_facts=short)


def eval_sets(world, doc_id: str, tokenizer, seed: int = 0) -> QASets:
    """The two evaluation sets, Mecklenburg et al. §2 (1x scale; questions unique and absent
    from training): ``"token"``, per section salience-weighted draws until the pairs' tokens
    exceed 1x T, and ``"fact"``, one question per fact. Both draw from the world's **eval**
    paraphrases only, which share no question with the train ones, so no evaluation question
    is ever a training question. No overview seeds here: seeds are training data.

    Returns a :class:`QASets` with keys ``"token"`` and ``"fact"``; ``.shortfalls["token"]``
    and ``.short_facts["fact"]`` record what ran out.
    """
    count = TokenCounter(tokenizer)
    rng = random.Random(f"kilib.sft_scaling/eval/{doc_id}/{seed}")
    drawn, t_of = _draw_sections(world, doc_id, count, "eval", (1,), rng, set())
    token_sets, shortfalls = scale_token_sets(drawn, t_of, (1,), [])
    per_fact = _per_fact(world, doc_id, "eval", 1, count)
    return QASets(
        {"token": token_sets[1], "fact": [p for pairs in per_fact.values() for p in pairs]},
        rule="eval",
        doc_id=doc_id,
        section_tokens=t_of,
        shortfalls={"token": shortfalls[1]},
        short_facts={"fact": []},
    )


# ---------------------------------------------------------------------------------------
# What the sets cover
# ---------------------------------------------------------------------------------------
def question_key(question: str) -> str:
    """A question as duplicates are detected: lower-cased, punctuation and articles dropped."""
    return normalize_answer(question)


def questions_of(pairs: Iterable[dict]) -> list[str]:
    """The questions of a list of pairs, in order."""
    return [p["question"] for p in pairs]


def fact_coverage(pairs: Iterable[dict], fact_ids: Iterable[str]) -> dict[str, int]:
    """How many pairs touch each fact, every listed fact included (zeros too), in the order
    given: Mecklenburg et al. Fig 2. A pair about a fact not listed is an error (wrong
    document)."""
    counts = {fid: 0 for fid in fact_ids}
    for pair in pairs:
        for fid in pair["fact_ids"]:
            if fid not in counts:
                raise KilibError(
                    f"pair {pair['question']!r} touches fact {fid!r}, which is not listed: "
                    "pass the fact ids of the pairs' document (world.facts_of(doc_id))"
                )
            counts[fid] += 1
    return counts


def coverage_summary(counts: Mapping[str, int]) -> dict[str, float]:
    """Min, median and max of a coverage count, and max/min (inf where a fact is uncovered)."""
    if not counts:
        raise KilibError("coverage is empty: pass the counts of a document with facts")
    values = list(counts.values())
    lo, hi = min(values), max(values)
    return {"min": lo, "median": statistics.median(values), "max": hi, "max_over_min": hi / lo if lo else float("inf")}


def budget_report(sets: Mapping[int, list[dict]], section_tokens: Mapping[str, int]) -> list[dict]:
    """Per (scale, section): the generated pairs' tokens against the budget ``scale * T``.

    Rows ``{"scale", "section", "T", "budget", "pairs", "tokens", "seed_pairs", "seed_tokens",
    "exceeds", "tight"}``: ``tokens`` counts generated pairs only (the overview seeds are
    reported apart, as they sit outside the budget), ``exceeds`` is ``tokens > budget`` and
    ``tight`` says the rule stopped at the first pair that crossed it (dropping the section's
    last generated pair gives ``<= budget``). A section with ``exceeds`` false is a shortfall.
    Shows that the token-based rule of Mecklenburg et al. §2 holds."""
    rows = []
    for scale, pairs in sets.items():
        if isinstance(scale, bool) or not isinstance(scale, int):
            raise KilibError(f"budget_report needs token-based sets keyed by scale, got key {scale!r}")
        for title, t in section_tokens.items():
            mine = [p for p in pairs if p["section"] == title and p.get("origin", "generated") == "generated"]
            seeds = [p for p in pairs if p["section"] == title and p.get("origin") == "overview_seed"]
            tokens = sum(p["tokens"] for p in mine)
            budget = scale * t
            exceeds = tokens > budget
            rows.append(
                {
                    "scale": scale,
                    "section": title,
                    "T": t,
                    "budget": budget,
                    "pairs": len(mine),
                    "tokens": tokens,
                    "seed_pairs": len(seeds),
                    "seed_tokens": sum(p["tokens"] for p in seeds),
                    "exceeds": exceeds,
                    "tight": exceeds and tokens - mine[-1]["tokens"] <= budget,
                }
            )
    return rows
