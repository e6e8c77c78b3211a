"""``make bench``: throughput and peak memory of kilib's QLoRA SFT step against a bare
transformers + peft loop, on the same locally built model and the same data.

Each path runs in its own process, so each peak (process RSS; CUDA max allocated on a GPU)
is its own. The model is built from config with random weights and saved locally (the Hub
is never contacted): a small Llama on the CPU, a ~1B-parameter Llama on a GPU. Results go
to ``results/bench/qlora_sft_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    BitsAndBytesConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    TrainerCallback,
)

from kilib.results import hardware, package_versions, peak_memory, write_json
from kilib.runtime import cuda_available, results_root

SHAPES = {  # hidden, layers, heads, ffn, vocab, sequence length, batch size
    "cpu": dict(hidden=512, layers=4, heads=8, ffn=1408, vocab=8000, seq=256, batch=4),
    "cuda": dict(hidden=2048, layers=16, heads=16, ffn=5632, vocab=32000, seq=512, batch=8),
}
WARMUP_STEPS = 3


def build_model(folder: Path, shape: dict) -> None:
    """A random Llama and a character-level tokenizer, saved like a Hub download."""
    if (folder / "config.json").exists():
        return
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["heads"],
        intermediate_size=shape["ffn"],
        max_position_embeddings=2 * shape["seq"],
    )
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)


def char_tokenizer(chat_template: str | None = None):
    """A character-level tokenizer (printable ASCII and newline, one token per character;
    pad 0, EOS 1), with ``chat_template`` when given: what random benchmark models need."""
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2} | {chr(i): i - 29 for i in range(32, 127)} | {"\n": 98}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    if chat_template:
        fast.chat_template = chat_template
    return fast


def batches(shape: dict, steps: int):
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        ids = torch.randint(3, 98, (shape["batch"], shape["seq"]), generator=g)
        labels = ids.clone()
        labels[:, : shape["seq"] // 4] = -100  # a prompt quarter that carries no loss
        yield ids, labels


class StepClock(TrainerCallback):
    """Each optimiser step's seconds, appended to ``times`` (CUDA synchronised first)."""

    def __init__(self, times: list[float]):
        self.times = times

    def on_step_begin(self, *a, **k):
        self.t = time.perf_counter()

    def on_step_end(self, *a, **k):
        if cuda_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self.t)


def run_kilib(folder: Path, shape: dict, steps: int, device: str) -> dict:
    # Imported here, not at the top: each path runs in a process of its own, so that the bare
    # loop's peak memory does not hold kilib's training stack (datasets included).
    from datasets import Dataset

    from kilib.lm.models import attach_lora, load_causal_lm
    from kilib.lm.training import TrainConfig, train

    model, tok = load_causal_lm(folder, device=device)
    model = attach_lora(model, r=16)
    rows = [
        {"input_ids": ids.tolist(), "attention_mask": [1] * len(ids), "labels": labels.tolist()}
        for batch_ids, batch_labels in batches(shape, steps)
        for ids, labels in zip(batch_ids, batch_labels)
    ]
    times: list[float] = []
    config = TrainConfig(
        epochs=1,
        batch_size=shape["batch"],
        lr=2e-4,
        max_steps=steps,
        progress=False,
        save_every_epoch=False,
        logging_steps=steps,
    )
    with tempfile.TemporaryDirectory() as out:
        train(model, Dataset.from_list(rows), config, out, tokenizer=tok, callbacks=[StepClock(times)], resume=False)
    return {"step_seconds": times}


def run_bare(folder: Path, shape: dict, steps: int, device: str) -> dict:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    q = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
    )
    model = AutoModelForCausalLM.from_pretrained(
        folder, quantization_config=q, dtype=dtype, device_map={"": 0} if device == "cuda" else {"": "cpu"}
    )
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(
        model,
        LoraConfig(
            r=16,
            lora_alpha=16,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            task_type="CAUSAL_LM",
        ),
    )
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    model.train()
    times = []
    for ids, labels in batches(shape, steps):
        t = time.perf_counter()
        ids, labels = ids.to(model.device), labels.to(model.device)
        with torch.autocast(device, dtype=dtype, enabled=device == "cuda"):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return {"step_seconds": times}


def one(path: str, folder: Path, shape: dict, steps: int, device: str) -> dict:
    result = (run_kilib if path == "kilib" else run_bare)(folder, shape, steps, device)
    timed = result["step_seconds"][WARMUP_STEPS:]
    tokens = shape["batch"] * shape["seq"] * len(timed)
    return {
        "path": path,
        "steps_timed": len(timed),
        "tokens_per_second": tokens / sum(timed),
        "median_step_seconds": sorted(timed)[len(timed) // 2],
        **peak_memory(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="kilib.bench.sft_step", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps per path (default 12 CPU, 30 GPU)")
    parser.add_argument("--one", choices=["kilib", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = "cuda" if cuda_available() else "cpu"
    shape = SHAPES[device]
    steps = args.steps or (12 if device == "cpu" else 30)
    if args.one:
        print(json.dumps(one(args.one, args.folder, shape, steps, device)))
        return 0
    folder = results_root() / "bench" / "scratch" / f"llama-{device}"
    build_model(folder, shape)
    runs = {}
    for path in ("kilib", "bare"):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "kilib.bench.sft_step",
                "--one",
                path,
                "--folder",
                str(folder),
                "--steps",
                str(steps),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            return out.returncode
        runs[path] = json.loads(out.stdout.strip().splitlines()[-1])
        run = runs[path]
        print(
            f"{path:>6}: {run['tokens_per_second']:,.0f} tokens/s, peak RSS {run['peak_rss_mib']:,.0f} MiB"
            + (f", peak CUDA {run['peak_cuda_allocated_mib']:,.0f} MiB" if run["peak_cuda_allocated_mib"] else "")
        )
    ratio = runs["kilib"]["tokens_per_second"] / runs["bare"]["tokens_per_second"]
    print(f" ratio: kilib / bare = {ratio:.3f}")
    target = write_json(
        results_root() / "bench" / f"qlora_sft_{device}.json",
        {
            "what": "QLoRA SFT step (NF4 base, LoRA r=16 on all linears): "
            "kilib.lm.training.train vs a bare transformers+peft loop",
            "device": device,
            "shape": shape,
            "steps": steps,
            "warmup_steps_excluded": WARMUP_STEPS,
            "runs": runs,
            "ratio_kilib_over_bare": ratio,
            "hardware": hardware(),
            "packages": package_versions(),
        },
    )
    print(f"written: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
