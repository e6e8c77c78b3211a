"""Notebook 02's presets: :class:`TransferConfig` and its tiny, smoke and paper values
(:data:`TRANSFER_PRESETS`), and :func:`notebook_overrides`, the notebook's parameters as overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from kilib.lm.training import TrainConfig
from kilib.runtime import KilibError
from kilib.transfer.tasks import TASKS, TINY_TASKS

# plain LoRA; + the teacher's most sensitive window; + its most sensitive rows and columns (the paper's
# ablation of the dimension reduction); + a random window (the control)
METHODS = ("lora", "sensitive", "top", "random")
# The most tokens one training micro-batch may hold (batch_size x max_length) in the paper profile: a 7B
# student keeps about 4.5 MB of activations per token without gradient checkpointing (34 x hidden bytes per
# layer in 16 bits, Korthikanti et al. 2022, over 32 layers), 147 GB for batch 16 x 2,048 tokens; with
# checkpointing, 8,192 tokens keep about 2 GB of block inputs and one block's recompute.
MICRO_BATCH_TOKENS = 8_192
# Where a generated answer ends in the tiny profile: a blank line (the demonstrations' separator) or
# the next question.
STOP = ("\n\n", "\nQuestion:")


@dataclass(frozen=True)
class TransferConfig:
    """One profile of the transfer study (docs/methods.md, "## 02 Parametric knowledge transfer").
    The paper: Llama-2 13B into 7B, 32 seed samples, LoRA rank 16 on every linear layer, the
    embeddings and the output head, 3 epochs at 3e-4, global batch 64, 3% warmup, 1,000 training
    samples per task, examples of up to 2,048 tokens (their ``train.sh``: ``--cutoff_len 2048``).
    The global batch of 64 is 16 accumulated micro-batches of 4 with gradient checkpointing, so
    that a micro-batch holds at most :data:`MICRO_BATCH_TOKENS` tokens."""

    teacher: str = "llama-m"  # zoo name (tiny, smoke) or Hub id / folder (paper)
    student: str = "llama-s"
    tasks: tuple[str, ...] = TASKS
    methods: tuple[str, ...] = METHODS
    seed_samples: int = 32
    train_samples: int = 1000
    eval_samples: int = 500
    shots: tuple[tuple[str, int], ...] = (("gsm", 8), ("mmlu", 5))  # the few-shot evaluations
    rank: int = 16
    quantization: str = "4bit"  # teacher and student, in every profile
    seeds: tuple[int, ...] = (0,)
    max_new_tokens: tuple[tuple[str, int], ...] = (("gsm", 512), ("mmlu", 4), ("sni", 64), ("qa", 12))
    eval_batch_size: int | str = 16  # "auto": the largest batch the GPU's free memory holds
    # "tulu": train and evaluate in open-instruct's Tulu chat format, as the authors do (their
    # finetune.py --use_chat_prompt; open-instruct's --use_chat_format); "": the task prompt as it
    # is, in the tokenizer's own chat template where it has one (the tiny zoo's).
    chat_format: str = ""
    # Generated answers are cut at these. open-instruct stops a chat-format answer at EOS only
    # (as here with ()), a plain one at "\n".
    stop: tuple[str, ...] = STOP
    train: TrainConfig = TrainConfig(
        epochs=3,
        batch_size=4,
        grad_accum=16,  # global batch 4 x 16 = 64
        lr=3e-4,
        warmup_ratio=0.03,
        scheduler="linear",
        max_length=2048,
        gradient_checkpointing=True,
        save_every_epoch=False,
        progress=False,
        logging_steps=5,
    )
    # The teacher's full sensitivities are kept for this many student blocks at a time
    # (kilib.transfer.extraction.cut_factors): 5.1 GB of float32 running sums for 4 blocks of a
    # 13B teacher, against 42 GB for all 32 at once, at one pass over the seed samples per
    # group. The factors are the same for any group size.
    sensitivity_group_blocks: int = 4
    # The sensitivity passes run with the teacher's blocks checkpointed (kilib.transfer.method.sensitivity):
    # a 13B teacher on a 2,048-token seed sample keeps about 1 GB of activations instead of 15 GB, for one
    # more forward per sample. The sensitivities are the same either way.
    sensitivity_checkpointing: bool = True
    # Each micro-batch's examples packed into rows of up to train.max_length tokens
    # (kilib.lm.training.PackingCollator), so that no padding is computed: an SNI micro-batch padded to its
    # longest example (up to 2,048 tokens) would be mostly padding. The loss is the padded batch's.
    packing: bool = True
    # What the models and data are: "tiny" or "smoke", the generated world and that zoo (teacher
    # and student name zoo models); "", the Hub's models and datasets. Enters no cache key.
    zoo: str = "tiny"


TRANSFER_PRESETS = {
    # The tiny world holds 504 pre-cutoff facts with three same-type alternatives, so MMLU's
    # seed, training and evaluation questions share them (32 + 300 + 150); GSM and SNI use the
    # same counts for one design. The zoo models read 256 positions, so GSM's few-shot
    # evaluation has one demonstration and MMLU's three. Batch 16 without accumulation and
    # notebook 01's tiny LoRA rate (3e-3): 300 samples at the paper's global batch 64 would be
    # 15 steps. Not tuned to any result.
    "tiny": TransferConfig(
        tasks=TASKS + TINY_TASKS,
        seed_samples=32,
        train_samples=300,
        eval_samples=150,
        shots=(("gsm", 1), ("mmlu", 3)),
        max_new_tokens=(("gsm", 96), ("mmlu", 4), ("sni", 32), ("qa", 12)),
        eval_batch_size=32,
        train=TrainConfig(
            epochs=3,
            batch_size=16,
            lr=3e-3,
            warmup_ratio=0.03,
            scheduler="linear",
            save_every_epoch=False,
            progress=False,
            logging_steps=5,
        ),
        sensitivity_checkpointing=False,  # short samples: the recompute would cost time and save nothing needed
        packing=False,  # as the committed results were made
        zoo="tiny",
    ),
    # Enough steps (24) at a high rate for the smoke student to learn the answer formats.
    "smoke": TransferConfig(
        tasks=("gsm", "mmlu", "qa"),
        seed_samples=4,
        train_samples=64,
        eval_samples=24,
        rank=4,
        shots=(("mmlu", 1),),
        max_new_tokens=(("gsm", 24), ("mmlu", 4), ("sni", 16), ("qa", 12)),
        eval_batch_size=32,
        train=TrainConfig(
            epochs=3, batch_size=8, lr=1e-2, scheduler="linear", save_every_epoch=False, progress=False, logging_steps=1
        ),
        sensitivity_checkpointing=False,
        packing=False,
        zoo="smoke",
    ),
    # The authors' chat format, and open-instruct's GSM8K evaluation: up to 512 new tokens, cut at EOS.
    "paper": TransferConfig(
        teacher="meta-llama/Llama-2-13b-hf",
        student="meta-llama/Llama-2-7b-hf",
        chat_format="tulu",
        stop=(),
        eval_batch_size="auto",
        zoo="",
    ),
}


def notebook_overrides(teacher: str = "", student: str = "", tasks: str = "", seeds: int = 0) -> dict[str, Any]:
    """Notebook 02's parameters (TEACHER, STUDENT, TASKS, SEEDS) as preset overrides: "" and 0
    keep the profile's value; ``tasks`` is a comma-separated subset of
    :data:`kilib.transfer.tasks.TASKS`; ``seeds`` n > 0 runs seeds 0 to n-1."""
    if seeds < 0:
        raise KilibError(f"SEEDS must be >= 0 (0 keeps the profile's seeds), got {seeds}")
    names = tuple(t.strip() for t in tasks.split(",") if t.strip())
    unknown = [t for t in names if t not in TASKS + TINY_TASKS]
    if unknown:
        raise KilibError(f"unknown task(s) {', '.join(unknown)} in TASKS: choose among {', '.join(TASKS + TINY_TASKS)}")
    out = {"teacher": teacher, "student": student, "tasks": names, "seeds": tuple(range(seeds))}
    return {k: v for k, v in out.items() if v}


# The paper's code with its counts cut, for random-weight stand-ins of its models (make reproduce
# PROFILE=standin; kilib.standin): the three tasks and four methods, the Tulu format, the few-shot
# prompts and the micro-batched, checkpointed training, at a few samples each and one optimiser step of
# two micro-batches of rows cut at 512 tokens.
TRANSFER_PRESETS["standin"] = dataclasses.replace(
    TRANSFER_PRESETS["paper"],
    seed_samples=1,
    train_samples=4,
    eval_samples=1,
    max_new_tokens=(("gsm", 16), ("mmlu", 4), ("sni", 16), ("qa", 12)),
    train=dataclasses.replace(
        TRANSFER_PRESETS["paper"].train, epochs=1, batch_size=2, grad_accum=2, max_length=512, logging_steps=1
    ),
)
