"""Every notebook: committed clean, and run end to end at the smoke size through papermill."""

import json
from pathlib import Path

import pytest

from kilib import cli
from kilib.runtime import KilibError, cache_root, results_root

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
NOTEBOOK_01_FILES = {  # the figures and tables notebook 01 writes in every profile
    "fig1_token_on_token.png",
    "fig2_token_coverage.png",
    "fig3_fact_on_fact.png",
    "fig4_token_on_fact.png",
    "answers.csv",
    "paper_claims.csv",
    "control_before_after.png",
}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_is_clean(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert not any(c.get("outputs") or c.get("execution_count") for c in code), "committed with outputs"
    params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged 'parameters'"
    assert "PROFILE: str =" in "".join(params[0]["source"])
    assert nb["metadata"]["kernelspec"]["name"] == cli.KERNEL_NAME
    import papermill

    declared = [
        line.split(":")[0] for line in "".join(params[0]["source"]).splitlines() if line and not line.startswith("#")
    ]
    assert list(papermill.inspect_notebook(str(path))) == declared, "papermill cannot parse every parameter line"


def test_notebooks_are_built_from_their_sources():
    """Each .ipynb is what `make notebooks` writes from its jupytext source: the same cells, tags
    and kernel, so that the reviewed .py is what papermill runs."""
    import jupytext

    sources = cli.notebook_sources()
    assert [s.stem for s in sources] == [p.stem for p in NOTEBOOKS]
    for source in sources:
        path = source.with_suffix(".ipynb")
        assert path.read_text() == cli.build_notebook(source), f"rebuild {path.name}: make notebooks"
        nb, text = json.loads(path.read_text()), jupytext.read(source, fmt="py:percent")
        assert ["".join(c["source"]) for c in nb["cells"]] == [c.source for c in text.cells]
    assert cli.main(["notebooks", "--check"]) == 0


def test_runner_rejects_bad_input(capsys):
    with pytest.raises(KilibError, match="no notebook numbered 77"):
        cli.discover_notebooks("77")
    with pytest.raises(KilibError, match="wrong type: expected int"):
        cli.check_parameters(NOTEBOOKS[0], {"WORLD_SEED": "one"})
    with pytest.raises(KilibError, match="has no parameter 'SEEDS'"):
        cli.check_parameters(NOTEBOOKS[0], {"SEEDS": 1})
    assert cli.main(["reproduce", "--profile", "huge"]) == 2
    capsys.readouterr()
    # -p parameters are checked for every selected notebook before any runs: each selected notebook
    # gets every one, so each must declare it, and the one line names those that do not and the fix
    with pytest.raises(KilibError, match="PROFILE is not a -p parameter: use --profile"):
        cli.check_run_parameters(NOTEBOOKS, {"PROFILE": "tiny"})
    with pytest.raises(
        KilibError,
        match=r"-p MODEL: 00_tiny_world has no parameter 'MODEL'; .*--only 01 \(make reproduce ONLY=01\)",
    ):
        cli.check_run_parameters(NOTEBOOKS[:1], {"MODEL": "llama-s"})
    with pytest.raises(KilibError, match=r"-p MODEL: 00_tiny_world, 02_knowledge_transfer, .* have no parameter"):
        cli.check_run_parameters(NOTEBOOKS, {"MODEL": "llama-s"})
    with pytest.raises(KilibError, match="-p WORLD_SEED: 01_sft_injection has no parameter 'WORLD_SEED'.*--only 00"):
        cli.check_run_parameters(NOTEBOOKS[:2], {"WORLD_SEED": 1})
    with pytest.raises(KilibError, match=r"-p SEEDS: 00_tiny_world has no parameter 'SEEDS'.*ONLY=01,02,03,04\)$"):
        cli.check_run_parameters(NOTEBOOKS, {"SEEDS": 1})
    assert cli.check_run_parameters(NOTEBOOKS[1:], {"SEEDS": 1}) is None
    with pytest.raises(KilibError, match="-p TYPO: .* no notebook declares it"):
        cli.check_run_parameters(NOTEBOOKS[1:2], {"TYPO": 1})
    assert cli.check_run_parameters(NOTEBOOKS[1:2], {"MODEL": "llama-s", "WORKERS": 1}) is None
    with pytest.raises(KilibError, match="wrong type"):
        cli.check_run_parameters(NOTEBOOKS[:1], {"WORLD_SEED": "one"})
    # from the command line: one line, before the first notebook runs
    assert cli.main(["reproduce", "--profile", "smoke", "--quiet", "-p", "MODEL", "llama-s"]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: -p MODEL: 00_tiny_world, ") and err.count("\n") == 1 and "==>" not in out


def test_interrupted_run_is_one_line(monkeypatch, capsys):
    """Ctrl-C, or a kill (SIGTERM), ends the runner with one line and exit status 130."""
    import os
    import signal

    def interrupted(args):
        raise KeyboardInterrupt

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(cli, "reproduce", interrupted)
    assert cli.main(["reproduce", "--profile", "smoke"]) == 130
    monkeypatch.setattr(cli, "reproduce", lambda args: os.kill(os.getpid(), signal.SIGTERM) or 0)
    assert cli.main(["reproduce", "--profile", "smoke"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        err == ["interrupted: rerun the same command to go on; finished models, adapters and Q&A sets are cached"] * 2
    )
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is the runner's only while it runs


@pytest.mark.notebook
def test_a_second_run_of_a_notebook_is_refused_while_one_runs(capsys):
    """Two runs of one notebook at once would clear each other's staging folder: while one holds
    its results' lock, another is one line naming the folder and the way around, writes nothing,
    and the notebook runs once the lock is free (here it fails on its parameter, after the lock)."""
    from filelock import FileLock

    path = cli.discover_notebooks("01")[0]
    lock = FileLock(str(results_root() / ".locks" / f"smoke-{path.stem}.lock"))
    (results_root() / ".locks").mkdir(parents=True, exist_ok=True)
    with lock:
        assert cli.main(["reproduce", "--profile", "smoke", "--only", "01", "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "another run is writing" in err[0] and "01_sft_injection" in err[0]
        assert "KILIB_RESULTS_DIR" in err[0]
        assert not (results_root() / "smoke" / ".01_sft_injection.partial").exists()
    with pytest.raises(KilibError, match="SEEDS=-1"):
        cli.run_notebook(path, "smoke", {"SEEDS": -1}, progress=False)


@pytest.mark.notebook
def test_failed_notebook_leaves_no_staging_or_copy(capsys):
    """An error inside a notebook is one line; the run's staging folder and the executed copy
    are removed, and the last complete results stay."""
    staging = results_root() / "smoke" / ".01_sft_injection.partial"
    staging.mkdir(parents=True, exist_ok=True)
    (staging / "half.csv").write_text("x\n")
    assert cli.main(["reproduce", "--profile", "smoke", "--only", "01", "--quiet", "-p", "SEEDS", "-1"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: 01_sft_injection.ipynb: SEEDS=-1: use 0 to keep the profile's seeds, or n > 0 to run seeds 0 to n-1"
    )
    assert not staging.exists()
    assert not list((results_root() / "smoke" / "notebooks").glob("01_sft_injection.failed.ipynb"))


def run_smoke(number: str) -> dict:
    path = cli.discover_notebooks(number)[0]
    executed = cli.run_notebook(path, "smoke", progress=False)
    assert executed.exists()
    record = json.loads((results_root() / "smoke" / path.stem / "run.json").read_text())
    assert record["profile"] == "smoke" and record["git"]["commit"] is not None
    for artifact in record["artifacts"]:
        assert (results_root() / "smoke" / path.stem / artifact).exists()
    return record


@pytest.mark.notebook
def test_00_tiny_world_smoke():
    record = run_smoke("00")
    m = record["metrics"]
    assert m["world"]["size"] == "smoke" and m["world"]["facts"] > 50
    zoo, pretrained = m["zoo"], m["zoo_after_pretraining"]
    assert set(zoo) == set(pretrained) == {"llama-s", "llama-m", "neox-xs", "neox-s", "neox-m"}
    for r in [*zoo.values(), *pretrained.values()]:
        for measure in r.values():
            assert 0.0 <= measure["ci_low"] <= measure["accuracy"] <= measure["ci_high"] <= 1.0
    assert zoo["llama-m"] != pretrained["llama-m"] and zoo["llama-s"] == pretrained["llama-s"]  # only the reader reads
    assert set(m["checks"]) and all(isinstance(v, bool) for v in m["checks"].values())
    for name, (first, last) in m["pretraining_loss_first_last"].items():
        assert last < 0.8 * first, f"{name} did not learn: loss {first:.2f} -> {last:.2f}"
    # ... and knowledge went in: the reader answers held-out pre-cutoff paraphrases above chance
    # (the most-common answer per relation), where it answered almost none after pretraining.
    reader = zoo["llama-m"]
    assert reader["pre_closed_book"]["ci_low"] > reader["pre_majority_baseline"]["accuracy"], reader
    assert pretrained["llama-m"]["pre_closed_book"]["accuracy"] < reader["pre_closed_book"]["accuracy"]
    assert {"zoo.csv", "knowledge.csv", "knowledge.png", "pretraining_loss.png"} <= set(record["artifacts"])


@pytest.mark.notebook
def test_reproduce_twice_recomputes_nothing(capsys):
    """The runner's second pass reuses every cached model and report (run after the smoke test)."""
    from kilib.runtime import cache_root

    assert cli.main(["reproduce", "--profile", "smoke", "--only", "00", "--quiet"]) == 0
    cached = sorted(cache_root().glob("*/*/key.json"))
    stamps = {p: p.stat().st_mtime_ns for p in cached}
    assert cli.main(["reproduce", "--profile", "smoke", "--only", "00", "--quiet"]) == 0
    assert sorted(cache_root().glob("*/*/key.json")) == cached
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert not [p for p in cache_root().glob("*/.*") if p.name.endswith(".partial")]
    assert "00_tiny_world/run.json" in capsys.readouterr().out  # the runner lists what was written


@pytest.mark.notebook
def test_01_sft_injection_smoke():
    record = run_smoke("01")
    m = record["metrics"]
    assert m["eval_overlap"] == 0  # no evaluation question was trained on
    assert m["adapters"] == 2 * 2 * 3  # documents x rules x scales, one seed
    assert len(m["claims"]) == 6 + 1 + 2  # the paper's, the control known, the control after each rule
    assert {c["verdict"] for c in m["claims"]} <= {"shown", "direction only", "not shown", "opposite shown"}
    acc = {(r["method"], r["scale"], r["eval"]): r for r in m["accuracy"]}
    for r in acc.values():
        assert 0.0 <= r["ci_low"] <= r["accuracy"] <= r["ci_high"] <= 1.0
    # real injection: 10x fact-based training answers held-out paraphrases the original model cannot
    assert acc[("fact", 10, "fact")]["accuracy"] > acc[("original", 0, "fact")]["ci_high"]
    assert NOTEBOOK_01_FILES <= set(record["artifacts"])


@pytest.mark.notebook
def test_02_knowledge_transfer_smoke():
    record = run_smoke("02")
    m = record["metrics"]
    tasks = m["tasks"]
    assert tasks == ["gsm", "mmlu", "qa"]
    # every student block gets a distinct teacher block, in order
    from kilib.tiny import zoo

    layers = {spec.name: spec.layers for spec in zoo.zoo_config("smoke").models}
    for selected in m["selected_blocks"].values():
        assert selected == sorted(set(selected)) and len(selected) == layers["llama-s"] < layers["llama-m"]
        assert all(0 <= b < layers["llama-m"] for b in selected)
    table = {(r["measure"], r["method"]): r for r in m["table1"]}
    for r in table.values():
        assert 0.0 <= r["ci_low"] <= r["score"] <= r["ci_high"] <= 100.0
    assert {method for _, method in table} == {"student", "teacher", "lora", "sensitive", "top", "random"}
    assert len(m["claims"]) == 4 * len(tasks)
    assert {c["verdict"] for c in m["claims"]} <= {"shown", "direction only", "not shown", "opposite shown"}
    # the LoRAs learnt the task's answer format: every trained student puts most of its next-token
    # probability on MMLU's four letters, the untrained one little
    answers = (results_root() / "smoke" / "02_knowledge_transfer" / "answers.csv").read_text()
    from io import StringIO

    import pandas as pd

    df = pd.read_csv(StringIO(answers))
    mass = df[df.task == "mmlu"].groupby("method")["letter_mass"].mean()
    assert mass[["lora", "sensitive", "top", "random"]].min() > 0.5 > mass["student"], mass
    assert {"table1.png", "sensitivity_window.png", "answers.csv", "paper_claims.csv"} <= set(record["artifacts"])


@pytest.mark.notebook
def test_03_calm_composition_smoke():
    record = run_smoke("03")
    m = record["metrics"]
    from kilib.calm import model, study, tasks

    assert m["step0_max_logit_gap"] == 0.0  # the composed model is the anchor before training
    # the smoke llama-s into llama-m
    assert m["added_parameters"] == model.bridge_parameters(64, 64, len(m["plan"]))["exact"]
    assert m["keys"] == {"train": 10, "eval": 10}
    table = {(r["task"], r["model"]): r for r in m["table1"]}
    assert {model for _, model in table} == {
        "augment",
        "anchor",
        "calm",
        "calm (rotary)",
        "calm (rotary, vanilla m_A)",
        "calm (m_A as encoder)",
        "calm trained to copy",
        "calm (rotary) trained to copy",
        study.LORA,
    }
    assert {task for task, _ in table} == set(tasks.TASK_NAMES.values())
    control = tasks.TASK_NAMES[tasks.CONTROL]
    assert {model for task, model in table if task == control} == {
        "augment",
        "anchor",
        "calm trained to copy",
        "calm (rotary) trained to copy",
    }
    for r in table.values():
        assert 0.0 <= r["ci_low"] <= r["accuracy"] <= r["ci_high"] <= 100.0 and r["n"] == 40
    # per CALM: three claims, the LoRA baseline, its copying control; the rotary one's vanilla m_A,
    # the paper's m_A as encoder
    assert len(m["claims"]) == 5 + 5 + 1 + 1
    assert {c["verdict"] for c in m["claims"]} <= {"shown", "direction only", "not shown", "opposite shown"}
    assert set(m["main_effect_shown"]) == {"calm", "calm (rotary)"} and all(
        isinstance(v, bool) for v in m["main_effect_shown"].values()
    )
    values = tasks.TASK_NAMES[tasks.VALUES]
    assert m["anchor_given_values"] == table[(values, "anchor")]["accuracy"]
    assert [(d["model"], d["task"]) for d in m["diagnosis"]] == [
        ("calm", tasks.KV_SEEN),
        ("calm (rotary)", tasks.KV_SEEN),
    ]
    probes = m["value_probe"]  # every composed m_A block, for the trained and the vanilla m_A
    assert [(p["m_A"], p["block"]) for p in probes] == [(a, b) for a in ("trained", "vanilla") for b, _ in m["plan"]]
    for p in probes:  # 10 values shared by 20 keys: some held-out value is a training key's
        assert p["held_out_occurrences"] > 0 and 0.0 <= p["held_out_keys"] <= 100.0 and p["chance"] == 10.0
    import pandas as pd

    folder = results_root() / "smoke" / "03_calm_composition"
    composition = pd.read_csv(folder / "composition.csv")
    assert (composition.final_loss < composition.first_loss).all()  # the bridges learn
    stages = pd.read_csv(folder / "stages.csv")
    assert len(stages) == 2 and (stages.final_loss < stages.first_loss).all()
    assert {"table1.png", "training_loss.png", "answers.csv", "paper_claims.csv"} <= set(record["artifacts"])


@pytest.mark.notebook
def test_04_memory_fever_smoke():
    record = run_smoke("04")
    m = record["metrics"]
    from kilib.memory.presets import MEMORY_PRESETS

    s = m["selection"]
    assert s["n_top"] == MEMORY_PRESETS["smoke"].pages and 0 < s["n_trunc"] <= s["n_top"] <= s["n_full"]
    assert m["layer"] == 0 and m["n_blocks"] == 1  # the smoke neox-xs has one block
    assert m["memory_parameters"] == 64 * 128 + 128 + 128 * 64 + 64 + 2 * 64 + 1
    kshot = {(r["model"], r["shots"]): r for r in m["kshot"]}
    assert set(kshot) == {(model, k) for model in ("neox-xs", "llama-s") for k in (0, 1, 2)}
    for r in m["kshot"] + m["memory"] + m["ablations"]:
        assert r["n"] == m["eval_claims"]
        for name in ("accuracy", "micro_f1", "macro_f1"):
            assert 0.0 <= r[f"{name}_low"] <= r[name] <= r[f"{name}_high"] <= 1.0
        assert r["micro_f1"] >= r["accuracy"] - 1e-12  # an unparseable answer is wrong, and no label
    methods = {(r["model"], r["method"]) for r in m["memory"]}
    assert methods == {
        (model, method)
        for model in ("neox-xs", "llama-s")
        for method in ("pretrained", "memory: document", "memory: template", "memory: document+template")
    }
    assert {r["method"] for r in m["ablations"]} == {
        "memory: document (weight decay 0.01)",
        "memory: template (weight decay 0.01)",
        "memory: document+template (weight decay 0.01)",
        "memory: document (gate 0 at the start)",
        "memory: template (gate 0 at the start)",
        "memory: document+template (gate 0 at the start)",
        "full update: template",
        "full update: document+template",
    }
    assert m["changed_max"] > 0  # a trained memory changes answers (full-weight updates not counted)
    # the memories, then the ablations (weight decay, gate, full update), then k = 0..2
    assert m["memory_runs"] == 6 and len(m["claims"]) == 6 + 3 + 3 + 2 + 3
    assert [c["claim"] for c in m["claims"][-3:]] == [f"{k}-shot: llama-s beats neox-xs" for k in (0, 1, 2)]
    assert {c["verdict"] for c in m["claims"]} <= {"shown", "direction only", "not shown", "opposite shown"}
    import pandas as pd

    training = pd.read_csv(results_root() / "smoke" / "04_memory_fever" / "memory_training.csv")
    assert (training.final_loss < training.first_loss).all()  # the memories learn
    assert {"kshot.png", "memory.png", "paper_claims.csv", "by_period.csv", "by_label.csv"} <= set(record["artifacts"])


def run_standin(number: str, hub_ids: set[str]) -> dict:
    """A notebook of the stand-in series (the paper profile's code, its counts cut, on small
    random-weight stand-ins and synthetic data): its run.json, results and report say so."""
    path = cli.discover_notebooks(number)[0]
    executed = cli.run_notebook(path, "standin", progress=False)
    folder = results_root() / "standin" / path.stem
    record = json.loads((folder / "run.json").read_text())
    assert record["profile"] == "standin" and record["standins"]["scale"] == "small"
    assert set(record["standins"]["models"]) == hub_ids
    assert "random" in record["standins"]["weights"] and "synthetic" in record["standins"]["data"]
    assert "STANDINS.md" in record["artifacts"]
    assert "no number here is a paper number" in (folder / "STANDINS.md").read_text()
    for artifact in record["artifacts"]:
        assert (folder / artifact).exists()
    # the notebook's first words after its imports say what made its numbers
    outputs = [
        "".join(o.get("text", ""))
        for c in json.loads(executed.read_text())["cells"]
        if c["cell_type"] == "code"
        for o in c.get("outputs", [])
        if o.get("name") == "stdout"
    ]
    assert outputs[0].startswith("STAND-IN RUN (small scale)")
    from kilib import report

    assert "no number here is a paper number" in report.render_report(results_root() / "standin", "standin")
    return record


@pytest.mark.notebook
def test_01_sft_injection_standin():
    record = run_standin("01", {"meta-llama/Llama-2-7b-chat-hf", "mistralai/Mistral-7B-Instruct-v0.3"})
    m = record["metrics"]
    assert m["adapters"] == 2 * 2 * 3  # documents x rules x scales: the paper's grid, two documents
    assert "standin-writer:Qwen/Qwen2.5-7B-Instruct" in m["source"]  # the Q&A writer, named as such
    assert record["config"]["score"] == "judge" and record["config"]["sections"] == 1
    assert NOTEBOOK_01_FILES <= set(record["artifacts"])


@pytest.mark.notebook
def test_02_knowledge_transfer_standin():
    record = run_standin("02", {"meta-llama/Llama-2-13b-hf", "meta-llama/Llama-2-7b-hf"})
    m = record["metrics"]
    assert m["tasks"] == ["gsm", "mmlu", "sni"]  # the paper's three tasks, read from the synthetic copies
    assert record["config"]["chat_format"] == "tulu" and record["config"]["train"]["gradient_checkpointing"]
    for selected in m["selected_blocks"].values():  # the 13B stand-in's 5 blocks onto the 7B's 4
        assert len(selected) == 4 and selected == sorted(set(selected)) and max(selected) < 5
    assert {r["method"] for r in m["table1"]} == {"student", "teacher", "lora", "sensitive", "top", "random"}
    assert {"table1.png", "sensitivity_window.png", "answers.csv", "paper_claims.csv"} <= set(record["artifacts"])


@pytest.mark.notebook
def test_03_calm_composition_standin():
    record = run_standin("03", {"meta-llama/Llama-2-7b-hf", "TinyLlama/TinyLlama_v1.1"})
    assert record["config"]["every"] == 4 and record["config"]["augment_quantization"] == "none"
    assert {"table1.png", "training_loss.png", "answers.md", "paper_claims.md"} <= set(record["artifacts"])


@pytest.mark.notebook
def test_04_memory_fever_standin():
    from kilib.memory import presets

    models = set(presets.MEMORY_PRESETS["standin"].models)
    record = run_standin("04", models)
    assert {"kshot.png", "memory.png", "paper_claims.csv", "ablations.csv", "by_label.csv"} <= set(record["artifacts"])
    # the paper preset's memories train on the reused outputs of the blocks below them; its full update does not
    runs = [json.loads(p.read_text()) for p in (cache_root() / "memory").glob("*/run.json")]
    trained = [r for r in runs if r["model"] in models and r["method"] != "pretrained"]
    assert {r["reused_lower_blocks"] for r in trained if not r["full_update"]} == {True}
    assert {r["reused_lower_blocks"] for r in trained if r["full_update"]} == {False}


@pytest.mark.parametrize("which", ["results-file", "results-read-only", "cache-file"])
def test_an_unwritable_results_or_cache_folder_is_one_line_before_anything_runs(tmp_path, monkeypatch, capsys, which):
    """A file where the results (or cache) folder should be, or a read-only results folder: one
    line naming the folder and the variable that moves it, exit 2, no notebook started."""
    import os
    import stat

    started = []
    monkeypatch.setattr(cli, "run_notebook", lambda *a, **k: started.append(a))
    if which == "results-file":
        (tmp_path / "results").write_text("not a folder")
        monkeypatch.setenv("KILIB_RESULTS_DIR", str(tmp_path / "results"))
        variable = "KILIB_RESULTS_DIR"
    elif which == "cache-file":
        (tmp_path / "cache").write_text("not a folder")
        monkeypatch.setenv("KILIB_CACHE_DIR", str(tmp_path / "cache"))
        variable = "KILIB_CACHE_DIR"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        folder = tmp_path / "results" / "smoke"
        folder.mkdir(parents=True)
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
        monkeypatch.setenv("KILIB_RESULTS_DIR", str(tmp_path / "results"))
        variable = "KILIB_RESULTS_DIR"
    assert cli.main(["reproduce", "--profile", "smoke", "--only", "00"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot write into") and variable in err[0]
    assert not started


def test_a_full_disk_is_one_line(monkeypatch, capsys):
    """No space left while a notebook runs: one line that says what to do, exit 2."""
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/cache/sft-adapters/.ab12/adapter.safetensors")

    monkeypatch.setattr(cli, "run_notebook", full)
    assert cli.main(["reproduce", "--profile", "smoke", "--only", "00"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device writing /data/cache" in err[0] and "KILIB_CACHE_DIR" in err[0]
