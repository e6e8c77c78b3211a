"""What notebook 03 concludes: the paper's claims as paired comparisons (:func:`paper_claims`),
the prose under "What this run shows" and "Where a miss comes from", and the metrics of its
``run.json``. Each function returns data or Markdown; the notebook displays it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from kilib.calm.presets import CalmConfig
from kilib.calm.study import KEEPS_MARGIN, LORA, CalmInputs, compare, run_name
from kilib.calm.tasks import CONTROL, KV_SEEN, TASK_NAMES, VALUES


def _compositions(config: CalmConfig) -> list[str]:
    """The paper's CALM over the trained m_A, once per cross-attention the preset runs."""
    return list(dict.fromkeys(run_name("trained", r) for _, r in config.runs))


def paper_claims(answers: Sequence[Mapping], config: CalmConfig, inputs: CalmInputs, lora: bool) -> list[dict]:
    """For each cross-attention (the paper's, then rotary): on KV arithmetic CALM beats the anchor
    and m_A; it keeps the anchor's numeric arithmetic (loses < :data:`KEEPS_MARGIN` points); it
    beats itself over the vanilla and random m_A and with m_A as encoder; it beats the LoRA
    baseline (``lora``); its copying control beats the anchor. Each claim is a
    :func:`kilib.calm.study.compare` dict with the composition's ``model``."""
    claims = []
    for rotary in sorted({r for _, r in config.runs}):
        calm = run_name("trained", rotary)
        mine = [
            compare(answers, "kv", calm, "anchor", f"KV arithmetic: {calm} beats the anchor"),
            compare(answers, "kv", calm, "augment", f"KV arithmetic: {calm} beats m_A"),
            compare(
                answers,
                "numeric",
                calm,
                "anchor",
                f"numeric arithmetic: {calm} keeps the anchor's (loses < {KEEPS_MARGIN:g} points)",
                margin=KEEPS_MARGIN,
            ),
        ]
        for augment, r in config.runs:
            if r == rotary and augment != "trained":
                mine.append(
                    compare(
                        answers,
                        "kv",
                        calm,
                        run_name(augment, rotary),
                        f"KV arithmetic: {calm} over the trained m_A beats it over the {augment} m_A",
                    )
                )
        if config.encoder_ablation and not rotary:
            encoder = run_name("trained", False, encoder=True)
            mine.append(compare(answers, "kv", calm, encoder, f"KV arithmetic: {calm} beats it with m_A as encoder"))
        if lora:
            claim = f"KV arithmetic: {calm} beats the anchor with a LoRA of as many parameters"
            mine.append(compare(answers, "kv", calm, LORA, claim))
        if inputs.rows[CONTROL]["train"]:
            control = run_name("trained", rotary, CONTROL)
            claim = f"copying control: {control} substitutes over held-out keys better than the anchor"
            mine.append(compare(answers, CONTROL, control, "anchor", claim))
        claims += [{**c, "model": calm} for c in mine]
    return claims


def run_shows_markdown(claims: Sequence[Mapping], config: CalmConfig) -> str:
    """A paragraph per composition: is the paper's main effect shown, do the ablations, the
    encoder, the LoRA baseline and the copying control say it used m_A, did it keep the anchor's
    arithmetic."""
    lines = []
    for calm in _compositions(config):
        mine = [c for c in claims if c["model"] == calm]
        effect = all(c["verdict"] == "shown" for c in mine[:2])
        lines.append(
            f"**{calm}**: the paper's main effect (on KV arithmetic the composed model beats both of its parts) is "
            + ("**shown** in this run." if effect else "**not shown** in this run.")
        )
        ablations = [c for c in mine if "over the trained m_A" in c["claim"]]
        if ablations and not any(c["verdict"] == "shown" for c in ablations):
            lines.append(
                f"On the held-out keys {calm} does no better over the trained m_A than over the vanilla or random "
                "one: it did not use m_A's knowledge of those keys."
            )
        elif ablations and all(c["verdict"] == "shown" for c in ablations):
            lines.append(
                f"{calm} does better over the trained m_A than over the vanilla and the random one: what it gains "
                "comes from m_A's knowledge of the keys."
            )
        encoded = [c for c in mine if c["claim"].endswith("with m_A as encoder")]
        if encoded:
            lines.append(
                f"m_A as encoder: on the held-out keys {calm} answers {encoded[0]['higher']:.1f}%, with m_A reading "
                f"the prompt only {encoded[0]['lower']:.1f}% (**{encoded[0]['verdict']}**)."
            )
        lora = [c for c in mine if c["claim"].endswith("LoRA of as many parameters")]
        if lora:
            lines.append(
                f"LoRA baseline: on the held-out keys {calm} answers {lora[0]['higher']:.1f}%, the anchor with a LoRA "
                f"of as many parameters {lora[0]['lower']:.1f}% (**{lora[0]['verdict']}**)."
            )
        copying = [c for c in mine if c["task"] == CONTROL]
        if copying:
            c = copying[0]
            lines.append(
                f"Copying control: trained to substitute over the training keys, {calm} substitutes over the "
                f"held-out keys at {c['higher']:.1f}% (the anchor alone: {c['lower']:.1f}%, m_A alone: see the "
                "table), "
                + (
                    "so it does read m_A's knowledge of keys it was not trained on."
                    if c["verdict"] == "shown"
                    else "so it does not read m_A's knowledge of keys it was not trained on."
                )
            )
        if mine[2]["verdict"] != "shown":
            lines.append(
                f"Training {calm} cost the anchor numeric arithmetic ({mine[2]['lower']:.1f} → "
                f"{mine[2]['higher']:.1f}); the paper's composition kept it (73.7 → 72.0)."
            )
    return "\n\n".join(lines)


def _best_held_out(probes: pd.DataFrame) -> dict[str, float]:
    """The probe's best held-out accuracy over blocks, for the trained and the vanilla m_A."""
    return {m: probes[probes["m_A"] == m]["held_out_keys"].max() for m in ("trained", "vanilla")}


def probe_markdown(probes: pd.DataFrame) -> str:
    """What the value probe (:func:`kilib.calm.probe.probe_table`) found, in a sentence."""
    if probes["held_out_keys"].isna().all():
        return (
            "No held-out key shares its value with a training key (the values are unique), so no linear "
            "read-out fitted on the training keys can name a held-out key's value: the probe is not scored."
        )
    best = _best_held_out(probes)
    return (
        f"At its best block, a linear read-out of the trained m_A names the value of **{best['trained']:.1f}%** "
        f"of the held-out keys' occurrences ({probes['held_out_occurrences'].iloc[0]} of them), of the "
        f"vanilla m_A {best['vanilla']:.1f}% (chance {probes['chance'].iloc[0]:.1f}%)."
    )


def diagnosis_rows(answers: Sequence[Mapping], config: CalmConfig) -> list[dict]:
    """Per composition: does it beat the anchor on its own training rows (did it learn even the
    keys it trained on?), a :func:`kilib.calm.study.compare` dict with its ``model``."""
    claim = "KV arithmetic on its own training rows: {} beats the anchor"
    return [
        {**compare(answers, KV_SEEN, calm, "anchor", claim.format(calm)), "model": calm}
        for calm in _compositions(config)
    ]


def _accuracy(table: pd.DataFrame) -> dict[tuple[str, str], float]:
    return {(r["task"], r["model"]): r["accuracy"] for r in table.to_dict("records")}


def anchor_given_values(table: pd.DataFrame) -> float:
    """The anchor's accuracy on the held-out KV expressions with the values written in: the most
    a composition could reach by reading every value from m_A."""
    return _accuracy(table)[(TASK_NAMES[VALUES], "anchor")]


def diagnosis_markdown(
    diagnosis: Sequence[Mapping], table: pd.DataFrame, probes: pd.DataFrame, inputs: CalmInputs, config: CalmConfig
) -> str:
    """Where a miss comes from: each composition on its own training rows and the held-out keys,
    the ablations on their training rows, the anchor given the values, and, where the probe finds
    the values in m_A but the compositions only fitted their training keys, what that means."""
    accuracy = _accuracy(table)
    said = [
        f"**{d['model']}** answers {d['higher']:.1f}% of its own training rows (the anchor: {d['lower']:.1f}%; "
        f"{d['verdict']}, difference {d['difference']:+.1f}, 95% interval {d['difference_ci'][0]:+.1f} to "
        f"{d['difference_ci'][1]:+.1f}) and {accuracy[(TASK_NAMES['kv'], d['model'])]:.1f}% on the held-out keys."
        for d in diagnosis
    ]
    for augment, rotary in config.runs:
        if augment != "trained":
            name = run_name(augment, rotary)
            said.append(
                f"Over the {augment} m_A, {name} answers {accuracy[(TASK_NAMES[KV_SEEN], name)]:.1f}% of its "
                f"own training rows."
            )
    said.append(
        f"Given the values written in, the anchor answers {anchor_given_values(table):.1f}% of the held-out "
        "expressions: the most a composition could reach by reading every value from m_A."
    )
    fitted = [
        d["model"]
        for d in diagnosis
        if d["verdict"] == "shown"
        and accuracy[(TASK_NAMES["kv"], d["model"])] <= accuracy[(TASK_NAMES["kv"], "anchor")]
    ]
    best = _best_held_out(probes)
    if fitted and not probes["held_out_keys"].isna().all() and best["trained"] > best["vanilla"] + 10:
        vanilla_fit = probes[probes["m_A"] == "vanilla"]["training_keys"].max()
        said.append(
            f"So m_A holds the held-out keys' values where the bridges read them, and {' and '.join(fitted)} fitted "
            "their training rows but answer no more held-out rows than the anchor: they learnt the training keys, "
            f"not a way to read any key. A likely reason, not tested here: with only {len(inputs.keys['train'])} "
            "training keys, a linear map can fit each training key's state to its value whatever the state holds. "
            f"The probe on the vanilla m_A, which never learnt the values, fits {vanilla_fit:.1f}% of the training "
            f"keys' occurrences and reads {best['vanilla']:.1f}% of the held-out ones."
        )
    return "\n\n".join(said)


def main_effect_shown(claims: Sequence[Mapping], config: CalmConfig) -> dict[str, bool]:
    """Per composition: on KV arithmetic it beats both the anchor and m_A (the paper's main effect)."""
    return {
        calm: all(
            c["verdict"] == "shown"
            for c in claims
            if c["model"] == calm and c["task"] == "kv" and c["claim"].endswith(("beats the anchor", "beats m_A"))
        )
        for calm in _compositions(config)
    }


def run_metrics(
    inputs: CalmInputs,
    config: CalmConfig,
    calm_runs: Sequence[dict],
    tables: Mapping[str, pd.DataFrame],
    claims: Sequence[Mapping],
    diagnosis: Sequence[Mapping],
) -> dict[str, Any]:
    """The metrics of notebook 03's ``run.json``; ``tables``: its ``stages``, ``composition``,
    ``table1`` and ``value_probe`` tables."""
    first, stages, composition = calm_runs[0], tables["stages"], tables["composition"]
    return dict(
        source=inputs.source,
        plan=first["plan"],
        added_parameters=first["added_parameters"],
        diagnosis=list(diagnosis),
        anchor_given_values=anchor_given_values(tables["table1"]),
        value_probe=tables["value_probe"].to_dict("records"),
        paper_formula=first["paper_formula"],
        step0_max_logit_gap=float(composition["step0_max_logit_gap"].max()),
        keys={s: len(k) for s, k in inputs.keys.items()},
        claims=list(claims),
        table1=tables["table1"].to_dict("records"),
        main_effect_shown=main_effect_shown(claims, config),
        stage_seconds=float(stages["seconds"].sum()) if len(stages) else 0.0,
        training_seconds=float(composition["seconds"].sum()),
    )
