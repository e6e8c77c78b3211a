"""The results report: REPORT.md rendered from run.json files, written atomically, and the
README's results-at-a-glance block, which must be the rendering of the committed results."""

import json
from pathlib import Path

import pytest

from kilib import cli, report
from kilib.runtime import KilibError, results_root

ROOT = Path(__file__).resolve().parent.parent

MACHINE = {"cpu": "Some CPU", "cpu_capability": "AVX2", "cpu_count": 2, "torch_threads": 2, "cuda": False}


def make_results(folder: Path) -> Path:
    """A small results folder by hand: a notebook with checks, one with claims (in shares, as
    notebook 01 states them), and files the report must pass over."""
    world = {
        "notebook": "00_world",
        "profile": "tiny",
        "git": {"commit": "0123456789abcdef0123", "dirty": False},
        "hardware": MACHINE,
        "memory": {"peak_rss_mib": 1422.3, "peak_cuda_allocated_mib": None},
        "packages": {"torch": "2.13.0+cpu"},
        "wall_time_s": 1594.72,
        "artifacts": ["zoo.csv", "zoo.md", "loss.png", "loss.svg"],
        "metrics": {"checks": {"the reader reads": True, "the zoo | trains in time": False}},
    }
    sft = {
        "notebook": "01_sft_injection",
        "profile": "tiny",
        "git": {"commit": "fedcba9876543210fedc", "dirty": True},
        "hardware": {**MACHINE, "cuda": True, "gpu": "NVIDIA H100", "gpu_memory_gib": 79.1},
        "memory": {"peak_rss_mib": 780.0, "peak_cuda_allocated_mib": 2048.4},
        "wall_time_s": 41.4,
        "artifacts": ["paper_claims.csv", "paper_claims.md", "fig1.png"],
        "metrics": {
            "source": "a hand-made run",
            "claims": [
                {
                    "claim": "accuracy rises with scale",
                    "verdict": "shown",
                    "higher": 0.788,
                    "lower": 0.615,
                    "difference": 0.173,
                    "difference_ci": [0.077, 0.269],
                },
                {
                    "claim": "fact beats token",
                    "verdict": "not shown",
                    "higher": 0.5,
                    "lower": 0.5,
                    "difference": -0.0001,
                    "difference_ci": [-0.02, None],
                },
            ],
        },
    }
    for record in (world, sft):
        (folder / record["notebook"]).mkdir(parents=True)
        (folder / record["notebook"] / "run.json").write_text(json.dumps(record, indent=2, sort_keys=True))
    (folder / "notebooks").mkdir()
    (folder / "calm_dev.jsonl").write_text("{}\n")
    (folder / ".02_half.partial").mkdir()
    (folder / ".02_half.partial" / "run.json").write_text("{}")
    return folder


EXPECTED = """\
# Results of the tiny profile

Rendered from each notebook's `run.json` in this folder by `python -m kilib.cli report --profile tiny` \
(`make report PROFILE=tiny`); `make reproduce` rewrites it after each run. Do not edit it by hand.

A claim compares two conditions by the difference of their scores, in percentage points, with a 95% bootstrap \
interval over questions: **shown** when the interval lies above zero, **opposite shown** when below, \
**direction only** when only the mean difference is positive, **not shown** otherwise. \
Each notebook says what its verdicts mean.

| notebook | shown | direction only | not shown | opposite shown | checks met |
|---|---:|---:|---:|---:|---:|
| [00_world](#00_world) | – | – | – | – | 1 of 2 |
| [01_sft_injection](#01_sft_injection) | 1 | 0 | 1 | 0 | – |

## 00_world

* Run: profile tiny, commit 0123456789ab, wall time 26 min 35 s, peak memory 1,422 MiB resident
* Machine: CPU Some CPU (AVX2), 2 cores, 2 torch threads; no GPU; torch 2.13.0+cpu
* Executed notebook: [notebooks/00_world.ipynb](notebooks/00_world.ipynb)

| check | result |
|---|---|
| the reader reads | met |
| the zoo \\| trains in time | missed |

Tables: [zoo](00_world/zoo.md) ([csv](00_world/zoo.csv)).
Figures: [loss](00_world/loss.png) ([svg](00_world/loss.svg)).

## 01_sft_injection

* Run: profile tiny, commit fedcba987654 with uncommitted changes, wall time 41 s, peak memory 780 MiB resident, \
2,048 MiB CUDA allocated
* Machine: CPU Some CPU (AVX2), 2 cores, 2 torch threads; GPU NVIDIA H100 (79.1 GiB)
* Source: a hand-made run
* Executed notebook: [notebooks/01_sft_injection.ipynb](notebooks/01_sft_injection.ipynb)

| claim | verdict | difference (points) | 95% interval |
|---|---|---:|---:|
| accuracy rises with scale | shown | +17.3 | +7.7 to +26.9 |
| fact beats token | not shown | +0.0 | -2.0 to n/a |

Tables: [paper_claims](01_sft_injection/paper_claims.md) ([csv](01_sft_injection/paper_claims.csv)).
Figures: [fig1](01_sft_injection/fig1.png).
"""


def test_report_of_a_hand_made_results_folder(tmp_path):
    folder = make_results(tmp_path / "tiny")
    assert report.render_report(folder) == EXPECTED
    assert report.render_report(folder, "tiny") == EXPECTED  # the profile is the folder's name by default
    assert report.render_report(tmp_path / "empty", "smoke").endswith("No notebook has results here yet.\n")


def test_report_is_written_atomically_and_deterministically(tmp_path, monkeypatch):
    folder = make_results(tmp_path / "tiny")
    path = report.write_report(folder)
    assert path == folder / "REPORT.md" and path.read_text() == EXPECTED
    first = path.read_bytes()
    report.write_report(folder)
    assert path.read_bytes() == first  # the same files give the same bytes

    def crash(self, data):  # half the report reaches the disk, then the machine stops
        with open(self, "wb") as f:
            f.write(data[: len(data) // 2])
        raise KeyboardInterrupt

    (folder / "00_world" / "run.json").write_text(
        (folder / "00_world" / "run.json").read_text().replace("1594.72", "60.0")
    )
    before = sorted(p.name for p in folder.iterdir())
    monkeypatch.setattr(Path, "write_bytes", crash)
    with pytest.raises(KeyboardInterrupt):
        report.write_report(folder)
    monkeypatch.undo()
    assert path.read_bytes() == first  # the last complete report stays
    assert sorted(p.name for p in folder.iterdir()) == before  # and no temporary file is left
    assert "wall time 1 min 00 s" in report.write_report(folder).read_text()


def test_report_command(tmp_path, capsys, monkeypatch):
    """`kilib report` renders what is on disk under KILIB_RESULTS_DIR (here a folder of this test's
    own, apart from the one the notebook tests write)."""
    monkeypatch.setenv("KILIB_RESULTS_DIR", str(tmp_path / "results"))
    assert cli.main(["report", "--profile", "paper"]) == 2  # nothing there yet
    assert "error: no results in" in capsys.readouterr().err
    folder = results_root() / "smoke"
    make_results(folder)
    assert cli.main(["report", "--profile", "smoke"]) == 0
    assert (folder / "REPORT.md").read_text() == report.render_report(folder, "smoke")
    assert "REPORT.md" in capsys.readouterr().out
    # the README shows the checkout's results, never a folder elsewhere
    assert cli.main(["report", "--profile", "smoke", "--readme"]) == 2
    assert "unset KILIB_RESULTS_DIR" in capsys.readouterr().err


def test_readme_block_is_replaced_between_its_markers():
    text = "intro\n<!-- report:tiny -->\nold\n<!-- /report:tiny -->\nrest\n"
    block = "<!-- report:tiny -->\nnew\n<!-- /report:tiny -->"
    assert report.replace_readme_block(text, block, "tiny") == "intro\n" + block + "\nrest\n"
    with pytest.raises(KilibError, match="no <!-- report:smoke --> ... <!-- /report:smoke --> block"):
        report.replace_readme_block(text, block, "smoke")


def test_readme_block_is_the_rendering_of_the_committed_results():
    """The README's table of verdicts is rendered, never copied by hand: after new results,
    `python -m kilib.cli report --profile tiny --readme` rewrites it."""
    committed = ROOT / "results" / "tiny"
    block = report.readme_block(committed, "tiny", "results/tiny/REPORT.md")
    assert block.count("\n| [0") == len(report.read_runs(committed)) == 5
    assert block in (ROOT / "README.md").read_text(), "python -m kilib.cli report --profile tiny --readme"
    assert (committed / "REPORT.md").read_text() == report.render_report(committed, "tiny"), (
        "python -m kilib.cli report --profile tiny"
    )
