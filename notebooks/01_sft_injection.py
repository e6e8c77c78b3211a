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
# # 01 · Injecting new knowledge with SFT: token-based vs fact-based scaling
#
# Mecklenburg et al., *Injecting New Knowledge into Large Language Models via Supervised Fine-Tuning* (Microsoft,
# arXiv 2404.00213). A model is fine-tuned with LoRA on Q&A pairs about documents it has never seen (five sports
# events after its knowledge cutoff, plus one it knows, as a control), and then asked *other* questions about them.
#
# Two ways to make the training Q&A:
#
# * **token-based scaling**: per section, unique Q&A pairs until their tokens pass 1x, 5x or 10x the section's tokens;
# * **fact-based scaling**: the document's atomic facts, with 1, 5 or 10 unique Q&A pairs each.
#
# What the paper claims (it gives bar charts only, no numbers): accuracy rises with scale; token scaling covers the
# facts unevenly and gains less; fact scaling covers them evenly and does better; retrieval (RAG) is a strong
# baseline; the pre-cutoff control is already known to the base model.
#
# **Profiles.** *paper*: a Llama-2 chat model in 4-bit on one GPU, the six Wikipedia articles, Q&A written by an LLM.
# *tiny*: a zoo model pretrained on a generated world (notebook 00), its five post-cutoff articles and a pre-cutoff
# control, Q&A drawn by the same two rules from the world's question paraphrases. Same training and evaluation code.

# %% tags=["parameters"]
PROFILE: str = "tiny"  # auto | tiny | smoke | paper | standin (paper code on stand-ins: docs/standins.md)
SEEDS: int = 0  # 0 keeps the profile's seeds (tiny 2, smoke 1, paper 1), n > 0 runs seeds 0 to n-1
MODEL: str = ""  # "" keeps the profile's trainee: a zoo model name (tiny) or a Hub id / model folder (paper)
DOCUMENTS: str = ""  # "" keeps the profile's (tiny: the generated world, paper: wikipedia), or a folder of .txt/.md
GENERATOR: str = ""  # Q&A writer beyond the tiny world: a local instruct model, or openai:<model> (OPENAI_* vars)
JUDGE: str = ""  # "" keeps the profile's LLM judge (paper: a Mistral instruct model, none in tiny)
WORKERS: int = 0  # adapters trained side by side on a CPU (0: one per core)

# %%
import pandas as pd
from IPython.display import Markdown, display

from kilib import notebook, report
from kilib.lm.retrieval import SectionIndex
from kilib.sft import adapters, presets, study, tables

overrides = presets.notebook_overrides(SEEDS, MODEL, DOCUMENTS, GENERATOR, JUDGE, WORKERS)
config, inputs, run = notebook.start(
    "01_sft_injection", PROFILE, presets.INJECTION_PRESETS, overrides, study.study_inputs
)
print(f"profile {run.profile}: {inputs.source}")
print(
    f"trainee {inputs.base}\nseeds {config.seeds}, scales {config.scales}, LoRA r={config.lora_r}, "
    f"{config.train.epochs:g} epochs, batch {config.train.batch_size}, lr {config.train.lr:g}"
)

# %% [markdown]
# ## The documents
#
# Each document is split into sections; a section's token count *T* is the unit of the token-based budget.

# %%
display(tables.document_table(inputs))
labels = tables.figure_labels(inputs)  # figure labels
print(tables.first_section(inputs))

# %% [markdown]
# ## The Q&A sets
#
# 1x ⊂ 5x ⊂ 10x within each rule. The token-based sets start with the overview-seeded pairs; the evaluation sets are
# 1x-sized, one per rule, and share no question with any training set.

# %%
set_sizes = tables.set_sizes(inputs, config)
run.save_table(set_sizes, "training_sets")
display(tables.set_sizes_pivot(set_sizes, config))
overlap = tables.eval_overlap(inputs)
print(f"evaluation questions also in a training set: {overlap}")
print("three token-based pairs:", *tables.example_pairs(inputs, config), sep="\n  ")

# %% [markdown]
# ## Fig 2 · How evenly the token-based sets cover the facts
#
# For each fact, how many Q&A pairs of a token-based set ask about it. The fact-based sets cover every fact exactly
# 1, 5 or 10 times by construction (the dashed lines).

# %%
coverage = tables.coverage_table(inputs, config)
run.save_table(coverage, "fact_coverage")
fig = tables.coverage_figure(coverage[coverage.seed == config.seeds[0]], config.scales, labels)
run.save_figure(fig, "fig2_token_coverage")
display(tables.coverage_spread(coverage))

# %% [markdown]
# ## Training: one LoRA adapter per (document, rule, scale, seed)
#
# LoRA rank 16 on every linear layer of the 4-bit base, batch size 1, 3 epochs, loss on the answer tokens only
# (the prompt's labels are masked). Each adapter is cached by a hash of its base model, data and settings, so a rerun
# (or a run resumed after a crash) trains only what is missing. Each adapter then answers its document's two
# evaluation sets and, for a new document, the control's questions.

# %%
jobs = study.grid_jobs(inputs.base, config, inputs.training_sets, inputs.evaluation, inputs.control_doc_id)
print(f"{len(jobs)} adapters, {tables.training_steps(jobs, config):,.0f} training steps")
results = adapters.run_adapter_jobs(jobs, workers=config.workers)
training = tables.training_table(results)
run.save_table(training, "training")
display(tables.training_summary(training))

# %% [markdown]
# ## Baselines: the original model, and RAG
#
# *Original*: the untrained model, closed book. *RAG*: BM25 over every section of the studied documents, the top
# passage(s) placed before the question. Both answer the same evaluation sets.

# %%
index = SectionIndex.from_sections(inputs.sections, max_words=config.rag_passage_words)
rows, judging = tables.answer_rows(inputs, config, results, jobs, index, labels)
if judging:
    print(tables.judging_line(judging))
score = config.score
run.save_table(rows, "answers")
per_doc = study.accuracy_table(rows, ["document", "method", "scale", "condition", "eval"], score=score)
run.save_table(per_doc, "accuracy_per_document")
recall = tables.retrieval_recall(inputs, index, config.rag_k)
print(f"retrieval: the section that states the fact is among the top {config.rag_k} for {recall:.0%} of fact questions")
display(tables.sample_answers(rows, config))

# %% [markdown]
# ## Figs 1, 3 and 4 · Accuracy per document
#
# The profile's score (tiny: normalised exact match; paper: the LLM judge, with the lexical score in `answers.csv`)
# with 95% bootstrap intervals (questions pooled over seeds). Fig 1: token-trained adapters on
# the token-based evaluation set; Fig 3: fact-trained adapters on the fact-based set; Fig 4: token-trained adapters on
# the fact-based set.

# %%
for name, fig in tables.accuracy_figures(per_doc, config.scales, labels).items():
    run.save_figure(fig, name)
display(tables.accuracy_pivot(per_doc))

# %% [markdown]
# ## Beyond the paper: equal token budgets, and the control
#
# The paper compares the two rules at equal *scale*, but a fact-based set holds more tokens than the token-based set
# of the same scale. Below, accuracy on the new documents against the tokens each adapter was trained on, for both
# rules, on both evaluation sets. Then: does training on a new document disturb what the model knew? Each adapter
# trained on a new document is asked the control's questions, beside the original model's score.

# %%
rows["new"] = rows["doc_id"] != inputs.control_doc_id
new = rows[rows["new"]]
budget = tables.equal_budget(new, training, inputs, score)
run.save_table(budget, "equal_budget")
for ev, fig in tables.equal_budget_figures(budget).items():
    run.save_figure(fig, f"equal_budget_{ev}_eval")
display(budget.pivot_table(index=["method", "scale"], columns="eval", values=["tokens", "accuracy"]).round(3))
control = drops = None
if inputs.control_doc_id:
    control = tables.control_table(rows, inputs, score)
    run.save_table(control, "control_before_after")
    run.save_figure(tables.control_figure(control), "control_before_after")
    display(control.round(3))
    drops = tables.control_drops(rows, inputs, config)
    display(pd.DataFrame(drops))

# %% [markdown]
# ## What this run shows
#
# Each claim compares two conditions on the new documents' questions, each question's score averaged over seeds and
# adapters: the difference with a 95% bootstrap interval, paired by question where both sides answered the same
# ones. **shown**: the interval lies above zero; **opposite shown**: below zero; **direction only**: only the mean
# difference is positive; **not shown**: otherwise.

# %%
summary = study.accuracy_table(new, ["method", "scale", "eval"], score=score)
claims = tables.study_claims(rows, new, inputs, config, drops)
claims_table = pd.DataFrame(claims)
run.save_table(claims_table, "paper_claims")
display(claims_table)
display(Markdown(report.claims_markdown(claims, digits=2)))
metrics = dict(jobs=jobs, judging=judging, recall=recall, overlap=overlap, claims=claims, summary=summary)
metrics.update(per_doc=per_doc, control=control, budget=budget, coverage=coverage, training=training)
run.log(**tables.run_metrics(inputs, config, **metrics))
print(f"results: {run.finish().parent}")
