"""Profiles, presets, results provenance, atomic writes and the hash-keyed cache."""

import dataclasses
import json
import os
import subprocess

import pandas as pd
import pytest

from kilib import runtime
from kilib.config import apply_overrides, select_preset
from kilib.lm.data import read_jsonl, write_jsonl
from kilib.plots import bars_with_ci, lines_with_ci
from kilib.results import (
    Run,
    atomic_write_text,
    cache_path,
    cached_dir,
    git_state,
    markdown_table,
    read_json,
    stable_hash,
    write_json,
)
from kilib.runtime import KilibError


@dataclasses.dataclass(frozen=True)
class Demo:
    lr: float = 1e-3
    epochs: int = 3
    name: str = "x"
    scales: tuple[int, ...] = (1, 5, 10)
    seed: int | None = None


PRESETS = {"tiny": Demo(), "smoke": Demo(epochs=1), "paper": Demo(lr=2e-4)}


def test_unknown_profile_is_one_line_naming_the_choices():
    with pytest.raises(KilibError) as e:
        runtime.resolve_profile("huge")
    msg = str(e.value)
    assert "\n" not in msg and "auto" in msg and "tiny" in msg and "PROFILE=" in msg


def test_auto_is_tiny_without_a_gpu_and_paper_needs_one(monkeypatch):
    monkeypatch.setattr(runtime, "cuda_available", lambda: False)
    assert runtime.resolve_profile("auto") == "tiny"
    with pytest.raises(KilibError, match="needs a CUDA GPU.*PROFILE=tiny"):
        runtime.resolve_profile("paper")
    monkeypatch.setattr(runtime, "cuda_available", lambda: True)
    assert runtime.resolve_profile("auto") == "paper"
    assert runtime.resolve_profile("smoke") == "smoke"


def test_presets_reject_unknown_keys_and_wrong_types():
    assert select_preset(PRESETS, "smoke").epochs == 1
    with pytest.raises(KilibError) as e:
        select_preset(PRESETS, "tiny", {"epoch": 2})
    assert "epoch" in str(e.value) and "valid keys are epochs, lr, name, scales, seed" in str(e.value)
    with pytest.raises(KilibError, match="wrong type: expected int"):
        apply_overrides(Demo(), {"epochs": "3"})
    with pytest.raises(KilibError, match="wrong type"):
        apply_overrides(Demo(), {"epochs": True})
    p = apply_overrides(Demo(), {"lr": 1, "scales": [1, 2], "seed": 7})
    assert p.lr == 1.0 and isinstance(p.lr, float) and p.scales == (1, 2) and p.seed == 7
    assert apply_overrides(Demo(), {"seed": None}).seed is None
    with pytest.raises(KilibError):
        select_preset(PRESETS, "nope")


def test_run_json_holds_provenance(tmp_path):
    with Run("99_demo", "smoke", config=Demo(), seed=3, root=tmp_path) as run:
        run.log(accuracy=0.5, ci=(0.4, 0.6))
        run.save_json("extra.json", {"a": 1})
    record = json.loads((tmp_path / "smoke" / "99_demo" / "run.json").read_text())
    assert record["metrics"] == {"accuracy": 0.5, "ci": [0.4, 0.6]}
    assert record["config"]["scales"] == [1, 5, 10] and record["seed"] == 3
    for field in ("packages", "git", "hardware", "wall_time_s", "memory"):
        assert field in record
    assert record["packages"]["torch"] and record["packages"]["transformers"]
    assert record["hardware"]["cpu_capability"] in {"DEFAULT", "AVX2", "AVX512", "ZVECTOR", "VSX", "SVE256"}
    assert record["hardware"]["torch_threads"] >= 1 and "cpu" in record["hardware"]
    assert set(record["git"]) == {"commit", "dirty"}
    assert record["memory"]["peak_rss_mib"] > 10
    assert record["artifacts"] == ["extra.json"]


def test_failed_run_writes_no_run_json(tmp_path):
    with pytest.raises(ValueError):
        with Run("99_demo", "smoke", root=tmp_path):
            raise ValueError("boom")
    assert not (tmp_path / "smoke" / "99_demo" / "run.json").exists()


def test_a_failed_rerun_keeps_the_last_results_and_a_finished_one_replaces_them(tmp_path):
    final = tmp_path / "smoke" / "99_demo"
    with Run("99_demo", "smoke", root=tmp_path) as run:
        run.save_json("old_only.json", {"a": 1})
        run.log(value=1)
    with pytest.raises(ValueError):
        with Run("99_demo", "smoke", root=tmp_path) as run:
            run.save_json("half.json", {"a": 2})
            raise ValueError("boom")
    assert json.loads((final / "run.json").read_text())["metrics"] == {"value": 1}
    assert not (final / "half.json").exists()
    with Run("99_demo", "smoke", root=tmp_path) as run:
        run.save_json("new.json", {"a": 3})
    assert sorted(p.name for p in final.iterdir()) == ["new.json", "run.json"]
    assert sorted(p.name for p in final.parent.iterdir()) == ["99_demo"]  # no staging or old folder left


def test_figures_are_byte_for_byte_repeatable(tmp_path):
    """The same figure saved twice gives the same PNG and SVG bytes (no date, fixed SVG ids), and
    notebook 01's Fig 2, whose dots seaborn jitters, is drawn the same twice without touching
    numpy's global random state."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np

    from kilib.sft.tables import coverage_figure

    coverage = pd.DataFrame({"doc_id": ["a"] * 6 + ["b"] * 6, "scale": ["1x", "5x", "10x"] * 4, "pairs": range(12)})
    saved = []
    for i in range(2):
        np.random.seed(i)
        state = np.random.get_state()[1].copy()
        with Run("99_demo", "smoke", root=tmp_path / str(i)) as run:
            run.save_figure(coverage_figure(coverage, [1, 5, 10], {"a": "A", "b": "B"}), "fig2")
        assert (np.random.get_state()[1] == state).all()
        final = tmp_path / str(i) / "smoke" / "99_demo"
        saved.append({ext: (final / f"fig2.{ext}").read_bytes() for ext in ("png", "svg")})
    assert saved[0] == saved[1]


def test_tables_and_figures(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with Run("99_demo", "smoke", root=tmp_path) as run:
        run.save_table(pd.DataFrame({"a": [1, 2], "b": [0.5, 0.25]}), "t")
        fig, ax = plt.subplots()
        ax.plot([0, 1])
        run.save_figure(fig, "f")
    d = tmp_path / "smoke" / "99_demo"
    assert (d / "t.csv").read_text().splitlines()[0] == "a,b"
    assert (d / "t.md").read_text().splitlines()[2].split() == ["|", "1", "|", "0.500", "|"]
    assert (d / "f.png").stat().st_size > 1000 and (d / "f.svg").exists()
    assert not [p for p in d.iterdir() if p.name.startswith(".")]

    shown = markdown_table(pd.DataFrame({"ci": [[-0.04666666666666667, 0.0]], "name": ["x"], "n": [[1, 2]]}))
    assert [c.strip() for c in shown.splitlines()[2].split("|")[1:-1]] == [
        "[-0.047, 0.000]",
        "x",
        "[1, 2]",
    ]  # bounds too
    mask = os.umask(0)
    os.umask(mask)
    assert (d / "t.csv").stat().st_mode & 0o777 == 0o666 & ~mask  # the permissions of any file the user writes


def test_bars_draw_every_value_inside_the_axis():
    """Percentages on the 0-1 axis drew every bar past the top (notebook 02's first Table 1 figure)."""
    df = pd.DataFrame({"x": ["a", "b"], "y": [24.0, 58.7], "ci_low": [17.0, 50.0], "ci_high": [31.0, 66.0]})
    with pytest.raises(KilibError, match="percent=True"):
        bars_with_ci(df, x="x", y="y")
    ax = bars_with_ci(df, x="x", y="y", percent=True).axes[0]
    assert ax.get_ylim()[1] == pytest.approx(102.0) and ax.get_ylabel() == "accuracy (%)"
    heights = sorted(p.get_height() for p in ax.patches)
    assert heights == [24.0, 58.7]
    assert bars_with_ci(df.assign(y=df.y / 100, ci_low=df.ci_low / 100, ci_high=df.ci_high / 100), x="x", y="y").axes[
        0
    ].get_ylim()[1] == pytest.approx(1.02)
    lines = df.assign(h="one", y=df.y / 100, ci_low=df.ci_low / 100, ci_high=df.ci_high / 100, x=[1, 10])
    assert lines_with_ci(lines, x="x", y="y", hue="h").axes[0].get_ylim()[1] == pytest.approx(1.02)
    with pytest.raises(KilibError, match="percent=True"):
        lines_with_ci(df.assign(h="one", x=[1, 10]), x="x", y="y", hue="h")


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "x.txt"
    atomic_write_text(target, "old")
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and len(list(tmp_path.iterdir())) == 1


def test_cached_dir_builds_once_and_never_keeps_half_a_build(tmp_path):
    calls = []

    def build(folder):
        calls.append(folder)
        (folder / "out.txt").write_text("done")

    key = {"a": 1, "t": (1, 2)}
    first = cached_dir("demo", key, build, root=tmp_path)
    second = cached_dir("demo", key, build, root=tmp_path)
    assert first == second and len(calls) == 1 and (first / "out.txt").read_text() == "done"
    assert first.name == stable_hash(key) and stable_hash(key) != stable_hash({"a": 2, "t": (1, 2)})

    def broken(folder):
        (folder / "half.txt").write_text("half")
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        cached_dir("demo", {"b": 1}, broken, root=tmp_path)
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == [first.name]


def _entry(tmp_path, calls):
    def build(folder):
        calls.append(1)
        write_json(folder / "run.json", {"answers": list(range(50))})
        (folder / "weights.bin").write_bytes(bytes(range(256)) * 8192)  # 2 MB: checked by its size
        (folder / "sub").mkdir()
        (folder / "sub" / "notes.txt").write_text("notes")

    return lambda: cached_dir("runs", {"r": 2}, build, root=tmp_path)


@pytest.mark.parametrize(
    "damage, said",
    [
        (lambda f: (f / "run.json").write_text((f / "run.json").read_text()[:40]), "run.json has 40 bytes"),
        (lambda f: (f / "sub" / "notes.txt").unlink(), "sub/notes.txt is missing"),
        (lambda f: (f / "sub" / "notes.txt").write_text("NOTES"), "sub/notes.txt has changed"),
        (lambda f: (f / "weights.bin").write_bytes(b"x"), "weights.bin has 1 bytes"),
        (lambda f: (f / "manifest.json").write_text("{"), "manifest.json is damaged"),
        (lambda f: (f / "key.json").write_text('{"r": '), "key.json is damaged"),
    ],
    ids=["truncated", "deleted", "altered", "truncated-large", "manifest", "key"],
)
def test_a_damaged_cache_entry_is_said_in_one_line_and_built_again(tmp_path, capsys, damage, said):
    calls = []
    entry = _entry(tmp_path, calls)
    folder = entry()
    manifest = read_json(folder / "manifest.json")
    assert set(manifest) == {"run.json", "weights.bin", "sub/notes.txt"}
    assert entry() == folder and calls == [1]
    damage(folder)
    assert entry() == folder and calls == [1, 1]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(folder) in err[0] and said in err[0] and "building it again" in err[0]
    assert read_json(folder / "run.json") == {"answers": list(range(50))} and entry() == folder and calls == [1, 1]


def test_killed_builds_leave_nothing_that_outlives_the_next_build(tmp_path):
    """Work folders of builds killed mid-way (no Python cleanup) are cleared by the next build of
    their key; another key's are left alone, as a build of it may be running."""
    calls = []
    entry = _entry(tmp_path, calls)
    final = cache_path("runs", {"r": 2}, tmp_path)
    final.parent.mkdir(parents=True)
    for stale in (f".{final.name}.a1b2c3", f".{final.name}.zz9"):
        (final.parent / stale).mkdir()
        (final.parent / stale / "half.bin").write_bytes(b"half")
    (final.parent / ".0123456789abcdef.q1w2").mkdir()  # another key's build
    entry()
    assert sorted(p.name for p in final.parent.iterdir()) == [".0123456789abcdef.q1w2", final.name]


def test_two_builders_of_one_key_build_it_once(tmp_path):
    """Two threads asking for one key at once: one builds while the other waits, then finds it."""
    import threading
    import time

    calls = []

    def build(folder):
        calls.append(1)
        time.sleep(0.5)
        (folder / "out.txt").write_text("done")

    got = []
    threads = [
        threading.Thread(target=lambda: got.append(cached_dir("race", {"k": 1}, build, root=tmp_path)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1] and len(got) == 2 and got[0] == got[1] and (got[0] / "out.txt").read_text() == "done"


def test_a_damaged_json_file_is_one_line_naming_it(tmp_path):
    path = tmp_path / "run.json"
    path.write_text('{"metrics": {"accuracy": 0.5')
    with pytest.raises(KilibError, match=r"run\.json is damaged .*delete it"):
        read_json(path)


def test_resumable_build_keeps_its_work_folder(tmp_path):
    seen = []

    def build(folder):
        seen.append(sorted(p.name for p in folder.iterdir()))
        if not (folder / "checkpoint").exists():
            (folder / "checkpoint").write_text("step 5")
            raise KeyboardInterrupt
        (folder / "model").write_text("ok")

    with pytest.raises(KeyboardInterrupt):
        cached_dir("runs", {"r": 1}, build, root=tmp_path, resumable=True)
    final = cached_dir("runs", {"r": 1}, build, root=tmp_path, resumable=True)
    assert seen == [[], ["checkpoint"]] and (final / "model").exists()


def test_data_files_fail_with_the_line_and_the_fix(tmp_path):
    good = write_jsonl(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}])
    assert read_jsonl(good, required=("question", "answer")) == [{"question": "q", "answer": "a"}]
    (tmp_path / "bad.jsonl").write_text('{"question": "q", "answer": "a"}\n{"question": \n')
    with pytest.raises(KilibError, match="bad.jsonl:2 is not valid JSON"):
        read_jsonl(tmp_path / "bad.jsonl")
    (tmp_path / "missing.jsonl").write_text('{"question": "q"}\n')
    with pytest.raises(KilibError, match="missing.jsonl:1 lacks field\\(s\\) answer"):
        read_jsonl(tmp_path / "missing.jsonl", required=("question", "answer"))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(KilibError, match="holds no rows"):
        read_jsonl(tmp_path / "empty.jsonl")
    with pytest.raises(KilibError, match="does not exist"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_git_state_ignores_results_but_not_code(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "fig.svg").write_text("old")
    (tmp_path / "code.py").write_text("x = 1")
    git("add", ".")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "c")
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "results" / "fig.svg").write_text("new")
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2")
    assert git_state(tmp_path)["dirty"] is True
