"""Prompt formats and data files shared by the studies and both profiles.

The tiny world and the paper-profile loaders produce the same fields, and every study
renders prompts through these functions, so a notebook never branches on the profile.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from kilib.results import atomic_write_text
from kilib.runtime import KilibError

FEVER_LABELS = ("supports", "refutes", "not enough info")
FEVER_LETTERS = ("a", "b", "c")
FEVER_INSTRUCTION = (
    "Determine the factuality of the following claims\n"
    "Answer candidates: (a) supports, (b) refutes, (c) not enough info"
)


def qa_prompt(question: str, passages: Sequence[str] = ()) -> str:
    """A closed-book question, or, with ``passages``, the RAG prompt: the retrieved
    passages first, then the question (Mecklenburg et al.'s RAG baseline)."""
    if not passages:
        return question
    context = "\n\n".join(p.strip() for p in passages)
    return f"{context}\n\nQuestion: {question}"


def fever_answer(label: str) -> str:
    """``"supports"`` -> ``"(a)"``: the answer form of the FEVER lab note's template
    (docs/methods.md, "## 04 Memory modules on FEVER")."""
    return f"({FEVER_LETTERS[FEVER_LABELS.index(label)]})"


def fever_prompt(claim: str, demonstrations: Sequence[tuple[str, str]] = ()) -> str:
    """The lab note's few-shot prompt: instruction, k ``Claim: ... A: (x)`` demonstrations
    (``(claim, label)`` pairs), then the claim with ``A:`` open. k counts demonstrations."""
    lines = [FEVER_INSTRUCTION]
    for demo_claim, label in demonstrations:
        lines += [f"Claim: {demo_claim}", f"A: {fever_answer(label)}"]
    lines += [f"Claim: {claim}", "A:"]
    return "\n".join(lines)


def read_jsonl(path: str | Path, required: Iterable[str] = ()) -> list[dict]:
    """Rows of a JSONL file; a malformed line or a missing field is a one-line error."""
    path = Path(path)
    if not path.exists():
        raise KilibError(f"{path} does not exist: check the path")
    rows = []
    required = tuple(required)
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise KilibError(f"{path}:{i} is not valid JSON ({e.msg}): fix or remove that line") from None
        if not isinstance(row, dict):
            raise KilibError(f"{path}:{i} is not a JSON object: each line must be one object")
        missing = [k for k in required if k not in row]
        if missing:
            raise KilibError(f"{path}:{i} lacks field(s) {', '.join(missing)}: every row needs {', '.join(required)}")
        rows.append(row)
    if not rows:
        raise KilibError(f"{path} holds no rows: it is empty")
    return rows


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def load_local_dataset(files: Sequence[Path], fix: str):
    """The rows of local data files (all ``.jsonl``/``.json`` or all ``.parquet``) as one
    ``datasets.Dataset``. A file its format cannot read (a JSON line cut off, a damaged Parquet
    file) is a :class:`KilibError` naming the files, what the reader said, and ``fix``."""
    from datasets import load_dataset  # imported here: importing datasets takes seconds

    files = [Path(p) for p in files]
    empty = [p.name for p in files if p.stat().st_size == 0]
    if empty:
        raise KilibError(f"{', '.join(empty)} in {files[0].parent} is empty: {fix}")
    builder = "parquet" if files[0].suffix == ".parquet" else "json"
    try:
        return load_dataset(builder, data_files=[str(p) for p in files], split="train")
    except Exception as e:  # noqa: BLE001 - datasets wraps the reader's error (DatasetGenerationError, ArrowInvalid)
        cause = e.__cause__ or e.__context__ or e
        reason = (str(cause).splitlines() or [type(cause).__name__])[0][:200]
        names = ", ".join(p.name for p in files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        raise KilibError(
            f"cannot read {names} in {files[0].parent} as {builder} ({type(cause).__name__}: {reason}): {fix}"
        ) from None
