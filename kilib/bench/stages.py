"""``make bench-stages``: time and peak memory of each stage of notebook 01's paper profile,
through kilib's own code, on a locally built model of the paper trainee's shape.

The Hub is never contacted: a random Llama with Llama-2-7B's shape (hidden 4096, 32 layers,
ffn 11008, vocab 32000) is built on the device and saved like a download, with a
character-level tokenizer and a chat template. It stands in for the trainee, the Q&A
generator and the judge (Qwen2.5-7B and Mistral-7B are within a few percent of its size in
4-bit). Each stage runs in its own process, so its peak is its own, loading included:

* ``generate``: Q&A generation (:class:`kilib.lm.llm.LocalGenerator`, 4-bit, sampled,
  1,024 new tokens, batch 8). Random weights never stop early, so every reply runs to
  ``max_new_tokens``: the worst case of the real run.
* ``train``: one LoRA adapter (:func:`kilib.sft.adapters.train_and_answer`: 4-bit base,
  rank 16, batch size 1, answer-only loss) on Q&A pairs of a realistic length, then its
  answers to evaluation questions (64 new tokens, batch 8).
* ``judge``: verdicts (:class:`~kilib.lm.llm.LocalGenerator`, greedy, 16 new tokens).

On a CPU the same code runs on a small shape, as a check of this script. Results go to
``results/bench/paper_stages_<device>.json``: seconds, per-unit rates (s per training step,
new tokens per second) and peaks (process RSS; CUDA max allocated and reserved).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kilib.bench.sft_step import char_tokenizer, random_llama
from kilib.results import hardware, package_versions, write_json
from kilib.runtime import cuda_available, results_root, synchronize

SHAPES = {  # Llama-2-7B on a GPU; a small Llama on a CPU
    "cuda": dict(hidden=4096, layers=32, heads=32, ffn=11008, vocab=32000),
    "cpu": dict(hidden=256, layers=2, heads=4, ffn=512, vocab=320),
}
WORK = {  # how much each stage does: enough for stable rates, far less than a full run
    "cuda": dict(gen_prompts=8, gen_tokens=1024, pairs=60, epochs=1, eval_prompts=16, judge_prompts=32),
    "cpu": dict(gen_prompts=2, gen_tokens=32, pairs=6, epochs=1, eval_prompts=4, judge_prompts=4),
}
TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)
SECTION = (
    "The 2023 Cricket World Cup was the 13th edition of the tournament, held in India from 5 October to "
    "19 November 2023. Ten teams took part, and Australia beat India in the final at Ahmedabad. "
) * 6


def build_model(folder: Path, shape: dict, device: str) -> None:
    """A random Llama of ``shape`` in bfloat16, initialised on ``device`` (a 7B model built
    on a CPU takes minutes), and a character-level tokenizer with a chat template."""
    from transformers import LlamaConfig

    if (folder / "config.json").exists():
        return
    config = LlamaConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["heads"],
        intermediate_size=shape["ffn"],
        max_position_embeddings=4096,
        pad_token_id=0,
        eos_token_id=1,
    )
    model = random_llama(config, device)
    model.save_pretrained(folder)
    del model
    char_tokenizer(TEMPLATE).save_pretrained(folder)


def _peaks() -> dict:
    from kilib.results import peak_memory

    out = peak_memory()
    if cuda_available():
        import torch

        out["peak_cuda_reserved_mib"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    return out


def stage_generate(folder: Path, work: dict) -> dict:
    from kilib.lm.llm import LocalGenerator

    gen = LocalGenerator(folder, max_new_tokens=work["gen_tokens"], temperature=0.7, batch_size=8)
    prompts = [
        f"Write question and answer pairs about this section ({i}):\n\n{SECTION}" for i in range(work["gen_prompts"])
    ]
    start = time.perf_counter()
    gen._loaded()
    synchronize()
    loaded = time.perf_counter()
    replies = gen.complete(prompts)
    synchronize()
    done = time.perf_counter()
    new_chars = sum(len(r) for r in replies)  # one character is one token for this tokenizer
    return {
        "load_s": loaded - start,
        "generate_s": done - loaded,
        "prompts": len(prompts),
        "new_tokens": new_chars,
        "new_tokens_per_s": new_chars / (done - loaded),
    }


def stage_train(folder: Path, work: dict) -> dict:
    import dataclasses

    from kilib.lm.data import qa_prompt
    from kilib.results import read_json
    from kilib.sft import adapters, presets

    base = presets.INJECTION_PRESETS["paper"]
    config = dataclasses.replace(
        base,
        model=str(folder),
        train=dataclasses.replace(base.train, epochs=work["epochs"], save_every_epoch=False, progress=False),
    )
    pairs = [
        {
            "question": f"In which city was the final of the 2023 edition number {i} played?",
            "answer": "The final was played at the Narendra Modi Stadium in Ahmedabad.",
        }
        for i in range(work["pairs"])
    ]
    items = [
        {"prompt": qa_prompt(f"Who won the 2023 final number {i}?", [SECTION[:600]]), "answer": "Australia"}
        for i in range(work["eval_prompts"])
    ]
    job = adapters.adapter_job(str(folder), config, pairs, {"eval": items}, seed=0)
    start = time.perf_counter()
    adapter, _ = adapters.train_and_answer(job)
    synchronize()
    total = time.perf_counter() - start
    log = read_json(adapter / "train.json")
    return {
        "total_s": total,
        "train_s": log["seconds"],
        "steps": log["steps"],
        "s_per_step": log["seconds"] / max(1, log["steps"]),
        "answer_and_load_s": total - log["seconds"],
        "eval_prompts": len(items),
        "max_new_tokens": config.max_new_tokens,
    }


def stage_judge(folder: Path, work: dict) -> dict:
    from kilib.lm.llm import LocalGenerator

    judge = LocalGenerator(folder, max_new_tokens=16, temperature=0.0, batch_size=8)
    prompts = [
        f"Question: who won?\nReference: Australia\nAnswer {i}: Australia beat India.\nIs the answer correct? "
        "Reply yes or no."
        for i in range(work["judge_prompts"])
    ]
    start = time.perf_counter()
    judge.complete(prompts)
    synchronize()
    return {"total_s": time.perf_counter() - start, "prompts": len(prompts)}


STAGES = {"generate": stage_generate, "train": stage_train, "judge": stage_judge}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="kilib.bench.stages", description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=list(STAGES), help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = "cuda" if cuda_available() else "cpu"
    work = WORK[device]
    if args.stage:
        with tempfile.TemporaryDirectory() as cache:
            os.environ["KILIB_CACHE_DIR"] = cache  # the adapter trains, whatever the user's cache holds
            result = STAGES[args.stage](args.folder, work)
        print(json.dumps({**result, **_peaks()}))
        return 0
    folder = results_root() / "bench" / "scratch" / f"llama-paper-shape-{device}"
    start = time.perf_counter()
    build_model(folder, SHAPES[device], device)
    build_s = time.perf_counter() - start
    runs = {}
    for stage in STAGES:
        out = subprocess.run(
            [sys.executable, "-m", "kilib.bench.stages", "--stage", stage, "--folder", str(folder)],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            return out.returncode
        runs[stage] = json.loads(out.stdout.strip().splitlines()[-1])
        cuda = runs[stage].get("peak_cuda_reserved_mib")
        print(
            f"{stage:>8}: "
            + ", ".join(f"{k} {v:,.2f}" for k, v in runs[stage].items() if isinstance(v, float))
            + (f" (peak CUDA reserved {cuda:,.0f} MiB)" if cuda else "")
        )
    target = write_json(
        results_root() / "bench" / f"paper_stages_{device}.json",
        {
            "what": "notebook 01's paper-profile stages through kilib's code, on a random model of the trainee's shape",
            "device": device,
            "shape": SHAPES[device],
            "work": work,
            "build_model_s": build_s,
            "stages": runs,
            "hardware": hardware(),
            "packages": package_versions(),
        },
    )
    print(f"written: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
