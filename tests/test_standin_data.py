"""The stand-in datasets (kilib.standin.data) read through the paper profile's own loaders: the
counts and fields each loader returns, the formats' details (GSM8K's calculator steps, MMLU's
five dev rows per subject, SNI's per-task files and long inputs, FEVER's evidence pages), the
articles' sections, and the same bytes for the same seed."""

import ast
import json
import re
import statistics
from collections import Counter
from pathlib import Path

import pytest

from kilib.runtime import KilibError
from kilib.standin import data

STUDIES = ("sft", "transfer", "calm", "memory")
STANDINS_SWITCH = "KILIB_STANDINS"  # kilib.standin.switch's environment variable


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """The small stand-ins, written once for the module; the datasets cache kept in the tmp folder."""
    import datasets

    root = tmp_path_factory.mktemp("standin")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", root / "hf-cache")
        yield data.write_paper_data(root / "data", seed=0, scale="small")


@pytest.fixture
def hub(paths, monkeypatch, tmp_path):
    """kilib.transfer.tasks reading the stand-ins in place of the Hub."""
    import datasets

    from kilib.transfer import tasks

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.delenv(STANDINS_SWITCH, raising=False)  # the loaders read the folders given, not the switch's own
    for task, key in (("gsm", "gsm8k"), ("mmlu", "mmlu"), ("sni", "sni")):
        monkeypatch.setitem(tasks.PAPER_DATASETS[task], "path", str(paths[key]))
    return tasks


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _parquet_rows(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def _jsonl_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------------------------------
# GSM8K
# ---------------------------------------------------------------------------------------
def test_gsm8k_reads_through_hub_task_rows(hub):
    rows = hub.hub_task_rows("gsm", {"seed": 8, "train": 300, "demos": 8, "eval": 200})
    assert {k: len(v) for k, v in rows.items()} == {"seed": 8, "train": 300, "demos": 8, "eval": 200}
    for row in rows["train"] + rows["eval"]:
        assert set(row) == {"question", "answer", "rationale"}
        assert row["answer"].lstrip("-").isdigit()
        assert row["rationale"].endswith(f"So the answer is {row['answer']}.")
        assert "<<" not in row["rationale"]  # the loader strips the calculator annotations


def test_gsm8k_rationales_compute_right(paths):
    rows = {s: _parquet_rows(paths["gsm8k"] / f"{s}-00000-of-00001.parquet") for s in ("train", "test")}
    assert {s: len(r) for s, r in rows.items()} == {"train": 400, "test": 200}
    words = []
    for row in rows["train"] + rows["test"]:
        assert set(row) == {"question", "answer"}
        *lines, final = row["answer"].split("\n")
        assert 2 <= len(lines) <= 8 and final.startswith("#### ")
        results = []
        for line in lines:
            steps = re.findall(r"<<([^=>]+)=([^>]+)>>", line)
            assert steps, f"a rationale line without a calculator step: {line!r}"
            for expr, value in steps:
                assert re.fullmatch(r"[0-9+\-*/ ]+", expr), expr
                exact = eval(expr)  # true division: a step that does not divide evenly fails
                assert exact == int(value), f"{expr} = {exact}, written {value}"
                assert f">>{value}" in line  # the result follows the annotation, as GSM8K writes it
                results.append(int(value))
        assert results[-1] == int(final[5:]), "the answer is the last step's result"
        words.append(len(row["question"].split()))
    assert 40 <= statistics.median(words) <= 60 and max(words) < 120


# ---------------------------------------------------------------------------------------
# MMLU
# ---------------------------------------------------------------------------------------
def test_mmlu_reads_through_hub_task_rows(hub):
    rows = hub.hub_task_rows("mmlu", {"seed": 4, "train": 100, "demos": 5, "eval": 300})
    assert {k: len(v) for k, v in rows.items()} == {"seed": 4, "train": 100, "demos": 285, "eval": 300}
    per_subject = Counter(r["subject"] for r in rows["demos"])
    assert len(per_subject) == 57 and set(per_subject.values()) == {5}
    for row in rows["demos"] + rows["eval"] + rows["train"]:
        assert len(row["choices"]) == 4 and row["answer"] in "ABCD"
    assert all(r["subject"] == "" for r in rows["train"])  # auxiliary_train has no subject
    assert {r["subject"] for r in rows["eval"]} == set(per_subject)
    # a demonstration drawn for an eval row is of its subject
    demos = hub.demonstrations_for(rows["eval"][0], rows["demos"], 5)
    assert len(demos) == 5 and {d["subject"] for d in demos} == {rows["eval"][0]["subject"]}


def test_mmlu_types_order_and_lengths(paths):
    import datasets

    files = sorted(p.name for p in paths["mmlu"].glob("*.parquet"))
    assert files == [f"{s}-00000-of-00001.parquet" for s in ("auxiliary_train", "dev", "test", "validation")]
    test = datasets.load_dataset("parquet", data_files=str(paths["mmlu"] / "test-00000-of-00001.parquet"))["train"]
    assert isinstance(test.features["answer"], datasets.ClassLabel) and test.features["answer"].names == list("ABCD")
    assert test.features["choices"].feature.dtype == "string"
    assert isinstance(test[0]["answer"], int) and isinstance(test[0]["choices"], list)
    subjects = test["subject"]
    assert subjects == sorted(subjects) and len(set(subjects)) == 57  # sorted by subject, as MMLU's test set is
    aux = _parquet_rows(paths["mmlu"] / "auxiliary_train-00000-of-00001.parquet")
    lengths = [len(r["question"].split()) for r in aux]
    assert len(aux) == 400 and max(lengths) > 200 and statistics.median(lengths) < 100  # some long questions


# ---------------------------------------------------------------------------------------
# Super-NaturalInstructions
# ---------------------------------------------------------------------------------------
def test_sni_reads_through_hub_task_rows(hub):
    rows = hub.hub_task_rows("sni", {"seed": 8, "train": 400, "demos": 5, "eval": 200})
    assert {k: len(v) for k, v in rows.items()} == {"seed": 8, "train": 400, "demos": 5, "eval": 200}
    for row in rows["train"] + rows["eval"]:
        assert set(row) == {"instruction", "input", "output"} and all(isinstance(v, str) for v in row.values())
    drawn = {r["instruction"] for r in rows["train"]}
    assert len(drawn) > 30  # the shuffle reaches across the tasks' files


def test_sni_files_group_rows_by_task_with_a_long_tail(paths):
    files = sorted(paths["sni"].glob("*.jsonl"))
    by_split = Counter(p.name.split("-")[0] for p in files)
    assert by_split == {"train": 60, "test": 20}
    words, definitions = [], set()
    for path in files:
        rows = _jsonl_rows(path)
        assert len(rows) == 10 and {r["task_name"] for r in rows} == {path.stem.split("-", 1)[1]}
        assert len({r["definition"] for r in rows}) == 1  # one definition per task, on every row
        for r in rows:
            assert list(r) == ["task_name", "id", "definition", "inputs", "targets"]
            assert isinstance(r["targets"], str) and r["id"].startswith(r["task_name"].split("_")[0] + "-")
            words.append(len(r["inputs"].split()))
        definitions.add(rows[0]["definition"])
    assert len(definitions) == 80
    assert all(30 <= len(d.split()) <= 150 for d in definitions)
    assert max(words) > 1600 and statistics.median(words) < 300  # past 2,048 tokens at ~1.3 tokens a word


# ---------------------------------------------------------------------------------------
# FEVER
# ---------------------------------------------------------------------------------------
def test_fever_claims_and_pages_read_through_the_memory_loaders(paths, monkeypatch, tmp_path):
    import datasets

    from kilib.memory import fever

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.delenv(STANDINS_SWITCH, raising=False)
    monkeypatch.setitem(fever.PAPER_DATA, "claims", str(paths["fever_claims"]))
    monkeypatch.setitem(fever.PAPER_DATA, "pages", str(paths["fever_pages"]))
    train, validation = fever.claims_split("train"), fever.claims_split("validation")
    assert (len(train), len(validation)) == (400, 200)
    assert {c["label"] for c in validation} == {"supports", "refutes", "not enough info"}
    titles = sorted({c["page"] for c in train + validation})
    texts = fever.page_texts(titles)
    missing = [t for t in titles if t not in texts]
    empty = [t for t, text in texts.items() if not text]
    assert 0 < len(missing) < 0.1 * len(titles) and empty  # most pages exist; a few are absent or empty
    assert any("(" in t for t in texts)  # ids with -LRB-/-RRB- come back as titles with brackets
    pages, counts = fever.select_pages(validation, train, texts, 20)
    assert len(pages) >= 15 and counts["n_top"] == 20 and counts["n_full"] > 20


def test_fever_files_nest_evidence_as_copenlu_does(paths):
    rows = _jsonl_rows(paths["fever_claims"] / "train.jsonl")
    assert Counter(r["label"] for r in rows).most_common(1)[0][0] == "SUPPORTS"
    for r in rows:
        assert list(r) == ["id", "verifiable", "label", "claim", "evidence"]
        for title, line, text in r["evidence"]:
            assert isinstance(title, str) and " " not in title and isinstance(line, int) and text.endswith(" .")
    pages = sorted(paths["fever_pages"].glob("wiki-*.jsonl"))
    first = _jsonl_rows(pages[0])[0]
    assert len(pages) == 3 and first == {"id": "", "text": "", "lines": ""}
    dump = {r["id"]: r for p in pages for r in _jsonl_rows(p)}
    assert len(dump) == 151
    cited = [(t, n, s) for r in rows for t, n, s in r["evidence"] if dump.get(t, {}).get("text")]
    for title, n, sentence in cited:
        assert dump[title]["lines"].split("\n")[n] == f"{n}\t{sentence}"


# ---------------------------------------------------------------------------------------
# Articles
# ---------------------------------------------------------------------------------------
def test_articles_load_as_six_documents_with_sections(paths):
    from kilib.lm import documents

    docs = documents.load_folder(paths["articles"])
    assert len(docs.doc_ids()) == 6 and len(documents.PAPER_ARTICLES) == 6
    for doc_id in docs.doc_ids():
        rows = docs.of(doc_id)
        names = [r["section"] for r in rows]
        assert names[0] == "Overview" and len(names) >= 8
        assert any(" / " in n for n in names)  # subsections under their sections
        assert 4000 <= sum(len(r["text"].split()) for r in rows) <= 8000, doc_id
    years = sorted(t[:4] for t in docs.doc_ids() if t[:4].isdigit())
    assert years.count("2023") == 4 and years.count("2018") == 1
    assert (paths["articles"] / "README").is_file()


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------
def test_same_seed_same_bytes_and_every_folder_says_synthetic(paths, tmp_path):
    root = paths["gsm8k"].parent
    again = data.write_paper_data(tmp_path / "again", seed=0)
    assert _files(root) == _files(again["gsm8k"].parent)
    other = data.write_paper_data(tmp_path / "other", seed=1)
    assert (
        _files(root)["gsm8k/train-00000-of-00001.parquet"]
        != _files(other["gsm8k"].parent)["gsm8k/train-00000-of-00001.parquet"]
    )
    for folder in ("gsm8k", "mmlu", "natural-instructions", "fever", "fever/claims", "fever/pages"):
        text = (root / folder / "README.md").read_text()
        assert "synthetic, format-true stand-in for" in text and "kilib.standin.data" in text
    assert "It is not the real data" in (root / "articles" / "README").read_text()
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no work folder left behind


def test_rewrite_keeps_a_matching_folder_and_replaces_another(tmp_path, monkeypatch):
    root = tmp_path / "data"
    data.write_paper_data(root, seed=3)
    stamp = (root / "gsm8k" / "README.md").stat().st_mtime_ns
    calls = []
    monkeypatch.setattr(data, "_build", lambda *a: calls.append(a[0]))
    data.write_paper_data(root, seed=3)
    assert calls == [] and (root / "gsm8k" / "README.md").stat().st_mtime_ns == stamp
    monkeypatch.undo()
    before = _files(root)
    data.write_paper_data(root, seed=4)
    after = _files(root)
    assert {f.split("/")[0] for f in before} == {f.split("/")[0] for f in after} == set(data.FOLDERS)
    assert before["gsm8k/README.md"] != after["gsm8k/README.md"] and "seed 4" in after["gsm8k/README.md"].decode()
    assert after == _files(data.write_paper_data(tmp_path / "fresh", seed=4)["gsm8k"].parent)
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def test_a_failed_write_leaves_no_folder(tmp_path, monkeypatch):
    def fail(name, folder, counts, seed):
        (folder / "partial.jsonl").write_text("{}\n")
        raise OSError("disk full")

    monkeypatch.setattr(data, "_build", fail)
    with pytest.raises(OSError, match="disk full"):
        data.write_paper_data(tmp_path / "data")
    assert list((tmp_path / "data").iterdir()) == []


def test_bad_arguments_are_one_line_errors(tmp_path):
    with pytest.raises(KilibError, match="use one of small, real"):
        data.write_paper_data(tmp_path, scale="huge")
    with pytest.raises(KilibError, match="must be an integer"):
        data.write_paper_data(tmp_path, seed="0")


def test_the_data_modules_import_no_study_package():
    for path in sorted(Path(data.__file__).parent.glob("data*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[:2] not in [["kilib", s] for s in STUDIES], f"{path.name} imports {name}"


@pytest.mark.parametrize("task, key", [("gsm", "gsm8k"), ("sni", "sni")])
def test_a_damaged_local_data_file_is_one_line_naming_it(hub, paths, tmp_path, monkeypatch, task, key):
    """A local copy whose training file is cut off (GSM8K's JSON lines, SNI's Parquet): one line
    naming the file, what the reader said and a local fix, not the datasets reader's traceback."""
    import shutil

    copy = tmp_path / key
    shutil.copytree(paths[key], copy)
    train = sorted(p for p in copy.iterdir() if p.name.split(".")[0].split("-")[0] == "train")[0]
    train.write_bytes(train.read_bytes()[: train.stat().st_size // 2])
    monkeypatch.setitem(hub.PAPER_DATASETS[task], "path", str(copy))
    builder = "parquet" if train.suffix == ".parquet" else "json"
    with pytest.raises(KilibError, match=rf"cannot read .* as {builder} .*PAPER_DATASETS") as e:
        hub.hub_task_rows(task, {"seed": 1, "train": 2, "demos": 1, "eval": 1})
    assert "\n" not in str(e.value) and train.name in str(e.value) and "Hub" not in str(e.value)
