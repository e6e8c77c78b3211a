# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: -jupytext.text_representation
#   kernelspec:
#     display_name: Python (kilib)
#     language: python
#     name: kilib
# ---

# %% [markdown]
# # 03 · CALM: composing an anchor model with an augmenting model
#
# Bansal et al., *LLM Augmented LLMs: Expanding Capabilities through Composition* (ICLR 2024). Two frozen models, an
# **anchor** m_B with a skill and an **augmenting model** m_A with knowledge the anchor lacks, are joined by a few new
# layers, the only part that trains.
#
# * **Which blocks.** Every 4th block of m_A (n = N_A / 4 of them), paired in order with n anchor blocks spread
#   uniformly, the last pair feeding the anchor's last block.
# * **Each pair.** A linear projection D_A → D_B of m_A's block output, then multi-head cross-attention with the
#   anchor's block output as queries and the projected m_A states as keys and values, as many heads as the anchor
#   has. The result is added to the anchor's hidden state and feeds the next anchor block.
# * **Masks.** Both models read the same token ids. Anchor position t sees m_A's states at positions ≤ t, plus the
#   padding mask: what m_A has seen while decoding, and no more while training. The authors' code passes no mask, so
#   training sees future tokens; kilib's test shows the causal mask keeps them out. The two models keep separate KV
#   caches (tested against recomputing both on the whole sequence).
# * **Start.** The output projections start at zero, so the composed model is the anchor at step 0 (checked below).
#
# **Table 1, key-value arithmetic.** Keys are short strings mapped to integers. As in the paper, which took them from
# PaLM2-XXS's vocabulary, each key is one token of the models' vocabulary (2-6 letters), so m_A can tie a value to
# it.
# * m_A is trained on substitution (`fo + ba` → `10 + 22`) over all keys.
# * The anchor knows numeric arithmetic (`10 + 22` → `32`, x before + and −).
# * CALM is trained on KV arithmetic (`fo + ba` → `32`) over part of the keys, and evaluated on expressions over the
#   **other** keys. To answer those, the anchor must read the key values from m_A.
# * The paper's ablations run beside it: CALM over m_A before its substitution training (**vanilla m_A**), over
#   an m_A with random weights (**random m_A**), with **m_A as an encoder** (m_A reads the prompt only, once, and
#   every anchor position sees all of it: what a public port of CALM does in place of the composition), and the
#   **LoRA baseline**: the anchor alone with a LoRA adapter of as many parameters as the bridges, trained on the
#   same rows. It has no m_A, so it cannot know the held-out keys.
# * **A copying control** (kilib's, not in the paper): the composition trained to *substitute* over the training
#   keys, then asked to substitute over the held-out keys, which only m_A knows. It asks whether the composition can
#   read m_A at all, apart from whether the anchor can compute.
# * **Two more rows** (kilib's) say where a composition that misses KV arithmetic falls short: its accuracy on its
#   own training rows (did it learn even the keys it trained on?), and the held-out KV expressions with the keys'
#   values written in, asked as numeric arithmetic. For the anchor, that is the most a composition could reach if it
#   read every value from m_A without error.
#
# **Profiles.**
# * *tiny*: the zoo's llama-s (4 blocks, 128 wide) as m_A, llama-m (6 blocks, 192 wide) as the anchor, both in 4-bit.
#   No zoo model knows arithmetic, so before composition the anchor is trained on numeric arithmetic and m_A on
#   substitution. Every block of m_A is composed (4 pairs), since m_A has only 4. Where the tiny run departs from the
#   paper, and why (development runs in `results/tiny/calm_dev.jsonl`, none of which used the held-out keys):
#   * **Values 1..16, expressions of two terms.** On the world's own table (values 1..60, 2-3 terms) llama-m learned
#     almost no arithmetic in minutes. Its arithmetic here is mostly a table it memorised, not a method: Table 1
#     shows it on held-out expressions and on its own training expressions.
#   * **The anchor's stage at learning rate 1e-3.** At 3e-3 (the first round) the stage swelled the anchor's residual
#     stream about eightfold, and no composition could steer it: the copying control copied nothing. This second
#     round was chosen after the first results were known, on the anchor's own training expressions and the
#     copying control.
#   * **64 keys sharing the 16 values (4 keys each), half of them for training.** The paper's values are unique. In
#     a copying control (the composition trained to substitute, asked on held-out keys), 13 training keys (20%)
#     left it memorising those keys, and 32 did not.
#   * **Keys that take a digit's place** (the third round, chosen after the second results on a split of the
#     *training* keys: fitted on 24, scored on the other 8). The world generator's keys are random strings, one to
#     six tokens each here; a linear probe read a key's value from m_A's states for 19-24% of unseen keys. Single
#     tokens raised that to 60-67%, and single tokens that stand where the tokenizer puts a digit (after a space
#     token of its own, so `ame + ke` is tokenized as `7 + 3` is) to 88%.
#   * **Every m_A block composed, for 30 epochs.** With every 2nd block for 10 epochs (the first two rounds), no
#     composition fitted more than 11% of its own training rows, whatever the keys. Every block for 30 epochs
#     fitted 51% and answered 13% over the other 8 keys, where the anchor alone answered 6%. It costs three times
#     the training time.
#   * **A second CALM with rotary positions in the cross-attention** (kilib's addition). The paper's cross-attention
#     has no positions. In the first round's copying control, over the world's random-string keys, it learned
#     nothing on held-out keys, and with rotary positions on its queries and keys it did. The ablations (vanilla and
#     random m_A) run on this one.
# * *paper*: TinyLlama 1.1B as m_A (same tokenizer as Llama-2) into Llama-2 7B (gated: accept the licence and set
#   `HF_TOKEN`) in 4-bit.
#   * m_A is first fine-tuned on substitution in full precision, and loaded unquantised (bf16, 2.2 GB), so that NF4's
#     rounding noise does not bury its stage's small steps.
#   * 200 keys, each one token of the Llama-2 vocabulary, with values 1..1000, expressions of 3-6 terms, 20% of the keys for training.
#   * The paper composed PaLM2-XXS into PaLM2-XS, and its own table sizes are not in our notes.

# %% tags=["parameters"]
PROFILE: str = "tiny"  # auto | tiny | smoke | paper
ANCHOR: str = ""  # "" keeps the profile's anchor (a zoo model name in tiny)
AUGMENT: str = ""  # "" keeps the profile's augmenting model
SEEDS: int = 0  # 0 keeps the profile's seeds (one), n > 0 runs seeds 0 to n-1
WORKERS: int = 0  # runs trained side by side on a CPU (0: one per core)

# %%
import pandas as pd
from IPython.display import Markdown, display

from kilib.calm import study as C
from kilib.config import select_preset
from kilib.plots import bars_with_ci
from kilib.results import Run
from kilib.runtime import resolve_profile, set_threads

profile = resolve_profile(PROFILE)
config = select_preset(C.CALM_PRESETS, profile, C.notebook_overrides(ANCHOR, AUGMENT, SEEDS, WORKERS))
set_threads()
inputs = C.study_inputs(profile, config)
run = Run("03_calm_composition", profile, config=config, seed=config.seeds[0])
print(f"profile {profile}: {inputs.source}")
print(
    f"{len(inputs.keys['train'])} training keys, {len(inputs.keys['eval'])} held-out keys; "
    f"{config.train_examples} KV arithmetic training rows, {config.eval_examples} evaluation rows per task; "
    f"seeds {config.seeds}"
)

# %% [markdown]
# ## The tasks
#
# One row of each, as the models see it, and a few keys of each split.

# %%
for task in C.TASKS:
    split = "train" if task == "kv" else "eval"
    row = inputs.rows[task][split][0]
    print(f"{C.TASK_NAMES[task]:>20}:  {C.task_prompt(task, row['expression'])} {row['target']}")
for split, keys in inputs.keys.items():
    print(f"{split} keys: " + ", ".join(f"{k}={v}" for k, v in list(keys.items())[:6]) + ", ...")

# %% [markdown]
# ## Before composition: each model learns its own task
#
# The anchor learns numeric arithmetic and m_A learns substitution, each on every expression but the evaluated ones
# (full fine-tuning in full precision; the paper profile's anchor is used as it is). Both are then loaded in 4-bit (the
# paper profile's m_A unquantised) and frozen. Cached: a rerun trains nothing that is already there.

# %%
stages = []
for role in ("anchor", "augment"):
    log = C.stage_log(inputs, config, role)
    if log is not None:
        stages.append(
            {
                "model": C.MODEL_NAMES[role],
                "task": C.TASK_NAMES[log["task"]],
                "examples": log["examples"],
                "steps": log["steps"],
                "first_loss": log["losses"][0]["loss"],
                "final_loss": log["losses"][-1]["loss"],
                "seconds": round(log["seconds"], 1),
            }
        )
stages = pd.DataFrame(stages)
run.save_table(stages, "stages")
display(stages.round(3))

# %% [markdown]
# ## The composition
#
# The layer pairs, the added parameters (exactly, beside the paper's estimate n(D_A·D_B + 3·D_B²)), and the check that
# the composed model equals the anchor before training: the largest logit difference must be 0.

# %%
study = C.study_runs(inputs, config)
calm_runs, lora_runs = study["calm"], study["lora"]
runs = study["baselines"] + calm_runs + lora_runs
first = calm_runs[0]
print(f"pairs (m_A block -> anchor block, 0-indexed): {first['plan']}")
print(f"added parameters: {first['added_parameters']:,} (the paper's formula: {first['paper_formula']:,})")
for r in lora_runs:
    print(
        f"LoRA baseline, seed {r['seed']}: rank {r['rank']}, {r['added_parameters']:,} parameters, "
        f"loss {r['train']['losses'][0]['loss']:.3f} -> {r['train']['losses'][-1]['loss']:.3f} in {r['train']['seconds']:.1f} s"
    )
composition = pd.DataFrame(
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
run.save_table(composition, "composition")
display(composition)
assert (composition["step0_max_logit_gap"] == 0).all() or not config.zero_init, (
    "the composed model is not the anchor at step 0"
)

# %%
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(6, 3.5))
for r in calm_runs + lora_runs:
    steps = [p["step"] for p in r["train"]["losses"]]
    ax.plot(steps, [p["loss"] for p in r["train"]["losses"]], label=f"{r['model']}, seed {r['seed']}")
ax.set_xlabel("step")
ax.set_ylabel("training loss (answer tokens)")
ax.set_title("Training the compositions and the LoRA baseline")
ax.legend()
run.save_figure(fig, "training_loss")

# %% [markdown]
# ## Table 1, beside the paper
#
# Exact-match accuracy in percent with 95% bootstrap intervals over the evaluation rows (seeds pooled). KV arithmetic
# is evaluated on the held-out keys only. Numeric arithmetic is asked on expressions no model trained on; where the
# anchor was trained on arithmetic here, the extra row asks its own training expressions. The last two rows are the
# compositions' own training rows and the held-out expressions with the values written in. The paper's numbers are
# PaLM2's.

# %%
answers = pd.DataFrame(C.answer_rows(runs))
run.save_table(answers, "answers")
table = C.results_table(answers.to_dict("records"))
run.save_table(table, "table1")
ours = table.pivot_table(index="task", columns="model", values="accuracy", sort=False)
paper = pd.DataFrame({C.TASK_NAMES[t]: row for t, row in C.PAPER_TABLE1.items()}).T
display(Markdown("**This run**"))
display(ours.round(1))
display(Markdown("**The paper (PaLM2-XXS into PaLM2-XS, Table 1)**"))
display(paper.rename(columns=C.MODEL_NAMES))
fig = bars_with_ci(table, x="task", y="accuracy", hue="model", title="Table 1: this run", percent=True)
run.save_figure(fig, "table1")

# %% [markdown]
# ## What this run shows
#
# Each claim compares two models on the same rows, paired by row: the difference in points with a 95% bootstrap
# interval. **shown**: the interval lies above zero; **opposite shown**: below zero; **direction only**: only the mean
# difference is positive; **not shown**: otherwise. "Keeps the anchor's arithmetic" is the claim that CALM loses less
# than 5 points of it (the paper: 73.7 → 72.0), so its difference is shifted by that margin, set before any run.

# %%
records = answers.to_dict("records")
claims = []
for rotary in sorted({r for _, r in config.runs}):
    calm = C.run_name("trained", rotary)
    mine = [
        C.compare(records, "kv", calm, "anchor", f"KV arithmetic: {calm} beats the anchor"),
        C.compare(records, "kv", calm, "augment", f"KV arithmetic: {calm} beats m_A"),
        C.compare(
            records,
            "numeric",
            calm,
            "anchor",
            f"numeric arithmetic: {calm} keeps the anchor's (loses < {C.KEEPS_MARGIN:g} points)",
            margin=C.KEEPS_MARGIN,
        ),
    ]
    for augment, r in config.runs:
        if r == rotary and augment != "trained":
            mine.append(
                C.compare(
                    records,
                    "kv",
                    calm,
                    C.run_name(augment, rotary),
                    f"KV arithmetic: {calm} over the trained m_A beats it over the {augment} m_A",
                )
            )
    if config.encoder_ablation and not rotary:
        mine.append(
            C.compare(
                records,
                "kv",
                calm,
                C.run_name("trained", False, encoder=True),
                f"KV arithmetic: {calm} beats it with m_A as encoder",
            )
        )
    if lora_runs:
        mine.append(
            C.compare(
                records, "kv", calm, C.LORA, f"KV arithmetic: {calm} beats the anchor with a LoRA of as many parameters"
            )
        )
    if inputs.rows[C.CONTROL]["train"]:
        control = C.run_name("trained", rotary, C.CONTROL)
        mine.append(
            C.compare(
                records,
                C.CONTROL,
                control,
                "anchor",
                f"copying control: {control} substitutes over held-out keys better than the anchor",
            )
        )
    claims += [{**c, "model": calm} for c in mine]
claims_table = pd.DataFrame(claims)
run.save_table(claims_table, "paper_claims")
display(
    Markdown(
        "\n".join(
            f"* {c['claim']}: **{c['verdict']}** ({c['higher']:.1f} vs {c['lower']:.1f}, difference "
            f"{c['difference']:+.1f}, 95% interval {c['difference_ci'][0]:+.1f} to {c['difference_ci'][1]:+.1f})"
            for c in claims
        )
    )
)
lines = []
for calm in dict.fromkeys(C.run_name("trained", r) for _, r in config.runs):
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
            f"{calm} does better over the trained m_A than over the vanilla and the random one: what it gains comes "
            "from m_A's knowledge of the keys."
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
    copying = [c for c in mine if c["task"] == C.CONTROL]
    if copying:
        c = copying[0]
        lines.append(
            f"Copying control: trained to substitute over the training keys, {calm} substitutes over the held-out "
            f"keys at {c['higher']:.1f}% (the anchor alone: {c['lower']:.1f}%, m_A alone: see the table), "
            + (
                "so it does read m_A's knowledge of keys it was not trained on."
                if c["verdict"] == "shown"
                else "so it does not read m_A's knowledge of keys it was not trained on."
            )
        )
    if mine[2]["verdict"] != "shown":
        lines.append(
            f"Training {calm} cost the anchor numeric arithmetic ({mine[2]['lower']:.1f} → {mine[2]['higher']:.1f}); "
            "the paper's composition kept it (73.7 → 72.0)."
        )
display(Markdown("\n\n".join(lines)))

# %% [markdown]
# ## Where a miss comes from
#
# Reading m_A and computing with what it read are two steps, and m_A must hold the values where the bridges look.
# * **Does m_A hold them?** A linear probe (softmax regression) from each composed m_A block's output at each key's
#   last token to the key's value, fitted on the training rows (training keys) and scored on the held-out keys. It
#   says how much a linear read-out, as a bridge's value projection is, could find of keys it never trained on.
#   The vanilla m_A, which never learnt the values, gives the same probe's chance level.
# * **Can the composition read them?** The copying control.
# * **Can the anchor compute with them?** Given the values written in, how much of the held-out KV arithmetic the
#   anchor itself answers, and whether the composition learned KV arithmetic even over the keys it trained on.

# %%
probes = pd.DataFrame(
    C.value_probe(inputs, config, "trained") + C.value_probe(inputs, config, "vanilla"), columns=list(C.PROBE_COLUMNS)
)
run.save_table(probes, "value_probe")
display(probes.round(1))
best = {m: probes[probes["m_A"] == m]["held_out_keys"].max() for m in ("trained", "vanilla")}
if probes["held_out_keys"].isna().all():
    display(
        Markdown(
            "No held-out key shares its value with a training key (the values are unique), so no linear "
            "read-out fitted on the training keys can name a held-out key's value: the probe is not scored."
        )
    )
else:
    display(
        Markdown(
            f"At its best block, a linear read-out of the trained m_A names the value of **{best['trained']:.1f}%** "
            f"of the held-out keys' occurrences ({probes['held_out_occurrences'].iloc[0]} of them), of the "
            f"vanilla m_A {best['vanilla']:.1f}% (chance {probes['chance'].iloc[0]:.1f}%)."
        )
    )

# %%
accuracy = {(r["task"], r["model"]): r["accuracy"] for r in table.to_dict("records")}
reach = accuracy[(C.TASK_NAMES[C.VALUES], "anchor")]
diagnosis, said = [], []
for calm in dict.fromkeys(C.run_name("trained", r) for _, r in config.runs):
    fit = C.compare(
        records, C.KV_SEEN, calm, "anchor", f"KV arithmetic on its own training rows: {calm} beats the anchor"
    )
    diagnosis.append({**fit, "model": calm})
    said.append(
        f"**{calm}** answers {fit['higher']:.1f}% of its own training rows (the anchor: {fit['lower']:.1f}%; "
        f"{fit['verdict']}, difference {fit['difference']:+.1f}, 95% interval {fit['difference_ci'][0]:+.1f} to "
        f"{fit['difference_ci'][1]:+.1f}) and {accuracy[(C.TASK_NAMES['kv'], calm)]:.1f}% on the held-out keys."
    )
for augment, rotary in config.runs:
    if augment != "trained":
        name = C.run_name(augment, rotary)
        said.append(
            f"Over the {augment} m_A, {name} answers {accuracy[(C.TASK_NAMES[C.KV_SEEN], name)]:.1f}% of its "
            f"own training rows."
        )
said.append(
    f"Given the values written in, the anchor answers {reach:.1f}% of the held-out expressions: the most a "
    "composition could reach by reading every value from m_A."
)
fitted = [
    d["model"]
    for d in diagnosis
    if d["verdict"] == "shown"
    and accuracy[(C.TASK_NAMES["kv"], d["model"])] <= accuracy[(C.TASK_NAMES["kv"], "anchor")]
]
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
display(Markdown("\n\n".join(said)))
run.save_table(pd.DataFrame(diagnosis), "diagnosis")
main_effect = {
    calm: all(
        c["verdict"] == "shown"
        for c in claims
        if c["model"] == calm and c["task"] == "kv" and c["claim"].endswith(("beats the anchor", "beats m_A"))
    )
    for calm in dict.fromkeys(C.run_name("trained", r) for _, r in config.runs)
}
run.log(
    source=inputs.source,
    plan=first["plan"],
    added_parameters=first["added_parameters"],
    diagnosis=diagnosis,
    anchor_given_values=reach,
    value_probe=probes.to_dict("records"),
    paper_formula=first["paper_formula"],
    step0_max_logit_gap=float(composition["step0_max_logit_gap"].max()),
    keys={s: len(k) for s, k in inputs.keys.items()},
    claims=claims,
    table1=table.to_dict("records"),
    main_effect_shown=main_effect,
    stage_seconds=float(stages["seconds"].sum()) if len(stages) else 0.0,
    training_seconds=float(composition["seconds"].sum()),
)
print(f"results: {run.finish().parent}")
