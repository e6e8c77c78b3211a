"""Notebook 01's training and scoring (kilib.sft.study, kilib.sft.adapters; Mecklenburg et al. §3): one LoRA
adapter per Q&A set, cached, answered, scored, and the paper's claims judged from intervals."""

import json

import pandas as pd
import pytest
from conftest import make_model, make_tokenizer

from kilib.lm import llm
from kilib.lm.training import TrainConfig
from kilib.runtime import KilibError
from kilib.sft import adapters as A
from kilib.sft import judge as J
from kilib.sft import presets as P
from kilib.sft import rules as R
from kilib.sft import study as S

PAIRS = [
    {"question": "who won the cup?", "answer": "the rovers"},
    {"question": "what was the final score?", "answer": "3-1"},
    {"question": "in what year was the final?", "answer": "the year of the cup"},
]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sft-base")
    tok = make_tokenizer()
    make_model("llama", tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def job_for(base, seed=0, pairs=PAIRS, epochs=2, asked=PAIRS[:2], **train):
    config = P.InjectionConfig(
        model=base,
        train=TrainConfig(
            **{
                **dict(epochs=epochs, batch_size=1, lr=3e-3, save_every_epoch=False, progress=False, logging_steps=1),
                **train,
            }
        ),
    )
    return A.adapter_job(base, config, pairs, {"fact": A.question_items(asked)}, seed, doc_id="d", rule="fact", scale=1)


def test_adapter_is_cached_in_peft_format_and_answers_every_question(base):
    from peft import PeftConfig

    job = job_for(base)
    adapter, answers = A.train_and_answer(job)
    assert PeftConfig.from_pretrained(adapter / "adapter").r == 16
    assert (adapter / "adapter" / "adapter_model.safetensors").exists() and not (adapter / "checkpoints").exists()
    assert json.loads((adapter / "train.json").read_text())["steps"] == 2 * len(PAIRS)
    first = json.loads((answers / "answers.json").read_text())["fact"]
    assert len(first) == 2
    stamp = (adapter / "train.json").stat().st_mtime_ns
    assert A.train_and_answer(job_for(base, logging_steps=5, progress=True)) == (adapter, answers)  # cosmetic only
    # new questions re-ask the saved adapter (loaded back from disk) without retraining it
    adapter2, answers2 = A.train_and_answer(job_for(base, asked=PAIRS))
    assert adapter2 == adapter and answers2 != answers
    assert (adapter / "train.json").stat().st_mtime_ns == stamp
    assert (
        json.loads((answers2 / "answers.json").read_text())["fact"][:2] == first
    )  # the saved adapter is the trained one
    assert A.train_and_answer(job_for(base, seed=1))[0] != adapter  # another seed is another adapter


def test_job_key_ignores_tags_and_rejects_empty_sets(base):
    a, b = job_for(base), job_for(base)
    b["tags"]["doc_id"] = "elsewhere"
    assert (a["train_key"], a["answer_key"]) == (b["train_key"], b["answer_key"])
    with pytest.raises(KilibError, match="no training pairs"):
        job_for(base, pairs=[])


def test_parallel_workers_train_the_same_adapters_as_one_process(base, tmp_path, monkeypatch):
    """Two spawned workers against one in-process run, in separate caches: one thread each,
    so the losses are the same to the last bit."""
    jobs = [job_for(base, seed=s) for s in (3, 4)]
    out = {}
    for workers in (1, 2):
        monkeypatch.setenv("KILIB_CACHE_DIR", str(tmp_path / f"cache{workers}"))
        out[workers] = A.run_adapter_jobs(jobs, workers=workers, progress=False)
    for serial, parallel in zip(out[1], out[2]):
        assert serial["seed"] == parallel["seed"] and serial["folder"] != parallel["folder"]
        a = [h["loss"] for h in serial["train"]["losses"]]
        b = [h["loss"] for h in parallel["train"]["losses"]]
        assert a == b


def test_grid_evaluation_is_disjoint_from_training(tmp_path):
    from kilib.tiny.zoo import world_of, zoo_config

    world = world_of(zoo_config("smoke"))
    config = P.INJECTION_PRESETS["smoke"]
    tok = make_tokenizer(chat=True)
    docs = S.study_documents(world, config)
    sets = S.world_training_sets(world, docs, tok, config)
    evaluation = {d: R.eval_sets(world, d, tok) for d in docs}
    (tmp_path / "config.json").write_text("{}")  # a trainee folder: the keys name it, nothing loads it
    jobs = S.grid_jobs(str(tmp_path), config, sets, evaluation, world.control_doc_id)
    assert len(jobs) == len(docs) * len(S.RULES) * len(config.seeds) * len(config.scales)
    for job in jobs:
        trained = {R.question_key(p["question"]) for p in job["train_key"]["pairs"]}
        asked = {R.question_key(it["question"]) for items in job["eval_items"].values() for it in items}
        assert trained and asked and not trained & asked
        assert ("control" in job["eval_items"]) == (job["tags"]["doc_id"] != world.control_doc_id)
    for name in S.RULES:  # each evaluation prompt is the bare question: no passage, closed book
        assert all(it["prompt"] == it["question"] for it in jobs[0]["eval_items"][name])


def test_rag_prompt_holds_the_retrieved_passage():
    items = A.question_items(PAIRS[:1], [["The rovers won the cup."]])
    assert items[0]["prompt"].startswith("The rovers won the cup.") and items[0]["prompt"].endswith(
        PAIRS[0]["question"]
    )


def test_scores_and_intervals_resample_questions_not_answers():
    from kilib.stats import accuracy_with_ci

    items = A.question_items(PAIRS)
    rows = S.score_rows(items, ["The Rovers.", "3-1 after extra time", "no idea"], method="fact", seed=0)
    assert [r["exact"] for r in rows] == [1.0, 0.0, 0.0]
    assert [r["contains"] for r in rows] == [1.0, 1.0, 0.0]
    rows += S.score_rows(items, ["the rovers", "3-1", "no idea"], method="fact", seed=1)
    table = S.accuracy_table(rows, ["method"]).iloc[0]
    direct = accuracy_with_ci([1.0, 0.5, 0.0])  # each question averaged over the two seeds
    assert (table["accuracy"], table["ci_low"], table["ci_high"]) == (
        direct["accuracy"],
        direct["ci_low"],
        direct["ci_high"],
    )
    assert table["n"] == 3 and table["answers"] == 6
    assert table["seeds"] == 2 and table["seed_sd"] == pytest.approx(pd.Series([1 / 3, 2 / 3]).std())
    with pytest.raises(KilibError, match="stale"):
        S.score_rows(items, ["one answer"], method="fact")


def rows_for(method, scale, correct, ev="fact", seed=0):
    return [
        {"method": method, "scale": scale, "eval": ev, "seed": seed, "question": f"q{i}", "exact": float(c)}
        for i, c in enumerate(correct)
    ]


def test_compare_pairs_questions_and_reports_each_direction():
    import numpy as np

    from kilib.stats import bootstrap_ci

    n = 40
    high = rows_for("fact", 10, [1] * 30 + [0] * 10)
    low = rows_for("fact", 1, [1] * 10 + [0] * 30)
    shown = S.compare(high + low, {"method": "fact", "scale": 10}, {"method": "fact", "scale": 1}, "rises")
    diffs = np.array([1] * 10 + [1] * 20 + [0] * 10, dtype=float) - np.array([1] * 10 + [0] * 30, dtype=float)
    assert shown["paired"] and shown["questions"] == [n, n] and shown["verdict"] == "shown"
    assert shown["difference"] == pytest.approx(0.5)
    assert shown["difference_ci"] == [round(v, 3) for v in bootstrap_ci(diffs)[1:]]
    flipped = S.compare(high + low, {"method": "fact", "scale": 1}, {"method": "fact", "scale": 10}, "falls")
    assert flipped["verdict"] == "opposite shown" and flipped["difference"] == pytest.approx(-0.5)
    near = rows_for("token", 10, [1] * 11 + [0] * 29)
    assert (
        S.compare(near + low, {"method": "token"}, {"method": "fact", "scale": 1}, "x")["verdict"] == "direction only"
    )
    assert S.compare(low + low, {"method": "fact"}, {"method": "fact"}, "same")["verdict"] == "not shown"
    other = [dict(r, question="other " + r["question"]) for r in rows_for("rag", 0, [1] * 5)]
    assert not S.compare(other + low, {"method": "rag"}, {"method": "fact"}, "unpaired")["paired"]
    with pytest.raises(KilibError, match="run the whole grid"):
        S.compare(low, {"method": "rag"}, {"method": "fact"}, "missing")


def test_paper_claims_compare_the_right_conditions():
    levels = {
        ("token", 1): 0.1,
        ("token", 10): 0.3,
        ("fact", 1): 0.5,
        ("fact", 10): 0.7,
        ("rag", 0): 0.9,
        ("original", 0): 0.0,
    }
    rows = [
        r
        for (m, s), acc in levels.items()
        for ev in S.RULES
        for r in rows_for(m, s, [1] * round(20 * acc) + [0] * (20 - round(20 * acc)), ev)
    ]
    claims = {c["claim"]: c for c in S.paper_claims(rows, (1, 5, 10))}
    expected = {
        "accuracy rises with scale (token-trained, token eval)": (0.3, 0.1),
        "accuracy rises with scale (fact-trained, fact eval)": (0.7, 0.5),
        "fact-based beats token-based at 10x (fact eval)": (0.7, 0.3),
        "fact-based beats token-based at 10x (token eval)": (0.7, 0.3),
        "RAG beats the original model (token eval)": (0.9, 0.0),
        "RAG beats the original model (fact eval)": (0.9, 0.0),
    }
    assert {k: (c["higher"], c["lower"]) for k, c in claims.items()} == expected


def test_presets_follow_the_paper():
    for name, preset in P.INJECTION_PRESETS.items():
        assert preset.lora_r == 16 and preset.train.batch_size == 1, name
        assert preset.train.epochs == (1 if name == "standin" else 3), name  # the stand-in run's one cut in training
        assert preset.quantization == "4bit" and preset.scales == (1, 5, 10), name
    paper, standin = P.INJECTION_PRESETS["paper"], P.INJECTION_PRESETS["standin"]
    assert (standin.model, standin.generator, standin.judge, standin.score) == (
        paper.model,
        paper.generator,
        paper.judge,
        paper.score,
    )
    assert len(P.INJECTION_PRESETS["tiny"].seeds) >= 2


def test_own_documents_go_through_the_llm_path(base, tmp_path, monkeypatch):
    """A folder of Markdown files, Q&A by a scripted stand-in for the generator LLM: the study
    gets nested scales, evaluation disjoint from training and token pairs mapped to facts."""
    from test_qa_generation import ScriptedGenerator

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "example_cup.md").write_text(
        "The 2023 Example Cup was held in Freedonia. Sylvania won the final 3-1.\n\n"
        "## Final\nAnna Berg scored twice in the final at Example Stadium in front of a large crowd.\n"
    )
    monkeypatch.setenv("KILIB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(llm, "make_generator", lambda spec, **kw: ScriptedGenerator())
    config = P.InjectionConfig(model=base, corpus=str(tmp_path / "docs"), generator="scripted")
    inputs = S.study_inputs(config)
    assert inputs.doc_ids == ["example_cup"] and inputs.control_doc_id is None
    token, fact = inputs.training_sets[("example_cup", "token", 0)], inputs.training_sets[("example_cup", "fact", 0)]
    for sets in (token, fact):
        assert sets[1] and {p["question"] for p in sets[1]} <= {p["question"] for p in sets[5]} <= {
            p["question"] for p in sets[10]
        }
    assert all(len(set(p["fact_ids"]) - set(inputs.facts["example_cup"])) == 0 for p in token[10])
    trained = {R.question_key(p["question"]) for sets in (token, fact) for pairs in sets.values() for p in pairs}
    asked = {R.question_key(p["question"]) for name in S.RULES for p in inputs.evaluation["example_cup"][name]}
    assert asked and not trained & asked
    assert S.grid_jobs(base, config, inputs.training_sets, inputs.evaluation, None)


def test_llm_path_and_judge_errors_name_the_fix(base):
    with pytest.raises(KilibError, match="set GENERATOR"):
        S.study_inputs(P.InjectionConfig(model=base, corpus="/nowhere"))
    with pytest.raises(KilibError, match="knows only the tiny world"):
        S.study_inputs(P.InjectionConfig(corpus="/nowhere", generator="openai:gpt-4o"))
    with pytest.raises(KilibError, match="set corpus"):
        S.study_inputs(P.InjectionConfig(model=base, zoo=""))
    with pytest.raises(KilibError, match="needs a judge model"):
        P.InjectionConfig(score="judge")


def test_judge_scores_and_agreement(monkeypatch):

    class Judge:
        name, revision = "mistralai/Mistral-7B-Instruct-v0.3", None

        def complete(self, prompts):
            return [
                "Correct: yes" if "Candidate answer: the rovers" in p else "no idea" if "3-1" in p else "Correct: no"
                for p in prompts
            ]

    monkeypatch.setattr(llm, "make_generator", lambda spec, **kw: Judge())
    rows = S.score_rows(A.question_items(PAIRS), ["the rovers", "3-1", "the year of the cup"], method="fact", seed=0)
    config = P.InjectionConfig(judge="mistral", generator="Qwen/Qwen2.5-7B-Instruct", score="judge")
    judged, info = J.judge_rows(rows, config)
    assert [r["judge"] for r in judged] == [1.0, 0.0, 0.0] and info["unparseable"] == 1
    assert info["n"] == 2 and info["agreement"] == 0.5  # contains is 1, 1, 1; the unparseable reply is left out


def test_the_paper_corpus_keeps_its_control(base, tmp_path, monkeypatch):
    """DOCUMENTS=paper (or wikipedia): the pre-cutoff article is the control, whatever its position."""
    from test_qa_generation import ScriptedGenerator

    from kilib.lm import documents

    text = "The {} was won by Sylvania, who beat Freedonia 3-1 in the final in front of a large crowd."
    fetched = documents.Documents(
        [
            {"doc_id": d, "title": t, "section": "Overview", "text": text.format(t)}
            for d, t in [("fifa_world_cup_2018", "2018 FIFA World Cup"), ("super_bowl_lvii", "Super Bowl LVII")]
        ],
        sources={"fifa_world_cup_2018": {"post_cutoff": False}, "super_bowl_lvii": {"post_cutoff": True}},
    )
    monkeypatch.setenv("KILIB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(documents, "load_documents", lambda spec, **kw: fetched if spec == "paper" else None)
    monkeypatch.setattr(llm, "make_generator", lambda spec, **kw: ScriptedGenerator())
    for corpus in ("paper", "wikipedia"):
        inputs = S.study_inputs(P.InjectionConfig(model=base, corpus=corpus, generator="scripted"))
        assert inputs.control_doc_id == "fifa_world_cup_2018" and inputs.doc_ids == fetched.doc_ids()


def test_model_fingerprint_changes_when_weights_are_replaced_in_place(tmp_path, tokenizer):
    """Cached adapters are keyed by their trainee: new weights of the same shapes in the same
    folder must not reuse adapters trained on the old ones."""
    from kilib.sft.adapters import model_fingerprint

    make_model("llama", tokenizer, seed=0).save_pretrained(tmp_path)
    first = model_fingerprint(str(tmp_path))
    assert model_fingerprint(str(tmp_path)) == first  # stable while nothing changes
    make_model("llama", tokenizer, seed=1).save_pretrained(tmp_path)  # same shapes, same file sizes
    assert model_fingerprint(str(tmp_path)) != first
    # a Hub id is named with its pinned commit (how an unpinned one resolves: test_models)
    pin = "0" * 40
    assert model_fingerprint("meta-llama/Llama-2-7b-chat-hf", pin) == f"meta-llama/Llama-2-7b-chat-hf@{pin}"


def test_notebook_parameters_become_overrides():
    from kilib.config import select_preset

    assert P.notebook_overrides(0, "", "", "", "", 0) == {}  # every default keeps the preset
    assert P.notebook_overrides(2, "m", "", "", "", 3) == {"seeds": (0, 1), "model": "m", "workers": 3}
    # a folder of documents drops the preset's document ids, which name tiny-world documents
    smoke = select_preset(P.INJECTION_PRESETS, "smoke", P.notebook_overrides(0, "m", "/docs", "g", "", 0))
    assert smoke.documents == () and smoke.corpus == "/docs" and P.INJECTION_PRESETS["smoke"].documents
    with pytest.raises(KilibError, match="SEEDS=-1: use 0 to keep the profile's seeds"):
        P.notebook_overrides(-1, "", "", "", "", 0)
    with pytest.raises(KilibError, match="WORKERS=-2: use 0 for one adapter per CPU core"):
        P.notebook_overrides(0, "", "", "", "", -2)


def test_a_model_or_judge_that_cannot_load_fails_before_training(monkeypatch):
    from kilib.config import select_preset

    with pytest.raises(KilibError, match="no zoo model 'org/model'.*also set DOCUMENTS .* and GENERATOR"):
        S.study_inputs(select_preset(P.INJECTION_PRESETS, "smoke", {"model": "org/model"}))
    config = select_preset(P.INJECTION_PRESETS, "smoke", {"judge": "/no/such/judge"})
    with pytest.raises(KilibError, match="/no/such/judge does not exist"):
        S.study_inputs(config)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(KilibError, match="OPENAI_API_KEY is not set"):
        S.study_inputs(select_preset(P.INJECTION_PRESETS, "smoke", {"judge": "openai:gpt-4o"}))
