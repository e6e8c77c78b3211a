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
PROFILE: str = "tiny"  # auto | tiny | smoke | paper | standin (paper code on stand-ins: docs/standins.md)
TEACHER: str = ""  # "" keeps the profile's teacher (a zoo model name in tiny)
STUDENT: str = ""  # "" keeps the profile's student
TASKS: str = ""  # "" keeps the profile's tasks, or a comma-separated subset of gsm,mmlu,sni
SEEDS: int = 0  # 0 keeps the profile's seeds (one), n > 0 runs seeds 0 to n-1

# %%
import pandas as pd
from IPython.display import Markdown, display

from kilib.notebook import start
from kilib.plots import bars_with_ci
from kilib.report import claims_markdown
from kilib.transfer import presets, study, tasks

overrides = presets.notebook_overrides(TEACHER, STUDENT, TASKS, SEEDS)
config, inputs, run = start("02_knowledge_transfer", PROFILE, presets.TRANSFER_PRESETS, overrides, study.study_inputs)
print(f"profile {run.profile}: {inputs.source}")
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
    pair = tasks.train_pair(task, inputs.rows[task]["train"][0], config.chat_format)
    print(f"--- {task}\n{pair['prompt']}\n>>> {pair['answer']}\n")

# %% [markdown]
# ## Extraction: which teacher blocks, and which window
#
# Per task, the teacher's summed sensitivity per block (the student keeps as many blocks as it has, in their order),
# and the sensitivity of one selected block's MLP down-projection with the window cut from it.

# %%
extractions = {task: study.extraction(inputs, config, task) for task in config.tasks}
blocks = study.block_table(extractions)
run.save_table(blocks, "block_sensitivity")
display(blocks.pivot_table(index="block", columns="task", values="sensitivity").round(1))
fig = study.sensitivity_window_figure(extractions, config.tasks)
run.save_figure(fig, "sensitivity_window")

# %% [markdown]
# ## Training and evaluation
#
# The untrained student and teacher (Table 1's vanilla rows), then one LoRA per (task, condition, seed). Each is cached
# by a hash of its inputs, so a rerun trains only what is missing.

# %%
runs = study.all_runs(inputs, config)
training = study.training_table(runs)
run.save_table(training, "training")
display(training.round(3))
answers = pd.DataFrame(study.answer_rows(runs))
run.save_table(answers, "answers")

# %% [markdown]
# ## Table 1, beside the paper
#
# Scores in percent with 95% bootstrap intervals over questions (seeds pooled). The paper's rows are Llama-2's
# (13B into 7B); ours are the profile's teacher and student. *lora* is the paper's "7B-LoRA", *sensitive* its
# "+ 13B param.", *top* and *random* the controls.

# %%
table = study.results_table(answers.to_dict("records"))
run.save_table(table, "table1")
ours, paper = study.table1_beside_paper(table, config.tasks)
display(Markdown("**This run**"))
display(ours.round(1))
display(Markdown("**The paper (Llama-2, Table 1)**"))
display(paper)
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
claims = study.paper_claims(answers.to_dict("records"), config)
run.save_table(pd.DataFrame(claims), "paper_claims")
display(Markdown(claims_markdown(claims, digits=1, scale=100)))
display(Markdown(study.verdicts_markdown(claims)))
run.log(**study.run_metrics(inputs, config, claims, table, extractions, training))
print(f"results: {run.finish().parent}")
