"""Results with provenance, atomic writes and hash-keyed caching.

Every run writes JSON (metrics, config, seed, package versions, git commit, hardware, wall
time, peak memory) under ``results/<profile>/<notebook>/``; tables and figures are rendered
from those files. Every file is written to a temporary name and renamed, so a crash never
leaves half a result.

torch is imported only where the hardware and peak memory are recorded: ``kilib.cli`` and
``kilib.report`` import this module for its atomic writes and must stay fast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from kilib.runtime import KilibError, cache_root, repo_root, results_root
from kilib.standin import switch

PACKAGES = (
    "kilib",
    "torch",
    "transformers",
    "peft",
    "bitsandbytes",
    "accelerate",
    "datasets",
    "tokenizers",
    "numpy",
    "scipy",
    "pandas",
    "matplotlib",
    "seaborn",
    "bm25s",
    "papermill",
)


# ---------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` when the block
    ends cleanly, deleted when it raises, so ``path`` is never half written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix or ".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; results are shared like any file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")


def read_json(path: str | Path) -> Any:
    """The JSON in ``path``; a file that is not JSON (a damaged cache or results file) is a
    :class:`~kilib.runtime.KilibError` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise KilibError(
            f"{path} is damaged ({type(e).__name__} at {getattr(e, 'pos', '?')}): delete it (or, in the cache, "
            "its folder) and run again to recompute it"
        ) from None


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, tuples, numpy scalars and paths to plain JSON; NaN/inf become None."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# ---------------------------------------------------------------------------------------
# Provenance
# ---------------------------------------------------------------------------------------
def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(root: Path | None = None) -> dict[str, Any]:
    """The commit and whether the code differs from it (``dirty``; ``results/`` excluded)."""
    root = root or repo_root()
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        # results/ is what runs write (a rerun rewrites committed figures), not what made them.
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
        return {"commit": commit, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def hardware() -> dict[str, Any]:
    """The machine a run ran on. CPU builds are bit-identical for one thread count on one kind of
    CPU, so the CPU's model and the instruction set torch's kernels use are recorded too."""
    import torch  # kept light for the CLI (module docstring)

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1))
    return info


def peak_memory() -> dict[str, float | None]:
    """Peak resident memory of this process (MiB) and the CUDA allocator's peak (MiB)."""
    import torch  # kept light for the CLI (module docstring)

    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {
        "peak_rss_mib": round(rss_kib / 1024, 1),
        "peak_cuda_allocated_mib": None if cuda is None else round(cuda, 1),
    }


def provenance() -> dict[str, Any]:
    return {"packages": package_versions(), "git": git_state(), "hardware": hardware()}


# ---------------------------------------------------------------------------------------
# A run and its output folder
# ---------------------------------------------------------------------------------------
STANDIN_NOTE = "STANDINS.md"


def standin_note(standins: Mapping[str, Any]) -> str:
    """The note a stand-in run's results folder carries: what made its numbers, and that they are
    no paper's numbers."""
    models = "\n".join(f"- {hub_id}: stand-in `{folder}`" for hub_id, folder in standins.get("models", {}).items())
    return (
        "# Made with stand-ins: no number here is a paper number\n\n"
        f"Every table and figure in this folder was made by the paper profile's code on **random-weight "
        f"stand-ins** of the paper's models ({standins.get('scale')} scale) and **synthetic, format-true copies** "
        "of its datasets (kilib.standin). They show that the code runs at these shapes and what it costs; "
        "their accuracies mean nothing about the papers.\n\n" + (models + "\n" if models else "")
    )


class Run:
    """One notebook's results: ``results/<profile>/<notebook>/``.

    A notebook creates it at the top and calls :meth:`finish` at the end; code can use it as
    a context manager. Files are written to a staging folder (``.<notebook>.partial``) that
    :meth:`finish` writes ``run.json`` into (metrics, config, seed, provenance, wall time, peak
    memory) and then swaps for the previous results, so a failed run leaves the last complete
    results as they were, and a finished one leaves no file of an older run beside its own.
    """

    def __init__(
        self, notebook: str, profile: str, config: Any = None, seed: int | None = None, root: Path | None = None
    ):
        self.notebook, self.profile, self.config, self.seed = notebook, profile, config, seed
        self.final = Path(root or results_root()) / profile / notebook
        self.dir = self.final.parent / f".{notebook}.partial"
        self.metrics: dict[str, Any] = {}
        self.artifacts: list[str] = []
        self._start = time.time()
        shutil.rmtree(self.dir, ignore_errors=True)  # an earlier failed run's files
        self.dir.mkdir(parents=True)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()

    def log(self, **metrics: Any) -> None:
        """Record metrics (merged into ``run.json``'s ``metrics``)."""
        self.metrics.update(to_jsonable(metrics))

    def save_json(self, name: str, obj: Any) -> Path:
        path = write_json(self.dir / name, obj)
        self._note(path)
        return path

    def save_table(self, df, name: str, floatfmt: str = ".3f") -> Path:
        """Write a pandas DataFrame as ``<name>.csv`` and ``<name>.md``."""
        csv = atomic_write_text(self.dir / f"{name}.csv", df.to_csv(index=False))
        md = atomic_write_text(self.dir / f"{name}.md", markdown_table(df, floatfmt) + "\n")
        self._note(csv)
        self._note(md)
        return csv

    def save_figure(self, fig, name: str) -> Path:
        """Write a matplotlib figure as ``<name>.png`` and ``<name>.svg``, byte for byte the same
        for the same figure: no date in the SVG, and its element ids from a fixed salt."""
        import matplotlib

        for ext in ("png", "svg"):
            with atomic_path(self.dir / f"{name}.{ext}") as tmp, matplotlib.rc_context({"svg.hashsalt": "kilib"}):
                metadata = {"Date": None} if ext == "svg" else {}
                fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight", metadata=metadata)
            self._note(self.dir / f"{name}.{ext}")
        return self.dir / f"{name}.png"

    def _note(self, path: Path) -> None:
        name = str(path.relative_to(self.dir))
        if name not in self.artifacts:
            self.artifacts.append(name)

    def _standins(self) -> dict[str, Any]:
        """What stand-ins made this run; nothing where the switch is on in a profile that resolved no Hub id."""
        standins = switch.describe()
        return standins if self.profile == "standin" or standins.get("models") else {}

    def record(self) -> dict[str, Any]:
        standins = self._standins()
        return {
            "notebook": self.notebook,
            "profile": self.profile,
            **({"standins": standins} if standins else {}),
            "seed": self.seed,
            "config": to_jsonable(self.config),
            "metrics": self.metrics,
            "artifacts": sorted(self.artifacts),
            "wall_time_s": round(time.time() - self._start, 2),
            "memory": peak_memory(),
            **provenance(),
        }

    def finish(self) -> Path:
        """Write ``run.json`` and put the results in place: the run is complete. A run on stand-ins
        also gets ``STANDINS.md``, which says that none of its numbers is a paper number."""
        standins = self._standins()
        if standins:
            atomic_write_text(self.dir / STANDIN_NOTE, standin_note(standins))
            self._note(self.dir / STANDIN_NOTE)
        write_json(self.dir / "run.json", self.record())
        old = self.final.parent / f".{self.notebook}.old"
        shutil.rmtree(old, ignore_errors=True)
        if self.final.exists():
            os.replace(self.final, old)
        os.replace(self.dir, self.final)
        shutil.rmtree(old, ignore_errors=True)
        return self.final / "run.json"


def markdown_table(df, floatfmt: str = ".3f") -> str:
    """A DataFrame as Markdown: floats with ``floatfmt``, also inside list cells (an interval's
    bounds), missing floats blank, integers and text as they are."""

    def interval(v):
        if isinstance(v, (list, tuple)) and v and all(isinstance(x, float) for x in v):
            return "[" + ", ".join(format(x, floatfmt) for x in v) + "]"
        return v

    shown = df.copy()
    for column in shown.columns:
        if shown[column].dtype.kind == "f":
            shown[column] = shown[column].map(lambda v: "" if v != v else format(v, floatfmt))
        elif shown[column].dtype.kind == "O":
            shown[column] = shown[column].map(interval)
    return shown.to_markdown(index=False, disable_numparse=True)


# ---------------------------------------------------------------------------------------
# Hash-keyed cache
# ---------------------------------------------------------------------------------------
def stable_hash(obj: Any, length: int = 16) -> str:
    """SHA-256 of the canonical JSON of ``obj`` (dataclasses and tuples included)."""
    blob = json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def cache_path(kind: str, key: Any, root: Path | None = None) -> Path:
    """Where :func:`cached_dir` keeps ``key``'s build (it may not exist yet)."""
    return Path(root or cache_root()) / kind / stable_hash(key)


def is_cached(kind: str, key: Any, root: Path | None = None) -> bool:
    return (cache_path(kind, key, root) / "key.json").exists()


MANIFEST = "manifest.json"  # a cache entry's files: size and (up to HASHED_UP_TO bytes) SHA-256
HASHED_UP_TO = 1 << 20  # files up to this size are hashed on every lookup; larger ones are checked by size


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_records(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """Every file under ``folder`` (but those named in ``skip``, relative paths) with its size and
    SHA-256, by relative path: what a cache entry's manifest and a zoo archive's list."""
    return {
        name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and (name := p.relative_to(folder).as_posix()) not in skip
    }


def write_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """Record every file of ``folder`` (but ``key.json`` and the manifest) in ``manifest.json``."""
    files = file_records(folder, skip=("key.json", MANIFEST))
    write_json(folder / MANIFEST, files)
    return files


def entry_damage(folder: Path) -> str | None:
    """What is wrong with the finished cache entry ``folder``, or None: a ``key.json`` or
    manifest that is not JSON, a file of the manifest missing, of another size, or (files up to
    :data:`HASHED_UP_TO` bytes) of another content. An entry made before manifests were written
    is checked for its ``key.json`` only."""
    try:
        json.loads((folder / "key.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return "key.json is damaged"
    if not (folder / MANIFEST).exists():
        return None
    try:
        files = json.loads((folder / MANIFEST).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return f"{MANIFEST} is damaged"
    if not isinstance(files, dict) or not all(
        isinstance(r, dict) and {"bytes", "sha256"} <= set(r) for r in files.values()
    ):
        return f"{MANIFEST} is damaged"
    for name, recorded in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != recorded["bytes"]:
            return f"{name} has {size:,} bytes, not {recorded['bytes']:,}"
        if size <= HASHED_UP_TO and file_sha256(path) != recorded["sha256"]:
            return f"{name} has changed"
    return None


def move_into_place(work: Path, final: Path) -> None:
    """Rename the finished folder ``work`` onto the cache folder ``final`` (on one file system,
    so it appears whole), replacing a leftover or damaged ``final``."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(work, final)


@contextlib.contextmanager
def key_lock(final: Path) -> Iterator[None]:
    """Hold the lock of the cache entry ``final`` (``<cache>/.locks/<kind>/<hash>.lock``): one
    process builds an entry at a time, and a second waits for it (saying so). The operating
    system releases the lock of a process that dies."""
    from filelock import FileLock, Timeout

    folder = final.parent.parent / ".locks" / final.parent.name
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / f"{final.name}.lock"))
    try:
        lock.acquire(timeout=2)
    except Timeout:
        print(f"kilib: waiting for another process building {final}", file=sys.stderr, flush=True)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def cached_dir(
    kind: str, key: Any, build: Callable[[Path], None], root: Path | None = None, resumable: bool = False
) -> Path:
    """Return ``<cache>/<kind>/<hash(key)>``, building it once with ``build(folder)``.

    ``build`` fills a work folder that is renamed into place only when it returns, so an
    interrupted build is never mistaken for a finished one; ``manifest.json`` then records its
    files (sizes and hashes), and ``key.json``, written last, the inputs. A finished entry found
    damaged (:func:`entry_damage`) is said in one line and built again. Builds of one key hold
    its lock (:func:`key_lock`), so two processes never build it at once; the holder clears the
    work folders that killed builds of that key left behind. With ``resumable`` the work folder
    (``.<hash>.partial``) survives a failure, so a build that checkpoints into it (a training
    run) continues where it stopped.
    """
    final = cache_path(kind, key, root)
    base = final.parent
    if (final / "key.json").exists() and entry_damage(final) is None:
        return final
    base.mkdir(parents=True, exist_ok=True)
    with key_lock(final):
        if (final / "key.json").exists():
            problem = entry_damage(final)
            if problem is None:  # built by another process while this one waited
                return final
            print(f"kilib: cache entry {final} is damaged ({problem}): building it again", file=sys.stderr, flush=True)
        partial = base / f".{final.name}.partial"
        for stale in base.glob(f".{final.name}.*"):  # work folders of killed builds of this key
            if stale.is_dir() and stale != partial:
                shutil.rmtree(stale, ignore_errors=True)
        if resumable:
            work = partial
            work.mkdir(exist_ok=True)
        else:
            work = Path(tempfile.mkdtemp(dir=base, prefix=f".{final.name}."))
        try:
            build(work)
            write_manifest(work)
            write_json(work / "key.json", key)
            move_into_place(work, final)
        except BaseException:
            if not resumable:
                shutil.rmtree(work, ignore_errors=True)
            raise
    return final
