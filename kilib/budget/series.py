"""The paper series' stages at their real shapes and full counts (notebooks 01-04), and their budget.

Each stage is a :class:`~kilib.budget.estimate.Work`: which model, the batch and row length the
paper preset runs it at, and how many units the full run takes. What the presets fix is read from
them (models, batch sizes, epochs, sample counts, new tokens); what only the data can tell (how
long an article, a Q&A pair or an SNI example is; how many atomic facts the articles hold) is in
:class:`Counts`, each figure with where it comes from. :func:`budget` puts an estimate beside every
stage; :mod:`kilib.budget.cli` writes it, with any measured figures, to ``results/budget/``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from kilib.budget.estimate import TARGET_GIB, Shape, Work, estimate, fitting_batch, paper_shape
from kilib.calm.presets import PRESETS as CALM_PRESETS
from kilib.memory.presets import MEMORY_PRESETS
from kilib.sft.presets import INJECTION_PRESETS
from kilib.sft.rules import DEFAULT_SCALES
from kilib.transfer.presets import TRANSFER_PRESETS


@dataclass(frozen=True)
class Counts:
    """What the paper's data sizes are, where no preset says (docs/budget.md explains each)."""

    article_tokens: int = 35_000  # the six articles together, Llama tokens
    articles: int = 6
    facts: int = 2_500  # atomic facts the generator lists in the six articles
    qa_tokens: int = 40  # one Q&A pair as trained (prompt and answer)
    pairs_per_request: int = 10  # Q&A pairs one generation request writes
    generation_prompt: int = 1_000  # a section and the instructions
    generation_new: int = 1_024  # the generator's reply limit; random weights always reach it
    rag_prompt: int = 700  # three 150-word passages and the question
    judge_prompt: int = 200
    judge_new: int = 16
    gsm_tokens: int = 250  # a GSM8K example in the Tulu chat format
    mmlu_tokens: int = 300  # an MMLU auxiliary_train example
    sni_tokens: int = 700  # an SNI example's mean; its tail reaches the 2,048 cut
    gsm_eval_prompt: int = 1_100  # 8 chain-of-thought demonstrations and the question
    mmlu_eval_prompt: int = 700  # 5 same-subject demonstrations and the question
    sni_eval_prompt: int = 700
    kv_tokens: int = 40  # a KV-arithmetic example (notebook 03)
    fever_claims_eval: int = 3_045  # validation claims on the kept pages (the note)
    fever_train_tokens: int = 400_000  # one memory training set: pages and claim templates, tokens
    fever_prompt: int = 160  # a one-shot FEVER prompt


SOURCES = {
    "article_tokens": "estimate of the six 2023 articles' length in Llama tokens",
    "facts": "estimate: about 70 atomic facts per 1,000 article tokens",
    "qa_tokens": "estimate: a one-sentence question and a short answer in Llama-2-chat's template",
    "pairs_per_request": "the token-based prompt asks for a list; ten pairs a reply is an estimate",
    "generation_new": "the generator's max_new_tokens",
    "fever_claims_eval": "the note: 3,045 validation claims on the 99 kept pages",
}


def _batch(preset: int | str, shape: Shape, tokens: int, new_tokens: int, also: float = 0.0) -> int:
    """A preset's batch size: as given, or for "auto" what it takes on a 24 GB card (:func:`fitting_batch`)."""
    return fitting_batch(shape, tokens, new_tokens, also=also) if preset == "auto" else int(preset)


def _notebook01(c: Counts) -> list[Work]:
    p = INJECTION_PRESETS["paper"]
    scale_sum = sum(DEFAULT_SCALES)  # 1x + 5x + 10x, one adapter each
    token_pairs = scale_sum * c.article_tokens // c.qa_tokens  # pairs until their tokens exceed s x T
    fact_pairs = scale_sum * c.facts  # s pairs per fact
    steps = (token_pairs + fact_pairs) * p.train.epochs * len(p.seeds) // p.train.batch_size
    requests = math.ceil((10 * c.article_tokens // c.qa_tokens + 10 * c.facts) / c.pairs_per_request)
    eval_questions = c.article_tokens // c.qa_tokens + c.facts  # the 1x set of each rule
    adapters = len(DEFAULT_SCALES) * 2 * len(p.seeds)  # per document: 2 rules x 3 scales
    answers = adapters * eval_questions + eval_questions  # each document's adapters, and the original model
    generator, trainee, judge = (paper_shape(m) for m in (p.generator, p.model, p.judge))

    def answering(stage: str, prompt: int, units: int, derivation: str) -> Work:
        """The trainee's generated answers to ``units`` questions of ``prompt`` tokens."""
        batch = _batch(p.eval_batch_size, trainee, prompt, p.max_new_tokens)
        return Work(
            "01",
            stage,
            p.model,
            "generate",
            batch,
            prompt,
            units,
            "answer",
            new_tokens=p.max_new_tokens,
            derivation=derivation,
        )

    return [
        Work(
            "01",
            "Q&A generation",
            p.generator,
            "generate",
            fitting_batch(generator, c.generation_prompt, c.generation_new),
            c.generation_prompt,
            requests,
            "request",
            new_tokens=c.generation_new,
            derivation=f"10x pairs of both rules ({10 * c.article_tokens // c.qa_tokens:,} + {10 * c.facts:,}) "
            f"/ {c.pairs_per_request} per request",
        ),
        Work(
            "01",
            "adapters (batch 1)",
            p.model,
            "lora-train",
            p.train.batch_size,
            c.qa_tokens,
            steps,
            "step",
            rank=p.lora_r,
            derivation=f"({token_pairs:,} token-based + {fact_pairs:,} fact-based pairs over 1x+5x+10x) "
            f"x {p.train.epochs:g} epochs",
        ),
        answering(
            "answers",
            c.qa_tokens,
            answers,
            f"{adapters} adapters per document and the original model x both 1x evaluation sets",
        ),
        answering("RAG answers", c.rag_prompt, eval_questions, "both 1x evaluation sets"),
        Work(
            "01",
            "judge",
            p.judge,
            "generate",
            fitting_batch(judge, c.judge_prompt, c.judge_new),
            c.judge_prompt,
            answers + eval_questions,
            "verdict",
            new_tokens=c.judge_new,
            derivation="every answer, RAG's included",
        ),
    ]


def _notebook02(c: Counts) -> list[Work]:
    p = TRANSFER_PRESETS["paper"]
    t = p.train
    tasks = [task for task in p.tasks if task in ("gsm", "mmlu", "sni")]
    mean_tokens = {"gsm": c.gsm_tokens, "mmlu": c.mmlu_tokens, "sni": c.sni_tokens}
    train_tokens = sum(mean_tokens[task] for task in tasks) * p.train_samples * t.epochs * len(p.methods)
    rows = t.batch_size * t.max_length  # a packed micro-batch
    cuts = [m for m in p.methods if m != "lora"]
    student = paper_shape(p.student)
    matrices = student.layers * 7 + 2  # seven linears a block, the embeddings and the head
    groups = math.ceil(student.layers / p.sensitivity_group_blocks)  # the second pass, group by group
    mmlu_batch = _batch(p.eval_batch_size, paper_shape(p.teacher), c.mmlu_eval_prompt, 0)
    evals = len(p.methods) + 2  # the methods, the untrained student and the teacher
    new = dict(p.max_new_tokens)

    def answers(stage: str, prompt: int, new_tokens: int, rows: str, note: str = "") -> Work:
        """A task's generated answers: every evaluation row of every model, at the student's size."""
        return Work(
            "02",
            stage,
            p.student,
            "generate",
            _batch(p.eval_batch_size, student, prompt, new_tokens),
            prompt,
            p.eval_samples * evals,
            "answer",
            new_tokens=new_tokens,
            derivation=f"{p.eval_samples} {rows} x {evals} models{note}",
        )

    return [
        Work(
            "02",
            "sensitivity (per sample)",
            p.teacher,
            "sensitivity",
            1,
            t.max_length,
            p.seed_samples * len(tasks) * (1 + groups),
            "sample",
            checkpointing=p.sensitivity_checkpointing,
            derivation=f"{p.seed_samples} seed samples x {len(tasks)} tasks x (1 + {groups} block groups) passes, "
            "each sample of the cut length",
        ),
        Work(
            "02",
            "SVD of cut matrices",
            p.student,
            "svd",
            1,
            0,
            matrices * len(cuts) * len(tasks),
            "matrix",
            rank=p.rank,
            derivation=f"{matrices} student matrices x {len(cuts)} cuts x {len(tasks)} tasks",
        ),
        Work(
            "02",
            "LoRA training (packed)",
            p.student,
            "lora-train",
            t.batch_size,
            t.max_length,
            math.ceil(train_tokens / rows),
            "micro-batch",
            rank=p.rank,
            lora_embeddings=True,
            checkpointing=t.gradient_checkpointing,
            derivation=f"{len(p.methods)} methods x {len(tasks)} tasks x {p.train_samples} samples x {t.epochs:g} "
            f"epochs, {train_tokens:,} tokens, counted in units of {t.batch_size} x {t.max_length} (a micro-batch "
            f"packs {t.batch_size} examples into rows of at most {t.max_length} tokens; its memory is that bound's)",
        ),
        answers(
            "GSM8K answers",
            c.gsm_eval_prompt,
            new["gsm"],
            "questions",
            " (the teacher's counted at the student's rate)",
        ),
        Work(
            "02",
            "MMLU next-token scoring",
            p.teacher,
            "score",
            mmlu_batch,
            c.mmlu_eval_prompt,
            p.eval_samples * evals / mmlu_batch,
            "batch",
            logits_kept=1,
            derivation=f"{p.eval_samples} questions x {evals} models, at the 13B teacher's size",
        ),
        answers("SNI answers", c.sni_eval_prompt, new["sni"], "examples"),
    ]


def _notebook03(c: Counts) -> list[Work]:
    p = CALM_PRESETS["paper"]
    augment = paper_shape(p.augment)
    anchor = paper_shape(p.anchor)
    stage = p.augment_stage
    # CALM's bridges: per composed pair, f_proj (h_A x h_B) and a cross-attention (4 h_B^2)
    pairs = augment.layers // p.every
    bridges = pairs * (augment.hidden * anchor.hidden + 4 * anchor.hidden * anchor.hidden)
    trainings = len(p.runs) + int(p.encoder_ablation) + int(p.lora_baseline)
    return [
        Work(
            "03",
            "m_A stage (full fine-tune)",
            p.augment,
            "full-train",
            stage.train.batch_size,
            c.kv_tokens,
            math.ceil(stage.examples * stage.train.epochs / stage.train.batch_size),
            "step",
            quantization="none",
            derivation=f"{stage.examples:,} examples x {stage.train.epochs:g} epoch at batch {stage.train.batch_size}",
        ),
        Work(
            "03",
            "compositions",
            p.anchor,
            "module-train",
            p.train.batch_size,
            c.kv_tokens,
            trainings * math.ceil(p.train_examples * p.train.epochs / p.train.batch_size),
            "step",
            trained=bridges,
            also_loaded=(p.augment,),
            module="calm",
            derivation=f"{trainings} trainings x {p.train_examples:,} examples at batch {p.train.batch_size}; "
            f"{bridges:,} bridge parameters",
        ),
        Work(
            "03",
            "composed answers",
            p.anchor,
            "generate",
            _batch(p.eval_batch_size, anchor, c.kv_tokens, p.max_new_tokens, also=augment.parameters * 2),
            c.kv_tokens,
            (trainings + 2) * p.eval_examples * 2,
            "answer",
            new_tokens=p.max_new_tokens,
            also_loaded=(p.augment,),
            derivation=f"{trainings + 2} models x {p.eval_examples} examples x 2 tasks",
        ),
    ]


def _notebook04(c: Counts) -> list[Work]:
    p = MEMORY_PRESETS["paper"]
    t = p.train
    out = []
    steps_per_training = math.ceil(c.fever_train_tokens / p.block_size / t.batch_size) * t.epochs
    for model in p.models:
        out.append(
            Work(
                "04",
                f"k-shot sweep: {model.split('/')[-1]}",
                model,
                "generate",
                _batch(p.eval_batch_size, paper_shape(model), c.fever_prompt, p.max_new_tokens),
                c.fever_prompt,
                c.fever_claims_eval * len(p.shots),
                "answer",
                new_tokens=p.max_new_tokens,
                derivation=f"{c.fever_claims_eval:,} claims x {len(p.shots)} shot counts",
            )
        )
    trainings: dict[str, int] = {}
    for model in p.memory_models:
        trainings[model] = trainings.get(model, 0) + len(p.variants) * len(p.seeds)
    for model in p.ablation_models:
        trainings[model] = trainings.get(model, 0) + len(p.variants)
    for model in p.gate_ablation_models:
        trainings[model] = trainings.get(model, 0) + len(p.variants)
    for model, n in trainings.items():
        shape = paper_shape(model)
        module = 2 * shape.hidden * p.memory_dim + 2 * p.memory_dim  # a down and an up projection
        out.append(
            Work(
                "04",
                f"memory training: {model.split('/')[-1]}",
                model,
                "module-train",
                t.batch_size,
                p.block_size,
                n * steps_per_training,
                "step",
                trained=module,
                backward_fraction=1 - p.depth,
                reused_over_epochs=t.epochs if p.reuse_lower_blocks else 0,
                module="memory",
                derivation=f"{n} trainings x {steps_per_training:,} steps ({t.epochs:g} epochs of "
                f"{c.fever_train_tokens:,} tokens in {t.batch_size} x {p.block_size})"
                + (", the blocks below the memory run in the first epoch only" if p.reuse_lower_blocks else ""),
            )
        )
    for model in p.full_update_models:
        out.append(
            Work(
                "04",
                f"full update: {model.split('/')[-1]}",
                model,
                "full-train",
                p.full_train.batch_size,
                p.block_size,
                len(p.full_update_variants)
                * math.ceil(c.fever_train_tokens / p.block_size / p.full_train.batch_size)
                * p.full_train.epochs,
                "step",
                quantization="none",
                derivation=f"{len(p.full_update_variants)} variants x {p.full_train.epochs:g} epochs",
            )
        )
    return out


def paper_stages(counts: Counts | None = None) -> list[Work]:
    """Every stage of notebooks 01-04 at the paper preset's shapes and the full counts."""
    c = counts or Counts()
    return _notebook01(c) + _notebook02(c) + _notebook03(c) + _notebook04(c)


def budget(counts: Counts | None = None) -> list[dict]:
    """One row per stage: its work, its estimate, and whether it fits :data:`TARGET_GIB` reserved."""
    rows = []
    shapes: dict[str, Shape] = {}
    for work in paper_stages(counts):
        for name in (work.model, *work.also_loaded):
            shapes.setdefault(name, paper_shape(name))
        e = estimate(work, shapes[work.model], shapes)
        rows.append(
            {
                "notebook": work.notebook,
                "stage": work.stage,
                "model": work.model,
                "batch": work.batch,
                "tokens": work.tokens,
                "units": work.units,
                "unit": work.unit,
                "derivation": work.derivation,
                "kind": "estimated",
                **e.as_dict(),
                "fits_target": e.reserved_gib <= TARGET_GIB,
            }
        )
    return rows


def counts_sources() -> dict[str, dict]:
    """Each :class:`Counts` field's value and where it comes from."""
    c = Counts()
    return {f.name: {"value": getattr(c, f.name), "source": SOURCES.get(f.name, "estimate")} for f in fields(c)}
