"""The cases of ``make bench`` (:mod:`kilib.bench.sft_step`) and the arithmetic around them: each
case's shapes, its rows and how they group into optimiser steps, the padding both paths get, the
order of the paths across repeats, and the statistics the JSON reports.

Everything here is plain data and arithmetic, so that the tests check it without a model.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import torch

from kilib.runtime import KilibError

PATHS = ("kilib", "bare", "bare-cache")  # kilib's Trainer; the bare loop without a KV cache; the same, with one
IGNORE_INDEX = -100  # label value the cross-entropy ignores
PAD_ID = 0  # the benchmark tokenizer's pad token (kilib.bench.sft_step.char_tokenizer)
FIRST_TOKEN, LAST_TOKEN = 3, 97  # random rows draw token ids in this range (printable characters)
TIMED_SPAN = (
    "forward + backward + gradient clipping + optimiser step (every micro-batch of the step), the batch "
    "already on the device; on a GPU, CUDA synchronised at both ends. kilib: transformers' Trainer from "
    "on_step_begin to on_step_end, so its own per-step work (loss check, scheduler step) is inside; bare: "
    "the same span around the loop's own calls"
)
LLAMA2_7B = dict(hidden=4096, layers=32, heads=32, ffn=11008, vocab=32000)
SMALL = dict(hidden=256, layers=4, heads=4, ffn=704, vocab=8000)  # widths divisible by 64, as CPU 4-bit needs
CPU_NOTE = "scaled down for the CPU"
GPU_NOTE = "the case's own shape"


@dataclass(frozen=True)
class Case:
    """One benchmark case: a model shape and a batch shape on a GPU and on the CPU.

    A shape holds the model (``hidden``, ``layers``, ``heads``, ``ffn``, ``vocab``) and the batch:
    ``seq`` tokens per row (``min_seq`` to ``seq`` for Q&A rows), ``batch`` rows per micro-batch
    and ``accum`` micro-batches per optimiser step. ``rows`` is the kind of row:

    * ``"fixed"``: every row ``seq`` tokens, the first quarter (a prompt) without loss;
    * ``"qa"``: ``min_seq`` to ``seq`` tokens, the first three fifths (template and question) without loss;
    * ``"packed"``: every row ``seq`` tokens with loss on each, as rows packed from documents are.
    """

    name: str
    what: str
    gpu: dict
    cpu: dict
    rows: str = "fixed"
    gradient_checkpointing: bool = False
    steps: dict = field(default_factory=lambda: {"cuda": 30, "cpu": 12})
    positions: int | None = None  # max_position_embeddings of the built model (None: 2 x seq)

    def shape(self, device: str) -> dict:
        """The shape this case runs at on ``device`` ("cuda" or "cpu"), with ``accum`` filled in."""
        return {"accum": 1, "min_seq": None, **(self.gpu if device == "cuda" else self.cpu)}

    def shape_note(self, device: str) -> str:
        return GPU_NOTE if device == "cuda" else CPU_NOTE


CASES = {
    "default": Case(
        name="default",
        what="about 1B parameters on a GPU (16 layers, hidden 2048), batch 8 x 512 tokens: "
        "the shape make bench has always measured",
        gpu=dict(hidden=2048, layers=16, heads=16, ffn=5632, vocab=32000, seq=512, batch=8),
        cpu=dict(hidden=512, layers=4, heads=8, ffn=1408, vocab=8000, seq=256, batch=4),
    ),
    "nb01": Case(
        name="nb01",
        what="notebook 01's paper profile: a Llama-2-7B-shaped model at batch size 1 on short Q&A rows "
        "(40 to 64 tokens, template and question without loss)",
        gpu=dict(LLAMA2_7B, seq=64, min_seq=40, batch=1),
        cpu=dict(SMALL, seq=64, min_seq=40, batch=1),
        rows="qa",
        steps={"cuda": 40, "cpu": 12},
        positions=4096,
    ),
    "nb02": Case(
        name="nb02",
        what="notebook 02's paper profile: a Llama-2-7B-shaped model, 16 full 2,048-token rows (packed rows) "
        "per optimiser step as 4 accumulated micro-batches of 4 (notebook 02's micro-batch), gradient "
        "checkpointing on both sides",
        gpu=dict(LLAMA2_7B, seq=2048, batch=4, accum=4),
        cpu=dict(SMALL, seq=256, batch=2, accum=2),
        rows="packed",
        gradient_checkpointing=True,
        steps={"cuda": 10, "cpu": 6},
        positions=4096,
    ),
}


def rows_per_step(shape: dict) -> int:
    return shape["batch"] * shape["accum"]


def make_rows(shape: dict, kind: str, n: int, seed: int = 0) -> list[dict[str, list[int]]]:
    """``n`` random rows of ``kind`` (see :class:`Case`): ``input_ids`` and ``labels``, the same
    for a given seed in every process."""
    if kind not in ("fixed", "qa", "packed"):
        raise KilibError(f"unknown row kind {kind!r}: use 'fixed', 'qa' or 'packed'")
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = shape["seq"]
        if kind == "qa":
            length = int(torch.randint(shape["min_seq"], shape["seq"] + 1, (1,), generator=g))
        ids = torch.randint(FIRST_TOKEN, LAST_TOKEN + 1, (length,), generator=g).tolist()
        unlearned = {"fixed": length // 4, "qa": 3 * length // 5, "packed": 0}[kind]
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * unlearned + ids[unlearned:]})
    return rows


def steps_of(order: list[int], shape: dict) -> list[list[list[int]]]:
    """``order`` (row ids as drawn) cut into optimiser steps, each a list of micro-batches of
    ``shape["batch"]`` rows; a trailing part short of a full step is dropped."""
    per_micro, per_step = shape["batch"], rows_per_step(shape)
    full = len(order) - len(order) % per_step
    return [[order[s + m : s + m + per_micro] for m in range(0, per_step, per_micro)] for s in range(0, full, per_step)]


def step_tokens(rows: list[dict], order: list[int], shape: dict) -> list[int]:
    """The tokens (padding not counted) each optimiser step trains on."""
    return [sum(len(rows[i]["input_ids"]) for micro in step for i in micro) for step in steps_of(order, shape)]


def pad_batch(rows: list[dict]) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` (pad id 0), ``attention_mask`` and ``labels`` (-100): what kilib's
    padding collator (transformers' ``DataCollatorForSeq2Seq``) makes of the same rows."""
    width = max(len(r["input_ids"]) for r in rows)
    out = {"input_ids": [], "attention_mask": [], "labels": []}
    for r in rows:
        pad = width - len(r["input_ids"])
        out["input_ids"].append(r["input_ids"] + [PAD_ID] * pad)
        out["attention_mask"].append([1] * len(r["input_ids"]) + [0] * pad)
        out["labels"].append(r["labels"] + [IGNORE_INDEX] * pad)
    return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}


def repeat_orders(repeats: int, paths: tuple[str, ...] = PATHS) -> list[list[str]]:
    """The order the paths run in, per repeat: rotated by one each repeat, so that over
    ``len(paths)`` repeats each path runs once in each position and a drift of the machine's
    speed spreads over all of them. The first repeat starts with kilib, whose draw of the rows
    the bare loop then follows."""
    return [list(paths[r % len(paths) :] + paths[: r % len(paths)]) for r in range(repeats)]


def run_figures(step_seconds: list[float], tokens: list[int], warmup: int) -> dict:
    """One process's figures: the steps after ``warmup``, their median and the tokens per second
    over them (their tokens over their seconds)."""
    timed, timed_tokens = step_seconds[warmup:], tokens[warmup : len(step_seconds)]
    if not timed:
        raise KilibError(f"no step was timed after the {warmup} warm-up steps: run more steps (--steps)")
    return {
        "steps_timed": len(timed),
        "median_step_seconds": statistics.median(timed),
        "tokens_per_second": sum(timed_tokens) / sum(timed),
        "tokens_timed": sum(timed_tokens),
    }


def spread(values: list[float]) -> dict:
    """The median of ``values`` and their range."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize_path(runs: list[dict]) -> dict:
    """One path over its repeats: the median and range of the per-repeat median step times and
    tokens per second, and the highest peak memory."""
    cuda = [r["peak_cuda_allocated_mib"] for r in runs if r.get("peak_cuda_allocated_mib") is not None]
    return {
        "repeats": len(runs),
        "median_step_seconds": spread([r["median_step_seconds"] for r in runs]),
        "tokens_per_second": spread([r["tokens_per_second"] for r in runs]),
        "peak_rss_mib_max": max(r["peak_rss_mib"] for r in runs),
        "peak_cuda_allocated_mib_max": max(cuda) if cuda else None,
        "cache_built": any(r["cache_built"] for r in runs),
    }


def ratio(top: list[dict], bottom: list[dict]) -> dict:
    """Tokens per second of ``top`` over ``bottom``: the ratio of their medians over the repeats,
    and the range of the per-repeat ratios (repeat i of one over repeat i of the other)."""
    t = [r["tokens_per_second"] for r in top]
    b = [r["tokens_per_second"] for r in bottom]
    per_repeat = [x / y for x, y in zip(t, b)]
    return {
        "of": "tokens per second",
        "ratio_of_medians": statistics.median(t) / statistics.median(b),
        "per_repeat": per_repeat,
        "min": min(per_repeat),
        "max": max(per_repeat),
    }


def summarize(runs: dict[str, list[dict]]) -> dict:
    """Per path (:func:`summarize_path`) and the ratios: kilib over the bare loop, kilib over the
    bare loop with a cache, and the cache's cost (the bare loop with a cache over the one without)."""
    return {
        "paths": {path: summarize_path(runs[path]) for path in runs},
        "ratios": {
            "kilib_over_bare": ratio(runs["kilib"], runs["bare"]),
            "kilib_over_bare_cache": ratio(runs["kilib"], runs["bare-cache"]),
            "bare_cache_over_bare": ratio(runs["bare-cache"], runs["bare"]),
        },
    }


def table(record: dict) -> str:
    """A short text table of a written record."""
    lines = [
        f"case {record['case']} on {record['device']} ({record['shape_note']}): {record['repeats']} repeats x "
        f"{record['steps']} steps, the first {record['warmup_steps_excluded']} of each untimed",
        f"{'path':<11} {'median step s (min-max)':<27} {'tokens/s (min-max)':<27} {'peak RSS MiB':>12} "
        f"{'peak CUDA MiB':>13} cache",
    ]
    for path, p in record["paths"].items():
        s, t = p["median_step_seconds"], p["tokens_per_second"]
        cuda = p["peak_cuda_allocated_mib_max"]
        lines.append(
            f"{path:<11} {s['median']:.4f} ({s['min']:.4f}-{s['max']:.4f}){'':<4} "
            f"{t['median']:>9,.0f} ({t['min']:,.0f}-{t['max']:,.0f}){'':<2} {p['peak_rss_mib_max']:>12,.0f} "
            f"{'-' if cuda is None else f'{cuda:,.0f}':>13} {'built' if p['cache_built'] else 'none'}"
        )
    for name, r in record["ratios"].items():
        top, bottom = name.split("_over_")
        lines.append(
            f"{top.replace('_', '-')} / {bottom.replace('_', '-')}: {r['ratio_of_medians']:.3f} "
            f"(per repeat {r['min']:.3f}-{r['max']:.3f})"
        )
    return "\n".join(lines)
