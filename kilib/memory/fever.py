"""FEVER's data for the memory study (docs/methods.md, "## 04 Memory modules on FEVER"): claims
grouped by evidence page, the top pages by claim count, pages that are empty or absent from the
training claims dropped (:func:`select_pages`); the note's prompt (:func:`kilib.lm.data.fever_prompt`)
with k demonstrations taken from training claims on other pages (:func:`demonstrations`; k counts
demonstrations). The paper profile reads FEVER (:data:`PAPER_DATA`) and page texts; the tiny and
smoke profiles read the generated world's pages and claims (:func:`tiny_claims`).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from datasets import load_dataset

from kilib.lm import documents  # called as documents.fetch_wikipedia, so a test can stand in for Wikipedia
from kilib.lm.data import FEVER_LABELS, fever_answer, fever_prompt, load_local_dataset
from kilib.runtime import KilibError
from kilib.standin import switch
from kilib.tiny import zoo

# The paper profile's data (docs/methods.md, "## 04 Memory modules on FEVER"): FEVER claims with
# their evidence pages, and each page's text from a local copy of FEVER's 2017 wiki dump (jsonl or
# parquet with ``id`` and ``text``) or, where none is given, from Wikipedia as it stood on ``timestamp``.
PAPER_DATA = {
    "claims": "copenlu/fever_gold_evidence",
    "train": "train",
    "eval": "validation",
    "pages": "",
    "timestamp": "2017-06-01T00:00:00Z",
}


def fever_title(title: str) -> str:
    """FEVER's page ids as titles: ``Gladiator_-LRB-2000_film-RRB-`` -> ``Gladiator (2000 film)``."""
    for code, char in (
        ("-LRB-", "("),
        ("-RRB-", ")"),
        ("-LSB-", "["),
        ("-RSB-", "]"),
        ("-LCB-", "{"),
        ("-RCB-", "}"),
        ("-COLON-", ":"),
    ):
        title = title.replace(code, char)
    return " ".join(title.replace("_", " ").split())


def evidence_page(row: Mapping[str, Any]) -> str | None:
    """The first evidence page of a FEVER row: ``evidence`` holds ``[title, sentence id, text]``
    entries (copenlu/fever_gold_evidence) or FEVER's ``[annotation id, evidence id, title,
    sentence id]``, possibly grouped in evidence sets."""

    def first(entry):
        if isinstance(entry, Mapping):
            return entry.get("title") or entry.get("page")
        if isinstance(entry, (list, tuple)) and entry:
            if all(isinstance(e, (list, tuple, Mapping)) for e in entry):
                return next((t for t in map(first, entry) if t), None)
            if len(entry) == 4 and isinstance(entry[2], str):
                return entry[2]
            if isinstance(entry[0], str):
                return entry[0]
        return None

    title = first(row.get("evidence") or [])
    return fever_title(title) if title else None


def claims_split(split: str) -> list[dict]:
    source = switch.dataset_path(str(PAPER_DATA["claims"]))  # a stand-in run: the synthetic copy
    local = Path(source).expanduser()
    try:
        if local.is_dir():
            files = sorted(p for p in local.iterdir() if p.name.split(".")[0].split("-")[0] == split)
            if not files:
                raise KilibError(
                    f"{local} has no {split}.jsonl or {split}.parquet: add it, or point "
                    "kilib.memory.fever.PAPER_DATA['claims'] at another folder"
                )
            data = load_local_dataset(
                files,
                "rewrite them as rows with claim, label and evidence, or point "
                "kilib.memory.fever.PAPER_DATA['claims'] at another folder",
            )
        else:
            data = load_dataset(source, split=split)
    except KilibError:
        raise
    except (OSError, ValueError, ConnectionError, StopIteration) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise KilibError(
            f"cannot load {source} ({split}): {reason}. Connect to the Hub once to cache it, or set "
            "kilib.memory.fever.PAPER_DATA['claims'] to a local copy with claim, label and evidence"
        ) from e
    if len(data) == 0:
        raise KilibError(
            f"{source} ({split}) holds no claims: it is empty; point kilib.memory.fever.PAPER_DATA['claims'] at a "
            "copy of copenlu/fever_gold_evidence"
        )
    out = []
    for row in data:
        missing = [f for f in ("claim", "label", "evidence") if f not in row]
        if missing:
            raise KilibError(
                f"{source} rows need claim, label and evidence; found {', '.join(row)}: point "
                "kilib.memory.fever.PAPER_DATA['claims'] at a copy of copenlu/fever_gold_evidence"
            )
        page = evidence_page(row)
        if page:
            out.append({"claim": str(row["claim"]), "label": _normal_label(row["label"]), "page": page})
    return out


def page_texts(titles: Sequence[str]) -> dict[str, str]:
    """Each title's page text: from the local dump in ``PAPER_DATA["pages"]`` (a .jsonl or .parquet
    file, or a folder of them, with ``id`` and ``text``), else from Wikipedia at ``timestamp``. A
    title the source lacks gets no text, which the note's step 3 drops (``select_pages``)."""
    source = str(PAPER_DATA["pages"]) or (switch.dataset_path("fever-pages") if switch.scale() else "")
    if source:
        path = Path(source).expanduser()
        files = sorted(p for p in (path.iterdir() if path.is_dir() else [path]) if p.suffix in (".jsonl", ".parquet"))
        kinds = {p.suffix for p in files}
        if len(kinds) != 1:
            raise KilibError(
                f"{path} holds no single kind of page file (.jsonl or .parquet with id and text): point "
                "kilib.memory.fever.PAPER_DATA['pages'] at FEVER's wiki-pages"
            )
        data = load_local_dataset(
            files,
            "rewrite them as rows with id and text, or point kilib.memory.fever.PAPER_DATA['pages'] at "
            "FEVER's wiki-pages",
        )
        if not {"id", "text"} <= set(data.column_names):
            raise KilibError(f"{path} pages need the fields id and text; found {', '.join(data.column_names)}")
        wanted, texts = set(titles), {}
        for row in data:
            title = fever_title(str(row["id"]))
            if title in wanted:
                texts[title] = str(row["text"] or "")
        return texts
    texts = {}
    for title in titles:
        try:
            rows = documents.fetch_wikipedia(title, timestamp=str(PAPER_DATA["timestamp"]))
        except documents.PageMissing:
            continue  # no such page then: no text, which the note's step 3 drops; network errors still raise
        texts[title] = "\n\n".join(r["text"] for r in rows)
    return texts


def _normal_label(label: Any) -> str:
    text = " ".join(str(label).replace("_", " ").split()).lower()
    if text not in FEVER_LABELS:
        raise KilibError(f"unknown claim label {label!r}: FEVER labels are SUPPORTS, REFUTES and NOT ENOUGH INFO")
    return text


def tiny_claims(world, zoo_config) -> tuple[list[dict], list[dict]]:
    """(training claims, validation claims) on every page of the tiny world: each page's claims
    (as many as it can host, :meth:`World.claim_capacity`) split alternately between the two, with
    every claim the zoo read in pretraining left out."""
    seen = set(zoo.pretraining_claims(world, zoo_config, seed=zoo_config.train.seed)["claim"])
    train, validation = [], []
    for i, (doc_id, article) in enumerate(world.articles.items()):
        rows = world.claims([doc_id], per_page=3 * world.claim_capacity(doc_id), seed=1000 + i).to_list()
        rows = [r for r in rows if r["claim"] not in seen]
        for j, r in enumerate(rows):
            row = {"claim": r["claim"], "label": r["label"], "page": r["page"], "period": article.period}
            (validation if j % 2 == 0 else train).append(row)
    return train, validation


def top_pages(claims: Sequence[Mapping[str, Any]], top: int) -> list[str]:
    """The ``top`` pages with the most claims, most first (ties: the page seen first)."""
    counts = Counter(str(c["page"]) for c in claims)
    order = {p: i for i, p in enumerate(counts)}  # a Counter keeps first-seen order
    return sorted(counts, key=lambda p: (-counts[p], order[p]))[:top]


def select_pages(
    validation: Sequence[Mapping[str, Any]], train: Sequence[Mapping[str, Any]], page_text: Mapping[str, str], top: int
) -> tuple[list[str], dict[str, int]]:
    """The note's data pipeline: group the validation claims by evidence page, keep the ``top``
    pages with the most claims (ties: the page seen first), then drop pages whose text is empty
    or missing and pages no training claim is about. Returns the pages in rank order and the
    note's counts: N_full (pages with a validation claim), N_top and N_trunc (kept), with how
    many of the top pages had no text and how many no training claim."""
    if top < 1:
        raise KilibError(f"top must be at least 1 (the number of pages to keep), got {top}")
    if not validation:
        raise KilibError("no validation claims to group by page: check the claims source")
    ranked = top_pages(validation, top)
    trained = {str(c["page"]) for c in train}
    has_text = [p for p in ranked if str(page_text.get(p) or "").strip()]
    kept = [p for p in has_text if p in trained]
    if not kept:
        raise KilibError(
            f"none of the top {len(ranked)} pages has both text ({len(has_text)} have) and training claims: "
            "check that the page source and the claims name pages the same way"
        )
    return kept, {
        "n_full": len({str(c["page"]) for c in validation}),
        "n_top": len(ranked),
        "n_trunc": len(kept),
        "no_text": len(ranked) - len(has_text),
        "no_training_claims": len(has_text) - len(kept),
    }


DEMO_LABELS = ("supports", "refutes", "not enough info")


def demonstrations(pool: Sequence[Mapping[str, Any]], k: int, seed: int = 0) -> list[tuple[str, str]]:
    """k ``(claim, label)`` demonstrations from ``pool`` (training claims on pages that are not
    evaluated), their labels cycling supports, refutes, not enough info (the note's two-shot
    prompt is (a), then (b)); the same k claims for every evaluated claim. Demonstration j+1
    extends the first j, so k-shot adds one claim to (k-1)-shot. ``seed`` picks the claims."""
    if k < 0:
        raise KilibError(f"k must be >= 0 (the number of demonstrations), got {k}")
    rows = list(pool)
    random.Random(f"kilib.memory.demos|{seed}").shuffle(rows)
    out: list[tuple[str, str]] = []
    used: set[int] = set()
    for j in range(k):
        label = DEMO_LABELS[j % 3]
        pick = next((i for i, r in enumerate(rows) if r["label"] == label and i not in used), None)
        if pick is None:
            raise KilibError(
                f"the demonstration pool has too few {label!r} claims for {k} demonstrations: "
                "lower the shots or keep fewer pages for evaluation"
            )
        used.add(pick)
        out.append((str(rows[pick]["claim"]), label))
    return out


def template_text(claim: str, label: str, demos: Sequence[tuple[str, str]]) -> str:
    """A training claim in the few-shot template with its answer (the Template memory's text)."""
    return fever_prompt(claim, demos) + " " + fever_answer(label)
