"""What notebook 00 shows about the zoo (docs/tiny-world.md, "A zoo of small models"): each
model's pretraining, what it knows, and whether the tiny profile meets the bar it was designed
for. Everything here reads the zoo's cached logs and knowledge reports (:mod:`kilib.tiny.zoo`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from kilib.plots import bars_with_ci
from kilib.tiny import zoo

# The knowledge report's measures, in the order the notebook shows them.
KNOWLEDGE_LABELS = {
    "pre_closed_book": "pre-cutoff, closed book",
    "pre_majority_baseline": "pre-cutoff, most-common answer",
    "control_closed_book": "control, closed book",
    "post_closed_book": "post-cutoff, closed book",
    "post_majority_baseline": "post-cutoff, most-common answer",
    "post_with_passage": "post-cutoff, passage in context",
}


def reading_stages(logs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each model's reading stage from its pretraining log (readers only; the others: none)."""
    return {name: log.get("reading_stage", {"examples": 0, "seconds": 0.0}) for name, log in logs.items()}


def zoo_table(config: zoo.ZooConfig, logs: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """A row per model: family, parameters, corpus, steps, final loss and the time each stage took."""
    stages = reading_stages(logs)
    return pd.DataFrame(
        [
            {
                "model": name,
                "family": spec.family,
                "parameters": log["parameters"],
                "non-embedding": log["non_embedding_parameters"],
                "corpus tokens": log["corpus_tokens"],
                "steps": log["steps"],
                "final loss": log["losses"][-1]["loss"],
                "pretraining s": round(log["seconds"], 1),
                "reading-stage examples": stages[name]["examples"],
                "reading-stage s": round(stages[name]["seconds"], 1),
            }
            for spec, (name, log) in zip(config.models, logs.items())
        ]
    )


def measured_knowledge(config: zoo.ZooConfig, per_fact: int) -> list[tuple[str, dict[str, Any]]]:
    """``(label, knowledge report)`` for every model after pretraining, then each reader after its
    reading stage (``"llama-m + reading"``)."""
    measured = [
        (spec.name, zoo.knowledge_report(config, spec.name, per_fact, pretrained_only=True)) for spec in config.models
    ]
    measured += [
        (f"{name} + reading", zoo.knowledge_report(config, name, per_fact))
        for name in config.reading.models
        if zoo.model_dir(config, name) != zoo.pretrained_dir(config, name)
    ]
    return measured


def knowledge_table(measured: Sequence[tuple[str, Mapping[str, Any]]]) -> pd.DataFrame:
    """A row per model and measure (:data:`KNOWLEDGE_LABELS`) with its accuracy and interval."""
    return pd.DataFrame(
        [{"model": label, "measure": KNOWLEDGE_LABELS[k], **r[k]} for label, r in measured for k in KNOWLEDGE_LABELS]
    )


def knowledge_figure(knowledge: pd.DataFrame):
    """Each model's accuracy on each measure, with 95% bootstrap intervals."""
    return bars_with_ci(
        knowledge,
        x="model",
        y="accuracy",
        hue="measure",
        hue_order=list(KNOWLEDGE_LABELS.values()),
        title="what the zoo knows (95% bootstrap intervals)",
    )


def knowledge_pivot(knowledge: pd.DataFrame, measured: Sequence[tuple[str, Any]]) -> pd.DataFrame:
    """Accuracy by model (in measured order) and measure, to three decimals."""
    return (
        knowledge.pivot(index="model", columns="measure", values="accuracy")
        .loc[[m for m, _ in measured], list(KNOWLEDGE_LABELS.values())]
        .round(3)
    )


def largest_model(config: zoo.ZooConfig, logs: Mapping[str, Mapping[str, Any]]) -> str:
    """The zoo's model with the most parameters."""
    return max(config.models, key=lambda s: logs[s.name]["parameters"]).name


def build_seconds(logs: Mapping[str, Mapping[str, Any]]) -> float:
    """The zoo's training time: pretraining and reading stage, all models, when they were built."""
    stages = reading_stages(logs)
    return sum(log["seconds"] + stages[name]["seconds"] for name, log in logs.items())


def checks(
    config: zoo.ZooConfig,
    logs: Mapping[str, Mapping[str, Any]],
    pretrained: Mapping[str, Mapping[str, Any]],
    used: Mapping[str, Mapping[str, Any]],
) -> dict[str, bool]:
    """The targets the tiny profile was designed for, each met or missed: ``pretrained`` holds
    each model's report after pretraining, ``used`` each as the studies load it."""
    largest = largest_model(config, logs)
    threads = "/".join(sorted({str(log["torch_threads"]) for log in logs.values()}))
    big = used[largest]
    return {
        **{
            f"{name} answers held-out pre-cutoff paraphrases above the most-common-answer baseline (lower CI bound)": (
                used[name]["pre_closed_book"]["ci_low"] > used[name]["pre_majority_baseline"]["accuracy"]
            )
            for name in config.reading.models
        },
        f"{largest} answers held-out pre-cutoff paraphrases with >= 50% accuracy": (
            big["pre_closed_book"]["accuracy"] >= 0.5
        ),
        f"{largest} on post-cutoff questions is no better than the most-common-answer baseline (upper CI bound)": (
            big["post_closed_book"]["accuracy"] <= big["post_majority_baseline"]["ci_high"]
        ),
        f"{largest} with the right passage in context answers post-cutoff questions with >= 50% accuracy": (
            big["post_with_passage"]["accuracy"] >= 0.5
        ),
        "within each family, after pretraining, a larger model scores at least as high on pre-cutoff questions "
        "as a smaller one": all(
            pretrained[a.name]["pre_closed_book"]["accuracy"] <= pretrained[b.name]["pre_closed_book"]["accuracy"]
            for a in config.models
            for b in config.models
            if a.family == b.family and logs[a.name]["parameters"] < logs[b.name]["parameters"]
        ),
        f"the whole zoo trained in under 10 minutes (built with {threads} CPU threads)": build_seconds(logs) < 600,
    }


def run_metrics(
    world,
    config: zoo.ZooConfig,
    logs: Mapping[str, Mapping[str, Any]],
    pretrained: Mapping[str, Mapping[str, Any]],
    used: Mapping[str, Mapping[str, Any]],
    checks: Mapping[str, bool],
) -> dict[str, Any]:
    """What ``run.json`` records under ``metrics`` for notebook 00."""
    return {
        "world": {
            "articles": len(world.articles),
            "facts": len(world.facts),
            "seed": config.world_seed,
            "size": config.world_size,
        },
        "zoo": {name: {k: r[k] for k in KNOWLEDGE_LABELS} for name, r in used.items()},
        "zoo_after_pretraining": {name: {k: r[k] for k in KNOWLEDGE_LABELS} for name, r in pretrained.items()},
        "pretraining_seconds": {name: log["seconds"] for name, log in logs.items()},
        "reading_stage_seconds": {name: stage["seconds"] for name, stage in reading_stages(logs).items()},
        "pretraining_loss_first_last": {
            name: [log["losses"][0]["loss"], log["losses"][-1]["loss"]] for name, log in logs.items()
        },
        "parameters": {name: log["parameters"] for name, log in logs.items()},
        "checks": dict(checks),
        "largest_model": largest_model(config, logs),
    }
