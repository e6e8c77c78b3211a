"""Command line: ``python -m kilib.cli reproduce`` runs the notebook series with papermill;
``python -m kilib.cli zoo build|status|export|import`` builds the tiny zoo or shares it;
``python -m kilib.cli notebooks`` writes each ``.ipynb`` from its jupytext source;
``python -m kilib.cli report`` renders ``results/<profile>/REPORT.md`` from the results on disk.

``make reproduce [PROFILE=auto] [ONLY=00,01]`` calls this. Each notebook runs with the
project's Jupyter kernel and ``PROFILE`` injected into its ``parameters`` cell; the executed
copy goes to ``results/<profile>/notebooks/`` and the tables, figures and ``run.json`` the
notebook wrote are listed afterwards; at the end ``results/<profile>/REPORT.md`` is rendered
from every notebook's ``run.json`` (``kilib.report``). A ``-p NAME VALUE`` parameter goes to
every selected notebook, and each must declare it (choose them with ``--only``). A
``KilibError`` raised inside a notebook is printed as one line, and the run exits non-zero; a
failed or interrupted run leaves the last complete results as they were and no staging files.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import errno
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from kilib import report as results_report
from kilib.results import atomic_write_text
from kilib.runtime import PROFILES, KilibError, cache_root, repo_root, resolve_profile, results_root

KERNEL_NAME = "kilib"
TYPES = {"int": int, "float": (int, float), "str": str, "bool": bool, "list": list, "dict": dict, "None": type(None)}
STANDIN_SERIES = "01,02,03,04"  # what PROFILE=standin runs without ONLY


def discover_notebooks(only: str | None = None, folder: Path | None = None) -> list[Path]:
    """``notebooks/NN_*.ipynb`` in order, filtered by ``only`` (e.g. ``"00,01"``)."""
    folder = folder or repo_root() / "notebooks"
    notebooks = sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))
    if only:
        wanted = {w.strip().zfill(2) for w in only.replace(" ", ",").split(",") if w.strip()}
        unknown = wanted - {p.name[:2] for p in notebooks}
        if unknown:
            raise KilibError(
                f"no notebook numbered {', '.join(sorted(unknown))}: choose from "
                f"{', '.join(p.name[:2] for p in notebooks)} (e.g. ONLY=00,01)"
            )
        notebooks = [p for p in notebooks if p.name[:2] in wanted]
    return notebooks


def parse_value(text: str):
    """A ``-p NAME VALUE`` value as a Python literal where it parses as one, else a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def check_parameters(notebook: Path, parameters: dict, declared: dict | None = None) -> None:
    """Reject names the notebook's ``parameters`` cell does not define, and wrong types
    (``declared``: papermill's inspection of the notebook, when the caller has it already)."""
    import papermill

    declared = declared if declared is not None else papermill.inspect_notebook(str(notebook))
    for name, value in parameters.items():
        if name not in declared:
            raise KilibError(f"{notebook.name} has no parameter {name!r}: its parameters are {', '.join(declared)}")
        type_name = (declared[name].get("inferred_type_name") or "None").split("[")[0].strip()
        expected = TYPES.get(type_name)
        if (
            expected is not None
            and type_name != "None"
            and (not isinstance(value, expected) or (type_name in ("int", "float") and isinstance(value, bool)))
        ):
            raise KilibError(
                f"parameter {name}={value!r} of {notebook.name} has the wrong type: expected {type_name} "
                f"(default {declared[name].get('default')})"
            )


def check_run_parameters(notebooks: list[Path], parameters: dict) -> None:
    """Check the ``-p`` parameters for every selected notebook before any runs, so that a typo
    does not surface after an hour: each selected notebook must declare each name, with its type.
    Every selected notebook gets every ``-p`` parameter."""
    import papermill

    if "PROFILE" in parameters:
        raise KilibError("PROFILE is not a -p parameter: use --profile (or make reproduce PROFILE=...)")
    declared = {nb: papermill.inspect_notebook(str(nb)) for nb in notebooks}
    for name in parameters:
        lacking = [nb.stem for nb in notebooks if name not in declared[nb]]
        if lacking:
            which = ", ".join(lacking[:-1]) + " and " + lacking[-1] if len(lacking) > 1 else lacking[0]
            raise KilibError(
                f"-p {name}: {which} {'have' if len(lacking) > 1 else 'has'} no parameter {name!r}; "
                + _only_fix(name, notebooks[0].parent)
            )
    for nb in notebooks:
        check_parameters(nb, parameters, declared[nb])


def _only_fix(name: str, folder: Path) -> str:
    """How to pass a parameter: choose the notebooks of the series that declare it with --only."""
    import papermill

    having = [nb.name[:2] for nb in discover_notebooks(folder=folder) if name in papermill.inspect_notebook(str(nb))]
    if not having:
        return "no notebook declares it (a notebook's parameters: .venv/bin/papermill --help-notebook NOTEBOOK)"
    only = ",".join(having)
    return f"choose the notebooks that declare it with --only {only} (make reproduce ONLY={only})"


def run_notebook(
    notebook: Path, profile: str, parameters: dict | None = None, out_dir: Path | None = None, progress: bool = True
) -> Path:
    """Execute one notebook; the executed copy is written only when it succeeds. One run of a
    notebook and profile at a time (:func:`_results_lock`)."""
    params = {"PROFILE": profile, **(parameters or {})}
    check_parameters(notebook, params)
    with _results_lock(profile, notebook):
        return _run_locked(notebook, profile, params, out_dir, progress)


@contextlib.contextmanager
def _results_lock(profile: str, notebook: Path):
    """Hold the lock of ``results/<profile>/<notebook>`` (under ``results/.locks/``) for a run, or
    refuse in one line while another run holds it: two runs of one notebook at once would clear
    each other's staging folder. The operating system releases the lock of a process that dies."""
    from filelock import FileLock, Timeout

    folder = results_root() / ".locks"
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / f"{profile}-{notebook.stem}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise KilibError(
            f"another run is writing {results_root() / profile / notebook.stem} now: wait for it to end, "
            "or set KILIB_RESULTS_DIR to another folder to run beside it"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _run_locked(notebook: Path, profile: str, params: dict, out_dir: Path | None, progress: bool) -> Path:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    out_dir = out_dir or results_root() / profile / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / notebook.name
    failed = out_dir / f"{notebook.stem}.failed.ipynb"
    tmp = out_dir / f".{notebook.stem}.running.ipynb"
    try:
        papermill.execute_notebook(
            str(notebook),
            str(tmp),
            parameters=params,
            kernel_name=KERNEL_NAME,
            cwd=str(notebook.parent),
            progress_bar=progress,
            log_output=False,
        )
    except PapermillExecutionError as e:
        _drop_staging(profile, notebook)
        if e.ename == "KilibError":  # the one line says what to fix; no executed copy to look at
            tmp.unlink(missing_ok=True)
            raise KilibError(f"{notebook.name}: {e.evalue}") from None
        if tmp.exists():
            os.replace(tmp, failed)
        if "No space left on device" in str(e.evalue) or "Errno 28" in str(e.evalue):
            raise KilibError(
                f"{notebook.name} ran out of disk space in cell {e.exec_count} ({e.evalue}): free space, or set "
                "KILIB_CACHE_DIR and KILIB_RESULTS_DIR to folders on another disk; finished steps are cached"
            ) from None
        raise KilibError(
            f"{notebook.name} failed in cell {e.exec_count}: {e.ename}: {e.evalue} (executed copy: {failed})"
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        _drop_staging(profile, notebook)
        raise
    os.replace(tmp, final)
    failed.unlink(missing_ok=True)
    return final


def _drop_staging(profile: str, notebook: Path) -> None:
    """Remove the staging folder of a run that failed (``results.Run`` writes there first), so
    that it leaves nothing half-written; the last complete results stay as they were."""
    import shutil

    shutil.rmtree(results_root() / profile / f".{notebook.stem}.partial", ignore_errors=True)


def artifacts_of(profile: str, notebook: Path) -> list[Path]:
    run_json = results_root() / profile / notebook.stem / "run.json"
    if not run_json.exists():
        return []
    record = json.loads(run_json.read_text())
    return [run_json] + [run_json.parent / a for a in record.get("artifacts", [])]


def _shown(path: Path) -> Path:
    """``path`` relative to the checkout where it lies inside it."""
    return path.relative_to(repo_root()) if path.is_relative_to(repo_root()) else path


def check_writable(folder: Path, variable: str) -> None:
    """Fail in one line, before anything runs, unless ``folder`` is (or can be made) a folder
    this process can write into."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".kilib-write-check."):
            pass
    except OSError as e:
        raise KilibError(
            f"cannot write into {folder} ({e.strerror or type(e).__name__}): make it a writable folder, "
            f"or set {variable} to one"
        ) from None


def reproduce(args) -> int:
    profile = resolve_profile(args.profile)
    parameters = {name: parse_value(value) for name, value in (args.param or [])}
    # the stand-in series is the paper's studies: notebook 00 shows the tiny world, whose zoo it does not use
    notebooks = discover_notebooks(args.only or (STANDIN_SERIES if profile == "standin" else None))
    check_run_parameters(notebooks, parameters)
    check_writable(results_root() / profile, "KILIB_RESULTS_DIR")
    check_writable(cache_root(), "KILIB_CACHE_DIR")
    chosen = "from auto" if args.profile == "auto" else "as asked"
    print(f"kilib: profile {profile} ({chosen}), {len(notebooks)} notebook(s)")
    for nb in notebooks:
        start = time.time()
        print(f"\n==> {nb.name}")
        executed = run_notebook(nb, profile, parameters, progress=not args.quiet)
        print(f"    done in {time.time() - start:.0f} s; executed copy: {_shown(executed)}")
        for path in artifacts_of(profile, nb):
            print(f"    {_shown(path)}")
    print(f"\nreport: {_shown(results_report.write_report(results_root() / profile, profile))}")
    return 0


def report(args) -> int:
    """``kilib report [--profile tiny] [--readme]``: render ``results/<profile>/REPORT.md`` from the
    ``run.json`` files on disk; with ``--readme``, also the README's block between the
    ``<!-- report:<profile> -->`` markers."""
    profile = resolve_profile("auto") if args.profile == "auto" else args.profile  # no GPU needed to read results
    folder = results_root() / profile
    if not results_report.read_runs(folder):
        raise KilibError(f"no results in {_shown(folder)}: make reproduce PROFILE={profile} writes them")
    print(f"wrote {_shown(results_report.write_report(folder, profile))}")
    if args.readme:
        if not folder.is_relative_to(repo_root()):
            raise KilibError(
                f"--readme shows results inside the checkout, and {folder} is outside it: unset KILIB_RESULTS_DIR"
            )
        readme = repo_root() / "README.md"
        link = f"{folder.relative_to(repo_root()).as_posix()}/REPORT.md"
        block = results_report.readme_block(folder, profile, link)
        text = readme.read_text()
        updated = results_report.replace_readme_block(text, block, profile)
        if updated != text:
            atomic_write_text(readme, updated)
        print(f"{'wrote' if updated != text else 'unchanged:'} {_shown(readme)}")
    return 0


def _print_zoo(status: list[dict]) -> None:
    for e in status:
        print(f"  {'built  ' if e['built'] else 'missing'}  {e['what']:<24} {_shown(e['path'])}")


def zoo(args) -> int:
    """``kilib zoo build|status|export|import``: the tiny zoo, built once and shared (kilib.tiny.archive)."""
    import dataclasses

    from kilib.tiny import archive as zoo_archive
    from kilib.tiny.zoo import zoo_config

    if args.action == "import":
        result = zoo_archive.import_zoo(args.path)
        made = result["manifest"].get("kilib") or {}
        print(
            f"kilib: {args.path}: the {result['profile']} zoo exported at kilib {str(made.get('commit'))[:12]}"
            f" on {(result['manifest'].get('exported_on') or {}).get('cpu', 'an unknown CPU')}"
        )
        for e in result["imported"]:
            print(f"  imported      {e['what']:<24} {e['kind']}/{e['name']}")
        for e in result["present"]:
            print(f"  already here  {e['what']:<24} {e['kind']}/{e['name']}")
        if result["missing"]:
            print(f"  still to build here: {', '.join(result['missing'])} (make zoo)")
        return 0
    config = dataclasses.replace(zoo_config(args.profile), world_seed=args.seed)
    if args.action == "export":
        result = zoo_archive.export_zoo(config, args.path, args.profile)
        print(
            f"kilib: wrote {_shown(result['path'])} ({result['bytes'] / 2**20:.1f} MiB, "
            f"{len(result['manifest']['entries'])} cache folders); on another checkout of this commit: "
            f"make zoo-import ZOO={args.path}"
        )
        return 0
    print(f"kilib: the {args.profile} zoo (world seed {args.seed})", flush=True)
    start = time.time()
    if args.action == "build":
        status = zoo_archive.build_zoo(config, log=lambda line: print(line, flush=True))
        print(f"  built or found in {time.time() - start:.0f} s")
    else:
        status = zoo_archive.zoo_status(config)
    _print_zoo(status)
    return 0


# ---------------------------------------------------------------------------------------
# The notebooks' sources: notebooks/NN_*.py (jupytext percent) -> notebooks/NN_*.ipynb
# ---------------------------------------------------------------------------------------
def notebook_sources(folder: Path | None = None) -> list[Path]:
    """The series' jupytext sources, ``notebooks/NN_*.py``, in order."""
    return sorted((folder or repo_root() / "notebooks").glob("[0-9][0-9]_*.py"))


def build_notebook(source: Path) -> str:
    """The ``.ipynb`` text of a jupytext percent source: no outputs, the ``parameters`` tag kept,
    the project's kernel, cells numbered ``c00``, ``c01``, ... so that a rebuild changes nothing."""
    import jupytext
    import nbformat

    nb = jupytext.read(source, fmt="py:percent")
    nb.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "Python (kilib)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata.get("jupytext", {}).pop("text_representation", None)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"c{i:02d}"
        cell.metadata.pop("lines_to_next_cell", None)
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def notebooks(args) -> int:
    """``kilib notebooks [--check]``: write each ``.ipynb`` from its source, or (``--check``) fail
    where one is out of date."""
    stale = []
    for source in notebook_sources():
        target = source.with_suffix(".ipynb")
        text = build_notebook(source)
        if target.exists() and target.read_text() == text:
            continue
        if args.check:
            stale.append(target.name)
        else:
            target.write_text(text)
            print(f"wrote {_shown(target)}")
    if stale:
        raise KilibError(f"{', '.join(stale)} out of date with the .py source: make notebooks")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kilib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("reproduce", help="run the notebook series with papermill")
    rep.add_argument("--profile", default="auto", help="auto | paper | standin | tiny | smoke (default auto)")
    rep.add_argument("--only", default=None, help="comma-separated notebook numbers, e.g. 00,01")
    rep.add_argument(
        "-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"), help="extra notebook parameter"
    )
    rep.add_argument("--quiet", action="store_true", help="no per-cell progress bar")
    zoo_parser = sub.add_parser("zoo", help="build the tiny zoo, or share it between machines as one file")
    actions = zoo_parser.add_subparsers(dest="action", required=True)
    for action, what in (
        ("build", "build what is not cached yet, then list it"),
        ("status", "list what is cached"),
        ("export", "write the built zoo to one file"),
        ("import", "put a file from export into this cache"),
    ):
        one = actions.add_parser(action, help=what)
        if action in ("export", "import"):
            one.add_argument("path", help="the archive, *.tar.gz or *.tar")
        if action != "import":  # an archive says which zoo it holds
            one.add_argument("--profile", default="tiny", choices=("tiny", "smoke"), help="which zoo (default tiny)")
            one.add_argument(
                "--seed", type=int, default=0, help="the world's seed (notebook 00's WORLD_SEED; default 0)"
            )
    rpt = sub.add_parser("report", help="render results/<profile>/REPORT.md from the run.json files on disk")
    rpt.add_argument(
        "--profile",
        default="tiny",
        choices=("auto", *PROFILES),
        help="whose results: auto | paper | tiny | smoke (default tiny)",
    )
    rpt.add_argument(
        "--readme", action="store_true", help="also rewrite README.md's block between <!-- report:PROFILE --> markers"
    )
    nbs = sub.add_parser("notebooks", help="write notebooks/*.ipynb from their jupytext sources (notebooks/*.py)")
    nbs.add_argument("--check", action="store_true", help="write nothing; fail where an .ipynb is out of date")
    args = parser.parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None  # a kill cleans up as Ctrl-C does
    try:
        if args.command == "reproduce":
            return reproduce(args)
        if args.command == "zoo":
            return zoo(args)
        if args.command == "notebooks":
            return notebooks(args)
        if args.command == "report":
            return report(args)
    except KilibError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            raise
        where = f" writing {e.filename}" if e.filename else ""
        print(
            f"error: {e.strerror}{where}: free space or fix the folder's permissions, or set KILIB_RESULTS_DIR "
            "and KILIB_CACHE_DIR to folders on another disk; finished steps are cached, so a rerun goes on",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted: rerun the same command to go on; finished models, adapters and Q&A sets are cached",
            file=sys.stderr,
        )
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 1


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
