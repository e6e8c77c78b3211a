"""What notebook 04 shows (docs/methods.md, "## 04 Memory modules on FEVER"): the lab note's
own tables (:data:`PAPER_SWEEP` and the rest), and this run's tables, figures, prose and
``run.json`` metrics built from the runs of :mod:`kilib.memory.study`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from kilib.lm.data import fever_prompt
from kilib.memory.fever import demonstrations
from kilib.memory.presets import MemoryConfig
from kilib.memory.study import BASE, MemoryInputs, answer_rows, changed_share, method_name, scores
from kilib.plots import bars_with_ci, lines_with_ci

# The lab note's tables. Its F1 (micro-F1) equals its accuracy in every row, so kilib compares accuracy with it.
PAPER_CLAIMS = 3045  # the note's evaluated claims (99 pages)
PAPER_SWEEP = {  # model -> k-shot F1, k = 0..5
    "llama2 13b": (0.013, 0.460, 0.410, 0.417, 0.472, 0.476),
    "llama2 7b": (0.018, 0.435, 0.354, 0.368, 0.367, 0.364),
    "llama2_chat 13b": (0.010, 0.556, 0.389, 0.496, 0.552, 0.578),
    "llama2_chat 7b": (0.392, 0.636, 0.519, 0.463, 0.408, 0.393),
    "pythia 12b": (0.000, 0.366, 0.118, 0.119, 0.113, 0.083),
    "pythia 6.9b": (0.021, 0.163, 0.280, 0.175, 0.106, 0.206),
    "pythia 2.8b": (0.006, 0.026, 0.097, 0.056, 0.108, 0.132),
    "pythia 1.4b": (0.059, 0.009, 0.139, 0.177, 0.275, 0.176),
    "pythia 1b": (0.000, 0.000, 0.001, 0.002, 0.011, 0.013),
    "pythia 410m": (0.000, 0.010, 0.000, 0.000, 0.000, 0.000),
    "pythia 160m": (0.000, 0.000, 0.000, 0.000, 0.000, 0.000),
    "pythia 70m": (0.000, 0.000, 0.000, 0.000, 0.000, 0.000),
}
PAPER_MEMORY = {  # model -> (1-shot base, document, template, document + template), weight decay 0.05
    "llama2 13b": (0.460, 0.476, 0.465, 0.462),
    "llama2 7b": (0.435, 0.439, 0.445, 0.438),
    "llama2_chat 13b": (0.556, 0.561, 0.562, 0.558),
    "llama2_chat 7b": (0.636, 0.650, 0.647, 0.646),
    "pythia 12b": (0.366,) * 4,
    "pythia 6.9b": (0.163,) * 4,
    "pythia 2.8b": (0.026,) * 4,
    "pythia 1.4b": (0.009,) * 4,
    "pythia 1b": (0.000,) * 4,
    "pythia 410m": (0.010,) * 4,
    "pythia 160m": (0.000,) * 4,
    "pythia 70m": (0.000,) * 4,
}
PAPER_WEIGHT_DECAY = {  # weight decay 0.01: (1-shot base, best with 0.05, document, template, document + template)
    "llama2 13b": (0.460, 0.476, 0.488, 0.483, 0.472),
    "llama2_chat 13b": (0.556, 0.562, 0.557, 0.549, 0.561),
    "llama2_chat 7b": (0.636, 0.650, 0.639, 0.650, 0.642),
}
PAPER_FULL_UPDATE = {  # 1-shot accuracy after a full-weight update, no memory module
    ("pythia 410m", "template"): 0.000,
    ("pythia 410m", "document+template"): 0.024,
    ("pythia 70m", "template"): 0.000,
    ("pythia 70m", "document+template"): 0.000,
}


def selection_summary(inputs: MemoryInputs, config: MemoryConfig) -> str:
    """The note's page counts and the claims kept, as two lines."""
    s = inputs.selection
    return (
        f"pages with a validation claim (N_full) {s['n_full']}, top pages (N_top) {s['n_top']}, kept (N_trunc) "
        f"{s['n_trunc']} ({s['no_text']} without text, {s['no_training_claims']} without a training claim dropped); "
        f"{s['dropped_as_training_claims']} validation claims dropped as training claims\n"
        f"{len(inputs.eval)} validation claims on the kept pages, {len(inputs.train)} training claims on them, "
        f"{len(inputs.demo_pool)} training claims on other pages for demonstrations; seeds {config.seeds}"
    )


def page_claims(inputs: MemoryInputs, page: str, n: int = 6) -> pd.DataFrame:
    """The first ``n`` evaluated claims on ``page``."""
    return pd.DataFrame([c for c in inputs.eval if c["page"] == page][:n])


def label_counts(inputs: MemoryInputs) -> pd.DataFrame:
    """How many evaluated claims carry each label, as one row."""
    return pd.DataFrame(inputs.eval).groupby("label").size().rename("validation claims").to_frame().T


def example_prompt(inputs: MemoryInputs, config: MemoryConfig, k: int = 2) -> str:
    """The k-shot prompt the first evaluated claim is asked with."""
    return fever_prompt(inputs.eval[0]["claim"], demonstrations(inputs.demo_pool, k, config.demo_seed))


def pivot(table: pd.DataFrame, values: str, columns: str = "shots", index: str | list[str] = "model") -> pd.DataFrame:
    """``values`` by ``index`` and ``columns``, in the table's order, to three decimals."""
    return table.pivot_table(index=index, columns=columns, values=values, sort=False).round(3)


def paper_tables() -> dict[str, pd.DataFrame | pd.Series]:
    """The lab note's tables as frames: the k-shot sweep, memory, weight decay 0.01, full update."""
    return {
        "sweep": pd.DataFrame(PAPER_SWEEP, index=range(6)).T.rename_axis(columns="shots"),
        "memory": pd.DataFrame(PAPER_MEMORY, index=["1-shot (base)", "Document", "Template", "Doc + Template"]).T,
        "weight_decay": pd.DataFrame(
            PAPER_WEIGHT_DECAY, index=["1-shot (base)", "best with 0.05", "Document", "Template", "Doc + Template"]
        ).T,
        "full_update": pd.Series(PAPER_FULL_UPDATE).rename("accuracy").to_frame(),
    }


def kshot_figure(sweep_scores: pd.DataFrame):
    """Accuracy against k for each pretrained model, with 95% intervals."""
    return lines_with_ci(
        sweep_scores,
        x="shots",
        y="accuracy",
        hue="model",
        low="accuracy_low",
        high="accuracy_high",
        title="k-shot accuracy, pretrained models",
        xlabel="demonstrations (k)",
    )


def label_scores(sweeps: Sequence[Mapping[str, Any]], config: MemoryConfig) -> pd.DataFrame:
    """Each pretrained model's accuracy on each gold label at ``memory_shots``."""
    by_label = scores([a for a in answer_rows(sweeps) if a["shots"] == config.memory_shots], by=("model", "label"))
    return by_label[["model", "label", "n", "accuracy", "accuracy_low", "accuracy_high", "unparsed"]]


def placement_table(runs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Where each model's memory sits and how many parameters it has, a row per model."""
    return pd.DataFrame(
        [
            {
                "model": r["model"],
                "blocks": r["n_blocks"],
                "after block (1-indexed)": r["layer"] + 1,
                "depth": (r["layer"] + 1) / r["n_blocks"],
                "memory parameters": r["memory_parameters"],
            }
            for r in runs
        ]
    ).drop_duplicates("model")


def training_table(runs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Each memory's training: examples, steps, first and final loss, gate and time."""
    return pd.DataFrame(
        [
            {
                "model": r["model"],
                "variant": r["variant"],
                "seed": r["seed"],
                "examples": r["train_examples"],
                "steps": r["train"]["steps"],
                "first_loss": r["train"]["losses"][0]["loss"],
                "final_loss": r["train"]["losses"][-1]["loss"],
                "gate": r["gate"],
                "seconds": round(r["train"]["seconds"], 1),
            }
            for r in runs
        ]
    )


def memory_table(answers: Sequence[Mapping[str, Any]], config: MemoryConfig) -> pd.DataFrame:
    """Scores at ``memory_shots`` per model, method and seed, with the share of answers each
    memory changed against the pretrained model."""
    at_k = [a for a in answers if a["shots"] == config.memory_shots and a["model"] in config.memory_models]
    table = scores(at_k, by=("model", "method", "seed"))
    table["changed"] = [
        changed_share(answers, r.model, r.method, config.memory_shots) if r.method != BASE else 0.0
        for r in table.itertuples()
    ]
    return table


def memory_figure(memory_scores: pd.DataFrame, config: MemoryConfig):
    """Accuracy at ``memory_shots`` with and without memory, the first seed's runs."""
    return bars_with_ci(
        memory_scores[memory_scores.seed == config.seeds[0]],
        x="model",
        y="accuracy",
        hue="method",
        low="accuracy_low",
        high="accuracy_high",
        title=f"{config.memory_shots}-shot accuracy with and without memory (seed {config.seeds[0]})",
    )


ABLATION_COLUMNS = [
    "model",
    "method",
    "accuracy",
    "accuracy_low",
    "accuracy_high",
    "macro_f1",
    "unparsed",
    "changed",
    "changed_vs_default",
]


def ablation_table(
    answers: Sequence[Mapping[str, Any]],
    config: MemoryConfig,
    module_runs: Sequence[Mapping[str, Any]],
    full_runs: Sequence[Mapping[str, Any]],
) -> pd.DataFrame:
    """Scores of the ablated memories (``module_runs``) and full updates per model, method and
    seed; ``changed`` against the pretrained model and, for a memory, ``changed_vs_default``
    against the same memory trained with the profile's settings. ``answers`` holds every run's."""
    table = scores(answer_rows(list(module_runs) + list(full_runs)), by=("model", "method", "seed"))
    table["changed"] = [changed_share(answers, r.model, r.method, config.memory_shots) for r in table.itertuples()]
    default = {r["method"]: method_name(config, r["variant"], config.train.weight_decay) for r in module_runs}
    table["changed_vs_default"] = [
        changed_share(answers, r.model, r.method, config.memory_shots, against=default[r.method])
        if r.method in default
        else float("nan")
        for r in table.itertuples()
    ]
    return table


def _changed(memory_scores: pd.DataFrame, ablations: pd.DataFrame) -> pd.Series:
    """The share of answers each trained memory changed (full updates aside)."""
    with_module = ablations[~ablations.method.str.startswith("full update")]
    return pd.concat([memory_scores[memory_scores.method != BASE]["changed"], with_module["changed"]])


def _fact_claims(answers: Sequence[Mapping[str, Any]], config: MemoryConfig) -> list[Mapping[str, Any]]:
    """The pretrained models' answers at ``memory_shots`` on claims that need the fact (a, b)."""
    return [a for a in answers if a["method"] == BASE and a["shots"] == config.memory_shots and a["label"] != "c"]


def prose(
    answers: Sequence[Mapping[str, Any]],
    config: MemoryConfig,
    sweep_scores: pd.DataFrame,
    memory_scores: pd.DataFrame,
    ablations: pd.DataFrame,
    memory_claims: Sequence[Mapping[str, Any]],
    size_claims: Sequence[Mapping[str, Any]],
) -> str:
    """What the run shows, as Markdown paragraphs: answers the memories changed, how often a
    memory beat its model beside the note's gains, each ablation against the default memory,
    the sweep's spread across k, and the pretrained models on claims that need the fact."""
    helped = [c for c in memory_claims if c["verdict"] == "shown"]
    hurt = [c for c in memory_claims if c["verdict"] == "opposite shown"]
    changed = _changed(memory_scores, ablations)
    lines = [
        f"Every trained memory changed some answers: from {100 * changed.min():.1f}% to {100 * changed.max():.1f}% of "
        f"the {config.memory_shots}-shot answers."
        if changed.min() > 0
        else f"Some trained memory changed no answer at all (the least: {100 * changed.min():.1f}%)."
    ]
    gains = [v - row[0] for name, row in PAPER_MEMORY.items() if name.startswith("llama") for v in row[1:]]
    wd_gains = [v - row[0] for row in PAPER_WEIGHT_DECAY.values() for v in row[2:]]
    note_base = PAPER_MEMORY["llama2_chat 7b"][0]  # the note's best one-shot model
    lines.append(
        f"With the profile's settings, a memory beat its pretrained model beyond noise in {len(helped)} of "
        f"{len(memory_claims)} runs"
        + (f" ({', '.join(c['better'][0] + ' ' + c['better'][1] for c in helped)})" if helped else "")
        + f", and fell below it beyond noise in {len(hurt)}. The note's memory gains on Llama-2 run from "
        f"{min(gains):+.3f} to {max(gains):+.3f} ({min(wd_gains):+.3f} to {max(wd_gains):+.3f} with weight decay "
        "0.01), none on Pythia. Its per-claim answers are not published, so no paired interval can be computed "
        f"for them; one accuracy of {note_base:.3f} on {PAPER_CLAIMS:,} claims has a 95% interval of about "
        f"±{1.96 * (note_base * (1 - note_base) / PAPER_CLAIMS) ** 0.5:.3f}."
    )
    for r in ablations[ablations.changed_vs_default.notna()].itertuples():
        lines.append(
            f"{r.model}, {r.method}: accuracy {r.accuracy:.3f}; it changed {100 * r.changed_vs_default:.1f}% of the "
            f"answers of the memory trained with the profile's settings."
        )
    spread = sweep_scores.groupby("model", sort=False)["accuracy"].agg(lambda v: v.max() - v.min())
    small, large = config.size_pair or (None, None)
    lines.append(
        f"Across k = {min(config.shots)} to {max(config.shots)}, each pretrained model's accuracy moves by "
        f"{100 * spread.min():.1f} to {100 * spread.max():.1f} points"
        + (
            f"; {large} against {small} is " + ", ".join(f"{c['verdict']} at k = {c['shots']}" for c in size_claims)
            if size_claims
            else ""
        )
        + "."
    )
    knows = _fact_claims(answers, config)
    if knows:
        facts = pd.DataFrame(knows).groupby("model", sort=False)["correct"].mean()
        lines.append(
            f"On the claims that need the fact (supports and refutes), the pretrained models are right on "
            f"{100 * facts.min():.1f}% to {100 * facts.max():.1f}% at {config.memory_shots}-shot, where a coin "
            "between the two, never answering (c), would be right on 50%."
        )
    return "\n\n".join(lines)


def period_scores(
    answers: Sequence[Mapping[str, Any]], config: MemoryConfig, memory: Sequence[Mapping[str, Any]]
) -> pd.DataFrame | None:
    """Scores at ``memory_shots`` on pages the models read in pretraining (pre) and on pages they
    never read (post), for the pretrained models and the default memories; None where pages have
    no period (the Hub)."""
    if not {a["period"] for a in answers} - {""}:
        return None
    methods = [BASE] + [r["method"] for r in memory]
    one = [
        a
        for a in answers
        if a["shots"] == config.memory_shots and a["model"] in config.memory_models and a["method"] in methods
    ]
    return scores(one, by=("model", "method", "period"))


def run_metrics(
    inputs: MemoryInputs,
    config: MemoryConfig,
    answers: Sequence[Mapping[str, Any]],
    claims: Sequence[Mapping[str, Any]],
    memory_claims: Sequence[Mapping[str, Any]],
    sweep_scores: pd.DataFrame,
    memory_scores: pd.DataFrame,
    ablations: pd.DataFrame,
    runs: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """What ``run.json`` records under ``metrics``; ``runs`` are every trained run, the default
    memories first."""
    changed = _changed(memory_scores, ablations)
    knows = _fact_claims(answers, config)
    first = runs[0]
    return {
        "source": inputs.source,
        "selection": inputs.selection,
        "claims": list(claims),
        "eval_claims": len(inputs.eval),
        "kshot": sweep_scores.to_dict("records"),
        "memory": memory_scores.to_dict("records"),
        "ablations": ablations.to_dict("records"),
        "layer": first["layer"],
        "n_blocks": first["n_blocks"],
        "memory_parameters": first["memory_parameters"],
        "changed_min": float(changed.min()),
        "changed_max": float(changed.max()),
        "memory_helped": sum(c["verdict"] == "shown" for c in memory_claims),
        "memory_hurt": sum(c["verdict"] == "opposite shown" for c in memory_claims),
        "memory_runs": len(memory_claims),
        "fact_claims_accuracy": pd.DataFrame(knows).groupby("model")["correct"].mean().to_dict() if knows else {},
        "training_seconds": float(sum(r["train"]["seconds"] for r in runs)),
    }
