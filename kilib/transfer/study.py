"""Notebook 02's study (Zhong et al., "Seeking Neural Nuggets", ICLR 2024; docs/methods.md,
"## 02 Parametric knowledge transfer"): the inputs a preset names, the cached jobs, and the
tables, claims and prose the notebook shows.

* :func:`study_inputs`: the teacher, the student and each task's disjoint seed, training,
  demonstration and evaluation rows (the tiny world and zoo, or the Hub).
* :func:`extraction`: the teacher's sensitivity, the selected blocks and every way of cutting
  the student's matrices (:mod:`kilib.transfer.method`), group by group of blocks
  (:mod:`kilib.transfer.extraction`), saved as rank-r factors; cached.
* :func:`run_job` (a LoRA trained from peft's start or from the extracted factors, then
  evaluated) and :func:`baseline` (the untrained student or teacher); cached.
* :func:`results_table`, :func:`compare`, :func:`paper_claims` and the notebook's other tables.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from kilib import results  # cached_dir through its module, where the tests stand in for it
from kilib.lm.inference import generate, next_token_choice
from kilib.lm.models import (
    attach_lora,
    check_same_tokenizer,
    decoder_layers,
    load_causal_lm,
    load_tokenizer,
    logical_shape,
    model_ref,
)
from kilib.lm.training import IGNORE_INDEX, PackingCollator, render_prompt, sft_dataset, tokenize_sft, train
from kilib.results import read_json, stable_hash, write_json
from kilib.runtime import KilibError, set_seed
from kilib.stats import bootstrap_ci, paired_comparison
from kilib.tiny import zoo
from kilib.transfer import tasks
from kilib.transfer.extraction import LiveBytes, cut_factors, student_skeleton
from kilib.transfer.method import (
    best_submatrix,
    block_scores,
    init_lora_from,
    load_factors,
    save_factors,
    select_layers,
    sensitivity,
)
from kilib.transfer.presets import METHODS, TransferConfig

# Zhong et al. Table 1, Llama-2 rows (docs/methods.md, "## 02 Parametric knowledge transfer"): the
# paper's numbers, printed beside ours.
PAPER_TABLE1 = {
    row: dict(zip(("gsm 0-shot", "gsm few-shot", "mmlu 0-shot", "mmlu few-shot", "sni exact", "sni rouge-l"), scores))
    for row, scores in (
        ("vanilla 7B", (3.34, 15.54, 41.70, 45.80, 0.00, 4.68)),
        ("vanilla 13B", (6.52, 27.82, 52.10, 55.20, 0.00, 4.84)),
        ("7B-LoRA", (23.38, 21.05, 47.77, 47.07, 24.93, 41.25)),
        ("+ 13B param.", (25.30, 26.31, 49.37, 46.53, 26.16, 42.98)),
    )
}
PAPER_ROWS = {"student": "vanilla 7B", "teacher": "vanilla 13B", "lora": "7B-LoRA", "sensitive": "+ 13B param."}


# ---------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------
@dataclass
class TransferInputs:
    teacher: str  # a model folder or Hub id
    student: str
    rows: dict[str, dict[str, list[dict]]]  # task -> split (seed, train, eval, demos) -> rows
    source: str


def study_inputs(config: TransferConfig) -> TransferInputs:
    """Models and task rows for a preset, split into disjoint seed, training, evaluation and
    demonstration rows. ``config.zoo`` "tiny" or "smoke": two zoo models (built on first use),
    the world's GSM, MMLU and SNI analogues and its closed-book questions. "": the Hub models and
    datasets (:data:`kilib.transfer.tasks.PAPER_DATASETS`)."""
    known = tasks.TASKS + tasks.TINY_TASKS
    unknown = [t for t in config.tasks if t not in known]
    if unknown or not config.tasks:
        raise KilibError(f"unknown task(s) {', '.join(unknown) or '(none given)'}: choose among {', '.join(known)}")
    bad = [m for m in config.methods if m not in METHODS]
    if bad or "lora" not in config.methods:
        raise KilibError(
            f"methods must include 'lora' and be among {', '.join(METHODS)}; got {', '.join(config.methods)}"
        )

    def sizes(task: str) -> dict[str, int]:
        return {
            "seed": config.seed_samples,
            "train": config.train_samples,
            "eval": config.eval_samples,
            "demos": max(_shots(config, task)),
        }

    if not config.zoo:
        tiny_only = [t for t in config.tasks if t in tasks.TINY_TASKS]
        if tiny_only:
            raise KilibError(
                f"{', '.join(tiny_only)} asks about the tiny world's facts and has no Hub dataset: "
                f"drop it from TASKS for the paper profile (its tasks: {', '.join(tasks.TASKS)})"
            )
        teacher, student = config.teacher, config.student
        check_same_tokenizer(load_tokenizer(teacher), load_tokenizer(student), (teacher, student))
        rows = {task: tasks.hub_task_rows(task, sizes(task)) for task in config.tasks}
        return TransferInputs(teacher, student, rows, f"Hub models and datasets: {teacher} into {student}")
    zconfig = zoo.zoo_config(config.zoo)
    teacher, student = (str(zoo.model_dir(zconfig, n)) for n in (config.teacher, config.student))
    check_same_tokenizer(load_tokenizer(teacher), load_tokenizer(student), (config.teacher, config.student))
    world = zoo.world_of(zconfig)
    rows = {}
    for task in config.tasks:
        counts = sizes(task)
        if task == "qa":
            rows[task] = tasks.qa_rows(world, counts)
            continue
        drawn = getattr(world, task)(sum(counts.values()), seed=0).to_list()
        rows[task], start = {}, 0
        for split, n in counts.items():
            rows[task][split] = drawn[start : start + n]
            start += n
    return TransferInputs(
        teacher, student, rows, f"the {zconfig.world_size} world: {config.teacher} into {config.student}"
    )


def _shots(config: TransferConfig, task: str) -> list[int]:
    return [0] + [k for t, k in config.shots if t == task and k > 0]


def _load(path: str, config: TransferConfig):
    """A teacher or student in the study's precision, its tokenizer in the study's chat format."""
    model, tokenizer = load_causal_lm(path, quantization=config.quantization)
    return model, tasks.use_chat_format(tokenizer, config.chat_format)


# ---------------------------------------------------------------------------------------
# Jobs: extraction, training runs, baselines (each cached by a hash of its inputs)
# ---------------------------------------------------------------------------------------
def eval_prompts(inputs: TransferInputs, config: TransferConfig, task: str) -> list[tuple[int, int, str, str]]:
    """(shots, item, user turn, cue) for every evaluation question at every shot count: the model
    reads the user turn in the chat template, then the cue (see :func:`kilib.transfer.tasks.chat_turn`)."""
    rows, demos = inputs.rows[task]["eval"], inputs.rows[task]["demos"]
    return [
        (
            k,
            i,
            *tasks.chat_turn(
                task,
                tasks.task_prompt(task, r, tasks.demonstrations_for(r, demos, k), evaluation=True),
                config.chat_format,
                evaluation=True,
            ),
        )
        for k in _shots(config, task)
        for i, r in enumerate(rows)
    ]


def _prompts_hash(pairs=(), prompts=(), stop: Sequence[str] = ()) -> str:
    """A hash of the text a job shows the model and, where it generates, of the stop strings
    that cut its answers, so that a change of prompt format or of the stop strings misses the cache."""
    return stable_hash(
        {
            "pairs": list(pairs),
            "prompts": [p for *_, p, cue in prompts],
            **({"cues": [cue for *_, cue in prompts]} if any(cue for *_, cue in prompts) else {}),
            **({"stop": list(stop)} if stop else {}),
        }
    )


def _samples(tokenizer, task: str, rows, max_length: int, chat_format: str = "") -> list[dict]:
    """The seed rows as :func:`kilib.transfer.method.sensitivity` takes them: one sample a batch."""
    out = []
    for pair in tasks.train_pairs(task, rows, chat_format):
        ex = tokenize_sft(tokenizer, pair["prompt"], pair["answer"], max_length)
        out.append({"input_ids": torch.tensor([ex["input_ids"]]), "labels": torch.tensor([ex["labels"]])})
    return out


def extraction(inputs: TransferInputs, config: TransferConfig, task: str) -> Path:
    """The teacher's sensitivity on the task's seed samples, the selected blocks, and every
    student matrix cut out by each way in ``config.methods``, saved with safetensors; cached
    by a hash of the models, the seed rows and the settings."""
    key = {
        "kind": "transfer-extraction",
        "version": 3,
        "teacher": model_ref(inputs.teacher),
        "student": model_ref(inputs.student),
        "task": task,
        "seed_rows": inputs.rows[task]["seed"],
        "quantization": config.quantization,
        "methods": [m for m in config.methods if m != "lora"],
        "rank": config.rank,
        "prompts": _prompts_hash(tasks.train_pairs(task, inputs.rows[task]["seed"], config.chat_format)),
        "max_length": config.train.max_length,
        **({"chat_format": config.chat_format} if config.chat_format else {}),
    }
    return results.cached_dir("transfer", key, lambda tmp: _extract(inputs, config, task, key["methods"], tmp))


# Preset fields outside a run's cache key: the models are keyed by model_ref, so the preset's zoo stays
# out, and the sensitivity's group size and checkpointing change no number (kilib.transfer.extraction).
_UNKEYED = (
    "teacher",
    "student",
    "tasks",
    "methods",
    "seeds",
    "zoo",
    "sensitivity_group_blocks",
    "sensitivity_checkpointing",
)
# Preset fields in a run's key only when on, so that the keys of the runs made before them stay as they were.
_KEYED_WHEN_ON = ("packing",)


def _extract(inputs: TransferInputs, config: TransferConfig, task: str, methods, folder: Path) -> None:
    teacher, tokenizer = _load(inputs.teacher, config)
    student = student_skeleton(inputs.student)  # names and shapes only: no student weight is loaded
    samples = _samples(tokenizer, task, inputs.rows[task]["seed"], config.train.max_length, config.chat_format)
    # Two passes, so that a 13B teacher's sensitivity fits beside it on one GPU (docs/methods.md,
    # "## 02 Parametric knowledge transfer", memory): totals per parameter choose the blocks, then
    # only the matrices the student's shapes are cut from are kept whole, a group of
    # config.sensitivity_group_blocks student blocks at a time, each group cut and kept as its
    # rank-r factors (a 7B student's cut matrices in float32 would take 27 GB per way of cutting)
    # before the next group's sensitivities are allocated.
    checkpointing = config.sensitivity_checkpointing
    blocks = block_scores(
        sensitivity(teacher, samples, summed=True, checkpointing=checkpointing), len(decoder_layers(teacher))
    )
    selected = select_layers(blocks, len(decoder_layers(student)))
    probe = "model.layers.{}.mlp.down_proj.weight"
    heat = {
        "name": probe.format(selected[0]),
        "shape": list(logical_shape(dict(student.named_parameters())[probe.format(0)])),
    }

    def keep_probe(scores) -> None:
        if heat["name"] in scores:
            torch.save(scores[heat["name"]].cpu(), folder / "probe_sensitivity.pt")

    meter = LiveBytes()
    factors = cut_factors(
        teacher,
        student,
        samples,
        selected,
        methods,
        config.rank,
        config.sensitivity_group_blocks,
        on_totals=meter,
        on_scores=keep_probe,
        checkpointing=checkpointing,
    )
    for how in methods:
        save_factors(factors[how], folder / f"{how}.safetensors")
    write_json(
        folder / "extraction.json",
        {
            "block_scores": blocks,
            "selected": selected,
            "probe": heat,
            "seed_samples": len(inputs.rows[task]["seed"]),
            "sensitivity_peak_bytes": meter.peak,  # the most bytes of running sums held at once
        },
    )


def letter_tokens(tokenizer, cue: str = "") -> list[int]:
    """The token each of MMLU's letters starts with where the model answers: after a cue ("The
    answer is:"), open-instruct's " A" (the last token of its tokenisation); else the answer's
    first token as training tokenises it (right after the chat template's assistant tag)."""
    if cue:
        ids = [tokenizer(" " + c, add_special_tokens=False).input_ids[-1] for c in tasks.CHOICES]
    else:
        ids = []
        for c in tasks.CHOICES:
            ex = tokenize_sft(tokenizer, "?", c)
            ids.append(next(t for t, label in zip(ex["input_ids"], ex["labels"]) if label != IGNORE_INDEX))
    if len(set(ids)) != len(tasks.CHOICES):
        raise KilibError(
            "the tokenizer starts two of the letters A to D with one token, so MMLU cannot be scored by "
            "the next token: use a tokenizer that writes the letters apart"
        )
    return ids


def evaluate(model, tokenizer, task: str, inputs: TransferInputs, config: TransferConfig) -> list[dict]:
    """Every evaluation question's answer, scored. GSM, SNI and the closed-book questions generate
    greedily, cut at ``config.stop``; MMLU takes the letter whose token is most likely next, as
    open-instruct's evaluation does (``letter_mass``: the probability the four letters hold)."""
    asked, rows, answers = eval_prompts(inputs, config, task), inputs.rows[task]["eval"], []
    if task == "mmlu":
        letters = letter_tokens(tokenizer, tasks.chat_turn(task, "", config.chat_format, evaluation=True)[1])
    for k in _shots(config, task):  # one call per shot count, each batched longest first
        these = [(i, render_prompt(tokenizer, user) + cue) for shots, i, user, cue in asked if shots == k]
        texts = [t for _, t in these]
        if task == "mmlu":
            picked = next_token_choice(model, tokenizer, texts, letters, batch_size=config.eval_batch_size)
            answers += [
                {
                    "shots": k,
                    "item": i,
                    "prediction": tasks.CHOICES[c],
                    "letter_mass": sum(p),
                    **tasks.score(task, tasks.CHOICES[c], rows[i]),
                }
                for (i, _), (c, p) in zip(these, picked)
            ]
            continue
        outputs = generate(
            model,
            tokenizer,
            texts,
            max_new_tokens=dict(config.max_new_tokens)[task],
            batch_size=config.eval_batch_size,
            stop=config.stop,
        )
        answers += [
            {"shots": k, "item": i, "prediction": o, **tasks.score(task, o, rows[i])}
            for (i, _), o in zip(these, outputs)
        ]
    return answers


def run_job(inputs: TransferInputs, config: TransferConfig, task: str, method: str, seed: int) -> dict:
    """Train the student's LoRA on the task (``lora``: peft's initialisation; otherwise started at
    the teacher matrices cut by ``method``) and answer the evaluation rows; cached."""
    key = {
        "kind": "transfer-run",
        "version": 2,
        "student": model_ref(inputs.student),
        "task": task,
        "method": method,
        "seed": seed,
        "train_rows": inputs.rows[task]["train"],
        "eval_rows": inputs.rows[task]["eval"],
        "demos": inputs.rows[task]["demos"],
        "extraction": extraction(inputs, config, task).name if method != "lora" else None,
        "config": {
            k: v
            for k, v in dataclasses.asdict(config).items()
            if k not in _UNKEYED and not (k in _KEYED_WHEN_ON and not v)
        },
        "prompts": _prompts_hash(
            tasks.train_pairs(task, inputs.rows[task]["train"], config.chat_format),
            eval_prompts(inputs, config, task),
            config.stop,
        ),
    }
    folder = results.cached_dir("transfer", key, lambda tmp: _run(inputs, config, task, method, seed, tmp))
    return read_json(folder / "run.json")


def _run(inputs: TransferInputs, config: TransferConfig, task: str, method: str, seed: int, folder: Path) -> None:
    model, tokenizer = _load(inputs.student, config)
    set_seed(seed)
    # with gradient checkpointing, a 4-bit base goes through peft's preparation for it (inputs that require grad)
    model = attach_lora(
        model, r=config.rank, include_embeddings=True, gradient_checkpointing=config.train.gradient_checkpointing
    )
    initialised = []
    if method != "lora":
        initialised = init_lora_from(
            model, load_factors(extraction(inputs, config, task) / f"{method}.safetensors"), config.rank
        )
    rows = tasks.train_pairs(task, inputs.rows[task]["train"], config.chat_format)
    train_config = dataclasses.replace(config.train, seed=seed)
    result = train(
        model,
        sft_dataset(tokenizer, rows, max_length=train_config.max_length),
        train_config,
        folder / "checkpoints",
        tokenizer=tokenizer,
        data_collator=PackingCollator(tokenizer, train_config.max_length) if config.packing else None,
    )
    answers = evaluate(model, tokenizer, task, inputs, config)
    write_json(
        folder / "run.json",
        {
            "task": task,
            "method": method,
            "seed": seed,
            "initialised": len(initialised),
            "train": {"steps": result.steps, "losses": result.losses, "seconds": result.seconds},
            "answers": answers,
        },
    )
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)


def baseline(inputs: TransferInputs, config: TransferConfig, task: str, which: str) -> dict:
    """The untrained ``student`` or ``teacher`` on the evaluation rows (Table 1's vanilla rows); cached."""
    path = inputs.student if which == "student" else inputs.teacher
    key = {
        "kind": "transfer-baseline",
        "version": 2,
        "model": model_ref(path),
        "task": task,
        "eval_rows": inputs.rows[task]["eval"],
        "demos": inputs.rows[task]["demos"],
        "shots": _shots(config, task),
        "max_new_tokens": dict(config.max_new_tokens)[task],
        "quantization": config.quantization,
        "prompts": _prompts_hash(prompts=eval_prompts(inputs, config, task), stop=config.stop),
        **({"chat_format": config.chat_format} if config.chat_format else {}),
    }

    def build(tmp: Path) -> None:
        model, tokenizer = _load(path, config)
        write_json(
            tmp / "run.json",
            {"task": task, "method": which, "answers": evaluate(model, tokenizer, task, inputs, config)},
        )

    return read_json(results.cached_dir("transfer", key, build) / "run.json")


def answer_rows(runs) -> list[dict]:
    """One row per answer, tagged with the run's task, method and seed."""
    return [
        {"task": r["task"], "method": r["method"], "seed": r.get("seed", 0), **a} for r in runs for a in r["answers"]
    ]


def results_table(answers) -> pd.DataFrame:
    """Accuracy (and SNI's ROUGE-L) per task, shots and method, each with a 95% bootstrap
    interval over items (seeds pooled), in percent as Table 1 prints them."""
    df = pd.DataFrame(answers)
    out = []
    for (task, shots, method), g in df.groupby(["task", "shots", "method"], sort=False):
        label = {"sni": "exact", "qa": "closed book"}.get(task, "0-shot" if shots == 0 else "few-shot")
        measures = [(label, "correct")]
        if task == "sni":
            measures.append(("rouge-l", "rouge_l"))
        for label, col in measures:
            mean, low, high = bootstrap_ci(g[col].astype(float))
            out.append(
                {
                    "task": task,
                    "measure": f"{task} {label}",
                    "method": method,
                    "score": 100 * mean,
                    "ci_low": 100 * low,
                    "ci_high": 100 * high,
                    "n": len(g),
                }
            )
    return pd.DataFrame(out)


def compare(answers, task: str, better: str, worse: str, claim: str, shots: int = 0, column: str = "correct") -> dict:
    """``better`` against ``worse`` on one task's items (scores averaged over seeds per item),
    paired by item: the difference with a 95% bootstrap interval and a verdict."""
    df = pd.DataFrame(answers)
    df = df[(df.task == task) & (df.shots == shots)]
    return {"claim": claim, "task": task, **paired_comparison(df, "method", better, worse, column)}


# ---------------------------------------------------------------------------------------
# What the notebook shows: tables, the sensitivity figure, claims, prose, run.log's metrics
# ---------------------------------------------------------------------------------------
def block_table(extractions: Mapping[str, Path]) -> pd.DataFrame:
    """Each task's summed sensitivity per teacher block, and whether the block was selected."""
    return pd.DataFrame(
        [
            {"task": task, "block": i, "sensitivity": s, "selected": i in meta["selected"]}
            for task, folder in extractions.items()
            for meta in [read_json(folder / "extraction.json")]
            for i, s in enumerate(meta["block_scores"])
        ]
    )


def sensitivity_window_figure(extractions: Mapping[str, Path], task_names: Sequence[str]):
    """Per task, the log10 sensitivity of one selected block's MLP down-projection, with the
    window :func:`kilib.transfer.method.best_submatrix` cuts from it outlined in red."""
    import matplotlib.pyplot as plt  # drawing only; the notebook's backend is already chosen

    fig, axes = plt.subplots(1, len(task_names), figsize=(4 * len(task_names), 3), squeeze=False)
    for ax, task in zip(axes[0], task_names):
        meta = read_json(extractions[task] / "extraction.json")
        scores = torch.load(extractions[task] / "probe_sensitivity.pt", weights_only=True)
        rows, cols = meta["probe"]["shape"]
        r0, c0 = best_submatrix(scores, rows, cols)
        ax.imshow(np.log10(scores.numpy() + 1e-12), aspect="auto", cmap="viridis")
        ax.add_patch(plt.Rectangle((c0 - 0.5, r0 - 0.5), cols, rows, fill=False, edgecolor="red", linewidth=1.5))
        ax.set_title(f"{task}: {meta['probe']['name'].removeprefix('model.')}", fontsize=8)
        ax.set_xlabel("input dimension")
        ax.set_ylabel("output dimension")
    fig.suptitle("log10 sensitivity of one teacher matrix; red: the window the student gets")
    fig.tight_layout()
    return fig


def all_runs(inputs: TransferInputs, config: TransferConfig) -> list[dict]:
    """Per task, the untrained student and teacher (:func:`baseline`), then a LoRA per condition
    and seed (:func:`run_job`)."""
    runs = []
    for task in config.tasks:
        runs += [baseline(inputs, config, task, which) for which in ("student", "teacher")]
        runs += [run_job(inputs, config, task, method, seed) for method in config.methods for seed in config.seeds]
    return runs


def training_table(runs) -> pd.DataFrame:
    """One row per trained LoRA: its steps, first and last logged loss, the matrices started
    from the teacher, and its training time."""
    return pd.DataFrame(
        [
            {
                "task": r["task"],
                "method": r["method"],
                "seed": r["seed"],
                "steps": r["train"]["steps"],
                "first_loss": r["train"]["losses"][0]["loss"],
                "final_loss": r["train"]["losses"][-1]["loss"],
                "initialised_matrices": r["initialised"],
                "seconds": round(r["train"]["seconds"], 1),
            }
            for r in runs
            if "train" in r
        ]
    )


def table1_beside_paper(table: pd.DataFrame, task_names: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """This run's scores (method x measure) and the paper's Llama-2 rows of Table 1 for the
    methods it has a row for, on this run's tasks."""
    ours = table.pivot_table(index="method", columns="measure", values="score", sort=False)
    paper = pd.DataFrame({PAPER_ROWS.get(m, m): PAPER_TABLE1[PAPER_ROWS[m]] for m in ours.index if m in PAPER_ROWS}).T
    return ours, paper[[c for c in paper.columns if c.split()[0] in task_names]]


def paper_claims(answers, config: TransferConfig) -> list[dict]:
    """Per task: the teacher's parameters beat plain LoRA; the sensitive window beats a random
    one and the most sensitive rows and columns (where those ran); LoRA beats the untrained
    student. Each a :func:`compare` on the 0-shot (or SNI exact-match) items."""
    claims = []
    for task in config.tasks:
        if "sensitive" in config.methods:
            claims.append(
                compare(
                    answers,
                    task,
                    "sensitive",
                    "lora",
                    f"{task}: LoRA started from the teacher's parameters beats plain LoRA",
                )
            )
        if {"sensitive", "random"} <= set(config.methods):
            claims.append(
                compare(answers, task, "sensitive", "random", f"{task}: the sensitive window beats a random window")
            )
        if {"sensitive", "top"} <= set(config.methods):
            claims.append(
                compare(
                    answers,
                    task,
                    "sensitive",
                    "top",
                    f"{task}: the sensitive window beats the most sensitive rows and columns",
                )
            )
        claims.append(compare(answers, task, "lora", "student", f"{task}: LoRA training beats the untrained student"))
    return claims


def verdicts_markdown(claims) -> str:
    """A bullet per task: whether the paper's effect (the teacher's parameters help) is shown."""
    main = {c["task"]: c for c in claims if "teacher's parameters" in c["claim"]}
    return "\n".join(
        f"* **{task}**: the paper's effect (the teacher's parameters help) is "
        + ("**shown** in this run." if c["verdict"] == "shown" else f"**not shown** in this run ({c['verdict']}).")
        for task, c in main.items()
    )


def run_metrics(
    inputs: TransferInputs,
    config: TransferConfig,
    claims,
    table: pd.DataFrame,
    extractions: Mapping[str, Path],
    training: pd.DataFrame,
) -> dict[str, Any]:
    """What run.json's ``metrics`` hold: the source, the tasks, the claims, Table 1's rows, each
    task's selected blocks and the total training time."""
    return {
        "source": inputs.source,
        "tasks": list(config.tasks),
        "claims": claims,
        "table1": table.to_dict("records"),
        "selected_blocks": {t: read_json(f / "extraction.json")["selected"] for t, f in extractions.items()},
        "training_seconds": float(training["seconds"].sum()),
    }
