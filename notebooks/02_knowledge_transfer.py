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
# # 02 · Parametric knowledge transfer from a larger teacher ("Seeking Neural Nuggets")
#
# Zhong et al., *Seeking Neural Nuggets: Knowledge Transfer in Large Language Models from a Parametric Perspective*
# (ICLR 2024). A larger teacher's parameters are cut down to a smaller student's shape and used to start the student's
# LoRA, which then trains on the task as usual.
#
# 1. **Extraction.** On 32 seed samples of the task, each teacher parameter's sensitivity
#    S = Σ_j |θ · ∂L(x_j)/∂θ| (the loss on answer tokens only, the absolute value per sample). The student's number of
#    teacher blocks with the largest summed S is kept, in order; from each matrix, the contiguous window of the
#    student's shape with the largest summed S.
# 2. **Injection.** Each extracted matrix's rank-16 SVD factors B = U_r S_r, A = V_r^T start the student's LoRA; the
#    frozen student computes W − BA, so at step 0 the model is the student unchanged.
# 3. **Training.** LoRA on every linear layer, the embeddings and the output head, on the task's training samples.
#
# Two controls ask whether the sensitive window matters: the paper's ablation, the **top** rows and columns by
# sensitivity (not contiguous), and a **random** window of the teacher, each injected the same way. Every condition
# (plain LoRA, sensitive window, top rows and columns, random window) trains on the same samples with the same seed
# and answers the same held-out questions.
#
# **Profiles.** *tiny*: the zoo's llama-m (teacher, 6 blocks, 3.0M parameters) into llama-s (student, 4 blocks,
# 1.1M), both in 4-bit, on the tiny world's GSM8K, MMLU and Super-NaturalInstructions analogues (300 training and 150
# evaluation samples per task). *paper*: Llama-2 13B into 7B in 4-bit (gated: accept the licence and set `HF_TOKEN`),
# GSM8K, MMLU and Super-NaturalInstructions from the Hub, 1,000 training and 500 evaluation samples per task (the paper
# evaluates on the full test sets). AlpacaFarm, which needs a judge, is not run.
#
# **Beyond the paper (tiny only): closed-book questions.** The tiny teacher answers about twice as many questions on
# the world's pre-cutoff facts as the student (notebook 00). Here the LoRA trains on questions about some facts and is
# asked about *other* facts, which no training row mentions: whatever the student answers there beyond what it knew,
# it can only have from the teacher's parameters. It is the most direct test of the paper's premise the tiny world allows.

# %% tags=["parameters"]
PROFILE: str = "tiny"  # auto | tiny | smoke | paper
TEACHER: str = ""  # "" keeps the profile's teacher (a zoo model name in tiny)
STUDENT: str = ""  # "" keeps the profile's student
TASKS: str = ""  # "" keeps the profile's tasks, or a comma-separated subset of gsm,mmlu,sni
SEEDS: int = 0  # 0 keeps the profile's seeds (one), n > 0 runs seeds 0 to n-1

# %%
import json

import pandas as pd
from IPython.display import Markdown, display

from kilib.config import select_preset
from kilib.plots import bars_with_ci
from kilib.results import Run
from kilib.runtime import resolve_profile, set_threads
from kilib.transfer import study as T

profile = resolve_profile(PROFILE)
config = select_preset(T.TRANSFER_PRESETS, profile, T.notebook_overrides(TEACHER, STUDENT, TASKS, SEEDS))
set_threads()
inputs = T.study_inputs(profile, config)
run = Run("02_knowledge_transfer", profile, config=config, seed=config.seeds[0])
print(f"profile {profile}: {inputs.source}")
print(
    f"tasks {', '.join(config.tasks)}; {config.seed_samples} seed, {config.train_samples} training and "
    f"{config.eval_samples} evaluation samples per task; LoRA r={config.rank}; seeds {config.seeds}"
)

# %% [markdown]
# ## The tasks
#
# One example of each, as the student is trained on it (the user's turn, then the target). GSM is scored on the last
# number of the output, SNI by exact match and ROUGE-L, the closed-book questions by normalised exact match. MMLU is
# scored as open-instruct scores it: no text is generated, and the answer is the letter whose token the model finds
# most likely next, so every model answers every question (the answers table's `letter_mass` is the next-token
# probability the four letters hold together). Prompts follow open-instruct's evaluation, which the paper uses: GSM
# opens "Answer the following question." (before demonstrations: "questions."), and MMLU names its subject in the paper
# profile. Few-shot demonstrations come from rows no role trains on; in the paper profile GSM's are the eight fixed
# chain-of-thought exemplars of Wei et al. (2022) that open-instruct uses, and MMLU's the first k `dev` questions of the
# question's subject. The paper profile trains and evaluates in the Tulu chat format, as the authors do
# (`<|user|>`, the prompt, `<|assistant|>`, the answer; GSM's answer opens "Answer:", and MMLU's evaluation puts
# "The answer is:" after the assistant tag, as open-instruct does); the tiny zoo reads its own chat template.

# %%
print("chat format:", config.chat_format or "the tokenizer's own template")
for task in config.tasks:
    pair = T.train_pair(task, inputs.rows[task]["train"][0], config.chat_format)
    print(f"--- {task}\n{pair['prompt']}\n>>> {pair['answer']}\n")

# %% [markdown]
# ## Extraction: which teacher blocks, and which window
#
# Per task, the teacher's summed sensitivity per block (the student keeps as many blocks as it has, in their order),
# and the sensitivity of one selected block's MLP down-projection with the window cut from it.

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch

extractions = {task: T.extraction(inputs, config, task) for task in config.tasks}
blocks = pd.DataFrame(
    [
        {"task": task, "block": i, "sensitivity": s, "selected": i in meta["selected"]}
        for task, folder in extractions.items()
        for meta in [json.loads((folder / "extraction.json").read_text())]
        for i, s in enumerate(meta["block_scores"])
    ]
)
run.save_table(blocks, "block_sensitivity")
display(blocks.pivot_table(index="block", columns="task", values="sensitivity").round(1))
fig, axes = plt.subplots(1, len(config.tasks), figsize=(4 * len(config.tasks), 3), squeeze=False)
for ax, task in zip(axes[0], config.tasks):
    meta = json.loads((extractions[task] / "extraction.json").read_text())
    scores = torch.load(extractions[task] / "probe_sensitivity.pt")
    rows, cols = meta["probe"]["shape"]
    r0, c0 = T.best_submatrix(scores, rows, cols)
    ax.imshow(np.log10(scores.numpy() + 1e-12), aspect="auto", cmap="viridis")
    ax.add_patch(plt.Rectangle((c0 - 0.5, r0 - 0.5), cols, rows, fill=False, edgecolor="red", linewidth=1.5))
    ax.set_title(f"{task}: {meta['probe']['name'].removeprefix('model.')}", fontsize=8)
    ax.set_xlabel("input dimension")
    ax.set_ylabel("output dimension")
fig.suptitle("log10 sensitivity of one teacher matrix; red: the window the student gets")
fig.tight_layout()
run.save_figure(fig, "sensitivity_window")

# %% [markdown]
# ## Training and evaluation
#
# The untrained student and teacher (Table 1's vanilla rows), then one LoRA per (task, condition, seed). Each is cached
# by a hash of its inputs, so a rerun trains only what is missing.

# %%
runs = []
for task in config.tasks:
    runs += [T.baseline(inputs, config, task, which) for which in ("student", "teacher")]
    runs += [T.run_job(inputs, config, task, method, seed) for method in config.methods for seed in config.seeds]
training = pd.DataFrame(
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
run.save_table(training, "training")
display(training.round(3))
answers = pd.DataFrame(T.answer_rows(runs))
run.save_table(answers, "answers")

# %% [markdown]
# ## Table 1, beside the paper
#
# Scores in percent with 95% bootstrap intervals over questions (seeds pooled). The paper's rows are Llama-2's
# (13B into 7B); ours are the profile's teacher and student. *lora* is the paper's "7B-LoRA", *sensitive* its
# "+ 13B param.", *top* and *random* the controls.

# %%
table = T.results_table(answers.to_dict("records"))
run.save_table(table, "table1")
ours = table.pivot_table(index="method", columns="measure", values="score", sort=False)
paper = pd.DataFrame(
    {T.PAPER_ROWS.get(m, m): T.PAPER_TABLE1[T.PAPER_ROWS[m]] for m in ours.index if m in T.PAPER_ROWS}
).T
display(Markdown("**This run**"))
display(ours.round(1))
display(Markdown("**The paper (Llama-2, Table 1)**"))
display(paper[[c for c in paper.columns if c.split()[0] in config.tasks]])
fig = bars_with_ci(
    table, x="measure", y="score", hue="method", title="Table 1 measures: this run", ylabel="score", percent=True
)
run.save_figure(fig, "table1")

# %% [markdown]
# ## What this run shows
#
# Each claim compares two conditions on the same questions (0-shot, or SNI's exact match), paired by question: the
# difference with a 95% bootstrap interval. **shown**: the interval lies above zero; **opposite shown**: below zero;
# **direction only**: only the mean difference is positive; **not shown**: otherwise.

# %%
records = answers.to_dict("records")
claims = []
for task in config.tasks:
    if "sensitive" in config.methods:
        claims.append(
            T.compare(
                records,
                task,
                "sensitive",
                "lora",
                f"{task}: LoRA started from the teacher's parameters beats plain LoRA",
            )
        )
    if {"sensitive", "random"} <= set(config.methods):
        claims.append(
            T.compare(records, task, "sensitive", "random", f"{task}: the sensitive window beats a random window")
        )
    if {"sensitive", "top"} <= set(config.methods):
        claims.append(
            T.compare(
                records,
                task,
                "sensitive",
                "top",
                f"{task}: the sensitive window beats the most sensitive rows and columns",
            )
        )
    claims.append(T.compare(records, task, "lora", "student", f"{task}: LoRA training beats the untrained student"))
claims_table = pd.DataFrame(claims)
run.save_table(claims_table, "paper_claims")
display(
    Markdown(
        "\n".join(
            f"* {c['claim']}: **{c['verdict']}** ({100 * c['higher']:.1f} vs {100 * c['lower']:.1f}, "
            f"difference {100 * c['difference']:+.1f}, 95% interval {100 * c['difference_ci'][0]:+.1f} to "
            f"{100 * c['difference_ci'][1]:+.1f})"
            for c in claims
        )
    )
)
main = {c["task"]: c for c in claims if "teacher's parameters" in c["claim"]}
display(
    Markdown(
        "\n".join(
            f"* **{task}**: the paper's effect (the teacher's parameters help) is "
            + ("**shown** in this run." if c["verdict"] == "shown" else f"**not shown** in this run ({c['verdict']}).")
            for task, c in main.items()
        )
    )
)
run.log(
    source=inputs.source,
    tasks=list(config.tasks),
    claims=claims,
    table1=table.to_dict("records"),
    selected_blocks={t: json.loads((f / "extraction.json").read_text())["selected"] for t, f in extractions.items()},
    training_seconds=float(training["seconds"].sum()),
)
print(f"results: {run.finish().parent}")
