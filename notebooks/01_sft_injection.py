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
PROFILE: str = "tiny"  # auto | tiny | smoke | paper
N_SEEDS: int = 0  # 0 keeps the profile's seeds (tiny 2, smoke 1, paper 1), n > 0 runs seeds 0 to n-1
MODEL: str = ""  # "" keeps the profile's trainee: a zoo model name (tiny) or a Hub id / model folder (paper)
DOCUMENTS: str = (
    ""  # "" keeps the profile's (tiny: the generated world, paper: wikipedia), or a folder of .txt/.md files
)
GENERATOR: str = (
    ""  # Q&A writer outside the tiny world: a local instruct model, or openai:<model> (OPENAI_BASE_URL, OPENAI_API_KEY)
)
JUDGE: str = ""  # "" keeps the profile's LLM judge (paper: a Mistral instruct model, none in tiny)
WORKERS: int = 0  # adapters trained side by side on a CPU (0: one per core)

# %%

import pandas as pd
from IPython.display import Markdown, display

from kilib.config import select_preset
from kilib.lm.retrieval import SectionIndex
from kilib.plots import bars_with_ci, lines_with_ci
from kilib.results import Run
from kilib.runtime import resolve_profile, set_threads
from kilib.sft import study as sft

profile = resolve_profile(PROFILE)
config = select_preset(
    sft.INJECTION_PRESETS, profile, sft.notebook_overrides(N_SEEDS, MODEL, DOCUMENTS, GENERATOR, JUDGE, WORKERS)
)
set_threads()
inputs = sft.study_inputs(profile, config)
run = Run("01_sft_injection", profile, config=config, seed=config.seeds[0])
print(f"profile {profile}: {inputs.source}")
print(
    f"trainee {inputs.base}\nseeds {config.seeds}, scales {config.scales}, LoRA r={config.lora_r}, "
    f"{config.train.epochs:g} epochs, batch {config.train.batch_size}, lr {config.train.lr:g}"
)

# %% [markdown]
# ## The documents
#
# Each document is split into sections; a section's token count *T* is the unit of the token-based budget.

# %%
sections = pd.DataFrame(inputs.sections)
sections["tokens"] = [len(inputs.tokenizer.encode(t, add_special_tokens=False)) for t in sections["text"]]
docs = (
    sections.groupby("doc_id", sort=False)
    .agg(title=("title", "first"), sections=("section", "size"), tokens=("tokens", "sum"))
    .reset_index()
)
docs["facts"] = [len(inputs.facts[d]) for d in docs["doc_id"]]
docs["role"] = ["control (known)" if d == inputs.control_doc_id else "new" for d in docs["doc_id"]]
labels = {
    d: t + (" (control)" if d == inputs.control_doc_id else "") for d, t in inputs.titles.items()
}  # figure labels
display(docs)
first = inputs.doc_ids[0]
print(f"\n{inputs.titles[first]}, first section:\n{sections[sections.doc_id == first].iloc[0]['text']}")

# %% [markdown]
# ## The Q&A sets
#
# 1x ⊂ 5x ⊂ 10x within each rule. The token-based sets start with the overview-seeded pairs; the evaluation sets are
# 1x-sized, one per rule, and share no question with any training set.

# %%
set_rows = []
for (doc_id, rule, seed), sets in inputs.training_sets.items():
    for scale in config.scales:
        pairs = sets[scale]
        set_rows.append(
            {
                "doc_id": doc_id,
                "rule": rule,
                "seed": seed,
                "scale": scale,
                "pairs": len(pairs),
                "tokens": sum(p["tokens"] for p in pairs),
            }
        )
set_sizes = pd.DataFrame(set_rows)
run.save_table(set_sizes, "training_sets")
display(
    set_sizes[set_sizes.seed == config.seeds[0]].pivot_table(
        index="doc_id", columns=["rule", "scale"], values=["pairs", "tokens"], sort=False
    )
)
train_questions = {
    sft.question_key(p["question"]) for sets in inputs.training_sets.values() for pairs in sets.values() for p in pairs
}
overlap = sum(
    sft.question_key(p["question"]) in train_questions
    for ev in inputs.evaluation.values()
    for name in sft.RULES
    for p in ev[name]
)
print(f"evaluation questions also in a training set: {overlap}")
example = inputs.training_sets[(first, "token", config.seeds[0])][max(config.scales)][:3]
print("three token-based pairs:", *[f"Q: {p['question']}  A: {p['answer']}" for p in example], sep="\n  ")

# %% [markdown]
# ## Fig 2 · How evenly the token-based sets cover the facts
#
# For each fact, how many Q&A pairs of a token-based set ask about it. The fact-based sets cover every fact exactly
# 1, 5 or 10 times by construction (the dashed lines).

# %%
coverage = pd.DataFrame(
    [
        {"doc_id": doc_id, "seed": seed, "scale": f"{scale}x", "fact_id": fid, "pairs": n}
        for (doc_id, rule, seed), sets in inputs.training_sets.items()
        if rule == "token"
        for scale in config.scales
        for fid, n in sft.fact_coverage(sets[scale], inputs.facts[doc_id]).items()
    ]
)
run.save_table(coverage, "fact_coverage")
fig = sft.coverage_figure(coverage[coverage.seed == config.seeds[0]], config.scales, labels)
run.save_figure(fig, "fig2_token_coverage")
spread = coverage.groupby(["scale"], sort=False)["pairs"].describe()[["min", "50%", "max"]]
display(spread.rename(columns={"50%": "median"}))

# %% [markdown]
# ## Training: one LoRA adapter per (document, rule, scale, seed)
#
# LoRA rank 16 on every linear layer of the 4-bit base, batch size 1, 3 epochs, loss on the answer tokens only
# (the prompt's labels are masked). Each adapter is cached by a hash of its base model, data and settings, so a rerun
# (or a run resumed after a crash) trains only what is missing. Each adapter then answers its document's two
# evaluation sets and, for a new document, the control's questions.

# %%
jobs = sft.grid_jobs(inputs.base, config, inputs.training_sets, inputs.evaluation, inputs.control_doc_id)
print(
    f"{len(jobs)} adapters, {sum(len(j['train_key']['pairs']) for j in jobs) * config.train.epochs:,.0f} training steps"
)
results = sft.run_adapter_jobs(jobs, workers=config.workers)
training = pd.DataFrame(
    [
        {
            **{k: r[k] for k in ("doc_id", "rule", "scale", "seed", "pairs", "tokens")},
            "steps": r["train"]["steps"],
            "final_loss": r["train"]["losses"][-1]["loss"],
            "seconds": round(r["train"]["seconds"], 1),
        }
        for r in results
    ]
)
run.save_table(training, "training")
display(
    training.groupby(["rule", "scale"])
    .agg(
        adapters=("steps", "size"),
        steps=("steps", "mean"),
        final_loss=("final_loss", "mean"),
        seconds=("seconds", "mean"),
    )
    .round(3)
)

# %% [markdown]
# ## Baselines: the original model, and RAG
#
# *Original*: the untrained model, closed book. *RAG*: BM25 over every section of the studied documents, the top
# passage(s) placed before the question. Both answer the same evaluation sets.

# %%
index = SectionIndex.from_sections(inputs.sections, max_words=config.rag_passage_words)
rows = pd.DataFrame(sft.adapter_rows(results, jobs) + sft.baseline_rows(inputs.base, config, inputs.evaluation, index))
rows["document"] = rows["doc_id"].map(labels)
rows["condition"] = [m if m in ("original", "rag") else f"{s}x" for m, s in zip(rows["method"], rows["scale"])]
judging = None
if config.judge:
    judged, judging = sft.judge_rows(rows.to_dict("records"), config)
    rows = pd.DataFrame(judged)
    print(
        f"judge {judging['judge']}: agrees with the lexical score on {judging['agreement']:.0%} of answers "
        f"(Cohen's kappa {judging['cohen_kappa']:.2f}); {judging['unparseable']} unparseable replies count as wrong"
    )
score = config.score
run.save_table(rows, "answers")
per_doc = sft.accuracy_table(rows, ["document", "method", "scale", "condition", "eval"], score=score)
run.save_table(per_doc, "accuracy_per_document")
hits = index.search([p["question"] for d in inputs.doc_ids for p in inputs.evaluation[d]["fact"]], k=config.rag_k)
gold = [f"{d}/{p['section']}" for d in inputs.doc_ids for p in inputs.evaluation[d]["fact"]]
recall = sum(g in {index.ids[i] for i in h} for g, h in zip(gold, hits)) / len(gold)
print(f"retrieval: the section that states the fact is among the top {config.rag_k} for {recall:.0%} of fact questions")
sample = rows[(rows.method == "fact") & (rows.scale == max(config.scales)) & (rows["eval"] == "fact")].head(5)
display(sample[["document", "question", "answer", "prediction", "exact"]])

# %% [markdown]
# ## Figs 1, 3 and 4 · Accuracy per document
#
# The profile's score (tiny: normalised exact match; paper: the LLM judge, with the lexical score in `answers.csv`)
# with 95% bootstrap intervals (questions pooled over seeds). Fig 1: token-trained adapters on
# the token-based evaluation set; Fig 3: fact-trained adapters on the fact-based set; Fig 4: token-trained adapters on
# the fact-based set.

# %%
conditions = ["original"] + [f"{s}x" for s in config.scales] + ["rag"]
figures = {
    "fig1_token_on_token": ("token", "token", "Fig 1: token-based training, token-based evaluation"),
    "fig3_fact_on_fact": ("fact", "fact", "Fig 3: fact-based training, fact-based evaluation"),
    "fig4_token_on_fact": ("token", "fact", "Fig 4: token-based training, fact-based evaluation"),
}
for name, (rule, ev, title) in figures.items():
    sub = per_doc[(per_doc["eval"] == ev) & per_doc["method"].isin([rule, "original", "rag"])]
    fig = bars_with_ci(
        sub, x="document", y="accuracy", hue="condition", hue_order=conditions, title=title, order=list(labels.values())
    )
    run.save_figure(fig, name)
display(
    per_doc.pivot_table(
        index=["eval", "document"], columns=["method", "condition"], values="accuracy", sort=False
    ).round(2)
)

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
trained = new[new["method"].isin(sft.RULES) & new["eval"].isin(sft.RULES)]
budget = sft.accuracy_table(trained, ["method", "scale", "eval"], score=score)
tokens = training[training["doc_id"] != inputs.control_doc_id].groupby(["rule", "scale"])["tokens"].mean()
budget["tokens"] = [tokens[(m, s)] for m, s in zip(budget["method"], budget["scale"])]
budget["label"] = [f"{s}x" for s in budget["scale"]]
run.save_table(budget, "equal_budget")
for ev in sft.RULES:
    fig = lines_with_ci(
        budget[budget["eval"] == ev],
        x="tokens",
        y="accuracy",
        hue="method",
        labels="label",
        xlabel="training tokens per document (mean)",
        title=f"new documents, {ev}-based evaluation: accuracy against training tokens",
    )
    run.save_figure(fig, f"equal_budget_{ev}_eval")
display(budget.pivot_table(index=["method", "scale"], columns="eval", values=["tokens", "accuracy"]).round(3))
if inputs.control_doc_id:
    before = rows[(rows["doc_id"] == inputs.control_doc_id) & (rows["method"] == "original") & (rows["eval"] == "fact")]
    after = rows[(rows["eval"] == "control")]
    control = pd.concat(
        [
            sft.accuracy_table(before.assign(condition="original"), ["condition"], score=score),
            sft.accuracy_table(
                after.assign(condition=[f"after {m} {s}x" for m, s in zip(after.method, after.scale)]),
                ["condition"],
                score=score,
            ),
        ]
    )
    run.save_table(control, "control_before_after")
    fig = bars_with_ci(
        control,
        x="condition",
        y="accuracy",
        title="control questions: original model, and after training on a new document",
    )
    run.save_figure(fig, "control_before_after")
    display(control.round(3))
    known = {"doc_id": inputs.control_doc_id, "method": "original", "eval": "fact"}
    drops = [
        sft.compare(
            rows,
            known,
            {"method": rule, "scale": max(config.scales), "eval": "control"},
            f"control accuracy falls after {rule}-based {max(config.scales)}x training on a new document",
            score,
        )
        for rule in sft.RULES
    ]
    display(pd.DataFrame(drops))

# %% [markdown]
# ## What this run shows
#
# Each claim compares two conditions on the new documents' questions, each question's score averaged over seeds and
# adapters: the difference with a 95% bootstrap interval, paired by question where both sides answered the same
# ones. **shown**: the interval lies above zero; **opposite shown**: below zero; **direction only**: only the mean
# difference is positive; **not shown**: otherwise.

# %%
summary = sft.accuracy_table(new, ["method", "scale", "eval"], score=score)
claims = sft.paper_claims(new, config.scales, score)
if inputs.control_doc_id:
    claims.append(
        sft.compare(
            rows,
            {"new": False, "method": "original", "eval": "fact"},
            {"new": True, "method": "original", "eval": "fact"},
            "the control is already known to the original model (fact eval, control vs new)",
            score,
        )
    )
    claims += drops
claims_table = pd.DataFrame(claims)
run.save_table(claims_table, "paper_claims")
display(claims_table)
display(
    Markdown(
        "\n".join(
            f"* {c['claim']}: **{c['verdict']}** ({c['higher']:.2f} vs {c['lower']:.2f}, difference "
            f"{c['difference']:+.2f}, 95% interval {c['difference_ci'][0]:+.2f} to {c['difference_ci'][1]:+.2f})"
            for c in claims
        )
    )
)
run.log(
    documents=inputs.doc_ids,
    control=inputs.control_doc_id,
    source=inputs.source,
    adapters=len(jobs),
    score=score,
    judging=judging,
    retrieval_recall=recall,
    eval_overlap=overlap,
    claims=claims,
    accuracy=summary.to_dict("records"),
    per_document=per_doc.to_dict("records"),
    control_before_after=control.to_dict("records") if inputs.control_doc_id else None,
    equal_budget=budget.to_dict("records"),
    coverage={s: {"min": int(g.min()), "max": int(g.max())} for s, g in coverage.groupby("scale")["pairs"]},
    training_seconds=float(training["seconds"].sum()),
)
print(f"results: {run.finish().parent}")
