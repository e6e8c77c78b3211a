"""The memory study of notebook 04 (docs/methods.md, "## 04 Memory modules on FEVER"): the
lab note "Does Adaptation of Neural Memory help factual prediction?".

Each pretrained model answers every evaluated claim k-shot (:func:`sweep`); a memory
(:mod:`kilib.memory.model`) trained on each store answers it one-shot (:func:`run_job`), as do
the ablations. Answers are parsed strictly (unparseable = wrong) and scored by accuracy,
micro-F1 and macro-F1 with bootstrap intervals (:func:`scores`); :func:`compare` pairs two
conditions by claim. :func:`memory_runs`, :func:`ablation_runs` and :func:`paper_claims` are
the notebook's runs and claims; :mod:`kilib.memory.findings` turns them into its tables and prose.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from kilib.lm.data import FEVER_LABELS, FEVER_LETTERS, fever_prompt
from kilib.lm.inference import generate
from kilib.lm.models import decoder_layers, load_causal_lm, model_ref, progress_bars
from kilib.lm.scoring import parse_choice
from kilib.lm.training import TrainConfig, lm_dataset, train
from kilib.memory.fever import (
    PAPER_DATA,
    claims_split,
    demonstrations,
    page_texts,
    select_pages,
    template_text,
    tiny_claims,
    top_pages,
)
from kilib.memory.model import attach_memory, save_memory
from kilib.memory.presets import VARIANTS, MemoryConfig
from kilib.results import cached_dir, read_json, write_json
from kilib.runtime import KilibError, set_seed
from kilib.stats import classification_ci, paired_comparison
from kilib.tiny import zoo


@dataclass
class MemoryInputs:
    models: dict[str, str]  # name -> model folder or Hub id
    pages: dict[str, dict]  # kept page -> {"text", "period"} ("pre"/"post" in the tiny world, "" on the Hub)
    eval: list[dict]  # validation claims on the kept pages: {"claim", "label", "page"}
    train: list[dict]  # training claims on the kept pages (the Template memory's data)
    demo_pool: list[dict]  # training claims on other pages (the demonstrations)
    selection: dict[str, int]
    source: str


def study_inputs(config: MemoryConfig) -> MemoryInputs:
    """Models, pages and claims for a preset. On a zoo (``config.zoo``: tiny, smoke): the zoo
    models as pretrained, and the world's pages and claims. Otherwise (paper): the Hub models,
    FEVER claims (:data:`kilib.memory.fever.PAPER_DATA`) and page texts."""
    names = tuple(
        dict.fromkeys(
            config.models
            + config.memory_models
            + config.ablation_models
            + config.gate_ablation_models
            + config.full_update_models
        )
    )
    if not names:
        raise KilibError("the memory study names no model: set models in the preset")
    bad = [v for v in config.variants + config.full_update_variants if v not in VARIANTS]
    if bad:
        raise KilibError(f"unknown variant(s) {', '.join(bad)}: choose among {', '.join(VARIANTS)}")
    if not config.zoo:
        models = {n: n for n in names}
        train, validation = claims_split(str(PAPER_DATA["train"])), claims_split(str(PAPER_DATA["eval"]))
        page_text, periods = None, {}
        source = f"FEVER ({PAPER_DATA['claims']}) and Hub models"
    else:
        zconfig = zoo.zoo_config(config.zoo)
        # As pretrained: notebook 01's reading stage cost llama-m the claim format (no answer parsed at any k).
        models = {n: str(zoo.pretrained_dir(zconfig, n)) for n in names}
        world = zoo.world_of(zconfig)
        train, validation = tiny_claims(world, zconfig)
        page_text = {a.title: a.text for a in world.articles.values()}
        periods = {a.title: a.period for a in world.articles.values()}
        source = f"the {zconfig.world_size} world's pages and claims"
    trained_texts = {c["claim"] for c in train}
    duplicates = sum(c["claim"] in trained_texts for c in validation)
    validation = [c for c in validation if c["claim"] not in trained_texts]  # the Template memory trains on those
    if page_text is None:  # the paper profile reads the texts of the top pages only
        page_text = page_texts(top_pages(validation, config.pages))
    kept, selection = select_pages(validation, train, page_text, config.pages)
    selection = {**selection, "dropped_as_training_claims": duplicates}
    keep = set(kept)
    evaluated = [c for c in validation if c["page"] in keep]
    if config.eval_claims:
        random.Random("kilib.memory.eval").shuffle(evaluated)
        evaluated = sorted(evaluated[: config.eval_claims], key=lambda c: kept.index(c["page"]))
    pages = {p: {"text": page_text[p], "period": periods.get(p, "")} for p in kept}
    demo_pool = [c for c in train if c["page"] not in keep]
    demonstrations(
        demo_pool, max((*config.shots, config.memory_shots)), config.demo_seed
    )  # enough, before any model loads
    return MemoryInputs(
        models=models,
        pages=pages,
        eval=[{"claim": c["claim"], "label": c["label"], "page": c["page"]} for c in evaluated],
        train=[c for c in train if c["page"] in keep],
        demo_pool=demo_pool,
        selection=selection,
        source=source,
    )


# -- evaluation ----------------------------------------------------------------------------
def evaluate(model, tokenizer, inputs: MemoryInputs, config: MemoryConfig, shots: Sequence[int]) -> list[dict]:
    """Greedy answers to every evaluated claim for each k in ``shots``, parsed strictly:
    ``parsed`` is the letter or "" (unparseable, counted wrong)."""
    answers = []
    for k in shots:
        demos = demonstrations(inputs.demo_pool, k, config.demo_seed)
        prompts = [fever_prompt(c["claim"], demos) for c in inputs.eval]
        outputs = generate(
            model,
            tokenizer,
            prompts,
            max_new_tokens=config.max_new_tokens,
            batch_size=config.eval_batch_size,
            stop=("\n",),
        )
        for i, (c, o) in enumerate(zip(inputs.eval, outputs)):
            parsed = parse_choice(o, FEVER_LETTERS)
            gold = FEVER_LETTERS[FEVER_LABELS.index(c["label"])]
            answers.append(
                {
                    "shots": k,
                    "item": i,
                    "page": c["page"],
                    "period": inputs.pages[c["page"]]["period"],
                    "label": gold,
                    "prediction": o.strip(),
                    "parsed": parsed or "",
                    "correct": float(parsed == gold),
                }
            )
    return answers


def scores(answers: Sequence[Mapping[str, Any]], by: Sequence[str] = ("model", "shots")) -> pd.DataFrame:
    """Accuracy, micro-F1 and macro-F1 per group (the note's columns), each with a 95% bootstrap
    interval over claims, and the share of unparseable answers."""
    answers = list(answers)
    if not answers:
        raise KilibError("no answers to score: evaluate a model first")
    out = []
    for key, g in pd.DataFrame(answers).groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        preds = [p or None for p in g["parsed"]]
        s = classification_ci(preds, list(g["label"]), FEVER_LETTERS)
        out.append({**dict(zip(by, key)), **s, "unparsed": float((g["parsed"] == "").mean())})
    return pd.DataFrame(out)


# -- runs ------------------------------------------------------------------------------------
def _eval_key(inputs: MemoryInputs, config: MemoryConfig) -> dict:
    # the demonstrations a prompt can hold, not their pool (FEVER's is 225k claims; each k-shot
    # prompt's demonstrations are the first k of these)
    demos = demonstrations(inputs.demo_pool, max((*config.shots, config.memory_shots)), config.demo_seed)
    return {
        "eval": inputs.eval,
        "demos": demos,
        "max_new_tokens": config.max_new_tokens,
        "batch_size": config.eval_batch_size,
        "quantization": config.quantization,
    }


def sweep(inputs: MemoryInputs, config: MemoryConfig, name: str) -> dict:
    """The pretrained model ``name`` (no memory) on every claim for each k in ``config.shots``; cached."""
    path = inputs.models[name]
    key = {
        "kind": "memory-sweep",
        "version": 1,
        "model": model_ref(path),
        "shots": config.shots,
        **_eval_key(inputs, config),
    }

    def build(folder: Path) -> None:
        model, tokenizer = load_causal_lm(path, quantization=config.quantization)
        write_json(
            folder / "run.json",
            {
                "model": name,
                "method": "pretrained",
                "answers": evaluate(model, tokenizer, inputs, config, config.shots),
            },
        )

    return read_json(cached_dir("memory", key, build) / "run.json")


def training_texts(inputs: MemoryInputs, config: MemoryConfig, variant: str) -> list[str]:
    """What a memory stores: the kept pages' text (document), the training claims on them in the
    one-shot template with their answers (template), or both."""
    if variant not in VARIANTS:
        raise KilibError(f"unknown variant {variant!r}: choose among {', '.join(VARIANTS)}")
    texts = []
    if variant in ("document", "document+template"):
        texts += [p["text"] for p in inputs.pages.values()]
    if variant in ("template", "document+template"):
        demos = demonstrations(inputs.demo_pool, config.memory_shots, config.demo_seed)
        texts += [template_text(c["claim"], c["label"], demos) for c in inputs.train]
    return texts


def method_name(
    config: MemoryConfig, variant: str, weight_decay: float, full_update: bool = False, gate: float | None = None
) -> str:
    """``"memory: document"``, with what differs from the profile's settings in brackets, or
    ``"full update: template"``."""
    if full_update:
        return f"full update: {variant}"
    extra = [f"weight decay {weight_decay:g}"] if weight_decay != config.train.weight_decay else []
    extra += [f"gate {gate:g} at the start"] if gate is not None and gate != config.gate else []
    return f"memory: {variant}" + (f" ({', '.join(extra)})" if extra else "")


def run_job(
    inputs: MemoryInputs,
    config: MemoryConfig,
    name: str,
    variant: str,
    seed: int = 0,
    weight_decay: float | None = None,
    full_update: bool = False,
    gate: float | None = None,
) -> dict:
    """Train a memory on ``variant`` into the frozen ``name`` (or, with ``full_update``, every
    weight of ``name`` and no module) and answer every claim at ``memory_shots``; cached.
    ``weight_decay`` and ``gate`` (the gate's starting value) override the config's."""
    train_config = config.full_train if full_update else config.train
    if weight_decay is not None:
        train_config = dataclasses.replace(train_config, weight_decay=weight_decay)
    train_config = dataclasses.replace(train_config, seed=seed)
    gate = config.gate if gate is None else float(gate)
    key = {
        "kind": "memory-run",
        "version": 1,
        "model": model_ref(inputs.models[name]),
        "variant": variant,
        "seed": seed,
        "full_update": full_update,
        "texts": training_texts(inputs, config, variant),
        "train": train_config,
        "memory": [config.memory_dim, config.depth, gate],
        "block_size": config.block_size,
        "memory_shots": config.memory_shots,
        **_eval_key(inputs, config),
    }
    folder = cached_dir(
        "memory", key, lambda tmp: _run(inputs, config, name, variant, seed, train_config, full_update, gate, tmp)
    )
    return read_json(folder / "run.json")


def _run(
    inputs: MemoryInputs,
    config: MemoryConfig,
    name: str,
    variant: str,
    seed: int,
    train_config: TrainConfig,
    full_update: bool,
    gate: float,
    folder: Path,
) -> None:
    path = inputs.models[name]
    set_seed(seed)
    if full_update:
        model, tokenizer = load_causal_lm(path, quantization="none", dtype=torch.float32)
        for p in model.parameters():
            p.requires_grad = True
    else:
        base, tokenizer = load_causal_lm(path, quantization=config.quantization)
        model = attach_memory(base, config.memory_dim, config.depth, gate, seed)
    data = lm_dataset(tokenizer, training_texts(inputs, config, variant), config.block_size)
    reuse = config.reuse_lower_blocks and not full_update
    with model.reusing_lower_blocks() if reuse else contextlib.nullcontext():
        result = train(model, data, train_config, folder / "checkpoints", tokenizer=tokenizer)
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    if full_update:
        with progress_bars(False):
            model.save_pretrained(folder / "model")
        tokenizer.save_pretrained(folder / "model")
        del model
        model, tokenizer = load_causal_lm(folder / "model", quantization=config.quantization)
        extra: dict[str, Any] = {}
    else:
        save_memory(model, folder / "memory")
        extra = {
            "layer": model.layer,
            "n_blocks": len(decoder_layers(base)),
            "memory_parameters": sum(p.numel() for p in model.memory.parameters()),
            "gate": float(model.memory.gate.detach().cpu()[0]),
        }
    method = method_name(config, variant, train_config.weight_decay, full_update, gate)
    write_json(
        folder / "run.json",
        {
            "model": name,
            "method": method,
            "variant": variant,
            "full_update": full_update,
            "seed": seed,
            "weight_decay": train_config.weight_decay,
            "gate_init": None if full_update else gate,
            **extra,
            "train_examples": len(data),
            "reused_lower_blocks": reuse,
            "train": {"steps": result.steps, "losses": result.losses, "seconds": result.seconds},
            "answers": evaluate(model, tokenizer, inputs, config, (config.memory_shots,)),
        },
    )


def answer_rows(runs) -> list[dict]:
    """One row per answer, tagged with the run's model, method, weight decay and seed."""
    return [
        {
            "model": r["model"],
            "method": r["method"],
            "weight_decay": r.get("weight_decay"),
            "seed": r.get("seed", 0),
            **a,
        }
        for r in runs
        for a in r["answers"]
    ]


def compare(answers, shots: int, better: tuple[str, str], worse: tuple[str, str], claim: str) -> dict:
    """``better`` against ``worse``, each a (model, method), on the same claims at ``shots``,
    paired by claim: the accuracy difference in points with a 95% bootstrap interval, and its verdict."""
    df = pd.DataFrame(list(answers))
    df = df[df.shots == shots].assign(condition=lambda d: d.model + " | " + d.method)
    r = paired_comparison(df, "condition", " | ".join(better), " | ".join(worse))
    return {
        "claim": claim,
        "better": list(better),
        "worse": list(worse),
        "shots": shots,
        "higher": 100 * r["higher"],
        "lower": 100 * r["lower"],
        "difference": 100 * r["difference"],
        "difference_ci": [100 * x for x in r["difference_ci"]],
        "verdict": r["verdict"],
    }


def changed_share(answers, model: str, method: str, shots: int, against: str = "pretrained") -> float:
    """The share of claims whose parsed answer under ``method`` differs from ``against``'s (same
    model, same k), over every seed of ``method`` against ``against``'s first seed."""
    df = pd.DataFrame(list(answers))
    df = df[(df.model == model) & (df.shots == shots)]
    a = df[df.method == method]
    b = df[df.method == against]
    if a.empty or b.empty:
        raise KilibError(f"no {shots}-shot answers of {model} under {method!r} and {against!r} to compare")
    b = b[b.seed == b.seed.min()].set_index("item")["parsed"]
    return float((a["parsed"].to_numpy() != b.reindex(a["item"]).to_numpy()).mean())


BASE = "pretrained"  # the method name of a model without memory


def memory_runs(inputs: MemoryInputs, config: MemoryConfig) -> list[dict]:
    """A memory per model, store and seed, with the profile's settings (the note's second table)."""
    return [
        run_job(inputs, config, name, variant, seed)
        for name in config.memory_models
        for variant in config.variants
        for seed in config.seeds
    ]


def ablation_runs(inputs: MemoryInputs, config: MemoryConfig) -> tuple[list[dict], list[dict], list[dict]]:
    """The note's ablations (weight decay 0.01; a full-weight update without a module) and
    kilib's (a gate that starts at 0): ``(weight decay runs, gate runs, full-update runs)``."""
    weight_decay = [
        run_job(inputs, config, name, variant, seed, weight_decay=config.ablation_weight_decay)
        for name in config.ablation_models
        for variant in config.variants
        for seed in config.seeds
    ]
    gate = [
        run_job(inputs, config, name, variant, seed, gate=0.0)
        for name in config.gate_ablation_models
        for variant in config.variants
        for seed in config.seeds
    ]
    full = [
        run_job(inputs, config, name, variant, seed, full_update=True)
        for name in config.full_update_models
        for variant in config.full_update_variants
        for seed in config.seeds
    ]
    return weight_decay, gate, full


def paper_claims(
    answers: Sequence[Mapping[str, Any]],
    config: MemoryConfig,
    memory: Sequence[Mapping[str, Any]],
    ablated: Sequence[Mapping[str, Any]],
) -> tuple[list[dict], list[dict], list[dict]]:
    """``(memory claims, ablation claims, size claims)``: each first-seed memory (``memory``) and
    ablation (``ablated``) against its pretrained model at ``memory_shots``, and at each k the
    larger of ``size_pair`` against the smaller (when both are in the sweep)."""

    def beats(r):
        return compare(
            answers,
            config.memory_shots,
            (r["model"], r["method"]),
            (r["model"], BASE),
            f"{r['model']}, {r['method']}: beats the pretrained model",
        )

    first_seed = config.seeds[0]
    memory_claims = [beats(r) for r in memory if r["seed"] == first_seed]
    ablation_claims = [beats(r) for r in ablated if r["seed"] == first_seed]
    small, large = config.size_pair or (None, None)
    size_claims = (
        [compare(answers, k, (large, BASE), (small, BASE), f"{k}-shot: {large} beats {small}") for k in config.shots]
        if small in config.models and large in config.models
        else []
    )
    return memory_claims, ablation_claims, size_claims
