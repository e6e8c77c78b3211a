"""``make budget``: what each stage of the paper series needs, per notebook, written to ``results/budget/``.

It always writes the analytic estimate (:mod:`kilib.budget.estimate`) for an H100 at the paper's
real shapes: ``results/budget/estimated.json`` and the table ``results/budget/README.md``, every
figure marked ``estimated``; ``--readme`` rewrites the README's summary of it. Where a CUDA GPU is
present it also measures each stage on stand-ins at the real shapes (:mod:`kilib.budget.measure`)
into ``results/budget/<device>.json``, every figure there marked ``measured``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

from kilib.budget.estimate import TARGET_GIB, rates
from kilib.budget.series import budget, counts_sources
from kilib.results import hardware, package_versions, write_json
from kilib.runtime import KilibError, repo_root, results_root

README_START, README_END = "<!-- budget -->", "<!-- /budget -->"


def estimate_report() -> dict:
    """The estimated budget: stages, rates and counts with their sources, and per-notebook hours."""
    rows = budget()
    hours: dict[str, float] = defaultdict(float)
    for row in rows:
        hours[row["notebook"]] += row["hours"]
    total = sum(hours.values())
    top = max(rows, key=lambda r: r["hours"])
    return {
        "what": "estimated GPU memory and time of every paper-profile stage at real shapes and full counts",
        "kind": "estimated",
        "device": "NVIDIA H100 (rates calibrated on one)",
        "target_reserved_gib": TARGET_GIB,
        "rates": {k: {"value": r.value, "unit": r.unit, "source": r.source} for k, r in rates().items()},
        "counts": counts_sources(),
        "stages": rows,
        "hours_by_notebook": {k: round(v, 1) for k, v in sorted(hours.items())},
        "hours_total": round(total, 1),
        "largest_stage": f"{top['notebook']} {top['stage']} ({top['hours']:.1f} h)",
        "stages_over_target": [f"{r['notebook']} {r['stage']}" for r in rows if not r["fits_target"]],
        "hardware": hardware(),
        "packages": package_versions(),
    }


def table(report: dict) -> str:
    """The budget as a Markdown table, one row per stage, and a line of totals."""
    lines = [
        "| notebook | stage | model | batch x tokens | peak reserved (GiB) | fits 24 GB | time per unit | units | "
        "hours | figure |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["stages"]:
        lines.append(
            f"| {r['notebook']} | {r['stage']} | {r['model'].split('/')[-1]} | {r['batch']} x {r['tokens']} | "
            f"{r['reserved_gib']:.1f} | {'yes' if r['fits_target'] else '**no**'} | "
            f"{_seconds(r['unit_seconds'])} per {r['unit']} | {r['units']:,.0f} | {r['hours']:.2f} | {r['kind']} |"
        )
    by = ", ".join(f"{k}: {v:.1f} h" for k, v in report["hours_by_notebook"].items())
    over = report["stages_over_target"]
    lines += [
        "",
        f"Series: **{report['hours_total']:.1f} H100-hours** ({by}); the largest stage is "
        f"{report['largest_stage']}. Stages over {report['target_reserved_gib']} GiB reserved: "
        f"{', '.join(over) if over else 'none'}.",
    ]
    return "\n".join(lines)


def summary(report: dict) -> str:
    """The budget per notebook, for the front page: hours, the largest reserved peak, the stages
    over the target, and the stage that takes longest; the per-stage table is results/budget/README.md."""
    lines = [
        "| notebook | H100-hours | largest peak reserved (GiB) | stages over 22.5 GiB | longest stage |",
        "|---|---:|---:|---|---|",
    ]
    for nb, hours in report["hours_by_notebook"].items():
        rows = [r for r in report["stages"] if r["notebook"] == nb]
        peak = max(rows, key=lambda r: r["reserved_gib"])
        longest = max(rows, key=lambda r: r["hours"])
        over = ", ".join(r["stage"] for r in rows if not r["fits_target"]) or "none"
        lines.append(
            f"| {nb} | {hours:.1f} | {peak['reserved_gib']:.1f} ({peak['stage']}) | {over} | "
            f"{longest['stage']} ({longest['hours']:.1f} h) |"
        )
    lines += [
        "",
        f"Series: **{report['hours_total']:.1f} H100-hours**, every figure estimated; per stage: "
        "[results/budget/README.md](results/budget/README.md).",
    ]
    return "\n".join(lines)


def _seconds(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.1f} s"


def write(out: Path) -> dict:
    report = estimate_report()
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "estimated.json", report)
    text = (
        "# Budget of the paper series\n\n"
        "Written by `make budget` (kilib.budget). Every figure below is **estimated** by the analytic model in "
        "`kilib/budget/estimate.py` at the paper models' real shapes (docs/budget.md says what it counts and "
        "how the rates were chosen); a run on a GPU replaces them with measured ones.\n\n" + table(report) + "\n"
    )
    (out / "README.md").write_text(text)
    return report


def render_readme(readme: Path, report: dict) -> str:
    """``readme`` with its budget block replaced by the current summary (:func:`summary`)."""
    text = readme.read_text()
    pattern = re.compile(re.escape(README_START) + r".*?" + re.escape(README_END), re.S)
    if not pattern.search(text):
        raise KilibError(f"{readme} has no {README_START} ... {README_END} block: add one where the table goes")
    return pattern.sub(lambda _: f"{README_START}\n{summary(report)}\n{README_END}", text)


def device_slug() -> str:
    """The measured file's name: the GPU's name in lower case, words joined by hyphens."""
    import torch

    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def run_measurement(out: Path, deadline_s: float, units: int) -> dict:
    """Measure every stage on stand-ins (:mod:`kilib.budget.measure`), the riskiest first, into
    ``out/<device>.json``, written after each stage."""
    from kilib.budget.measure import measure
    from kilib.budget.series import paper_stages

    estimated = {(r["notebook"], r["stage"]): r["reserved_gib"] for r in budget()}
    return measure(
        paper_stages(), out / f"{device_slug()}.json", units=units, deadline_s=deadline_s, estimates=estimated
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kilib.budget.cli", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(results_root() / "budget"), help="folder for the JSON and the table")
    parser.add_argument("--readme", action="store_true", help="also rewrite the README's budget block")
    parser.add_argument(
        "--measure",
        choices=("auto", "yes", "no"),
        default="auto",
        help="measure each stage on stand-ins too (auto: where a CUDA GPU is present)",
    )
    parser.add_argument("--deadline", type=float, default=540.0, help="seconds of measuring before the rest is skipped")
    parser.add_argument("--units", type=int, default=2, help="units timed per measured stage")
    args = parser.parse_args(argv)
    try:
        import torch

        report = write(Path(args.out))
        if args.readme:
            readme = repo_root() / "README.md"
            readme.write_text(render_readme(readme, report))
        measuring = args.measure == "yes" or (args.measure == "auto" and torch.cuda.is_available())
        if measuring and not torch.cuda.is_available() and args.out == str(results_root() / "budget"):
            raise KilibError(
                "measuring needs a CUDA GPU to say anything: run it on one, or pass --out to a scratch folder "
                "to check the mechanics at the small scale"
            )
        measured = run_measurement(Path(args.out), args.deadline, args.units) if measuring else None
    except KilibError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(report))
    print(json.dumps({"written": str(Path(args.out) / "estimated.json")}))
    if measured is not None:
        print(json.dumps({"measured": [(s["notebook"], s["stage"], s["status"]) for s in measured["stages"]]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
