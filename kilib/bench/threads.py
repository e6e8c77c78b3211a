"""``make bench-threads``: on a CPU, is one run on every core or one run per core faster?

:func:`kilib.jobs.side_by_side` trains notebook 01's adapters and notebook 03's compositions
in processes of one thread each, because a small model gains little from a second thread.
This measures that claim on the machine at hand, through the same function, for three kinds
of step on a locally built random Llama of the tiny zoo's llama-m shape (the Hub is never
contacted):

* ``pretrain``: every weight trained in float32, as the zoo pretrains (batch 16 x 256 tokens);
* ``qlora``: an NF4 base with LoRA r=16 on every linear layer, as notebooks 01-03 train on the
  zoo (batch 16 x 64 tokens);
* ``generate``: greedy answers from the NF4 model, as every notebook evaluates (32 prompts of
  48 tokens, 16 new tokens each; a "step" is one batch answered, its tokens the new ones).

Each kind runs alone at 1 thread and at every usable core, then as one run per core side by
side. Side by side, the figure is the runs' tokens together over the window from the first
timed step's start to the last one's end (process start-up and warm-up steps excluded; a
stagger between the runs counts against them). Results go to ``results/bench/threads_cpu.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from kilib.bench.sft_step import batches, build_model
from kilib.jobs import side_by_side
from kilib.lm.models import attach_lora, load_causal_lm
from kilib.results import hardware, package_versions, write_json
from kilib.runtime import KilibError, cuda_available, results_root, usable_cores

SHAPE = dict(hidden=192, layers=6, heads=6, ffn=512, vocab=2048, seq=256, batch=16)  # the tiny zoo's llama-m
KINDS = {
    "pretrain": dict(seq=256, batch=16),
    "qlora": dict(seq=64, batch=16),
    "generate": dict(seq=48, batch=32, new=16),
}
WARMUP_STEPS = 2


def timed_steps(kind: str, folder: str, steps: int, shape: dict) -> dict:
    """``steps`` steps of ``kind`` on batches of ``shape`` (after :data:`WARMUP_STEPS` untimed
    ones) in this process at torch's current thread count: each step's seconds and the timed
    window's wall clock (``time.time``, comparable across processes)."""
    if kind not in KINDS:
        raise KilibError(f"unknown kind {kind!r}: choose one of {', '.join(KINDS)}")
    if kind == "pretrain":
        model, _ = load_causal_lm(folder, quantization="none", device="cpu")
    elif kind == "qlora":
        model = attach_lora(load_causal_lm(folder, device="cpu")[0], r=16)
    else:
        model, _ = load_causal_lm(folder, device="cpu")
    model.train(kind != "generate")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4) if kind != "generate" else None
    times, start = [], None
    for i, (ids, labels) in enumerate(batches(shape, WARMUP_STEPS + steps)):
        if i == WARMUP_STEPS:
            start = time.time()
        t = time.perf_counter()
        if kind == "generate":
            with torch.no_grad():
                model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=shape["new"],
                    min_new_tokens=shape["new"],
                    do_sample=False,
                )
        else:
            model(input_ids=ids, labels=labels).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        if i >= WARMUP_STEPS:
            times.append(time.perf_counter() - t)
    return {
        "threads": torch.get_num_threads(),
        "step_seconds": times,
        "start": start,
        "end": time.time(),
        "tokens_per_step": shape["batch"] * (shape["new"] if kind == "generate" else shape["seq"]),
    }


def measure(kind: str, folder: Path, steps: int, cores: int, shape: dict | None = None) -> dict:
    """One run at 1 thread, one at ``cores`` threads, then ``cores`` runs of 1 thread side by side
    (``shape``: the model's and the batches'; default :data:`SHAPE` with the kind's batches)."""
    shape = shape or {**SHAPE, **KINDS[kind]}
    call = (timed_steps, (kind, str(folder), steps, shape), {})
    alone, alone_threads = {}, []
    for threads in sorted({1, cores}):
        run = side_by_side([call], workers=1, threads=threads)[0]
        alone_threads.append(run["threads"])
        alone[threads] = {
            "tokens_per_second": run["tokens_per_step"] * len(run["step_seconds"]) / sum(run["step_seconds"]),
            "median_step_seconds": sorted(run["step_seconds"])[len(run["step_seconds"]) // 2],
        }
    out = {
        "alone": {str(t): v for t, v in alone.items()},
        "threads_seen": {"alone": alone_threads},
        "speedup_all_cores_over_1": alone[cores]["tokens_per_second"] / alone[1]["tokens_per_second"],
    }
    if cores > 1:
        runs = side_by_side([call] * cores, workers=cores, threads=1)
        window = max(r["end"] for r in runs) - min(r["start"] for r in runs)
        tokens = sum(r["tokens_per_step"] * len(r["step_seconds"]) for r in runs)
        out["threads_seen"]["side_by_side"] = [r["threads"] for r in runs]
        out["side_by_side"] = {
            "runs": cores,
            "threads_each": 1,
            "tokens_per_second": tokens / window,
            "window_seconds": window,
        }
        out["side_by_side_over_one_run_on_all_cores"] = (tokens / window) / alone[cores]["tokens_per_second"]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="kilib.bench.threads", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16, help="timed steps per run (default 16)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, among {', '.join(KINDS)}")
    args = parser.parse_args(argv)
    if cuda_available():
        print(
            "a GPU is present: kilib runs side by side only on a CPU (on a GPU the runs go one by one), "
            "so there is nothing to measure here; run it on a CPU machine",
            file=sys.stderr,
        )
        return 0
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not kinds or any(k not in KINDS for k in kinds):
        raise SystemExit(f"kilib: --kinds takes names among {', '.join(KINDS)}, got {args.kinds!r}")
    cores = usable_cores()
    folder = results_root() / "bench" / "scratch" / "llama-zoo-m"
    build_model(folder, SHAPE)
    results = {}
    for kind in kinds:
        t = time.time()
        results[kind] = r = measure(kind, folder, args.steps, cores)
        line = (
            f"{kind:>8}: 1 thread {r['alone']['1']['tokens_per_second']:,.0f} tokens/s, {cores} threads "
            f"{r['alone'][str(cores)]['tokens_per_second']:,.0f} ({r['speedup_all_cores_over_1']:.2f}x)"
        )
        if "side_by_side" in r:
            line += (
                f", {cores} runs side by side {r['side_by_side']['tokens_per_second']:,.0f} "
                f"({r['side_by_side_over_one_run_on_all_cores']:.2f}x one run on {cores} threads)"
            )
        print(line + f" [{time.time() - t:.0f} s]", flush=True)
    target = write_json(
        results_root() / "bench" / "threads_cpu.json",
        {
            "what": "step throughput (pretraining, QLoRA, answering) of a tiny-zoo llama-m shape: "
            "one run on all cores against one run per core",
            "shape": SHAPE,
            "kinds": {k: KINDS[k] for k in kinds},
            "steps": args.steps,
            "warmup_steps_excluded": WARMUP_STEPS,
            "usable_cores": cores,
            "results": results,
            "hardware": hardware(),
            "packages": package_versions(),
        },
    )
    print(f"written: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
