"""One LoRA adapter per Q&A set, trained and asked its evaluation questions, each step cached
(Mecklenburg et al. §3: LoRA rank 16, batch size 1, 3 epochs, loss on the answer tokens only);
and the untrained model's answers, closed-book and with retrieved passages."""

from __future__ import annotations

import dataclasses
import gc
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from kilib.jobs import side_by_side
from kilib.lm.data import qa_prompt
from kilib.lm.inference import generate
from kilib.lm.models import attach_lora, folder_fingerprint, load_adapter, load_causal_lm, model_ref
from kilib.lm.training import TrainConfig, render_prompt, sft_dataset, train
from kilib.results import cache_path, cached_dir, is_cached, read_json, write_json
from kilib.runtime import KilibError, set_seed
from kilib.sft.presets import InjectionConfig

__all__ = [
    "ADAPTER_CACHE",
    "ANSWER_CACHE",
    "model_fingerprint",
    "question_items",
    "adapter_job",
    "train_and_answer",
    "run_adapter_jobs",
    "base_answers",
]

ADAPTER_CACHE = "sft-adapters"  # trained adapters, keyed by what they were trained on
ANSWER_CACHE = "sft-answers"  # their answers, keyed by the adapter and the questions


_COSMETIC = ("progress", "logging_steps", "save_every_epoch")  # change what is printed or kept, not the model


def _train_fields(config: TrainConfig, seed: int) -> dict[str, Any]:
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in _COSMETIC}
    fields["seed"] = seed
    return fields


def model_fingerprint(base: str, revision: str | None = None) -> str:
    """What identifies a trainee in a cache key: a Hub id with the commit ``revision`` resolves
    to (:func:`kilib.lm.models.model_ref`), a local folder (the zoo's included) by its path and a
    hash of its files (:func:`kilib.lm.models.folder_fingerprint`)."""
    folder = Path(str(base)).expanduser()
    return folder_fingerprint(folder) if folder.is_dir() else model_ref(base, revision)


def question_items(pairs: Iterable[dict], passages: Sequence[str] | None = None) -> list[dict]:
    """Questions to ask: closed-book prompts, or RAG prompts with ``passages`` (one list per pair)."""
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
    ``eval_items`` maps an evaluation-set name to :func:`question_items` rows."""
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
    trained: dict[str, Any] = {}

    def build_adapter(folder: Path) -> None:
        trained["model"], trained["tokenizer"] = _train(job, folder)

    adapter = cached_dir(ADAPTER_CACHE, job["train_key"], build_adapter, resumable=job["checkpoints"])

    def build_answers(folder: Path) -> None:

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
    key = job["train_key"]
    config = dataclasses.replace(
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
    model, tokenizer = load_causal_lm(key["base"], quantization=key["quantization"], revision=key["revision"])
    return load_adapter(model, folder / "adapter"), tokenizer


def _release(loaded: dict) -> None:
    """Drop a model and return its memory now: a 7B model left to the cycle collector could
    still hold the GPU when the next one loads."""
    loaded.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _answer(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int) -> list[str]:
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
                f"[{finished}/{len(todo)}] {t.get('doc_id', '')} {t.get('rule', '')} {t.get('scale', '')}x "
                f"seed {t['seed']}: "
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
