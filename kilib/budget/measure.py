"""``make budget`` on a GPU: each paper stage's peak memory and time per unit, measured on stand-ins.

The stages are those of :mod:`kilib.budget.series` (the paper presets' models, batches and row
lengths). Each is run for a few units on the stand-in of its model (:mod:`kilib.standin`; real shapes
on a GPU) through kilib's own code: a LoRA or full training step, a generation batch, a scoring
forward without a cache, one sensitivity sample, one truncated SVD. Stages run one after another in
one process, the riskiest (the largest estimated peak) first, with the allocator's peaks reset
between them; the JSON is written after each stage, an out-of-memory is recorded as such and the run
goes on, and stages not reached before the deadline say so. Notebook 04's memory training runs
kilib's memory model (:mod:`kilib.memory.model`), reusing the blocks below the memory as the paper
preset does: its unit is a step averaged over the preset's epochs, the first of which also runs the
blocks below. CALM's compositions are not measured here: their rows keep the estimate.

On a CPU the same code runs at the small scale, as a check of the mechanics (its times and memory
say nothing about a GPU).
"""

from __future__ import annotations

import dataclasses
import gc
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from kilib.budget.estimate import GIB, Work, paper_shape
from kilib.results import hardware, package_versions, write_json
from kilib.runtime import KilibError, synchronize
from kilib.standin import switch

MEASURED = ("lora-train", "full-train", "generate", "score", "sensitivity", "svd")
WARMUP = 1  # units run before the clock starts (kernel selection, allocator growth)


def _rows(model, batch: int, tokens: int, seed: int = 0) -> torch.Tensor:
    """Random token ids, ``batch`` x ``tokens``, from the model's vocabulary (no special ids)."""
    vocab = model.get_input_embeddings().weight.shape[0]
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (batch, max(2, tokens)), generator=generator).to(next(model.parameters()).device)


def _timed(step: Callable[[], Any], units: int) -> float:
    """Seconds per call of ``step`` over ``units`` calls, after :data:`WARMUP` untimed ones."""
    for _ in range(WARMUP):
        step()
    synchronize()
    start = time.perf_counter()
    for _ in range(units):
        step()
    synchronize()
    return (time.perf_counter() - start) / units


def _train_step(work: Work, model) -> Callable[[], None]:
    from kilib.lm.models import attach_lora
    from kilib.lm.training import enable_gradient_checkpointing

    if work.kind == "lora-train":
        model = attach_lora(model, r=work.rank, include_embeddings=work.lora_embeddings)
    if work.checkpointing:
        enable_gradient_checkpointing(model)
    model.config.use_cache = False
    model.train()
    trained = [p for p in model.parameters() if p.requires_grad]
    fused = torch.cuda.is_available()
    optimizer = torch.optim.AdamW(trained, lr=1e-5, fused=fused) if fused else torch.optim.AdamW(trained, lr=1e-5)
    ids = _rows(model, work.batch, work.tokens)

    def step() -> None:
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _generate_step(work: Work, model) -> Callable[[], None]:
    ids = _rows(model, work.batch, work.tokens)
    new = max(1, work.new_tokens)

    def step() -> None:
        with torch.inference_mode():
            # a random model never stops early: every row runs to the limit, the worst case
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new)

    return step


def _score_step(work: Work, model) -> Callable[[], None]:
    ids = _rows(model, work.batch, work.tokens)

    def step() -> None:
        with torch.inference_mode():
            model(input_ids=ids, use_cache=False, logits_to_keep=work.logits_kept or 0)

    return step


def _sensitivity_step(work: Work, model) -> Callable[[], None]:
    from kilib.transfer.method import sensitivity

    ids = _rows(model, 1, work.tokens)
    sample = [{"input_ids": ids.cpu(), "labels": ids.cpu()}]
    return lambda: sensitivity(model, sample, summed=True, checkpointing=work.checkpointing)


def _svd_step(work: Work, model) -> Callable[[], None]:
    from kilib.transfer.method import svd_factors

    config = model.config
    matrix = torch.randn(config.hidden_size, config.intermediate_size, generator=torch.Generator().manual_seed(0))
    matrix = matrix.to(next(model.parameters()).device)
    return lambda: svd_factors(matrix, work.rank)


def _memory_seconds(work: Work, base, units: int) -> float:
    """Seconds per memory-training step averaged over ``work.reused_over_epochs`` epochs: a step on
    rows not yet stored (the first epoch: every block runs) and a step on stored rows (the blocks
    below the memory reused), each timed over ``units`` steps."""
    from kilib.memory.model import attach_memory

    model = attach_memory(base, depth=1 - work.backward_fraction)
    base.config.use_cache = False
    model.train()
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-5)
    fresh = iter(range(1, 2 * (WARMUP + units) + 2))  # seeds of rows the store has not seen

    def step(ids) -> None:
        model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    stored = _rows(base, work.batch, work.tokens)
    with model.reusing_lower_blocks():
        first = _timed(lambda: step(_rows(base, work.batch, work.tokens, next(fresh))), units)
        reused = _timed(lambda: step(stored), units)
    return reused + (first - reused) / work.reused_over_epochs if work.reused_over_epochs else first


STEPS = {
    "lora-train": _train_step,
    "full-train": _train_step,
    "generate": _generate_step,
    "score": _score_step,
    "sensitivity": _sensitivity_step,
    "svd": _svd_step,
}


def measure_one(work: Work, units: int = 2) -> dict[str, Any]:
    """One stage, measured: ``{"status", "unit_seconds", "allocated_gib", "reserved_gib"}``. The
    unit is the stage's: a step, a batch of requests (divided by the batch), a sample, a matrix."""
    from kilib.lm.models import load_causal_lm

    if work.kind not in MEASURED and not (work.kind == "module-train" and work.module == "memory"):
        return {"status": f"not measured: a {work.kind} stage needs its study's model"}
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = None
    try:
        model, _ = load_causal_lm(work.model, quantization=work.quantization)
        if work.kind == "module-train":
            seconds = _memory_seconds(work, model, units)
        else:
            seconds = _timed(STEPS[work.kind](work, model), units)
        if work.kind == "generate":
            seconds /= work.batch  # the unit is one request of the batch
        out = {"status": "ok", "unit_seconds": seconds}
    except torch.cuda.OutOfMemoryError as e:
        out = {"status": "out of memory", "error": str(e).splitlines()[0][:300]}
    except KilibError as e:  # e.g. no disk room for a real-scale stand-in: said, and the run goes on
        out = {"status": f"not measured: {e}"}
    finally:
        del model
        gc.collect()
    if cuda:
        out["allocated_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 2)
        out["reserved_gib"] = round(torch.cuda.max_memory_reserved() / GIB, 2)
        torch.cuda.empty_cache()
    return out


def measure(
    works: Sequence[Work],
    out: Path,
    *,
    scale: str | None = None,
    units: int = 2,
    deadline_s: float = 540.0,
    estimates: dict[tuple[str, str], float] | None = None,
) -> dict[str, Any]:
    """Measure ``works`` (deduplicated by model, kind and shape; the riskiest first, by
    ``estimates`` of their reserved GiB) on stand-ins at ``scale``, writing ``out`` after each."""
    if units < 1:
        raise KilibError(f"units must be at least 1, got {units}")
    scale = scale or switch.default_scale()
    started = time.monotonic()
    seen: dict[tuple, tuple[str, dict]] = {}  # shape -> (the stage measured, its result)
    order = sorted(works, key=lambda w: -(estimates or {}).get((w.notebook, w.stage), 0.0))
    report: dict[str, Any] = {
        "what": "measured GPU memory and time per unit of the paper-profile stages, on stand-ins",
        "kind": "measured",
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (a mechanics check only)",
        "scale": scale,
        "units_timed": units,
        "stages": [],
        "hardware": hardware(),
        "packages": package_versions(),
    }
    with switch.standins(scale):
        for work in order:
            # one measurement per architecture and work: a chat model has its base's shape
            architecture = dataclasses.replace(paper_shape(work.model), name="")
            shape = (architecture, work.kind, work.module, work.batch, work.tokens, work.new_tokens, work.checkpointing)
            if time.monotonic() - started > deadline_s:
                result = {"status": "not reached before the deadline"}
            elif shape in seen:
                first, measured = seen[shape]
                result = dict(measured, same_as=first)
            else:
                result = measure_one(work, units)
                seen[shape] = (f"{work.notebook} {work.stage}", result)
            report["stages"].append(
                {
                    "notebook": work.notebook,
                    "stage": work.stage,
                    "model": work.model,
                    "kind": work.kind,
                    "batch": work.batch,
                    "tokens": work.tokens,
                    "new_tokens": work.new_tokens,
                    "unit": work.unit,
                    "units": work.units,
                    **result,
                }
            )
            if "unit_seconds" in result:  # projected to the paper's counts, as the estimate is
                report["stages"][-1]["hours"] = round(result["unit_seconds"] * work.units / 3600, 2)
            report["seconds"] = round(time.monotonic() - started, 1)
            write_json(out, report)
    return report
