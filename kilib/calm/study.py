"""The CALM study of notebook 03 (docs/methods.md, "## 03 CALM composition"): its inputs, the
models' stages, every run (the compositions, the baselines, the LoRA baseline), the tables, the
paired comparisons behind the claims.

The composition itself is :mod:`kilib.calm.model`; the tasks and rows :mod:`kilib.calm.tasks`; the
value probe :mod:`kilib.calm.probe`; the presets :mod:`kilib.calm.presets`; the notebook's claims
and prose :mod:`kilib.calm.claims`.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from transformers import AutoModelForCausalLM

from kilib.calm.model import bridge_parameters, compose, layer_plan, save_bridges, width
from kilib.calm.presets import AUGMENTS, CalmConfig, TrainConfig, augment_precision, quantization_of
from kilib.calm.tasks import (
    COMPOSITION_TASKS,
    CONTROL,
    EXTRA_TASKS,
    TASK_NAMES,
    TASKS,
    is_correct,
    sft_rows,
    study_rows,
    task_prompt,
)
from kilib.jobs import cpu_threads, side_by_side
from kilib.lm.inference import generate
from kilib.lm.models import (
    attach_lora,
    check_same_tokenizer,
    load_causal_lm,
    load_config,
    load_tokenizer,
    lora_target_modules,
    model_ref,
    padding_side,
)
from kilib.lm.training import PackingCollator, check_packing, render_prompt, sft_dataset, train
from kilib.results import cached_dir, read_json, write_json
from kilib.runtime import KilibError, set_seed
from kilib.stats import bootstrap_ci, paired_comparison
from kilib.tiny import zoo

MODEL_NAMES = {"augment": "m_A (augment)", "anchor": "m_B (anchor)", "calm": "CALM"}
PAPER_TABLE1 = {  # accuracy %, PaLM2-XXS (m_A) and PaLM2-XS (m_B)
    "substitution": {"augment": 98.1, "anchor": 0.0, "calm": 92.9},
    "numeric": {"augment": 4.2, "anchor": 73.7, "calm": 72.0},
    "kv": {"augment": 0.7, "anchor": 0.0, "calm": 84.3},
}
KEEPS_MARGIN = 5.0  # points: CALM "keeps" the anchor's numeric arithmetic if it loses less than this
LORA = "anchor + LoRA"  # the LoRA baseline's model name


def run_name(augment: str, rotary: bool, task: str = "kv", encoder: bool = False) -> str:
    """``calm``, ``calm (rotary)``, ``calm (vanilla m_A)``, ``calm (rotary, random m_A)``,
    ``calm (m_A as encoder)``, and ``... trained to copy`` for the copying control."""
    parts = (
        (["rotary"] if rotary else [])
        + ([f"{augment} m_A"] if augment != "trained" else [])
        + (["m_A as encoder"] if encoder else [])
    )
    return "calm" + (f" ({', '.join(parts)})" if parts else "") + (" trained to copy" if task == CONTROL else "")


# ---------------------------------------------------------------------------------------
# Inputs and the models' stages
# ---------------------------------------------------------------------------------------
@dataclass
class CalmInputs:
    anchor: str  # a model folder or Hub id
    augment: str
    rows: dict[str, dict[str, list[dict]]]  # task -> split (stage / train, eval) -> {"expression", "target"}
    keys: dict[str, dict[str, int]]  # split -> key -> value
    source: str


def study_inputs(config: CalmConfig) -> CalmInputs:
    """Models and rows for a preset: the zoo's models and world where ``config.zoo`` names one,
    Hub models otherwise (see :func:`kilib.calm.tasks.study_rows`)."""
    unknown = [a for a, _ in config.runs if a not in AUGMENTS]
    if unknown or ("trained", False) not in config.runs:
        raise KilibError(
            f"runs must include ('trained', False), the paper's CALM, and name m_A among "
            f"{', '.join(AUGMENTS)}; got {list(config.runs)}"
        )
    if not config.zoo:
        anchor, augment, world_size = config.anchor, config.augment, "tiny"
        source = f"Hub models: {config.augment} into {config.anchor}"
    else:
        zconfig = zoo.zoo_config(config.zoo)
        anchor, augment = (str(zoo.model_dir(zconfig, n)) for n in (config.anchor, config.augment))
        world_size, source = zconfig.world_size, f"the zoo: {config.augment} into {config.anchor}"
    tokenizer = load_tokenizer(anchor)
    check_same_tokenizer(tokenizer, load_tokenizer(augment), ("the anchor", "the augmenting model"))
    rows, keys = study_rows(config, world_size, tokenizer)
    return CalmInputs(anchor, augment, rows, keys, source)


def _train_full(path: str, rows: list[dict], train_config: TrainConfig, folder: Path) -> dict:
    """Fine-tune every weight of ``path`` on (prompt, answer) rows and save it to ``folder`` with
    its tokenizer (it is then loaded like any model, in 4-bit). The weights are float32 on a GPU
    too (``Trainer`` computes in bf16 there): Adam's small steps would round away in bf16 weights."""
    model, tokenizer = load_causal_lm(path, quantization="none", dtype=torch.float32)
    for p in model.parameters():
        p.requires_grad = True
    collate = PackingCollator(tokenizer, 256) if _packs(model) else None
    result = train(
        model,
        sft_dataset(tokenizer, rows, max_length=train_config.max_length),
        train_config,
        folder / "checkpoints",
        tokenizer=tokenizer,
        data_collator=collate,
    )
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {"steps": result.steps, "losses": result.losses, "seconds": result.seconds, "examples": len(rows)}


def _packs(model) -> bool:
    try:
        check_packing(model)
    except KilibError:
        return False
    return True


def prepared(inputs: CalmInputs, config: CalmConfig, role: str) -> str:
    """The anchor (``role="anchor"``, trained on numeric arithmetic) or m_A (``"augment"``,
    trained on substitution) as composed: the base model where its stage has 0 examples, else
    a cached folder. ``"vanilla"`` is m_A without its stage, ``"random"`` m_A's architecture
    with seeded random weights (the paper's ablations)."""
    if role == "vanilla":
        return inputs.augment
    if role == "random":
        key = {"kind": "calm-random", "version": 1, "model": model_ref(inputs.augment)}

        def build_random(folder: Path) -> None:
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(load_config(inputs.augment), dtype=torch.float32)
            model.save_pretrained(folder)
            load_tokenizer(inputs.augment).save_pretrained(folder)

        return str(cached_dir("calm", key, build_random))
    if role not in ("anchor", "augment"):
        raise KilibError(f"unknown role {role!r}: choose anchor, augment, vanilla or random")
    stage = config.anchor_stage if role == "anchor" else config.augment_stage
    base = inputs.anchor if role == "anchor" else inputs.augment
    if stage.examples == 0:
        return base
    task = "numeric" if role == "anchor" else "substitution"
    rows = sft_rows(task, inputs.rows[task]["stage"])
    key = {
        "kind": "calm-stage",
        "version": 1,
        "model": model_ref(base),
        "task": task,
        "rows": rows,
        "train": stage.train,
    }

    def build(folder: Path) -> None:
        write_json(folder / "stage.json", {"role": role, "task": task, **_train_full(base, rows, stage.train, folder)})

    return str(cached_dir("calm", key, build))


def stage_log(inputs: CalmInputs, config: CalmConfig, role: str) -> dict | None:
    folder = Path(prepared(inputs, config, role))
    return read_json(folder / "stage.json") if (folder / "stage.json").exists() else None


def stages_table(inputs: CalmInputs, config: CalmConfig) -> pd.DataFrame:
    """The anchor's and m_A's stages (a row for each that trained): task, steps, losses, time."""
    stages = []
    for role in ("anchor", "augment"):
        log = stage_log(inputs, config, role)
        if log is not None:
            stages.append(
                {
                    "model": MODEL_NAMES[role],
                    "task": TASK_NAMES[log["task"]],
                    "examples": log["examples"],
                    "steps": log["steps"],
                    "first_loss": log["losses"][0]["loss"],
                    "final_loss": log["losses"][-1]["loss"],
                    "seconds": round(log["seconds"], 1),
                }
            )
    return pd.DataFrame(stages)


# ---------------------------------------------------------------------------------------
# Runs: evaluation, the baselines, the compositions and the LoRA baseline (all cached)
# ---------------------------------------------------------------------------------------
def evaluate(
    model, tokenizer, inputs: CalmInputs, config: CalmConfig, tasks: Sequence[str] = TASKS + EXTRA_TASKS
) -> list[dict]:
    """Greedy answers to every task's evaluation rows (a task without rows is skipped), scored by exact match."""
    answers = []
    for task in tasks:
        rows = inputs.rows[task]["eval"]
        if not rows:
            continue
        prompts = [render_prompt(tokenizer, p["prompt"]) for p in sft_rows(task, rows)]
        outputs = generate(
            model,
            tokenizer,
            prompts,
            max_new_tokens=config.max_new_tokens,
            batch_size=config.eval_batch_size,
            stop=("\n",),
        )
        answers += [
            {
                "task": task,
                "item": i,
                "prediction": o.strip(),
                "target": r["target"],
                "correct": float(is_correct(o, r["target"])),
            }
            for i, (r, o) in enumerate(zip(rows, outputs))
        ]
    return answers


def _eval_key(inputs: CalmInputs, config: CalmConfig) -> dict:
    """What an evaluation asks (each caller adds the quantization of the model it loads)."""
    return {
        "eval_rows": {t: inputs.rows[t]["eval"] for t in TASKS + EXTRA_TASKS},
        "max_new_tokens": config.max_new_tokens,
    }


def baseline(inputs: CalmInputs, config: CalmConfig, which: str) -> dict:
    """The anchor or m_A alone (each after its stage) on every task; cached."""
    if which not in ("anchor", "augment"):
        raise KilibError(f"unknown baseline {which!r}: choose anchor or augment")
    path = prepared(inputs, config, which)
    key = {
        "kind": "calm-baseline",
        "version": 2,
        "model": model_ref(path),
        **_eval_key(inputs, config),
        "quantization": quantization_of(config, which),
    }

    def build(folder: Path) -> None:
        model, tokenizer = load_causal_lm(path, quantization=quantization_of(config, which))
        write_json(folder / "run.json", {"model": which, "answers": evaluate(model, tokenizer, inputs, config)})

    return read_json(cached_dir("calm", key, build) / "run.json")


def load_composition(
    inputs: CalmInputs,
    config: CalmConfig,
    augment: str = "trained",
    seed: int = 0,
    rotary: bool = False,
    encoder: bool = False,
):
    """(composed model, tokenizer) with freshly initialised bridges."""
    anchor, tok_b = load_causal_lm(prepared(inputs, config, "anchor"), quantization=config.quantization)
    m_a, tok_a = load_causal_lm(
        prepared(inputs, config, "augment" if augment == "trained" else augment),
        quantization=quantization_of(config, augment),
    )
    composed = compose(
        anchor,
        m_a,
        tok_b,
        tok_a,
        every=config.every,
        zero_init=config.zero_init,
        seed=seed,
        rotary=rotary,
        encoder=encoder,
    )
    return composed, tok_b


def step0_gap(composed, tokenizer, inputs: CalmInputs) -> float:
    """The largest |logit difference| between the composed model and its anchor on a few
    training prompts before any training: 0.0 exactly with ``zero_init``."""
    prompts = [render_prompt(tokenizer, task_prompt("kv", r["expression"])) for r in inputs.rows["kv"]["train"][:8]]
    with padding_side(tokenizer, "right"):
        batch = tokenizer(prompts, return_tensors="pt", padding=True).to(composed.device)
    with torch.no_grad():
        gap = (composed(**batch).logits - composed.anchor(**batch).logits).abs() * batch["attention_mask"][..., None]
    return float(gap.max())


def run_job(
    inputs: CalmInputs,
    config: CalmConfig,
    augment: str = "trained",
    seed: int = 0,
    rotary: bool = False,
    task: str = "kv",
    encoder: bool = False,
) -> dict:
    """Compose the anchor with m_A (``augment``: trained, vanilla or random; ``rotary``: positions
    in the cross-attention; ``encoder``: m_A as encoder), train the bridges on KV arithmetic over
    the training keys (or, with ``task="control"``, on the copying control's substitution), and
    answer every task (the control's run: its own task only); cached."""
    if task not in ("kv", CONTROL) or (task == CONTROL and not inputs.rows[CONTROL]["train"]):
        raise KilibError(f"a composition trains on 'kv' or, where control_examples > 0, on {CONTROL!r}; got {task!r}")
    key = {
        "kind": "calm-run",
        "version": 2,
        "threads": cpu_threads(),
        "anchor": model_ref(prepared(inputs, config, "anchor")),
        "augment": model_ref(prepared(inputs, config, "augment" if augment == "trained" else augment)),
        "seed": seed,
        "rotary": rotary,
        **({"encoder": True} if encoder else {}),
        "task": task,
        "train_rows": inputs.rows[task]["train"],
        "every": config.every,
        "zero_init": config.zero_init,
        "train": config.train,
        **_eval_key(inputs, config),
        "quantization": config.quantization,
        **augment_precision(config),
    }
    folder = cached_dir("calm", key, lambda tmp: _run(inputs, config, augment, seed, rotary, task, tmp, encoder))
    return read_json(folder / "run.json")


def _run(
    inputs: CalmInputs,
    config: CalmConfig,
    augment: str,
    seed: int,
    rotary: bool,
    task: str,
    folder: Path,
    encoder: bool = False,
) -> None:
    composed, tokenizer = load_composition(inputs, config, augment, seed, rotary, encoder)
    gap = step0_gap(composed, tokenizer, inputs)
    set_seed(seed)
    train_config = dataclasses.replace(config.train, seed=seed)
    data = sft_dataset(tokenizer, sft_rows(task, inputs.rows[task]["train"]), max_length=train_config.max_length)
    result = train(composed, data, train_config, folder / "checkpoints", tokenizer=tokenizer)
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    save_bridges(composed, folder / "bridges")
    counts = bridge_parameters(width(composed.augment), width(composed.anchor), len(composed.plan))
    write_json(
        folder / "run.json",
        {
            "model": run_name(augment, rotary, task, encoder),
            "augment": augment,
            "rotary": rotary,
            "encoder": encoder,
            "task": task,
            "seed": seed,
            "plan": composed.plan,
            "added_parameters": composed.added_parameters,
            "paper_formula": counts["paper_formula"],
            "step0_max_logit_gap": gap,
            "train": {"steps": result.steps, "losses": result.losses, "seconds": result.seconds},
            "answers": evaluate(
                composed, tokenizer, inputs, config, tasks=(CONTROL,) if task == CONTROL else COMPOSITION_TASKS
            ),
        },
    )


def lora_rank(model, parameters: int) -> int:
    """The LoRA rank whose adapter on the anchor's attention and MLP linears (kilib's LoRA targets)
    adds the number of parameters nearest ``parameters``: a rank-r adapter on a d_in x d_out
    linear adds r (d_in + d_out)."""
    targets = set(lora_target_modules(model))
    per_rank = sum(
        m.in_features + m.out_features
        for name, m in model.named_modules()
        if name.rsplit(".", 1)[-1] in targets and hasattr(m, "in_features")
    )
    if per_rank == 0:
        raise KilibError(f"{type(model).__name__} has none of the LoRA targets {sorted(targets)}")
    return max(1, round(parameters / per_rank))


def lora_baseline(inputs: CalmInputs, config: CalmConfig, parameters: int, seed: int = 0) -> dict:
    """The paper's LoRA baseline (docs/methods.md, "## 03 CALM composition"): the anchor alone,
    with a LoRA adapter of about ``parameters`` parameters (the bridges' count) trained on the same
    KV arithmetic rows as CALM, and asked the same tasks; cached. Without m_A it cannot know the
    held-out keys' values."""
    key = {
        "kind": "calm-lora",
        "version": 1,
        "threads": cpu_threads(),
        "anchor": model_ref(prepared(inputs, config, "anchor")),
        "seed": seed,
        "parameters": parameters,
        "train_rows": inputs.rows["kv"]["train"],
        "train": config.train,
        **_eval_key(inputs, config),
        "quantization": config.quantization,
    }

    def build(folder: Path) -> None:
        model, tokenizer = load_causal_lm(prepared(inputs, config, "anchor"), quantization=config.quantization)
        rank = lora_rank(model, parameters)
        set_seed(seed)
        model = attach_lora(model, r=rank)
        train_config = dataclasses.replace(config.train, seed=seed)
        data = sft_dataset(tokenizer, sft_rows("kv", inputs.rows["kv"]["train"]), max_length=train_config.max_length)
        result = train(model, data, train_config, folder / "checkpoints", tokenizer=tokenizer)
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
        write_json(
            folder / "run.json",
            {
                "model": LORA,
                "seed": seed,
                "rank": rank,
                "added_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
                "train": {"steps": result.steps, "losses": result.losses, "seconds": result.seconds},
                "answers": evaluate(model, tokenizer, inputs, config, tasks=COMPOSITION_TASKS),
            },
        )

    return read_json(cached_dir("calm", key, build) / "run.json")


def composition_parameters(inputs: CalmInputs, config: CalmConfig) -> int:
    """The bridges' parameter count, from the two models' configs (what the LoRA baseline matches)."""
    anchor, augment = (load_config(prepared(inputs, config, role)) for role in ("anchor", "augment"))
    n = len(layer_plan(augment.num_hidden_layers, anchor.num_hidden_layers, config.every))
    return bridge_parameters(augment.hidden_size, anchor.hidden_size, n)["exact"]


def study_runs(inputs: CalmInputs, config: CalmConfig, progress: bool = True) -> dict[str, list[dict]]:
    """Every run of the study, cached: ``baselines`` (m_A and the anchor alone), ``calm`` (each of
    ``config.runs`` per seed, then the encoder ablation and the copying controls) and ``lora``.
    The models they compose are prepared here first; the runs then go side by side on a CPU
    (``config.workers``, ``config.threads``; :func:`kilib.jobs.side_by_side`)."""
    for role in ("anchor", "augment", *sorted({a for a, _ in config.runs} - {"trained"})):
        prepared(inputs, config, role)  # built once, before any worker needs it
    calm = [
        (run_job, (inputs, config, augment, seed, rotary), {})
        for augment, rotary in config.runs
        for seed in config.seeds
    ]
    if config.encoder_ablation:  # the paper's cross-attention over the trained m_A, reading the prompt only
        calm += [(run_job, (inputs, config, "trained", seed), {"encoder": True}) for seed in config.seeds]
    if inputs.rows[CONTROL]["train"]:  # the copying control, for each cross-attention
        calm += [
            (run_job, (inputs, config, "trained", seed, rotary), {"task": CONTROL})
            for rotary in sorted({r for _, r in config.runs})
            for seed in config.seeds
        ]
    parameters = composition_parameters(inputs, config)
    groups = {
        "baselines": [(baseline, (inputs, config, which), {}) for which in ("augment", "anchor")],
        "calm": calm,
        "lora": [(lora_baseline, (inputs, config, parameters, seed), {}) for seed in config.seeds]
        if config.lora_baseline
        else [],
    }
    calls = [c for group in groups.values() for c in group]
    start = time.time()

    def report(i: int, finished: int, result: dict) -> None:
        if progress:
            seed = f", seed {result['seed']}" if "seed" in result else ""  # the baselines train nothing
            print(
                f"[{finished}/{len(calls)}] {MODEL_NAMES.get(result['model'], result['model'])}{seed} "
                f"({time.time() - start:.0f} s)",
                flush=True,
            )

    results = iter(side_by_side(calls, workers=config.workers, threads=config.threads, done=report))
    out = {name: [next(results) for _ in group] for name, group in groups.items()}
    if any(r["added_parameters"] != parameters for r in out["calm"]):
        raise KilibError(
            f"a composition added {[r['added_parameters'] for r in out['calm']]} parameters where its "
            f"models' configs give {parameters}: the LoRA baseline would not match it"
        )
    return out


# ---------------------------------------------------------------------------------------
# Tables and comparisons
# ---------------------------------------------------------------------------------------
def composition_table(calm_runs: Sequence[dict]) -> pd.DataFrame:
    """Per composition: its step-0 logit gap to the anchor, its training steps, losses and time."""
    return pd.DataFrame(
        [
            {
                "model": r["model"],
                "seed": r["seed"],
                "step0_max_logit_gap": r["step0_max_logit_gap"],
                "steps": r["train"]["steps"],
                "first_loss": r["train"]["losses"][0]["loss"],
                "final_loss": r["train"]["losses"][-1]["loss"],
                "seconds": round(r["train"]["seconds"], 1),
            }
            for r in calm_runs
        ]
    )


def composition_summary(calm_runs: Sequence[dict], lora_runs: Sequence[dict]) -> str:
    """The layer pairs, the added parameters beside the paper's formula, and each LoRA baseline."""
    first = calm_runs[0]
    lines = [
        f"pairs (m_A block -> anchor block, 0-indexed): {first['plan']}",
        f"added parameters: {first['added_parameters']:,} (the paper's formula: {first['paper_formula']:,})",
    ]
    for r in lora_runs:
        losses = r["train"]["losses"]
        lines.append(
            f"LoRA baseline, seed {r['seed']}: rank {r['rank']}, {r['added_parameters']:,} parameters, "
            f"loss {losses[0]['loss']:.3f} -> {losses[-1]['loss']:.3f} in {r['train']['seconds']:.1f} s"
        )
    return "\n".join(lines)


def answer_rows(runs) -> list[dict]:
    """One row per answer, tagged with the run's model (CALM runs by :func:`run_name`) and seed."""
    return [{"model": r["model"], "seed": r.get("seed", 0), **a} for r in runs for a in r["answers"]]


def results_table(answers) -> pd.DataFrame:
    """Accuracy per task and model in percent, with a 95% bootstrap interval over items (seeds pooled)."""
    out = []
    for (task, model), g in pd.DataFrame(answers).groupby(["task", "model"], sort=False):
        mean, low, high = bootstrap_ci(g["correct"].astype(float))
        out.append(
            {
                "task": TASK_NAMES[task],
                "model": model,
                "accuracy": 100 * mean,
                "ci_low": 100 * low,
                "ci_high": 100 * high,
                "n": len(g),
            }
        )
    return pd.DataFrame(out)


def paper_table1() -> pd.DataFrame:
    """The paper's Table 1 (PaLM2-XXS into PaLM2-XS), rows and columns named as this run's."""
    return pd.DataFrame({TASK_NAMES[t]: row for t, row in PAPER_TABLE1.items()}).T.rename(columns=MODEL_NAMES)


def compare(answers, task: str, better: str, worse: str, claim: str, margin: float = 0.0) -> dict:
    """``better`` against ``worse`` on one task's items, paired by item (scores averaged over
    seeds): the difference in points with a 95% bootstrap interval, and the verdict on
    "``better`` - ``worse`` > -``margin``" (``margin`` 0: ``better`` scores higher)."""
    df = pd.DataFrame(answers)
    r = paired_comparison(df[df.task == task], "model", better, worse, margin=margin / 100)
    return {
        "claim": claim,
        "task": task,
        "higher": 100 * r["higher"],
        "lower": 100 * r["lower"],
        "difference": 100 * r["difference"],
        "difference_ci": [100 * x for x in r["difference_ci"]],
        "margin": margin,
        "verdict": r["verdict"],
    }
