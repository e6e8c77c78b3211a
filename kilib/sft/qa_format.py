"""What goes to an LLM that writes Q&A sets and what comes back: the prompt templates, the
parsing of replies, the pair format, and the files a generated set is cached in.

The generation itself (Mecklenburg et al. §2, by the rules of :mod:`kilib.sft.rules`) is
:mod:`kilib.sft.qa_generation`; see docs/methods.md, "## 01 SFT knowledge injection".
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kilib.lm.scoring import normalize_answer
from kilib.results import atomic_write_text, cached_dir, read_json, stable_hash, write_json
from kilib.runtime import KilibError
from kilib.sft.rules import QASets

__all__ = [
    "TOKEN_QA_PROMPT",
    "FACTS_PROMPT",
    "FACT_QA_PROMPT",
    "parse_qa_reply",
    "parse_fact_lines",
    "GeneratedQASets",
    "AtomicFacts",
]

QA_CACHE = "qa-sets"
CACHE_VERSION = 1  # bump when what a cached set holds changes
MAX_AVOID = 40  # questions listed in a prompt as "already written": enough to steer, short enough to fit


# ---------------------------------------------------------------------------------------
# Prompts and parsing replies
# ---------------------------------------------------------------------------------------
TOKEN_QA_PROMPT = """Below is one section of an encyclopedia article.

Article: {title}
Section: {section}
---
{text}
---

Write {n} question-answer pairs that test knowledge of the facts stated in this section.
- Every question must be answerable from the section alone, and must name what it asks about in full (the article's subject by name, never "the event" or "this tournament").
- Every answer is short: a name, a number, a date or a phrase from the section.
- Every question must be new: do not repeat or rephrase a question listed below.
{avoid}
Reply with one JSON object per line and nothing else, in this form:
{{"question": "...", "answer": "..."}}"""  # noqa: E501 (the lines are the text the model reads)

FACTS_PROMPT = """Below is one section of an encyclopedia article.

Article: {title}
Section: {section}
---
{text}
---

List the atomic facts this section states. An atomic fact is one short, specific, checkable statement (who, what, when, where, how many) that names its subject in full, so that it can be understood without the section.
If a statement is too broad, unclear, an opinion, or not about {title}, write it on a line that starts with "SKIP:" instead.
Reply with one fact per line, without numbering, without any other text."""  # noqa: E501 (the lines are the text the model reads)

FACT_QA_PROMPT = """Article: {title}
Fact: {fact}

Write {n} different question-answer pairs that each ask for this fact. Vary the wording, but every question must be answerable from the fact alone and must name what it asks about in full. Every answer is short and taken from the fact.
{avoid}
Reply with one JSON object per line and nothing else, in this form:
{{"question": "...", "answer": "..."}}"""  # noqa: E501 (the lines are the text the model reads)


def prompt_id_of(name: str, template: str) -> str:
    """``name-<hash of the template>``: names the prompt a pair came from (prompts.json holds its text)."""
    return f"{name}-{stable_hash(template, 8)}"


def avoid_block(questions: Sequence[str]) -> str:
    """The prompt's list of questions already written (the latest :data:`MAX_AVOID`), or ""."""
    recent = list(questions)[-MAX_AVOID:]
    if not recent:
        return ""
    return "Questions already written (do not repeat them):\n" + "\n".join(f"- {q}" for q in recent) + "\n"


_FENCE_LINE = re.compile(r"^\s*```")
_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+")


def parse_qa_reply(reply: str) -> tuple[list[tuple[str, str]], int]:
    """``(question, answer)`` pairs from a reply of JSON lines, and the number of malformed lines.

    A line counts where it holds one JSON object with non-empty ``question`` and ``answer``
    (a list or bullet marker before it and text around the braces are tolerated); a reply that
    is one JSON array of such objects is read too. Blank lines and code fences are ignored; any
    other line is malformed and skipped."""
    text = str(reply or "").strip()
    try:
        whole = json.loads(text)
    except ValueError:
        whole = None
    candidates: list[Any]
    malformed = 0
    if isinstance(whole, list):
        candidates = whole
    else:
        candidates = []
        for line in text.splitlines():
            if not line.strip() or _FENCE_LINE.match(line):
                continue
            line = _BULLET.sub("", line).strip().rstrip(",")
            start, end = line.find("{"), line.rfind("}")
            try:
                candidates.append(json.loads(line[start : end + 1]) if 0 <= start < end else None)
            except ValueError:
                candidates.append(None)
    pairs = []
    for item in candidates:
        if isinstance(item, dict):
            question, answer = item.get("question"), item.get("answer")
            if isinstance(answer, (int, float)) and not isinstance(answer, bool):
                answer = str(answer)
            if isinstance(question, str) and isinstance(answer, str) and question.strip() and answer.strip():
                pairs.append((" ".join(question.split()), " ".join(answer.split())))
                continue
        malformed += 1
    return pairs, malformed


_SKIP = re.compile(r"^\s*\W*skip\W*:\s*", re.IGNORECASE)


def parse_fact_lines(reply: str) -> tuple[list[str], list[str], int]:
    """``(facts, skipped, malformed)`` from a fact-listing reply (:data:`FACTS_PROMPT`): one
    fact per line, list markers removed; lines starting with ``SKIP:`` are the facts the
    generator judged too broad, unclear or off-topic (Mecklenburg et al. §2 skips them); a
    line ending in ``:`` (a preamble such as "Here are the facts:") is malformed."""
    facts, skipped, malformed = [], [], 0
    for line in str(reply or "").splitlines():
        if not line.strip() or _FENCE_LINE.match(line):
            continue
        line = " ".join(_BULLET.sub("", line).split())
        if _SKIP.match(line):
            skipped.append(_SKIP.sub("", line))
        elif line.endswith(":") or not normalize_answer(line):
            malformed += 1
        else:
            facts.append(line)
    return facts, skipped, malformed


# ---------------------------------------------------------------------------------------
# Sets and their cache
# ---------------------------------------------------------------------------------------
class GeneratedQASets(QASets):
    """A :class:`~kilib.sft.rules.QASets` written by an LLM, with ``report``: how the
    generation went (requests, rounds, malformed lines, duplicate questions dropped, facts
    skipped), for the notebook to show beside the sets."""

    def __init__(self, data: Mapping[Any, list[dict]], *, report: Mapping[str, Any] | None = None, **kw: Any) -> None:
        super().__init__(data, **kw)
        self.report = dict(report or {})


class AtomicFacts(list):
    """A document's atomic facts, ``{"fact_id", "doc_id", "title", "section", "text",
    "generator", "revision", "prompt_id"}`` in the order the sections state them, plus
    ``skipped`` (``{"section", "text"}`` the generator marked too broad, unclear or off-topic)
    and ``report`` (requests, malformed lines, duplicates dropped)."""

    def __init__(
        self,
        facts: Iterable[Mapping[str, Any]] = (),
        skipped: Iterable[Mapping[str, Any]] = (),
        report: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(dict(f) for f in facts)
        self.skipped = [dict(s) for s in skipped]
        self.report = dict(report or {})


def write_lines(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """``rows`` as JSON lines, written atomically."""
    atomic_write_text(path, "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in rows))


def read_lines(path: Path) -> list[dict]:
    """The rows of a JSON-lines file."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def save_sets(folder: Path, sets: GeneratedQASets, prompts: Mapping[str, str]) -> None:
    """``sets`` into ``folder``: a JSON-lines file per key, ``prompts.json`` and ``sets.json``."""
    keys = list(sets)
    for key in keys:
        write_lines(folder / f"pairs-{key}.jsonl", sets[key])
    write_json(folder / "prompts.json", prompts)
    write_json(
        folder / "sets.json",
        {
            "rule": sets.rule,
            "doc_id": sets.doc_id,
            "keys": keys,
            "section_tokens": sets.section_tokens,
            "shortfalls": [[k, v] for k, v in sets.shortfalls.items()],
            "short_facts": [[k, v] for k, v in sets.short_facts.items()],
            "report": sets.report,
        },
    )


def load_sets(folder: Path) -> GeneratedQASets:
    """The sets :func:`save_sets` wrote."""
    meta = read_json(folder / "sets.json")
    data = {key: read_lines(folder / f"pairs-{key}.jsonl") for key in meta["keys"]}
    return GeneratedQASets(
        data,
        rule=meta["rule"],
        doc_id=meta["doc_id"],
        section_tokens=meta["section_tokens"],
        shortfalls={k: v for k, v in meta["shortfalls"]},
        short_facts={k: v for k, v in meta["short_facts"]},
        report=meta["report"],
    )


def cached_sets(
    key: Mapping[str, Any], make: Callable[[], GeneratedQASets], prompts: Mapping[str, str], cache: bool
) -> GeneratedQASets:
    """``make()``'s sets, built once per ``key`` under ``<cache>/qa-sets/`` (pairs as JSONL,
    one file per scale or eval kind; the prompts beside them), or made afresh without ``cache``."""
    if not cache:
        return make()
    folder = cached_dir(QA_CACHE, {"version": CACHE_VERSION, **key}, lambda f: save_sets(f, make(), prompts))
    return load_sets(folder)


def tokenizer_identity(tokenizer: Any) -> dict[str, Any] | None:
    """What names a tokenizer in a cache key: its name and vocabulary size."""
    if tokenizer is None:
        return None
    size = len(tokenizer) if hasattr(tokenizer, "__len__") else None
    return {"name": str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__), "size": size}


# ---------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------
SECTION_FIELDS = ("doc_id", "title", "section", "text")
FACT_FIELDS = ("fact_id", "doc_id", "section", "text")


def document_rows(sections_rows: Iterable[Mapping[str, Any]], doc_id: str | None) -> tuple[str, list[dict]]:
    """One document's section rows (``doc_id`` picks it where the rows hold several)."""
    rows = [dict(r) for r in sections_rows]
    for i, row in enumerate(rows):
        missing = [f for f in SECTION_FIELDS if f not in row]
        if missing:
            raise KilibError(
                f"section row {i} lacks {', '.join(missing)}: pass rows of kilib.lm.documents or World.documents()"
            )
    ids = list(dict.fromkeys(r["doc_id"] for r in rows))
    if doc_id is None:
        if len(ids) != 1:
            raise KilibError(
                f"the section rows hold {len(ids)} documents ({', '.join(ids[:6]) or 'none'}): pass doc_id= to pick one"
            )
        doc_id = ids[0]
    rows = [r for r in rows if r["doc_id"] == doc_id]
    if not rows:
        raise KilibError(f"no section of document {doc_id!r}: choose one of {', '.join(ids) or '(no rows given)'}")
    names = [r["section"] for r in rows]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise KilibError(
            f"document {doc_id!r} repeats section name {repeated[0]!r}: clean the rows with "
            "kilib.lm.documents.clean_sections, which makes names unique"
        )
    return doc_id, rows


def document_facts(facts: Iterable[Mapping[str, Any]]) -> tuple[str, list[dict]]:
    """One document's facts, checked: the fields every fact needs, one document, unique ids."""
    facts = [dict(f) for f in facts]
    if not facts:
        raise KilibError("no facts given: list them first with list_atomic_facts(generator, rows)")
    for i, fact in enumerate(facts):
        missing = [f for f in FACT_FIELDS if f not in fact]
        if missing:
            raise KilibError(f"fact {i} lacks {', '.join(missing)}: pass the facts list_atomic_facts returns")
    ids = list(dict.fromkeys(f["doc_id"] for f in facts))
    if len(ids) != 1:
        raise KilibError(f"the facts belong to {len(ids)} documents ({', '.join(ids[:6])}): pass one document's facts")
    fact_ids = [f["fact_id"] for f in facts]
    if len(set(fact_ids)) != len(fact_ids):
        raise KilibError("fact ids repeat: give every fact its own fact_id")
    return ids[0], facts


def make_pair(
    question: str,
    answer: str,
    *,
    doc_id: str,
    section: str,
    fact_ids: list[str],
    count,
    origin: str,
    generator: Any,
    prompt_id: str | None,
) -> dict:
    """One generated pair in the format of :mod:`kilib.sft.rules`, with what wrote it."""
    return {
        "question": question,
        "answer": answer,
        "fact_ids": list(fact_ids),
        "doc_id": doc_id,
        "section": section,
        "tokens": None if count is None else count(question) + count(answer),
        "origin": origin,
        "generator": None if generator is None else generator.name,
        "revision": None if generator is None else generator.revision,
        "prompt_id": prompt_id,
    }


def generator_identity(generator: Any) -> dict[str, Any]:
    """What names a generator in a cache key: name, revision and settings."""
    return {"name": generator.name, "revision": generator.revision, "settings": getattr(generator, "settings", None)}


def positive_int(name: str, value: Any) -> int:
    """``value`` where it is a positive integer, else an error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise KilibError(f"{name} must be a positive integer, got {value!r}")
    return value


def new_report() -> dict[str, Any]:
    """An empty generation report: requests, malformed lines, duplicate questions."""
    return {"requests": 0, "malformed_lines": 0, "duplicate_questions": 0}
