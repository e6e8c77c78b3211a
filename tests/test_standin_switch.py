"""The stand-in switch: while it is on, the paper profile's Hub ids and datasets resolve to local
stand-ins, cache keys name them, and a run's results say so; while it is off, nothing changes."""

import json

import pytest

from kilib.lm import documents
from kilib.lm.models import load_causal_lm, load_tokenizer, model_ref
from kilib.notebook import start
from kilib.results import STANDIN_NOTE, Run
from kilib.runtime import KilibError
from kilib.standin import models, switch
from kilib.transfer import presets as transfer_presets
from kilib.transfer import tasks


@pytest.fixture
def standins_on(monkeypatch):
    monkeypatch.setenv(switch.VARIABLE, "small")
    yield "small"


def test_off_by_default_and_a_bad_scale_is_one_line(monkeypatch):
    monkeypatch.delenv(switch.VARIABLE, raising=False)
    assert switch.scale() == "" and switch.describe() == {}
    assert switch.model_folder("meta-llama/Llama-2-7b-hf") is None
    assert switch.dataset_path("openai/gsm8k") == "openai/gsm8k"
    monkeypatch.setenv(switch.VARIABLE, "huge")
    with pytest.raises(KilibError, match="set it to small or real"):
        switch.scale()
    with pytest.raises(KilibError, match="unknown stand-in scale"):
        switch.activate("huge")


def test_hub_ids_resolve_to_stand_ins(standins_on):
    hub_id = "meta-llama/Llama-2-7b-hf"
    folder = models.standin_folder(hub_id, "small")
    assert switch.model_folder(hub_id) == folder
    # the cache key names the stand-in's folder (the hash of what built it), never the Hub id
    assert model_ref(hub_id) == str(folder)
    model, tok = load_causal_lm(hub_id, device="cpu")
    assert model.config.vocab_size == 32000 and len(tok) == 32000
    assert load_tokenizer(hub_id).bos_token_id == 1
    assert switch.describe()["models"][hub_id] == folder.name
    with pytest.raises(KilibError, match="has no stand-in"):
        switch.model_folder("org/unknown-model")


def test_datasets_resolve_to_format_true_copies(standins_on):
    rows = tasks.hub_task_rows("gsm", {"seed": 2, "train": 3, "demos": 2, "eval": 2})
    assert [len(rows[r]) for r in ("seed", "train", "demos", "eval")] == [2, 3, 2, 2]
    assert all(r["rationale"].endswith(f"So the answer is {r['answer']}.") for r in rows["train"])
    docs = documents.load_documents("paper")
    assert len(docs.doc_ids()) == 6
    controls = [d for d in docs.doc_ids() if docs.sources[d]["post_cutoff"] is False]
    assert len(controls) == 1 and controls[0].startswith("2018")


def test_a_stand_in_run_says_so(standins_on, tmp_path, capsys):
    switch.model_folder("meta-llama/Llama-2-7b-hf")
    run = Run("02_knowledge_transfer", "standin", root=tmp_path)
    final = run.finish().parent
    record = json.loads((final / "run.json").read_text())
    assert record["standins"]["scale"] == "small"
    assert "meta-llama/Llama-2-7b-hf" in record["standins"]["models"]
    assert STANDIN_NOTE in record["artifacts"]
    assert "no number here is a paper number" in (final / STANDIN_NOTE).read_text()


def test_the_paper_profile_refuses_stand_ins(standins_on, monkeypatch):
    monkeypatch.setattr("kilib.notebook.resolve_profile", lambda name: name)
    with pytest.raises(KilibError, match="unset it, or run PROFILE=standin"):
        start("02_knowledge_transfer", "paper", transfer_presets.TRANSFER_PRESETS, {}, lambda c: None)


def test_the_standin_profile_turns_them_on_and_says_so_first(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv(switch.VARIABLE, "")  # off, and restored to what it was after the test
    monkeypatch.setenv("KILIB_RESULTS_DIR", str(tmp_path))
    config, inputs, run = start(
        "02_knowledge_transfer", "standin", transfer_presets.TRANSFER_PRESETS, {}, lambda c: switch.scale()
    )
    assert inputs == "small" and config.teacher == "meta-llama/Llama-2-13b-hf"
    assert capsys.readouterr().out.startswith("STAND-IN RUN (small scale)")
