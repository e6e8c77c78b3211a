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
# # 00 · The tiny world and its zoo of small models
#
# The paper profile of this series needs a GPU, the Hugging Face Hub and hours. The **tiny profile** runs the same
# `kilib` code on a CPU, offline, in minutes: on a *generated* encyclopedia whose facts no pretrained model has
# seen, with small Llama and GPT-NeoX (Pythia-like) models pretrained on its pre-cutoff part.
#
# This notebook shows that world to a reader: an article, its atomic facts, the question paraphrases, the
# FEVER-like claims, the task analogues for the transfer and CALM studies, and the zoo with what each model knows.
# Everything below comes from a real run; nothing is hard-coded.
#
# The first run pretrains the zoo, which takes 16 to 26 minutes on two CPU cores (by CPU); later runs load it from the cache.
# A reading group can build it once: `make zoo-export` on one machine writes it to a file, and `make zoo-import
# ZOO=that-file` on each laptop (a checkout of the same commit) puts it into the cache, so that everyone starts
# from the same models.

# %% tags=["parameters"]
PROFILE: str = "tiny"  # tiny | smoke | paper (paper shows the tiny zoo too: the world the CPU profiles use)
WORLD_SEED: int = 0  # the generated world's seed
QUESTIONS_PER_FACT: int = 1  # held-out paraphrases asked per fact when measuring what the zoo knows

# %%
import dataclasses

import pandas as pd
from IPython.display import display

from kilib.plots import loss_curves
from kilib.results import Run
from kilib.runtime import resolve_profile, set_threads
from kilib.tiny import zoo, zoo_report

profile = resolve_profile(PROFILE)
config = dataclasses.replace(zoo.zoo_config(profile), world_seed=WORLD_SEED)
set_threads()
world = zoo.world_of(config)
run = Run("00_tiny_world", profile, config=config, seed=WORLD_SEED)
print(f"profile {profile}: world size {config.world_size!r}, seed {WORLD_SEED}, ", end="")
print(f"{len(world.articles)} articles, {len(world.facts)} facts")

# %% [markdown]
# ## An article
#
# Each tournament edition renders as a Wikipedia-like article with sections. Five series have one edition after the
# cutoff year: those five articles are the **new knowledge** (the paper's five 2023 events). The sixth series' latest
# edition before the cutoff is the **control** (the paper's 2018 FIFA World Cup), which the models saw in pretraining.

# %%
control = world.articles[world.control_doc_id]
post = [world.articles[d] for d in world.post_cutoff_doc_ids]
print(f"cutoff year {world.cutoff_year}; control: {control.title}; new documents: {', '.join(a.title for a in post)}\n")
print(post[0].text)

# %% [markdown]
# ## Its atomic facts
#
# Facts are (subject, relation, object) triples. **Salience** is how many times the article states a fact: sampling
# Q&A pairs in proportion to the text (the paper's token-based scaling) therefore covers facts unevenly.

# %%
facts = pd.DataFrame(world.facts_dataset([post[0].id]).to_list())
display(facts[["subject", "relation", "object", "section", "salience"]])
counts = pd.DataFrame(world.facts_dataset().to_list()).groupby("period").size().rename("facts")
display(counts.to_frame())

# %% [markdown]
# ## Questions: disjoint paraphrases for training and evaluation
#
# Every relation has many question templates, split into a **train** and an **eval** set, so a model can be trained
# on some phrasings of a fact and tested on phrasings it never saw.

# %%
fact = world.facts_of(post[0].id)[0]
print(f"fact: ({fact.subject}, {fact.relation}, {fact.object})")
print("train paraphrases:", *world.questions(fact.id, "train")[:5], "...", sep="\n  ")
print("eval paraphrases:", *world.questions(fact.id, "eval"), sep="\n  ")

# %% [markdown]
# ## Claims, tasks and key-value arithmetic
#
# FEVER-like claims (supports / refutes / not enough info) serve the memory study (04); task analogues of GSM8K,
# MMLU, Super-NaturalInstructions and AlpacaFarm serve the transfer study (02); key-value arithmetic, as CALM defines
# it, serves the composition study (03).

# %%
display(pd.DataFrame(world.claims(per_page=1).to_list()).groupby("label").head(2)[["claim", "label", "page"]])
for name, ds in [
    ("gsm", world.gsm(2, seed=0)),
    ("mmlu", world.mmlu(2, seed=0)),
    ("sni", world.sni(2, seed=0)),
    ("open-ended", world.open_ended(1, seed=0)),
    ("kv substitution", world.kv_substitution(2, seed=0)),
    ("numeric arithmetic", world.numeric_arithmetic(2, seed=0)),
    ("kv arithmetic", world.kv_arithmetic(2, seed=0, split="eval")),
]:
    print(f"--- {name}")
    for row in ds.to_list():
        print("  ", row)

# %% [markdown]
# ## The zoo
#
# Small models built from config, pretrained once on the pre-cutoff world (articles, Q&A in the chat format, few-shot
# claims, arithmetic) and cached by a hash of everything that made them. The first run trains them (minutes); later
# runs load them. They load back through the same 4-bit `from_pretrained` path as Hub models.
#
# Pretraining alone does not teach a model to *read*: asked about a fact it was pretrained on, a model answers from
# memory whether or not the passage is in its prompt. So a short **reading stage** follows (`zoo.ReadingStage`), with
# the loss on the answer tokens only: questions with the passage in context about tournament editions that exist in
# no version of this world (facts from freshly generated worlds, every name mapped to one of this world's entities),
# which only reading can answer, mixed with closed-book questions on pre-cutoff facts so that reading does not push
# out what the model knows. Part of those editions carry this world's own series names, as the new documents do, so
# that reading learns to win over what the model remembers of the series' earlier editions.
#
# Only the reader goes through the stage: llama-m, on which notebook 01's RAG baseline runs. The other models keep
# what pretraining gave them, one recipe for all, so that the sizes compare fairly (and the transfer study's student
# learns nothing from the stage's replay). Examples are shown below.

# %%
for known in (0.0, 1.0):
    example = zoo.reading_examples(world, 1, seed=0, known_series=known)[0]
    print(
        "--- an edition of a",
        "known series" if known else "fresh series",
        "\n" + example["prompt"],
        "\n->",
        example["answer"],
    )
print(
    "readers:",
    ", ".join(config.reading.models),
    f"({config.reading.known_series:.0%} of the fresh worlds renamed onto known series)",
)

# %%
logs = {spec.name: zoo.pretraining_log(config, spec.name) for spec in config.models}
zoo_table = zoo_report.zoo_table(config, logs)
run.save_table(zoo_table, "zoo")
display(zoo_table)
fig = loss_curves({name: log["losses"] for name, log in logs.items()}, title="pretraining loss on the pre-cutoff world")
run.save_figure(fig, "pretraining_loss")

# %% [markdown]
# ## What the zoo knows
#
# For each model, greedy answers scored by normalised exact match, with 95% bootstrap intervals:
#
# * **pre-cutoff, closed book**: held-out paraphrases of facts it was pretrained on, beside the baseline that always
#   gives each relation's most common answer (the chance level a model that learnt nothing would reach);
# * **control, closed book**: the control edition alone;
# * **post-cutoff, closed book**: the five new documents, beside the same baseline;
# * **post-cutoff, passage in context**: the section that states the fact is given in the prompt (what RAG needs).
#
# Every model is measured after pretraining; the reader is measured again after its reading stage ("+ reading"),
# which is the model the studies load.

# %%
measured = zoo_report.measured_knowledge(config, QUESTIONS_PER_FACT)
knowledge = zoo_report.knowledge_table(measured)
run.save_table(knowledge, "knowledge")
run.save_figure(zoo_report.knowledge_figure(knowledge), "knowledge")
display(zoo_report.knowledge_pivot(knowledge, measured))

# %% [markdown]
# ## Does the tiny profile meet its bar?
#
# The checks below compare measured numbers with the targets the tiny profile was designed for. They are printed as
# they come out of this run: a target that is missed is reported as missed.

# %%
build_seconds = zoo_report.build_seconds(logs)
print(f"zoo training time: {build_seconds:.0f} s (pretraining and reading stage, all models, when they were built)")
pretrained = dict(measured[: len(config.models)])  # one recipe for all
used = {spec.name: zoo.knowledge_report(config, spec.name, QUESTIONS_PER_FACT) for spec in config.models}  # as loaded
checks = zoo_report.checks(config, logs, pretrained, used)
for text, ok in checks.items():
    print(("MET    " if ok else "MISSED ") + text)
run.log(**zoo_report.run_metrics(world, config, logs, pretrained, used, checks))
print(f"results: {run.finish().parent}")
