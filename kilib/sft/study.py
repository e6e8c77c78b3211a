"""Q&A data for SFT knowledge injection: token-based vs fact-based scaling (methods.md §1).

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

import dataclasses
import random
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kilib.lm.training import TrainConfig
from kilib.runtime import KilibError

__all__ = [
    "QASets",
    "section_tokens",
    "overview_seed_pairs",
    "token_based_sets",
    "fact_based_sets",
    "eval_sets",
    "fact_coverage",
    "coverage_summary",
    "budget_report",
    "questions_of",
    "InjectionConfig",
    "INJECTION_PRESETS",
    "adapter_job",
    "train_and_answer",
    "run_adapter_jobs",
    "base_answers",
    "score_rows",
    "accuracy_table",
    "paper_claims",
    "compare",
    "study_documents",
    "world_training_sets",
    "grid_jobs",
    "adapter_rows",
    "baseline_rows",
    "question_key",
    "coverage_figure",
    "StudyInputs",
    "tiny_inputs",
    "RULES",
    "TokenCounter",
    "check_scales",
    "scale_token_sets",
    "study_inputs",
    "llm_inputs",
    "judge_rows",
    "notebook_overrides",
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


def _article(world, doc_id: str):
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
    return {s.title: count(s.text) for s in _article(world, doc_id).sections}


def overview_seed_pairs(world, doc_id: str, tokenizer) -> list[dict]:
    """The pairs that seed the token-based list, Mecklenburg et al. §2 ("Token-based
    scaling": hand-written Q&A from the overview section). Tiny profile: the first train
    paraphrase of every fact the overview section states, in the order it states them."""
    count = tokenizer if isinstance(tokenizer, TokenCounter) else TokenCounter(tokenizer)
    overview = _overview(_article(world, doc_id))
    pairs = []
    for fid in overview.fact_ids:
        questions = world.questions(fid, "train")
        if not questions:
            raise KilibError(f"fact {fid!r} has no train question to seed the overview with")
        pairs.append(_pair(world, fid, questions[0], overview.title, count, "overview_seed"))
    return pairs


def _draw_sections(
    world, doc_id: str, count: TokenCounter, split: str, scales: tuple[int, ...], rng: random.Random, used: set[str]
) -> tuple[dict[str, list[dict]], dict[str, int]]:
    """Per section, salience-weighted draws of unique questions until the drawn pairs' tokens
    first exceed ``max(scales) * T`` or the section's unused questions run out.

    ``used`` holds the document's questions so far (membership only, never iterated); each
    fact's unused questions are kept as a list in paraphrase order, so the draw is a function
    of ``rng`` alone."""
    article = _article(world, doc_id)
    budget_scale = max(scales)
    t_of = section_tokens(world, doc_id, count)
    remaining: dict[str, list[str]] = {}
    drawn: dict[str, list[dict]] = {}
    for section in article.sections:
        for fid in section.fact_ids:
            if fid not in remaining:
                remaining[fid] = [q for q in world.questions(fid, split) if q not in used]
        budget = budget_scale * t_of[section.title]
        pairs: list[dict] = []
        total = 0
        while total <= budget:
            live = [fid for fid in section.fact_ids if remaining[fid]]
            if not live:
                break  # a shortfall: the caller records it
            fid = rng.choices(live, weights=[world.facts[f].salience for f in live])[0]
            question = remaining[fid].pop(rng.randrange(len(remaining[fid])))
            if question in used:  # another fact asks it in the same words: never twice
                continue
            used.add(question)
            pairs.append(_pair(world, fid, question, section.title, count, "generated"))
            total += pairs[-1]["tokens"]
        drawn[section.title] = pairs
    return drawn, t_of


def _prefix(pairs: list[dict], budget: int) -> tuple[list[dict], bool]:
    """The pairs in draw order until their tokens first exceed ``budget``; and whether they do."""
    total = 0
    for i, pair in enumerate(pairs):
        total += pair["tokens"]
        if total > budget:
            return pairs[: i + 1], True
    return list(pairs), False


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
            taken, exceeded = _prefix(section_pairs, s * t_of[title])
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
    _article(world, doc_id)
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
    from kilib.lm.scoring import normalize_answer

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


def coverage_figure(coverage, scales: Sequence[int], titles: Mapping[str, str]):
    """Mecklenburg et al. Fig 2: pairs per fact in each token-based set (one dot per fact),
    per document and scale, with the fact-based sets' constant coverage as dashed lines.
    ``coverage`` has columns ``doc_id``, ``scale`` ("1x"...), ``pairs``."""
    import seaborn as sns

    from kilib.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.5, 1.3 * coverage["doc_id"].nunique() + 2), 4))
    data = coverage.assign(document=coverage["doc_id"].map(titles))
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
    for s in scales:
        ax.axhline(s, ls="--", lw=0.8, color="grey")
    ax.set_ylabel("Q&A pairs about the fact")
    ax.set_xlabel("")
    ax.set_title("Fig 2: fact coverage of the token-based sets (dashed: fact-based, by construction)")
    ax.tick_params(axis="x", labelrotation=20)
    ax.legend(title="token-based set", frameon=False, fontsize="small")
    fig.tight_layout()
    return fig


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


# ---------------------------------------------------------------------------------------
# Training one adapter per (document, scaling rule, scale), and answering
# ---------------------------------------------------------------------------------------
RULES = ("token", "fact")  # the two scaling rules, also the names of the two evaluation sets
ADAPTER_CACHE = "sft-adapters"  # trained adapters, keyed by what they were trained on
ANSWER_CACHE = "sft-answers"  # their answers, keyed by the adapter and the questions


@dataclass(frozen=True)
class InjectionConfig:
    """Notebook 01's settings, one instance per profile (:data:`INJECTION_PRESETS`).

    Mecklenburg et al. §3 fix LoRA rank 16, batch size 1, 3 epochs and the loss on the answer
    tokens; they give no learning rate, no LoRA alpha and no retriever settings."""

    model: str = "llama-m"  # a zoo member (tiny, smoke) or a Hub id / model folder (paper)
    revision: str | None = None  # pins a Hub model's commit
    quantization: str = "4bit"  # the trainee is loaded in 4-bit NF4 in every profile (QLoRA)
    corpus: str = "world"  # "world" (the tiny world), "wikipedia" or "paper" (the paper's six articles), or a folder
    documents: tuple[str, ...] = ()  # doc ids to study; empty: all (the five new documents and the control)
    generator: str = ""  # LLM that writes the Q&A outside the tiny world: a local instruct model or openai:<model>
    judge: str = ""  # LLM judge (another model family than the generator's); "" scores lexically only
    score: str = "exact"  # the score of the figures: exact (normalised match), contains, or judge
    scales: tuple[int, ...] = DEFAULT_SCALES
    seeds: tuple[int, ...] = (0,)  # reseed LoRA and data order; the tiny world also redraws the token-based sets
    lora_r: int = 16  # Mecklenburg et al. §3
    lora_alpha: int = 16  # not given by the paper: alpha = r is a LoRA scale of 1
    # lr 3e-3 (tiny): of 3e-4, 1e-3 and 3e-3, the best mean accuracy of 10x adapters on unused
    # *train* paraphrases of two new documents (tools/sft_lr_dev.py, results/tiny/sft_lr_dev.json);
    # the evaluation questions played no part.
    train: TrainConfig = TrainConfig(
        epochs=3, batch_size=1, lr=3e-3, save_every_epoch=False, progress=False, logging_steps=10
    )
    rag_k: int = 1  # passages per RAG prompt (the zoo read one section per prompt in pretraining)
    rag_passage_words: int = 0  # 0: a passage is a section; n: long sections cut into n-word passages
    max_new_tokens: int = 16  # answers are short entities, numbers and scores
    eval_batch_size: int = 32
    workers: int = 0  # adapters trained at once: 0 picks one per CPU core on a CPU, 1 on a GPU

    def __post_init__(self) -> None:
        if self.score not in ("exact", "contains", "judge"):
            raise KilibError(f"score {self.score!r} is unknown: use exact, contains or judge")
        if self.score == "judge" and not self.judge:
            raise KilibError("score 'judge' needs a judge model: set JUDGE, or score exact or contains")


INJECTION_PRESETS = {
    "tiny": InjectionConfig(seeds=(0, 1)),
    # The smoke size: the control and one new document; the tests assert on its JSON.
    "smoke": InjectionConfig(documents=("edition_2022_otrorfer_trophy", "edition_2017_monmol_cup")),
    # A Llama-2 chat model, whose knowledge stops before the five 2023 events (methods.md §1).
    # 2e-4 is the usual QLoRA rate; the paper gives none. Epoch checkpoints let a long run resume.
    # The generator and the judge are local 4-bit instruct models of two other families (Qwen,
    # Mistral); GENERATOR="openai:<model>" uses an OpenAI-compatible endpoint instead (the paper: GPT-4).
    "paper": InjectionConfig(
        model="meta-llama/Llama-2-7b-chat-hf",
        corpus="wikipedia",
        seeds=(0,),
        rag_k=3,
        rag_passage_words=150,
        generator="Qwen/Qwen2.5-7B-Instruct",
        judge="mistralai/Mistral-7B-Instruct-v0.3",
        score="judge",
        max_new_tokens=64,
        eval_batch_size=8,
        workers=1,
        train=TrainConfig(epochs=3, batch_size=1, lr=2e-4, save_every_epoch=True, progress=True, logging_steps=20),
    ),
}


_COSMETIC = ("progress", "logging_steps", "save_every_epoch")  # change what is printed or kept, not the model


def _train_fields(config: TrainConfig, seed: int) -> dict[str, Any]:
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in _COSMETIC}
    fields["seed"] = seed
    return fields


def model_fingerprint(base: str, revision: str | None = None) -> str:
    """What identifies a trainee in a cache key: a Hub id with the commit ``revision`` resolves
    to (:func:`kilib.lm.models.model_ref`), a local folder (the zoo's included) by its path and a
    hash of its files (:func:`kilib.lm.models.folder_fingerprint`)."""
    from kilib.lm.models import folder_fingerprint, model_ref

    folder = Path(str(base)).expanduser()
    return folder_fingerprint(folder) if folder.is_dir() else model_ref(base, revision)


def _items(pairs: Iterable[dict], passages: Sequence[str] | None = None) -> list[dict]:
    """Questions to ask: closed-book prompts, or RAG prompts with ``passages`` (one list per pair)."""
    from kilib.lm.data import qa_prompt

    pairs = list(pairs)
    contexts = passages if passages is not None else [None] * len(pairs)
    return [
        {
            "question": p["question"],
            "answer": p["answer"],
            "fact_ids": list(p.get("fact_ids", [])),
            "prompt": qa_prompt(p["question"], ctx or []),
        }
        for p, ctx in zip(pairs, contexts)
    ]


def adapter_job(
    base: str,
    config: InjectionConfig,
    pairs: Sequence[dict],
    eval_items: Mapping[str, list[dict]],
    seed: int,
    **tags: Any,
) -> dict[str, Any]:
    """One adapter's work: ``train_key`` (everything the adapter depends on: trainee, LoRA and
    optimisation settings, seed, pairs) and ``answer_key`` (the adapter plus the evaluation
    prompts and decoding), each the key of its own cache, so a new evaluation set re-asks a
    trained adapter instead of retraining it; plus ``tags`` (doc_id, rule, scale...) that
    name it in tables.

    ``base`` is a model folder or a Hub id; ``pairs`` are Q&A pairs (question, answer);
    ``eval_items`` maps an evaluation-set name to :func:`_items` rows."""
    if not pairs:
        raise KilibError(f"no training pairs for {tags or 'this adapter'}: the Q&A set is empty")
    train_key = {
        "version": 2,
        "base": str(base),
        "fingerprint": model_fingerprint(base, config.revision),
        "revision": config.revision,
        "quantization": config.quantization,
        "lora": {"r": config.lora_r, "alpha": config.lora_alpha},
        "train": _train_fields(config.train, seed),
        "pairs": [{"question": p["question"], "answer": p["answer"]} for p in pairs],
    }
    answer_key = {
        "version": 1,
        "adapter": train_key,
        "eval": {name: [it["prompt"] for it in items] for name, items in eval_items.items()},
        "max_new_tokens": config.max_new_tokens,
    }
    return {
        "train_key": train_key,
        "answer_key": answer_key,
        "tags": dict(tags, seed=seed, pairs=len(pairs), tokens=sum(p.get("tokens") or 0 for p in pairs)),
        "eval_items": {k: list(v) for k, v in eval_items.items()},
        "batch_size": config.eval_batch_size,
        "checkpoints": config.train.save_every_epoch,
        "logging_steps": config.train.logging_steps,
    }


def train_and_answer(job: Mapping[str, Any]) -> tuple[Path, Path]:
    """Train one LoRA adapter on its Q&A pairs (loss on answer tokens only, 4-bit base), then
    answer its evaluation questions greedily; each step cached by its key.

    Returns the adapter folder (the adapter in the standard peft format under ``adapter/``,
    and ``train.json``: steps, losses, seconds) and the answers folder (``answers.json``)."""
    from kilib.results import cached_dir

    trained: dict[str, Any] = {}

    def build_adapter(folder: Path) -> None:
        trained["model"], trained["tokenizer"] = _train(job, folder)

    adapter = cached_dir(ADAPTER_CACHE, job["train_key"], build_adapter, resumable=job["checkpoints"])

    def build_answers(folder: Path) -> None:
        from kilib.results import write_json

        if "model" not in trained:
            trained["model"], trained["tokenizer"] = _load_adapter(job["train_key"], adapter)
        answers = {
            name: _answer(
                trained["model"], trained["tokenizer"], prompts, job["answer_key"]["max_new_tokens"], job["batch_size"]
            )
            for name, prompts in job["answer_key"]["eval"].items()
        }
        write_json(folder / "answers.json", answers)

    try:
        answers = cached_dir(ANSWER_CACHE, job["answer_key"], build_answers)
    finally:
        _release(trained)
    return adapter, answers


def _train(job: Mapping[str, Any], folder: Path):
    import dataclasses as dc
    import shutil

    from kilib.lm.data import qa_prompt
    from kilib.lm.models import attach_lora, load_causal_lm
    from kilib.lm.training import sft_dataset, train
    from kilib.results import write_json
    from kilib.runtime import set_seed

    key = job["train_key"]
    config = dc.replace(
        TrainConfig(**key["train"]),
        save_every_epoch=job["checkpoints"],
        logging_steps=job["logging_steps"],
        progress=False,
    )
    model, tokenizer = load_causal_lm(key["base"], quantization=key["quantization"], revision=key["revision"])
    set_seed(config.seed)
    model = attach_lora(model, r=key["lora"]["r"], alpha=key["lora"]["alpha"])
    rows = [{"prompt": qa_prompt(p["question"]), "answer": p["answer"]} for p in key["pairs"]]
    result = train(
        model,
        sft_dataset(tokenizer, rows, max_length=config.max_length),
        config,
        folder / "checkpoints",
        tokenizer=tokenizer,
    )
    model.save_pretrained(folder / "adapter")
    write_json(
        folder / "train.json",
        {"steps": result.steps, "train_loss": result.train_loss, "losses": result.losses, "seconds": result.seconds},
    )
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    return model, tokenizer


def _load_adapter(key: Mapping[str, Any], folder: Path):
    from kilib.lm.models import load_adapter, load_causal_lm

    model, tokenizer = load_causal_lm(key["base"], quantization=key["quantization"], revision=key["revision"])
    return load_adapter(model, folder / "adapter"), tokenizer


def _release(loaded: dict) -> None:
    """Drop a model and return its memory now: a 7B model left to the cycle collector could
    still hold the GPU when the next one loads."""
    import gc

    import torch

    loaded.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _answer(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int) -> list[str]:
    from kilib.lm.inference import generate
    from kilib.lm.training import render_prompt

    if not prompts:
        return []
    return generate(
        model,
        tokenizer,
        [render_prompt(tokenizer, p) for p in prompts],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )


def run_adapter_jobs(jobs: Sequence[Mapping[str, Any]], workers: int = 0, progress: bool = True) -> list[dict]:
    """Train and answer every job, reusing cached ones; returns each job's tags with its
    ``train.json`` (as ``train``) and answers, in the jobs' order.

    On a CPU the adapters of a grid are independent and small, so ``workers`` processes (0: one
    per usable core) train them side by side, one thread each (:func:`kilib.jobs.side_by_side`):
    on two cores this nearly halves notebook 01's wall time, where more threads inside one small
    model barely help. ``workers=0`` on a GPU runs them one by one in this process."""
    import time

    from kilib.jobs import side_by_side
    from kilib.results import cache_path, is_cached, read_json

    todo, seen = [], set()
    for job in jobs:  # two jobs with one key (a 5x set equal to the 10x) train once
        path = cache_path(ANSWER_CACHE, job["answer_key"])
        if path not in seen and not is_cached(ANSWER_CACHE, job["answer_key"]):
            todo.append(job)
        seen.add(path)
    todo.sort(key=lambda j: -len(j["train_key"]["pairs"]))  # the largest first: no long job left for the end
    start = time.time()

    def report(i: int, finished: int, _) -> None:
        if progress:
            t = todo[i]["tags"]
            r = read_json(cache_path(ADAPTER_CACHE, todo[i]["train_key"]) / "train.json")
            losses = [h["loss"] for h in r["losses"]] or [r["train_loss"]]
            print(
                f"[{finished}/{len(todo)}] {t.get('doc_id', '')} {t.get('rule', '')} {t.get('scale', '')}x seed {t['seed']}: "
                f"{r['steps']} steps, loss {losses[0]:.2f} -> {losses[-1]:.2f} ({time.time() - start:.0f} s)",
                flush=True,
            )

    side_by_side([(train_and_answer, (job,), {}) for job in todo], workers=workers, done=report)
    out = []
    for job in jobs:
        train = read_json(cache_path(ADAPTER_CACHE, job["train_key"]) / "train.json")
        answers = read_json(cache_path(ANSWER_CACHE, job["answer_key"]) / "answers.json")
        out.append(
            {
                **job["tags"],
                "folder": str(cache_path(ADAPTER_CACHE, job["train_key"])),
                "train": train,
                "answers": answers,
            }
        )
    return out


def base_answers(base: str, config: InjectionConfig, item_sets: Mapping[str, list[dict]]) -> dict[str, list[str]]:
    """The untrained model's greedy answers to each set of items (the "original" baseline,
    and RAG when the items' prompts hold retrieved passages)."""
    from kilib.lm.models import load_causal_lm

    loaded = dict(
        zip(("model", "tokenizer"), load_causal_lm(base, quantization=config.quantization, revision=config.revision))
    )
    try:
        return {
            name: _answer(
                loaded["model"],
                loaded["tokenizer"],
                [it["prompt"] for it in items],
                config.max_new_tokens,
                config.eval_batch_size,
            )
            for name, items in item_sets.items()
        }
    finally:
        _release(loaded)


# ---------------------------------------------------------------------------------------
# Scores, tables and the paper's claims
# ---------------------------------------------------------------------------------------
def score_rows(items: Sequence[dict], answers: Sequence[str], **tags: Any) -> list[dict]:
    """One row per question: the tags, the question, gold and predicted answers, and two
    deterministic scores: normalised exact match (the tiny profile's score) and normalised
    containment (the lexical score reported beside an LLM judge in the paper profile)."""
    from kilib.lm.scoring import contains_answer, exact_match

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
    import pandas as pd

    return rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))


def accuracy_table(rows, by: Sequence[str], score: str = "exact"):
    """Accuracy per group of ``by`` with a 95% bootstrap interval over *questions*: each
    question's score is first averaged over the seeds and adapters that answered it, since the
    questions, not the answers, are what was sampled (a question asked by two seeds is one
    draw, not two). Also the number of answers and the spread of the per-seed accuracies."""
    import pandas as pd

    from kilib.stats import accuracy_with_ci

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
    from kilib.stats import accuracy_with_ci, difference_ci, verdict

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
        _article(world, doc_id)
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
    control = _items(evaluation[control_doc_id]["fact"]) if control_doc_id in evaluation else None
    jobs = []
    for (doc_id, rule, seed), sets in training_sets.items():
        eval_items = {name: _items(evaluation[doc_id][name]) for name in RULES}
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
            item_sets[f"original/{doc_id}/{name}"] = _items(pairs)
            item_sets[f"rag/{doc_id}/{name}"] = _items(pairs, [[index.passages[i] for i in h] for h in hits])
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


def tiny_inputs(profile: str, config: InjectionConfig, world_seed: int = 0) -> StudyInputs:
    """The tiny (or smoke) study: the generated world's five post-cutoff articles and its
    control, Q&A by rule from the world's paraphrases, a pretrained zoo member as trainee."""
    from transformers import AutoTokenizer

    from kilib.tiny import zoo

    zoo_config = dataclasses.replace(zoo.zoo_config(profile), world_seed=world_seed)
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


def notebook_overrides(
    n_seeds: int, model: str, documents: str, generator: str, judge: str, workers: int
) -> dict[str, Any]:
    """Notebook 01's parameters as :class:`InjectionConfig` overrides; an empty or zero value
    keeps the preset's."""
    if n_seeds < 0:
        raise KilibError(f"N_SEEDS={n_seeds}: use 0 to keep the profile's seeds, or n > 0 to run seeds 0 to n-1")
    if workers < 0:
        raise KilibError(f"WORKERS={workers}: use 0 for one adapter per CPU core, or n > 0 for n side by side")
    given = {
        "seeds": tuple(range(n_seeds)),
        "model": model,
        "corpus": documents,
        "generator": generator,
        "judge": judge,
        "workers": workers,
    }
    overrides = {k: v for k, v in given.items() if v}
    if documents:  # the presets' document ids name tiny-world documents: a folder's are its own
        overrides["documents"] = ()
    return overrides


def study_inputs(profile: str, config: InjectionConfig) -> StudyInputs:
    """The study's inputs from the tiny world, or from documents and an LLM generator."""
    if config.judge:  # a judge that cannot load should fail now, not after the adapters have trained
        from kilib.lm.models import load_tokenizer
        from kilib.sft import qa_generation as qa

        if config.judge.startswith(qa.OPENAI_PREFIX):
            qa.make_generator(config.judge)._connected()  # the model name and the API key; no request is sent
        else:
            load_tokenizer(config.judge)
    if config.corpus == "world":
        if profile == "paper":
            raise KilibError("the paper profile injects real documents: set corpus to wikipedia or a folder")
        return tiny_inputs(profile, config)
    return llm_inputs(config)


def llm_inputs(config: InjectionConfig) -> StudyInputs:
    """The paper profile's inputs (Mecklenburg et al. §2): the six Wikipedia articles at a
    pinned revision, or a folder of your own documents; the Q&A sets written by
    ``config.generator`` by the two scaling rules (cached: a rerun asks nothing); the
    token-based pairs mapped to the generator's atomic facts by a lexical rule for Fig 2.

    Deviation: the paper seeds the token-based list with hand-written overview Q&A; none are
    written here, so the lists start with the first generated pairs."""
    from kilib.lm.documents import load_documents
    from kilib.lm.models import load_tokenizer
    from kilib.sft import qa_generation as qa

    if not config.generator:
        raise KilibError(
            "documents outside the tiny world need an LLM to write their Q&A: set GENERATOR to a "
            "local instruct model (Hub id or folder) or openai:<model>"
        )
    if config.judge:  # before hours of generation and training, not after
        qa.check_judge_family(config.judge, config.generator)
    from kilib.tiny.zoo import ZOO_PRESETS

    if config.model in {m.name for preset in ZOO_PRESETS.values() for m in preset.models}:
        raise KilibError(
            f"zoo model {config.model!r} knows only the tiny world: set MODEL to a Hub id or a model "
            "folder to inject your own documents"
        )
    docs = load_documents("paper" if config.corpus in ("wikipedia", "paper") else config.corpus)
    doc_ids = list(config.documents) or docs.doc_ids()
    unknown = [d for d in doc_ids if d not in docs.doc_ids()]
    if unknown:
        raise KilibError(f"unknown document(s) {', '.join(unknown)}: choose among {', '.join(docs.doc_ids())}")
    tokenizer = load_tokenizer(config.model, revision=config.revision)
    generator = qa.make_generator(config.generator)
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


def judge_rows(rows, config: InjectionConfig, qa_generator: str | None = None):
    """Add a ``judge`` score (1 or 0; an unparseable reply scores 0 and is counted) to scored rows with
    ``config.judge`` (Mecklenburg et al.'s judging is not public; methods.md §1), and return the
    rows with the judge's agreement with the lexical ``contains`` score. Each distinct
    (question, gold, answer) is judged once, and the verdicts are cached."""
    from kilib.results import cached_dir, read_json, stable_hash, write_json
    from kilib.sft import qa_generation as qa

    rows = [dict(r) for r in rows]
    triples = sorted({(r["question"], r["answer"], r["prediction"]) for r in rows})
    key = {
        "kind": "judgements",
        "version": 1,
        "judge": config.judge,
        "generator": qa_generator or config.generator,
        "prompt": qa.JUDGE_PROMPT,
        "items": stable_hash(triples),
    }

    def build(folder: Path) -> None:
        judge = qa.make_generator(config.judge, temperature=0.0, max_new_tokens=16)
        try:
            verdicts = qa.judge_answers(
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
    agreement = qa.judge_agreement(verdicts, [r["contains"] for r in rows])
    return out, dict(
        agreement, unparseable=sum(v is None for v in verdicts), judge=stored["judge"], prompt=qa.JUDGE_PROMPT
    )
