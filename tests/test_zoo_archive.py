"""Sharing the zoo between machines: export, import, and archives that must be refused."""

import hashlib
import io
import json
import os
import tarfile

import pytest

from kilib import cli
from kilib.runtime import KilibError, cache_root
from kilib.tiny import archive as zoo_archive
from kilib.tiny import zoo

SMOKE = zoo.zoo_config("smoke")


def digest(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """The smoke zoo, built in the session cache with one knowledge report, exported once."""
    zoo_archive.build_zoo(SMOKE)
    report = zoo.knowledge_report(SMOKE, "neox-xs", per_fact=1, pretrained_only=True)
    path = tmp_path_factory.mktemp("archive") / "smoke-zoo.tar.gz"
    assert cli.main(["zoo", "export", str(path), "--profile", "smoke"]) == 0
    return path, report


def rewrite(src, dst, change):
    """Copy the archive ``src`` to ``dst``, passing each (member, bytes) through ``change``,
    which returns the pair to write (or None to drop it)."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w:gz") as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read() if m.isfile() else None
            out = change(m, data)
            if out is None:
                continue
            m, data = out
            if data is not None:
                m.size = len(data)
            tout.addfile(m, io.BytesIO(data) if data is not None else None)
    return dst


def fresh_cache(tmp_path, monkeypatch, name="other"):
    folder = tmp_path / name
    monkeypatch.setenv("KILIB_CACHE_DIR", str(folder))
    return folder


def test_an_imported_zoo_is_the_exported_one_and_nothing_is_rebuilt(archive, tmp_path, monkeypatch):
    path, report = archive
    built = {e["name"]: digest(e["path"]) for e in zoo_archive.zoo_status(SMOKE)}
    with tarfile.open(path) as tar:
        manifest = json.loads(tar.extractfile(zoo_archive.MANIFEST).read())
    assert manifest["profile"] == "smoke" and manifest["world_seed"] == 0
    assert [e["kind"] for e in manifest["entries"]].count("reports") >= 1

    fresh_cache(tmp_path, monkeypatch)
    assert not any(e["built"] for e in zoo_archive.zoo_status(SMOKE))
    result = zoo_archive.import_zoo(path)
    assert result["missing"] == [] and result["present"] == []
    assert len(result["imported"]) == len(manifest["entries"])
    for e in zoo_archive.zoo_status(SMOKE):
        assert e["built"] and digest(e["path"]) == built[e["name"]]  # byte for byte

    def no_build(*args, **kwargs):
        raise AssertionError("an imported zoo was built again")

    monkeypatch.setattr(zoo, "_pretrain", no_build)
    monkeypatch.setattr(zoo, "_read_stage", no_build)
    monkeypatch.setattr(zoo, "_knowledge", no_build)
    for spec in SMOKE.models:
        assert zoo.model_dir(SMOKE, spec.name).parent == cache_root() / "zoo"
    assert zoo.knowledge_report(SMOKE, "neox-xs", per_fact=1, pretrained_only=True) == report

    again = zoo_archive.import_zoo(path)  # a second import changes nothing
    assert again["imported"] == [] and len(again["present"]) == len(manifest["entries"])
    assert not list(cache_root().glob(".zoo-import.*"))


def test_export_refuses_a_zoo_not_built_and_writes_no_file(tmp_path, monkeypatch):
    fresh_cache(tmp_path, monkeypatch)
    with pytest.raises(KilibError, match="the smoke zoo is not built yet: build it first with `make zoo`"):
        zoo_archive.export_zoo(SMOKE, tmp_path / "z.tar.gz", "smoke")
    with pytest.raises(KilibError, match=r"name it \*\.tar\.gz"):
        zoo_archive.export_zoo(SMOKE, tmp_path / "z.zip", "smoke")
    assert not list(tmp_path.glob("z*")) and not list(tmp_path.glob(".z*"))


def _break_key(m, data):
    if m.name.endswith("/key.json") and m.name.startswith("zoo/"):
        key = json.loads(data)
        key["recipe"] = -1
        return m, json.dumps(key).encode()
    return m, data


def _escape(m, data):
    if m.name.endswith("model.safetensors"):
        m = tarfile.TarInfo(m.name.split("/", 1)[0] + "/../../../escaped.bin")  # from the staging folder to tmp_path
        m.size = len(data)
    return m, data


@pytest.mark.parametrize(
    "case, message",
    [
        ("junk", r"is not a usable zoo archive \(not a tar or tar.gz file\)"),
        ("truncated", r"not a usable zoo archive \(truncated or corrupt"),
        ("no manifest", r"no kilib-zoo.json in it"),
        ("key changed", r"key.json does not hash to the folder's name"),
        ("escape", r"outside the folders its manifest lists"),
        ("no key", r"has no key.json"),
        ("flipped weights", r"model.safetensors differs from the manifest's size or SHA-256: it was altered"),
        ("zeroed weights", r"model.safetensors differs from the manifest's size or SHA-256: it was altered"),
        ("garbage key", r"key.json does not parse"),
        ("manifest without files", r"kilib-zoo.json lists no folders with their files"),
    ],
)
def test_a_bad_archive_is_one_clear_error_and_writes_nothing(archive, tmp_path, monkeypatch, case, message):
    path, _ = archive
    bad = tmp_path / "bad.tar.gz"
    if case == "junk":
        bad.write_bytes(b"not an archive\n")
    elif case == "truncated":
        bad.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif case == "no manifest":
        rewrite(path, bad, lambda m, d: None if m.name == zoo_archive.MANIFEST else (m, d))
    elif case == "key changed":
        rewrite(path, bad, _break_key)
    elif case == "escape":
        rewrite(path, bad, _escape)
    elif case in ("flipped weights", "zeroed weights"):

        def tamper(m, data):
            if not (m.name.startswith("zoo/") and m.name.endswith("model.safetensors")):
                return m, data
            cut = len(data) // 2  # past the header: weights, the same size as before
            if case == "zeroed weights":
                return m, data[:cut] + bytes(len(data) - cut)
            return m, data[:cut] + bytes(b ^ 0xFF for b in data[cut : cut + 64]) + data[cut + 64 :]

        rewrite(path, bad, tamper)
    elif case == "garbage key":
        rewrite(path, bad, lambda m, d: (m, b"{not json") if m.name.endswith("/key.json") else (m, d))
    elif case == "manifest without files":

        def strip(m, data):
            if m.name != zoo_archive.MANIFEST:
                return m, data
            manifest = json.loads(data)
            for entry in manifest["entries"]:
                entry.pop("files")
            return m, json.dumps(manifest).encode()

        rewrite(path, bad, strip)
    else:
        rewrite(path, bad, lambda m, d: None if m.name.startswith("zoo/") and m.name.endswith("/key.json") else (m, d))
    cache = fresh_cache(tmp_path, monkeypatch)
    with pytest.raises(KilibError, match=message) as err:
        zoo_archive.import_zoo(bad)
    assert "\n" not in str(err.value) and "make zoo-export" in str(err.value)
    assert not cache.exists() or not [p for p in cache.rglob("*") if p.is_file()]
    assert not (tmp_path / "escaped.bin").exists()
    assert cli.main(["zoo", "import", str(bad)]) == 2


def test_an_archive_of_another_recipe_is_refused_before_anything_is_written(archive, tmp_path, monkeypatch):
    path, _ = archive
    with tarfile.open(path) as tar:
        manifest = json.loads(tar.extractfile(zoo_archive.MANIFEST).read())
    other = [e for e in manifest["entries"] if e["kind"] != "zoo"]  # the tokenizer and reports only
    bad = rewrite(
        path,
        tmp_path / "other.tar.gz",
        lambda m, d: (
            (m, json.dumps({**manifest, "entries": other}).encode())
            if m.name == zoo_archive.MANIFEST
            else None
            if m.name.startswith("zoo/")
            else (m, d)
        ),
    )
    cache = fresh_cache(tmp_path, monkeypatch)
    with pytest.raises(KilibError, match="made by another recipe .* than this checkout's"):
        zoo_archive.import_zoo(bad)
    assert not cache.exists() or not [p for p in cache.rglob("*") if p.is_file()]


def test_an_interrupted_import_leaves_only_whole_folders(archive, tmp_path, monkeypatch):
    path, _ = archive
    cache = fresh_cache(tmp_path, monkeypatch)
    real, calls = os.replace, []

    def failing(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError("disk full")
        real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="disk full"):
        zoo_archive.import_zoo(path)
    monkeypatch.setattr(os, "replace", real)
    folders = [p for kind in zoo_archive.KINDS for p in (cache / kind).glob("*")]
    assert len(folders) == 2 and all((p / "key.json").exists() for p in folders)
    assert not list(cache.glob(".zoo-import.*"))
    result = zoo_archive.import_zoo(path)  # the rerun completes it
    assert len(result["present"]) == 2 and result["missing"] == []


def test_zoo_build_lists_each_folder_and_builds_nothing_twice(archive, capsys):
    assert cli.main(["zoo", "build", "--profile", "smoke"]) == 0
    out = capsys.readouterr().out
    assert "building" not in out  # the archive fixture built it
    assert [line.split()[0] for line in out.splitlines()[2:]] == ["built"] * len(zoo_archive.zoo_status(SMOKE))
