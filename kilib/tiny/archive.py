"""Build the tiny zoo once and share it.

Pretraining the tiny zoo takes 16 to 26 minutes on two cores (by CPU), before the first notebook shows
anything. A reading group need not pay that on every laptop: one machine builds it
(``make zoo``), writes it to one file (``make zoo-export``), and every other checkout of the same
commit puts that file into its cache (``make zoo-import ZOO=...``). The notebooks then load the
imported models as if they had been built there, so every laptop of the group sees the same
zoo, which builds on different CPUs do not give (README: "Builds differ across CPUs").

The file is a tar archive of the zoo's cache folders (the tokenizer, each model after
pretraining and after its reading stage, and the knowledge reports notebook 00 computed for
them) with a manifest, ``kilib-zoo.json``. A cache folder's name is the hash of its
``key.json``, the inputs that made it, so an import checks each folder against its name and
this checkout's zoo against the archive's before writing anything, and each file against the size
and SHA-256 the manifest lists for it, so an altered archive is refused. Each folder is renamed
into the cache only once it is whole, so a failed import leaves the cache as it was.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from kilib.results import (
    atomic_path,
    file_records,
    file_sha256,
    git_state,
    hardware,
    move_into_place,
    stable_hash,
    write_json,
)
from kilib.runtime import KilibError, cache_root
from kilib.tiny.zoo import ZooConfig, model_dir, zoo_config, zoo_entries

FORMAT = 2  # 2: each folder's files with their sizes and SHA-256
MANIFEST = "kilib-zoo.json"
KINDS = ("tokenizer", "zoo", "reports")
SUFFIXES = {".tar": "w", ".tar.gz": "w:gz", ".tgz": "w:gz"}


def zoo_status(config: ZooConfig) -> list[dict[str, Any]]:
    """Each cache folder of ``config``'s zoo: what it is, where it lies, whether it is built."""
    return [
        {"what": what, "kind": kind, "name": path.name, "path": path, "built": (path / "key.json").exists()}
        for what, kind, path in zoo_entries(config)
    ]


def build_zoo(config: ZooConfig, log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Build every zoo member not cached yet, on every core as notebook 00 does (so the two
    build the same weights on one machine), and return :func:`zoo_status`. ``log`` hears a
    line as each member starts and ends (pretraining takes minutes per model)."""
    from kilib.runtime import set_threads

    threads = set_threads()
    before = zoo_status(config)
    for i, spec in enumerate(config.models, 1):
        todo = [e["what"] for e in before if e["what"].startswith(spec.name + " ") and not e["built"]]
        if todo and log:
            log(f"  [{i}/{len(config.models)}] building {' and '.join(todo)} on {threads} thread(s)")
        start = time.time()
        model_dir(config, spec.name)
        if todo and log:
            log(f"        done in {time.time() - start:.0f} s")
    return zoo_status(config)


def _reports_of(models: set[str], root: Path) -> list[Path]:
    """The cached knowledge reports (notebook 00's tables) of the folders named in ``models``."""
    found = []
    for key_file in sorted((root / "reports").glob("*/key.json")):
        key = json.loads(key_file.read_text())
        if key.get("kind") == "knowledge-report" and key.get("model") in models:
            found.append(key_file.parent)
    return found


def _archive_mode(path: Path) -> str:
    for suffix, mode in SUFFIXES.items():
        if path.name.endswith(suffix):
            return mode
    raise KilibError(f"cannot tell the archive type of {path.name!r}: name it *.tar.gz (compressed) or *.tar")


def export_zoo(config: ZooConfig, path: str | Path, profile: str = "tiny") -> dict[str, Any]:
    """Write ``config``'s built zoo, with its cached knowledge reports, to the archive ``path``
    (written to a temporary name and renamed, so it is whole or absent). Refuses a zoo that is
    not completely built."""
    path = Path(path)
    mode = _archive_mode(path)
    status = zoo_status(config)
    missing = [e["what"] for e in status if not e["built"]]
    if missing:
        which = "" if len(missing) == len(status) else f" ({', '.join(missing)} missing)"
        raise KilibError(
            f"the {profile} zoo is not built yet{which}: build it first with "
            f"`make zoo` (python -m kilib.cli zoo build --profile {profile})"
        )
    root = cache_root()
    reports = _reports_of({e["name"] for e in status if e["kind"] == "zoo"}, root)
    manifest = {
        "format": FORMAT,
        "profile": profile,
        "world_seed": config.world_seed,
        "entries": [
            {
                "what": e["what"],
                "kind": e["kind"],
                "name": e["name"],
                "files": file_records(root / e["kind"] / e["name"]),
            }
            for e in status
        ]
        + [{"what": "knowledge report", "kind": "reports", "name": r.name, "files": file_records(r)} for r in reports],
        "kilib": git_state(),
        "exported_on": hardware(),
    }
    with atomic_path(path) as tmp, tempfile.TemporaryDirectory() as scratch:
        manifest_file = write_json(Path(scratch) / MANIFEST, manifest)
        with tarfile.open(tmp, mode) as tar:
            tar.add(manifest_file, arcname=MANIFEST)
            for entry in manifest["entries"]:
                tar.add(root / entry["kind"] / entry["name"], arcname=f"{entry['kind']}/{entry['name']}")
    return {"path": path, "bytes": path.stat().st_size, "manifest": manifest}


def _check_files(path: Path, staged: Path, prefix: str, files: dict[str, Any]) -> None:
    """Refuse a staged folder whose files are not exactly those the manifest lists, byte for byte."""
    found = {p.relative_to(staged).as_posix(): p for p in staged.rglob("*") if p.is_file()}
    for name in sorted(set(found) | set(files)):
        recorded, file = files.get(name), found.get(name)
        if file is None or recorded is None:
            why = "missing" if file is None else "not in the manifest"
            raise _damaged(path, f"{prefix}/{name} is {why}")
        if file.stat().st_size != recorded["bytes"] or file_sha256(file) != recorded["sha256"]:
            raise _damaged(path, f"{prefix}/{name} differs from the manifest's size or SHA-256: it was altered")


def _corrupt(e: BaseException) -> str:
    return f"truncated or corrupt: {str(e).splitlines()[0] if str(e) else type(e).__name__}"


def _damaged(path: Path, why: str) -> KilibError:
    return KilibError(f"{path} is not a usable zoo archive ({why}): export it again with `make zoo-export`")


def _read_archive(path: Path) -> tuple[tarfile.TarFile, list[tarfile.TarInfo], dict[str, Any]]:
    """Open ``path`` and check it whole before anything is extracted: the manifest, every
    member's name and type, and every folder's ``key.json`` against the folder's name."""
    if not path.is_file():
        raise KilibError(f"no zoo archive at {path}: give the file that `make zoo-export` wrote (ZOO=path)")
    try:
        tar = tarfile.open(path, "r:*")
        members = tar.getmembers()
    except tarfile.ReadError:
        raise _damaged(path, "not a tar or tar.gz file") from None
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise _damaged(path, _corrupt(e)) from None
    try:
        by_name = {m.name: m for m in members}
        if MANIFEST not in by_name:
            raise _damaged(path, f"no {MANIFEST} in it")
        try:
            manifest = json.loads(tar.extractfile(by_name[MANIFEST]).read())
        except (ValueError, AttributeError) as e:
            raise _damaged(path, f"{MANIFEST} does not parse: {e}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise _damaged(
                path,
                f"manifest format {manifest.get('format') if isinstance(manifest, dict) else None!r}, "
                f"this kilib reads format {FORMAT}",
            )
        entries = manifest.get("entries")
        if not isinstance(entries, list) or not all(
            isinstance(e, dict) and isinstance(e.get("files"), dict) for e in entries
        ):
            raise _damaged(path, f"{MANIFEST} lists no folders with their files")
        listed = {(e.get("kind"), e.get("name")) for e in entries}
        for kind, name in listed:
            if (
                kind not in KINDS
                or not isinstance(name, str)
                or len(name) != 16
                or not all(c in "0123456789abcdef" for c in name)
            ):
                raise _damaged(path, f"the manifest lists {kind}/{name}, which is no cache folder")
        for m in members:
            parts = PurePosixPath(m.name).parts
            if m.name == MANIFEST and m.isfile():
                continue
            if (
                PurePosixPath(m.name).is_absolute()
                or ".." in parts
                or len(parts) < 2
                or (parts[0], parts[1]) not in listed
                or not (m.isfile() or m.isdir())
            ):
                raise _damaged(path, f"it holds {m.name!r}, outside the folders its manifest lists")
        for kind, name in sorted(listed):
            key_member = by_name.get(f"{kind}/{name}/key.json")
            if key_member is None:
                raise _damaged(path, f"{kind}/{name} has no key.json")
            try:
                key = json.loads(tar.extractfile(key_member).read())
            except (ValueError, AttributeError):
                raise _damaged(path, f"{kind}/{name}/key.json does not parse") from None
            if stable_hash(key) != name:
                raise _damaged(path, f"{kind}/{name}/key.json does not hash to the folder's name")
    except BaseException:
        tar.close()
        raise
    return tar, members, manifest


def import_zoo(path: str | Path) -> dict[str, Any]:
    """Put the zoo archived in ``path`` into this machine's cache. Checks the whole archive
    first, and that it holds this checkout's zoo (the same recipe and world), then moves in
    each folder not cached yet, whole. Returns what was imported, what was already here, and
    what this checkout's zoo still lacks."""
    path = Path(path)
    tar, members, manifest = _read_archive(path)
    with tar:
        profile, seed = manifest.get("profile"), manifest.get("world_seed")
        if profile not in ("tiny", "smoke") or not isinstance(seed, int):
            raise _damaged(path, f"its manifest names profile {profile!r} and world seed {seed!r}")
        config = dataclasses.replace(zoo_config(profile), world_seed=seed)
        wanted = zoo_status(config)
        archived = {(e["kind"], e["name"]) for e in manifest["entries"]}
        if not any((e["kind"], e["name"]) in archived for e in wanted if e["kind"] == "zoo"):
            commit = (manifest.get("kilib") or {}).get("commit") or "an unknown commit"
            raise KilibError(
                f"{path} holds a {profile} zoo made by another recipe (kilib at {str(commit)[:12]}) than "
                f"this checkout's: import it into a checkout of that commit, or build this one's with `make zoo`"
            )
        root = cache_root()
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=root, prefix=".zoo-import."))
        imported, present = [], []
        safe = (
            {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        )  # members were checked; Python >= 3.12 checks too
        try:
            # every folder extracted and checked against the manifest before any is moved in
            for entry in manifest["entries"]:
                kind, name = entry["kind"], entry["name"]
                if (root / kind / name / "key.json").exists():
                    present.append(entry)
                    continue
                prefix = f"{kind}/{name}"
                chosen = [m for m in members if m.name == prefix or m.name.startswith(prefix + "/")]
                tar.extractall(staging, members=chosen, **safe)
                staged = staging / kind / name
                _check_files(path, staged, prefix, entry["files"])
                if stable_hash(json.loads((staged / "key.json").read_text())) != name:
                    raise _damaged(path, f"{prefix}/key.json changed while it was read")
                imported.append(entry)
            for entry in imported:
                final = root / entry["kind"] / entry["name"]
                final.parent.mkdir(parents=True, exist_ok=True)
                move_into_place(staging / entry["kind"] / entry["name"], final)
                shutil.rmtree(final.parent / f".{entry['name']}.partial", ignore_errors=True)  # an interrupted build
        except (tarfile.TarError, EOFError, zlib.error) as e:
            raise _damaged(path, _corrupt(e)) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    still_missing = [e["what"] for e in zoo_status(config) if not e["built"]]
    return {
        "imported": imported,
        "present": present,
        "missing": still_missing,
        "manifest": manifest,
        "profile": profile,
    }
