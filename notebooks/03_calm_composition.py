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
#   paper: why, one by one, in [docs/deviations.md](../docs/deviations.md); the development runs that settled it,
#   none of which used the held-out keys, in [docs/history.md](../docs/history.md) ("03 CALM: how the tiny recipe
#   was found").
#   * **Values 1..16, expressions of two terms**: Table 1 shows how much of the anchor's arithmetic is a memorised table.
#   * **The anchor's stage at learning rate 1e-3**: at 3e-3 no composition could steer it.
#   * **64 keys sharing the 16 values (4 keys each)**, half of them for training; the paper's values are unique.
#   * **Keys that are single tokens in a digit's place**: `ame + ke` is tokenized as `7 + 3` is.
#   * **Every m_A block composed, for 30 epochs**, where the paper composes every 4th.
#   * **A second CALM with rotary positions in the cross-attention** (kilib's addition); the ablations run on it.
# * *paper*: TinyLlama 1.1B as m_A (same tokenizer as Llama-2) into Llama-2 7B (gated: accept the licence and set
#   `HF_TOKEN`) in 4-bit.
#   * m_A is first fine-tuned on substitution in full precision, and loaded unquantised (bf16, 2.2 GB), so that NF4's
#     rounding noise does not bury its stage's small steps.
#   * 200 keys, each one token of the Llama-2 vocabulary, with values 1..1000, expressions of 3-6 terms, 20% of the keys for training.
#   * The paper composed PaLM2-XXS into PaLM2-XS, and its own table sizes are not in our notes.

# %% tags=["parameters"]
PROFILE: str = "tiny"  # auto | tiny | smoke | paper | standin (paper code on stand-ins: docs/standins.md)
ANCHOR: str = ""  # "" keeps the profile's anchor (a zoo model name in tiny)
AUGMENT: str = ""  # "" keeps the profile's augmenting model
SEEDS: int = 0  # 0 keeps the profile's seeds (one), n > 0 runs seeds 0 to n-1
WORKERS: int = 0  # runs trained side by side on a CPU (0: one per core)


# %%
import pandas as pd
from IPython.display import Markdown, display

from kilib import notebook
from kilib.calm import claims as K
from kilib.calm import presets, probe, study, tasks
from kilib.plots import bars_with_ci
from kilib.report import claims_markdown

overrides = presets.notebook_overrides(ANCHOR, AUGMENT, SEEDS, WORKERS)
config, inputs, run = notebook.start("03_calm_composition", PROFILE, presets.PRESETS, overrides, study.study_inputs)
print(f"profile {run.profile}: {inputs.source}")
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
for task in tasks.TASKS:
    split = "train" if task == "kv" else "eval"
    row = inputs.rows[task][split][0]
    print(f"{tasks.TASK_NAMES[task]:>20}:  {tasks.task_prompt(task, row['expression'])} {row['target']}")
for split, keys in inputs.keys.items():
    print(f"{split} keys: " + ", ".join(f"{k}={v}" for k, v in list(keys.items())[:6]) + ", ...")

# %% [markdown]
# ## Before composition: each model learns its own task
#
# The anchor learns numeric arithmetic and m_A learns substitution, each on every expression but the evaluated ones
# (full fine-tuning in full precision; the paper profile's anchor is used as it is). Both are then loaded in 4-bit (the
# paper profile's m_A unquantised) and frozen. Cached: a rerun trains nothing that is already there.

# %%
stages = study.stages_table(inputs, config)
run.save_table(stages, "stages")
display(stages.round(3))

# %% [markdown]
# ## The composition
#
# The layer pairs, the added parameters (exactly, beside the paper's estimate n(D_A·D_B + 3·D_B²)), and the check that
# the composed model equals the anchor before training: the largest logit difference must be 0.

# %%
runs = study.study_runs(inputs, config)
calm_runs, lora_runs = runs["calm"], runs["lora"]
print(study.composition_summary(calm_runs, lora_runs))
composition = study.composition_table(calm_runs)
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
answers = pd.DataFrame(study.answer_rows(runs["baselines"] + calm_runs + lora_runs))
run.save_table(answers, "answers")
records = answers.to_dict("records")
table = study.results_table(records)
run.save_table(table, "table1")
display(Markdown("**This run**"))
display(table.pivot_table(index="task", columns="model", values="accuracy", sort=False).round(1))
display(Markdown("**The paper (PaLM2-XXS into PaLM2-XS, Table 1)**"))
display(study.paper_table1())
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
claims = K.paper_claims(records, config, inputs, lora=bool(lora_runs))
run.save_table(pd.DataFrame(claims), "paper_claims")
display(Markdown(claims_markdown(claims, digits=1)))
display(Markdown(K.run_shows_markdown(claims, config)))

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
probes = probe.probe_table(inputs, config)
run.save_table(probes, "value_probe")
display(probes.round(1))
display(Markdown(K.probe_markdown(probes)))

# %%
diagnosis = K.diagnosis_rows(records, config)
display(Markdown(K.diagnosis_markdown(diagnosis, table, probes, inputs, config)))
run.save_table(pd.DataFrame(diagnosis), "diagnosis")
tables = {"stages": stages, "composition": composition, "table1": table, "value_probe": probes}
run.log(**K.run_metrics(inputs, config, calm_runs, tables, claims, diagnosis))
print(f"results: {run.finish().parent}")
