"""``make bench``: throughput and peak memory of kilib's QLoRA SFT step against a bare
transformers + peft loop, on the same locally built model and the same rows.

Three paths, each in its own process per repeat, so that each peak (process RSS; CUDA max
allocated on a GPU) is its own: ``kilib`` (:func:`kilib.lm.training.train`, transformers'
Trainer), ``bare`` (a plain loop that calls the model with ``use_cache=False``, as kilib's
``train`` trains) and ``bare-cache`` (the same loop with ``use_cache=True``: each training
forward also builds a KV cache it never uses, as the first version of this benchmark did).
Both sides time the same span (:data:`kilib.bench.sft_cases.TIMED_SPAN`) over the same rows in
the same order: the order kilib's Trainer draws them, recorded by its collator in the first
repeat and followed by the bare loop. The paths rotate their order across repeats.

The model is built from config with random weights and saved locally (the Hub is never
contacted). ``--case`` picks the shape (:data:`kilib.bench.sft_cases.CASES`): ``default``
(about 1B parameters on a GPU), ``nb01`` and ``nb02`` (notebooks 01 and 02's paper profiles, a
Llama-2-7B shape), or ``all``; on the CPU each runs scaled down. Results go to
``results/bench/qlora_sft_<device>[_<case>].json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
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

from kilib.bench.sft_cases import (
    CASES,
    PATHS,
    TIMED_SPAN,
    Case,
    make_rows,
    pad_batch,
    repeat_orders,
    rows_per_step,
    run_figures,
    step_tokens,
    steps_of,
    summarize,
    table,
)
from kilib.results import hardware, package_versions, peak_memory, write_json
from kilib.runtime import KilibError, cuda_available, results_root

SHAPES = {device: CASES["default"].shape(device) for device in ("cpu", "cuda")}  # the default case's shapes
WARMUP_STEPS = 3
REPEATS = 3
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_model(folder: Path, shape: dict, device: str = "cpu", positions: int | None = None) -> None:
    """A random Llama and a character-level tokenizer, saved like a Hub download. On the CPU it
    is initialised by transformers in float32 and cast to bfloat16; on a GPU it is made in
    bfloat16 on the device (a 7B model built on a CPU in float32 needs 27 GB and minutes):
    normal(0, 0.02) weights and norms of one."""
    if (folder / "config.json").exists():
        return
    config = LlamaConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["heads"],
        intermediate_size=shape["ffn"],
        max_position_embeddings=positions or 2 * shape["seq"],
    )
    if device == "cpu":
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    else:
        model = random_llama(config, device)
    model.save_pretrained(folder)
    del model
    char_tokenizer().save_pretrained(folder)


def random_llama(config, device: str):
    """A Llama of ``config`` made in bfloat16 on ``device`` without a float32 copy first (a 7B
    model in float32 needs 27 GB and minutes on a CPU): normal(0, 0.02) weights, norms of one."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta"):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    model = model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=generator)
    return model


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
    """``steps`` random batches of ``shape`` as ``(ids, labels)``, a prompt quarter without loss
    (the thread benchmark's steps)."""
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        ids = torch.randint(3, 98, (shape["batch"], shape["seq"]), generator=g)
        labels = ids.clone()
        labels[:, : shape["seq"] // 4] = -100  # a prompt quarter that carries no loss
        yield ids, labels


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class StepClock(TrainerCallback):
    """Each optimiser step's seconds, from ``on_step_begin`` (the step's batches fetched and on
    the device) to ``on_step_end`` (optimiser stepped), appended to ``times``; on a GPU, CUDA
    is synchronised at both ends."""

    def __init__(self, times: list[float]):
        self.times = times
        self.device = "cuda" if cuda_available() else "cpu"

    def on_step_begin(self, *a, **k):
        synchronize(self.device)
        self.t = time.perf_counter()

    def on_step_end(self, *a, **k):
        synchronize(self.device)
        self.times.append(time.perf_counter() - self.t)


class RowRecorder:
    """A data collator that notes the ``row`` id of each example, in the order the Trainer
    draws them, and collates the rest of each example with ``collate``."""

    def __init__(self, collate):
        self.collate = collate
        self.order: list[int] = []

    def __call__(self, features):
        self.order.extend(int(f["row"]) for f in features)
        return self.collate([{k: v for k, v in f.items() if k != "row"} for f in features])


def plan_rows(plan: dict) -> list[dict]:
    shape = plan["shape"]
    return make_rows(shape, plan["rows"], plan["steps"] * rows_per_step(shape))


def run_kilib(folder: Path, plan: dict, device: str) -> dict:
    # Imported here, not at the top: each path runs in a process of its own, so that the bare
    # loop's peak memory does not hold kilib's training stack (datasets included).
    from datasets import Dataset

    from kilib.lm.models import attach_lora, load_causal_lm
    from kilib.lm.training import TrainConfig, collator, train

    shape, steps = plan["shape"], plan["steps"]
    model, tok = load_causal_lm(folder, device=device)
    model = attach_lora(model, r=16)
    rows = [
        {"row": i, "input_ids": r["input_ids"], "attention_mask": [1] * len(r["input_ids"]), "labels": r["labels"]}
        for i, r in enumerate(plan_rows(plan))
    ]
    times: list[float] = []
    recorder = RowRecorder(collator(tok))
    config = TrainConfig(
        epochs=1,
        batch_size=shape["batch"],
        grad_accum=shape["accum"],
        lr=2e-4,
        max_steps=steps,
        max_length=shape["seq"],
        gradient_checkpointing=plan["gradient_checkpointing"],
        progress=False,
        save_every_epoch=False,
        logging_steps=steps,
    )
    with tempfile.TemporaryDirectory() as out:
        train(
            model,
            Dataset.from_list(rows),
            config,
            out,
            tokenizer=tok,
            data_collator=recorder,
            callbacks=[StepClock(times)],
            resume=False,
        )
    return {"step_seconds": times, "row_order": recorder.order, "cache_built": False}


def load_bare(folder: Path, plan: dict, device: str):
    """The bare loop's model and optimiser: the NF4 base and LoRA r=16 as kilib's, peft's QLoRA
    preparation, non-reentrant gradient checkpointing where the plan asks for it, and AdamW as
    kilib's Trainer makes it (no weight decay; fused on CUDA)."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    q = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
    )
    model = AutoModelForCausalLM.from_pretrained(
        folder, quantization_config=q, dtype=dtype, device_map={"": 0} if device == "cuda" else {"": "cpu"}
    )
    lora = LoraConfig(
        r=16, lora_alpha=16, lora_dropout=0.0, bias="none", target_modules=LORA_TARGETS, task_type="CAUSAL_LM"
    )
    with warnings.catch_warnings():  # peft calls transformers methods deprecated in v5
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*", category=FutureWarning)
        model = get_peft_model(prepare_model_for_kbit_training(model, use_gradient_checkpointing=False), lora)
    if plan["gradient_checkpointing"]:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0, fused=device == "cuda")
    model.train()
    return model, opt, params


def bare_steps(model, opt, params, plan: dict, device: str, use_cache: bool) -> dict:
    """The bare loop over the plan's rows in the plan's order (the natural order where it has
    none): each step's micro-batches are padded and moved to the device first, then timed from
    a synchronised start to a synchronised end through forward, backward, clipping and the
    optimiser step. ``cache_built``: whether a forward returned a KV cache."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    rows = plan_rows(plan)
    order = plan.get("order") or list(range(len(rows)))
    times, cache_built = [], False
    for step in steps_of(order, plan["shape"]):
        micro = [{k: v.to(model.device) for k, v in pad_batch([rows[i] for i in ids]).items()} for ids in step]
        synchronize(device)
        t = time.perf_counter()
        for batch in micro:
            with torch.autocast(device, dtype=dtype, enabled=device == "cuda"):
                out = model(**batch, use_cache=use_cache)
            cache_built = cache_built or getattr(out, "cache", None) is not None
            loss = out.loss / len(micro)
            del out
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        synchronize(device)
        times.append(time.perf_counter() - t)
    return {"step_seconds": times, "row_order": order, "cache_built": cache_built}


def run_bare(folder: Path, plan: dict, device: str, use_cache: bool = False) -> dict:
    model, opt, params = load_bare(folder, plan, device)
    return bare_steps(model, opt, params, plan, device, use_cache)


def one(path: str, folder: Path, plan: dict, device: str) -> dict:
    """One path's run in this process: its figures (:func:`kilib.bench.sft_cases.run_figures`),
    peak memory, the order it trained the rows in and whether it built a KV cache."""
    if path == "kilib":
        result = run_kilib(folder, plan, device)
    else:
        result = run_bare(folder, plan, device, use_cache=path == "bare-cache")
    tokens = step_tokens(plan_rows(plan), result["row_order"], plan["shape"])
    return {
        "path": path,
        **run_figures(result["step_seconds"], tokens, WARMUP_STEPS),
        "step_seconds": result["step_seconds"],
        "row_order": result["row_order"],
        "cache_built": result["cache_built"],
        **peak_memory(),
    }


def launch(path: str, folder: Path, plan_file: Path, device: str) -> dict:
    """:func:`one` in a process of its own."""
    command = [sys.executable, "-m", "kilib.bench.sft_step", "--one", path, "--folder", str(folder)]
    out = subprocess.run([*command, "--plan", str(plan_file)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        print(out.stderr[-3000:], file=sys.stderr)
        raise KilibError(f"the {path} run failed (exit {out.returncode}, its stderr above): fix that, then rerun")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(case: Case, device: str, steps: int, repeats: int, scratch: Path, run=launch) -> dict:
    """Every path of ``case`` ``repeats`` times, in the rotating order of
    :func:`kilib.bench.sft_cases.repeat_orders`, each through ``run(path, folder, plan_file,
    device)``; the record that :func:`main` writes."""
    if steps <= WARMUP_STEPS:
        raise KilibError(
            f"--steps {steps} leaves no step after the {WARMUP_STEPS} warm-up steps: pass --steps 4 or more"
        )
    if repeats < 1:
        raise KilibError(f"--repeats {repeats} runs nothing: pass --repeats 1 or more (3 for a spread)")
    shape = case.shape(device)
    folder = scratch / "llama-{device}-{hidden}x{layers}-ffn{ffn}-v{vocab}".format(device=device, **shape)
    build_model(folder, shape, device, case.positions)
    plan = {"case": case.name, "shape": shape, "rows": case.rows, "steps": steps}
    plan |= {"gradient_checkpointing": case.gradient_checkpointing, "order": None}
    plan_file = scratch / f"plan-{device}-{case.name}.json"
    plan_file.write_text(json.dumps(plan))
    runs: dict[str, list[dict]] = {path: [] for path in PATHS}
    orders = repeat_orders(repeats)
    for r, paths in enumerate(orders):
        for path in paths:
            result = run(path, folder, plan_file, device)
            if plan["order"] is None:  # the first run is kilib's: the bare loop follows its draw
                plan["order"] = result["row_order"]
                plan_file.write_text(json.dumps(plan))
            elif result["row_order"] != plan["order"]:
                raise KilibError(
                    f"the {path} run of repeat {r + 1} trained the rows in another order than kilib's first run, "
                    "so the paths no longer see the same batches: keep TrainConfig's seed fixed and rerun"
                )
            runs[path].append({k: v for k, v in result.items() if k != "row_order"} | {"repeat": r + 1})
    tokens = step_tokens(plan_rows(plan), plan["order"], shape)
    return {
        "what": "QLoRA SFT step (NF4 base, LoRA r=16 on all linears): kilib.lm.training.train against a bare "
        "transformers+peft loop without a KV cache (bare) and with one (bare-cache)",
        "timed_span": TIMED_SPAN,
        "case": case.name,
        "case_what": case.what,
        "device": device,
        "shape": shape,
        "shape_note": case.shape_note(device),
        **({"gpu_shape": case.shape("cuda")} if device != "cuda" else {}),
        "rows": case.rows,
        "rows_per_step": rows_per_step(shape),
        "tokens_per_step_mean": sum(tokens) / len(tokens),
        "gradient_checkpointing": case.gradient_checkpointing,
        "same_rows": "every path trains the same rows in the same order (kilib's Trainer's draw, recorded by "
        "its collator in the first run and checked in every later one)",
        "row_order": plan["order"],
        "steps": steps,
        "warmup_steps_excluded": WARMUP_STEPS,
        "repeats": repeats,
        "repeat_orders": orders,
        **summarize(runs),
        "runs": runs,
        "hardware": hardware(),
        "packages": package_versions(),
    }


def output_path(device: str, case: str) -> Path:
    """``results/bench/qlora_sft_<device>.json`` for the default case, ``..._<device>_<case>.json`` else."""
    return (
        results_root()
        / "bench"
        / (f"qlora_sft_{device}.json" if case == "default" else f"qlora_sft_{device}_{case}.json")
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="kilib.bench.sft_step", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--case", choices=[*CASES, "all"], default="default", help="the shape to measure (default: default)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="optimiser steps per run (default: the case's, per device)"
    )
    parser.add_argument("--repeats", type=int, default=REPEATS, help=f"runs of each path (default {REPEATS})")
    parser.add_argument("--one", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--plan", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = "cuda" if cuda_available() else "cpu"
    if args.one:
        print(json.dumps(one(args.one, args.folder, json.loads(args.plan.read_text()), device)))
        return 0
    scratch = results_root() / "bench" / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        for name in CASES if args.case == "all" else [args.case]:
            case = CASES[name]
            record = measure(case, device, args.steps or case.steps[device], args.repeats, scratch)
            target = write_json(output_path(device, name), record)
            print(table(record))
            print(f"written: {target}")
    except KilibError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
