"""Claims as text: the Markdown a notebook shows under "What this run shows", and the results
report ``results/<profile>/REPORT.md`` rendered from the notebooks' ``run.json`` files.

A claim is a dict from a study's ``compare`` (``kilib.stats.paired_comparison`` underneath):
``claim``, ``verdict``, ``higher``, ``lower``, ``difference`` and ``difference_ci``.

The report is read from files only, never from a notebook's output, and holds nothing else (no
clock, no machine of its own), so the same files always give the same bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from kilib.results import atomic_write_text
from kilib.runtime import KilibError

VERDICTS = ("shown", "direction only", "not shown", "opposite shown")
"""A claim's verdicts, from the 95% interval of its difference (``kilib.stats``)."""

POINTS = {"01_sft_injection": 100.0, "02_knowledge_transfer": 100.0}
"""What turns a notebook's claim numbers into percentage points: 01 and 02 compare shares
(0 to 1), 03 and 04 percentages already (scale 1)."""

README_BEGIN = "<!-- report:{profile} -->"
README_END = "<!-- /report:{profile} -->"


def claim_line(claim: Mapping[str, Any], digits: int = 1, scale: float = 1.0) -> str:
    """One bullet: the claim, its verdict, both means, the difference and its 95% interval.

    ``scale`` multiplies every number (100 turns a share into points); ``digits`` is the number
    of decimals shown."""
    low, high = claim["difference_ci"]
    return (
        f"* {claim['claim']}: **{claim['verdict']}** ({scale * claim['higher']:.{digits}f} vs "
        f"{scale * claim['lower']:.{digits}f}, difference {scale * claim['difference']:+.{digits}f}, 95% interval "
        f"{scale * low:+.{digits}f} to {scale * high:+.{digits}f})"
    )


def claims_markdown(claims: Iterable[Mapping[str, Any]], digits: int = 1, scale: float = 1.0) -> str:
    """A bullet per claim (:func:`claim_line`), one per line."""
    return "\n".join(claim_line(c, digits, scale) for c in claims)


# ---------------------------------------------------------------------------------------
# REPORT.md: results at a glance, from results/<profile>/<notebook>/run.json
# ---------------------------------------------------------------------------------------
def read_runs(folder: str | Path) -> dict[str, dict]:
    """Each notebook's ``run.json`` under ``folder`` (``results/<profile>/``), by notebook, in order."""
    folder = Path(folder)
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(folder.glob("[0-9][0-9]_*/run.json"))}


def _cell(text: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _number(value: float | None, scale: float, sign: bool = True) -> str:
    if value is None:
        return "n/a"
    shown = round(scale * value, 1) + 0.0  # + 0.0 turns -0.0 into 0.0
    return f"{shown:+.1f}" if sign else f"{shown:.1f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "not recorded"
    seconds = round(seconds)
    return f"{seconds} s" if seconds < 60 else f"{seconds // 60} min {seconds % 60:02d} s"


def _anchor(notebook: str) -> str:
    """The fragment GitHub gives the heading ``## <notebook>``."""
    return re.sub(r"[^\w\- ]", "", notebook.lower()).replace(" ", "-")


def _checks(record: Mapping[str, Any]) -> dict[str, bool]:
    return dict((record.get("metrics") or {}).get("checks") or {})


def _claims(record: Mapping[str, Any]) -> list[dict]:
    return list((record.get("metrics") or {}).get("claims") or [])


def summary_table(runs: Mapping[str, Mapping[str, Any]], report_link: str | None = None) -> str:
    """A row per notebook: how many of its claims got each verdict, and how many of its checks
    were met. ``report_link`` (e.g. ``results/tiny/REPORT.md``, or ``""`` inside the report)
    links each notebook to its section of the report."""
    lines = [
        "| notebook | " + " | ".join(VERDICTS) + " | checks met |",
        "|---|" + "---:|" * (len(VERDICTS) + 1),
    ]
    for notebook, record in runs.items():
        claims, checks = _claims(record), _checks(record)
        counts = [str(sum(c.get("verdict") == v for c in claims)) if claims else "–" for v in VERDICTS]
        met = f"{sum(checks.values())} of {len(checks)}" if checks else "–"
        name = notebook if report_link is None else f"[{notebook}]({report_link}#{_anchor(notebook)})"
        lines.append(f"| {name} | " + " | ".join(counts) + f" | {met} |")
    return "\n".join(lines)


def run_facts(record: Mapping[str, Any]) -> list[str]:
    """Bullets: the run (profile, commit, wall time, peak memory) and the machine (CPU, GPU, torch)."""
    git = record.get("git") or {}
    commit = str(git.get("commit") or "unknown")[:12] + (" with uncommitted changes" if git.get("dirty") else "")
    memory = record.get("memory") or {}
    peak = []
    if memory.get("peak_rss_mib") is not None:
        peak.append(f"{memory['peak_rss_mib']:,.0f} MiB resident")
    if memory.get("peak_cuda_allocated_mib") is not None:
        peak.append(f"{memory['peak_cuda_allocated_mib']:,.0f} MiB CUDA allocated")
    hw = record.get("hardware") or {}
    cpu = str(hw.get("cpu") or "unknown CPU") + (f" ({hw['cpu_capability']})" if hw.get("cpu_capability") else "")
    cpu += f", {hw.get('cpu_count', '?')} cores, {hw.get('torch_threads', '?')} torch threads"
    gpu = f"GPU {hw['gpu']} ({hw.get('gpu_memory_gib', '?')} GiB)" if hw.get("gpu") else "no GPU"
    torch = (record.get("packages") or {}).get("torch")
    standins = record.get("standins") or {}
    made = f" on {standins.get('scale')} stand-ins (random weights, synthetic data)" if standins else ""
    return [
        f"* Run: profile {record.get('profile', '?')}{made}, commit {commit}, wall time "
        f"{_duration(record.get('wall_time_s'))}, peak memory {', '.join(peak) or 'not recorded'}",
        f"* Machine: CPU {cpu}; {gpu}" + (f"; torch {torch}" if torch else ""),
    ]


def claims_table(claims: Iterable[Mapping[str, Any]], scale: float = 1.0) -> str:
    """A row per claim: the claim, its verdict, the difference in points and its 95% interval."""
    lines = ["| claim | verdict | difference (points) | 95% interval |", "|---|---|---:|---:|"]
    for c in claims:
        low, high = c.get("difference_ci") or (None, None)
        interval = f"{_number(low, scale)} to {_number(high, scale)}"
        lines.append(f"| {_cell(c['claim'])} | {c['verdict']} | {_number(c.get('difference'), scale)} | {interval} |")
    return "\n".join(lines)


def checks_table(checks: Mapping[str, bool]) -> str:
    lines = ["| check | result |", "|---|---|"]
    lines += [f"| {_cell(name)} | {'met' if ok else 'missed'} |" for name, ok in checks.items()]
    return "\n".join(lines)


def artifact_links(notebook: str, artifacts: Iterable[str]) -> list[str]:
    """ "Tables: ..." and "Figures: ..." lines linking a notebook's files (paths relative to the
    report): a table's Markdown with its CSV, a figure's PNG with its SVG."""
    by_stem: dict[str, set[str]] = {}
    for name in artifacts:
        stem, _, ext = name.rpartition(".")
        by_stem.setdefault(stem, set()).add(ext)
    tables, figures = [], []
    for stem, exts in sorted(by_stem.items()):
        for first, second, out in (("md", "csv", tables), ("png", "svg", figures)):
            shown = [e for e in (first, second) if e in exts]
            if shown:
                link = f"[{stem}]({notebook}/{stem}.{shown[0]})"
                out.append(link + (f" ([{shown[1]}]({notebook}/{stem}.{shown[1]}))" if len(shown) > 1 else ""))
    lines = []
    if tables:
        lines.append("Tables: " + ", ".join(tables) + ".")
    if figures:
        lines.append("Figures: " + ", ".join(figures) + ".")
    return lines


def notebook_section(notebook: str, record: Mapping[str, Any]) -> str:
    """A notebook's part of the report: its run facts, claims, checks and files."""
    facts = run_facts(record)
    source = (record.get("metrics") or {}).get("source")
    if source:
        facts.append(f"* Source: {source}")
    facts.append(f"* Executed notebook: [notebooks/{notebook}.ipynb](notebooks/{notebook}.ipynb)")
    parts = [f"## {notebook}", "\n".join(facts)]
    claims, checks = _claims(record), _checks(record)
    if claims:
        parts.append(claims_table(claims, POINTS.get(notebook, 1.0)))
    if checks:
        parts.append(checks_table(checks))
    if not claims and not checks:
        parts.append("No claims or checks recorded.")
    links = artifact_links(notebook, record.get("artifacts") or [])
    if links:
        parts.append("\n".join(links))
    return "\n\n".join(parts)


def render_report(folder: str | Path, profile: str | None = None) -> str:
    """The text of ``results/<profile>/REPORT.md`` from the ``run.json`` files under ``folder``."""
    folder = Path(folder)
    profile = profile or folder.name
    runs = read_runs(folder)
    head = [
        f"# Results of the {profile} profile",
        f"Rendered from each notebook's `run.json` in this folder by `python -m kilib.cli report --profile {profile}`"
        f" (`make report PROFILE={profile}`); `make reproduce` rewrites it after each run. Do not edit it by hand.",
        "A claim compares two conditions by the difference of their scores, in percentage points, with a 95% "
        "bootstrap interval over questions: **shown** when the interval lies above zero, **opposite shown** when "
        "below, **direction only** when only the mean difference is positive, **not shown** otherwise. "
        "Each notebook says what its verdicts mean.",
    ]
    standin = sorted(nb for nb, record in runs.items() if record.get("standins"))
    if standin:
        head.insert(
            1,
            f"**Made with stand-ins ({', '.join(standin)}): no number here is a paper number.** These runs used "
            "random-weight stand-ins of the papers' models and synthetic, format-true copies of their data "
            "(kilib.standin, docs/standins.md): they show that the paper profile's code runs and what it costs.",
        )
    if not runs:
        return "\n\n".join([*head, "No notebook has results here yet."]) + "\n"
    sections = [notebook_section(nb, record) for nb, record in runs.items()]
    return "\n\n".join([*head, summary_table(runs, ""), *sections]) + "\n"


def write_report(folder: str | Path, profile: str | None = None) -> Path:
    """Write ``REPORT.md`` into ``folder`` atomically (a crash never leaves half a report)."""
    return atomic_write_text(Path(folder) / "REPORT.md", render_report(folder, profile))


def readme_block(folder: str | Path, profile: str, report_link: str) -> str:
    """The README's results-at-a-glance block, markers included: a row of verdict counts per
    notebook, each linked to its section of ``report_link``."""
    table = summary_table(read_runs(folder), report_link)
    return f"{README_BEGIN.format(profile=profile)}\n{table}\n{README_END.format(profile=profile)}"


def replace_readme_block(text: str, block: str, profile: str) -> str:
    """``text`` with its block between the ``report:<profile>`` markers replaced by ``block``."""
    begin, end = README_BEGIN.format(profile=profile), README_END.format(profile=profile)
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise KilibError(f"the README has no {begin} ... {end} block: put the two markers where the table goes")
    return text[:start] + block + text[stop + len(end) :]
