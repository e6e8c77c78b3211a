"""Documents as section rows: the six Wikipedia articles of Mecklenburg et al., or a folder of your own.

Mecklenburg et al., "Injecting New Knowledge into Large Language Models via Supervised
Fine-Tuning" (arXiv 2404.00213), §2 ("Dataset"): six Wikipedia articles, five about events
after the trainee's knowledge cutoff and one pre-cutoff control, "split by section, filtered and
cleaned". kilib's paper profile fetches each article as it stood at one pinned moment
(:data:`PINNED_TIMESTAMP`) through the MediaWiki API, so every run reads the same revision, and
caches the API's answer. The ``wikimedia/wikipedia`` 20231101 dump cannot serve: it ends before
the Cricket World Cup final (docs/methods.md, "## 01 SFT knowledge injection").

Every loader returns the rows ``World.documents()`` returns in the tiny profile, one per
section: ``{"doc_id", "title", "section", "text"}``, so the Q&A generators, the RAG index and
the notebook read either profile. A section's name is its heading, prefixed by its parent
headings (``"Group stage / Group A"``), so names are unique within a document and say where the
text sits; the text before the first heading is ``"Overview"`` (the paper's "overview section").

The returned :class:`Documents` is a plain list of rows that also records where each document
came from (``.sources``: revision id and permanent URL, or file path and SHA-256), for run.json.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import datasets
import httpx
import mwparserfromhell
from mwparserfromhell.nodes import Heading
from mwparserfromhell.wikicode import Wikicode

from kilib.lm.data import read_jsonl, write_jsonl
from kilib.results import cached_dir, read_json, write_json
from kilib.runtime import KilibError
from kilib.standin import data_articles, switch

__all__ = [
    "PaperArticle",
    "PAPER_ARTICLES",
    "PINNED_TIMESTAMP",
    "MIN_SECTION_CHARS",
    "Documents",
    "PageMissing",
    "fetch_wikipedia",
    "parse_wikitext",
    "load_folder",
    "clean_sections",
    "documents_dataset",
    "load_documents",
]


class PageMissing(KilibError):
    """The page has no text at the pinned time: no such title, no revision then, or nothing left
    after cleaning (as opposed to a network or API failure, which is a plain :class:`KilibError`)."""


FIELDS = ("doc_id", "title", "section", "text")  # the fields of World.documents()
OVERVIEW = "Overview"  # the lead section's name, as the tiny world's articles call it


@dataclass(frozen=True)
class PaperArticle:
    """One of the paper's six articles: a stable ``doc_id``, the Wikipedia title, and whether the
    event ended after the trainee's knowledge cutoff (``post_cutoff``) or is the control."""

    doc_id: str
    title: str
    post_cutoff: bool


# Mecklenburg et al. §2: five 2023 events the trainee cannot know, and the 2018 FIFA World Cup,
# which it should already know (the control).
PAPER_ARTICLES = (
    PaperArticle("cricket_world_cup_2023", "2023 Cricket World Cup", True),
    PaperArticle("super_bowl_lvii", "Super Bowl LVII", True),
    PaperArticle("fifa_womens_world_cup_2023", "2023 FIFA Women's World Cup", True),
    PaperArticle("pga_championship_2023", "2023 PGA Championship", True),
    PaperArticle("ncaa_mens_basketball_tournament_2023", "2023 NCAA Division I men's basketball tournament", True),
    PaperArticle("fifa_world_cup_2018", "2018 FIFA World Cup", False),
)

# The revision of each article to read: the last one at or before this moment. All five events
# had ended by then (the last, the Cricket World Cup final, on 19 November 2023), and it precedes
# the paper's arXiv submission (late March 2024), so the articles are complete accounts of the
# events of the kind the authors could have fetched. The paper gives no date of its own.
PINNED_TIMESTAMP = "2024-03-01T00:00:00Z"
STANDIN_ARTICLES = "wikipedia-2023"  # the stand-in switch's name for the six articles

# Sections shorter than this after cleaning are dropped: what is left of a section made of a
# table or a list of links is a caption or a label, from which no Q&A pair can be written.
MIN_SECTION_CHARS = 30

# Sections that list sources or links rather than state facts ("filtered", §2); their
# subsections go with them. Compared case-insensitively.
REFERENCE_SECTIONS = frozenset(
    {
        "see also",
        "references",
        "notes",
        "external links",
        "further reading",
        "bibliography",
        "sources",
        "citations",
        "footnotes",
        "notes and references",
        "references and notes",
        "gallery",
    }
)
# Tags whose content is not article prose: footnotes, tables, galleries, maps, formulas.
NOISE_TAGS = frozenset(
    {
        "ref",
        "references",
        "table",
        "gallery",
        "imagemap",
        "timeline",
        "graph",
        "mapframe",
        "maplink",
        "math",
        "chem",
        "score",
        "syntaxhighlight",
        "source",
        "templatedata",
        "categorytree",
        "inputbox",
    }
)
# Links to these namespaces are media or bookkeeping, not text ([[File:x.jpg|thumb|caption]]).
NOISE_LINK_PREFIXES = ("file:", "image:", "media:", "category:")

PARSER_VERSION = 1  # bump when parse_wikitext's output changes, so cached articles are parsed again
API_TIMEOUT_S = 30.0
USER_AGENT = (
    "kilib/0.1 (reproduction package for research on injecting knowledge into LLMs; "
    "fetches six pinned Wikipedia revisions once and caches them)"
)


class Documents(list):
    """Section rows (``{"doc_id", "title", "section", "text"}``, document after document, each in
    article order) plus ``sources``: doc_id -> where the document came from (Wikipedia: title,
    revision id, revision timestamp, permanent URL; a folder: file path and SHA-256)."""

    def __init__(self, rows: Iterable[Mapping[str, Any]] = (), sources: Mapping[str, dict] | None = None) -> None:
        super().__init__(dict(r) for r in rows)
        self.sources = dict(sources or {})

    def doc_ids(self) -> list[str]:
        """The documents' ids, in the order they first appear."""
        return list(dict.fromkeys(r["doc_id"] for r in self))

    def of(self, doc_id: str) -> list[dict]:
        """The rows of one document."""
        rows = [r for r in self if r["doc_id"] == doc_id]
        if not rows:
            raise KilibError(f"no document {doc_id!r}: choose one of {', '.join(self.doc_ids()) or '(none loaded)'}")
        return rows


# ---------------------------------------------------------------------------------------
# Cleaning, shared by every source
# ---------------------------------------------------------------------------------------
def _collapse_whitespace(text: str) -> str:
    """Runs of spaces, tabs and non-breaking spaces become one space; blank lines go; lines
    (paragraphs, list items) stay apart."""
    lines = (" ".join(line.split()) for line in str(text).splitlines())
    return "\n".join(line for line in lines if line)


def clean_sections(rows: Iterable[Mapping[str, Any]], min_chars: int = MIN_SECTION_CHARS) -> list[dict]:
    """Rows with exactly the fields of ``World.documents()``, whitespace collapsed, sections of
    fewer than ``min_chars`` characters dropped, and section names made unique within a
    document (a repeated name gets `` (2)``, `` (3)``...). Mecklenburg et al. §2: "filtered
    and cleaned".

    A row missing a field, or a document left with no section, is a :class:`KilibError`.
    """
    if isinstance(min_chars, bool) or not isinstance(min_chars, int) or min_chars < 1:
        raise KilibError(f"min_chars must be a positive integer, got {min_chars!r}")
    out: list[dict] = []
    seen_docs: dict[str, int] = {}  # doc_id -> sections kept
    names: dict[tuple[str, str], int] = {}
    for i, row in enumerate(rows):
        missing = [f for f in FIELDS if f not in row or row[f] is None]
        if missing:
            raise KilibError(f"section row {i} lacks {', '.join(missing)}: every row needs {', '.join(FIELDS)}")
        doc_id, title = str(row["doc_id"]).strip(), " ".join(str(row["title"]).split())
        section = " ".join(str(row["section"]).split()) or OVERVIEW
        if not doc_id:
            raise KilibError(f"section row {i} has an empty doc_id: give every document an id")
        seen_docs.setdefault(doc_id, 0)
        text = _collapse_whitespace(row["text"])
        if len(text) < min_chars:
            continue
        n = names[(doc_id, section)] = names.get((doc_id, section), 0) + 1
        if n > 1:
            section = f"{section} ({n})"
        out.append({"doc_id": doc_id, "title": title, "section": section, "text": text})
        seen_docs[doc_id] += 1
    empty = [d for d, kept in seen_docs.items() if not kept]
    if empty:
        raise KilibError(
            f"document {empty[0]!r} has no section of at least {min_chars} characters after cleaning: "
            "write its text under its headings (headings alone make no section)"
        )
    return out


def documents_dataset(rows: Iterable[Mapping[str, Any]]):
    """Section rows as a ``datasets.Dataset`` with the features of ``World.documents()``
    (four string columns), so both profiles hand the same table to the notebook."""
    rows = list(rows)
    if not rows:
        raise KilibError("no section rows to turn into a dataset: load documents first (load_documents)")
    columns = {f: [] for f in FIELDS}
    for i, row in enumerate(rows):
        missing = [f for f in FIELDS if f not in row]
        if missing:
            raise KilibError(f"section row {i} lacks {', '.join(missing)}: every row needs {', '.join(FIELDS)}")
        for f in FIELDS:
            columns[f].append(str(row[f]))
    features = datasets.Features({f: datasets.Value("string") for f in FIELDS})
    return datasets.Dataset.from_dict(columns, features=features)


# ---------------------------------------------------------------------------------------
# Wikipedia at a pinned revision
# ---------------------------------------------------------------------------------------
def _utc_timestamp(timestamp: str) -> str:
    """``timestamp`` as the MediaWiki API writes it (``2024-03-01T00:00:00Z``), or a KilibError."""
    try:
        moment = datetime.fromisoformat(str(timestamp).strip().replace("Z", "+00:00"))
    except ValueError:
        raise KilibError(f"timestamp {timestamp!r} is not ISO 8601: write it as {PINNED_TIMESTAMP!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _remove_noise(code) -> None:
    """Drop footnotes, tables, galleries and the like, media and category links, and comments
    from parsed wikitext (templates go in ``strip_code``)."""
    noise = [t for t in code.filter_tags(recursive=True) if str(t.tag).strip().lower() in NOISE_TAGS]
    noise += [
        link
        for link in code.filter_wikilinks(recursive=True)
        if str(link.title).strip().lstrip(":").lower().startswith(NOISE_LINK_PREFIXES)
    ]
    noise += code.filter_comments(recursive=True)
    for node in noise:
        try:
            code.remove(node)
        except ValueError:  # inside a node removed already
            pass


_MAGIC_WORD = re.compile(r"__[A-Z]+__")
_SPACE_BEFORE_PUNCTUATION = re.compile(r"[ \t]+([.,;:!?%)])")
_EMPTY_BRACKETS = re.compile(r"\(\s*[,;]?\s*\)")


def _plain_text(code) -> str:
    text = code.strip_code(normalize=True, collapse=True)
    text = _MAGIC_WORD.sub("", text)
    text = _EMPTY_BRACKETS.sub("", text)  # "(born {{birth date}})" leaves "(born )"; "()" is pure noise
    text = _SPACE_BEFORE_PUNCTUATION.sub(r"\1", text)  # where a footnote sat: "won ." -> "won."
    return _collapse_whitespace(text)


def parse_wikitext(wikitext: str, doc_id: str, title: str) -> list[dict]:
    """Wikitext to section rows, Mecklenburg et al. §2 ("split by section, filtered and cleaned").

    The lead section is ``"Overview"``; every heading starts a section named by its heading
    path (``"Group stage / Group A"``). Reference-like sections (:data:`REFERENCE_SECTIONS`:
    See also, References, Notes, External links, Further reading, Bibliography, Sources...)
    are dropped with their subsections; footnotes, tables, galleries, files, categories,
    comments and templates (infoboxes, hatnotes, citations) are removed; what remains is plain
    text (``mwparserfromhell``'s ``strip_code``: a link becomes its label, bold its words) with
    whitespace collapsed. Empty sections are dropped.
    """
    code = mwparserfromhell.parse(str(wikitext))
    _remove_noise(code)
    rows: list[dict] = []
    path: list[tuple[int, str]] = []  # (level, heading) of the enclosing headings
    skip_below: int | None = None  # inside a dropped section: its level
    for section in code.get_sections(flat=True, include_lead=True):
        nodes = list(section.nodes)
        if nodes and isinstance(nodes[0], Heading):
            level = nodes[0].level
            heading = " ".join(nodes[0].title.strip_code().split()) or "Untitled"
            if skip_below is not None and level > skip_below:
                continue
            skip_below = None
            if heading.lower() in REFERENCE_SECTIONS:
                skip_below = level
                continue
            while path and path[-1][0] >= level:
                path.pop()
            path.append((level, heading))
            name = " / ".join(h for _, h in path)
            body = Wikicode(nodes[1:])
        else:
            name, body = OVERVIEW, section
        text = _plain_text(body)
        if text:
            rows.append({"doc_id": doc_id, "title": title, "section": name, "text": text})
    return rows


def _api_url(lang: str) -> str:
    return f"https://{lang}.wikipedia.org/w/api.php"


def _api_params(title: str, timestamp: str) -> dict[str, str]:
    """The last revision at or before ``timestamp``: revisions listed from ``rvstart`` towards
    older ones (``rvdir=older``), one of them."""
    return {
        "action": "query",
        "prop": "revisions",
        "titles": title,
        "rvlimit": "1",
        "rvdir": "older",
        "rvstart": timestamp,
        "rvprop": "ids|timestamp|content",
        "rvslots": "main",
        "format": "json",
        "formatversion": "2",
        "redirects": "1",
    }


def _request_revision(client, title: str, timestamp: str, lang: str) -> dict:
    url = _api_url(lang)
    headers = {}
    if str(client.headers.get("user-agent", "")).startswith("python-httpx"):
        headers["User-Agent"] = USER_AGENT  # Wikimedia's policy: say who is asking
    try:
        response = client.get(url, params=_api_params(title, timestamp), headers=headers)
    except httpx.TransportError as e:
        raise KilibError(
            f"cannot reach {url} to fetch {title!r} ({type(e).__name__}) and it is not cached: run once with network "
            "access, or pass a folder of your own documents (load_documents('path/to/folder'))"
        ) from None
    if response.status_code != 200:
        raise KilibError(
            f"{url} answered HTTP {response.status_code} for {title!r}: try again later "
            "(Wikipedia limits request rates), or pass a folder of your own documents"
        )
    try:
        answer = response.json()
    except ValueError:
        raise KilibError(f"{url} did not answer JSON for {title!r}: check lang={lang!r} and try again") from None
    if "error" in answer:
        error = answer["error"]
        raise KilibError(f"the MediaWiki API refused {title!r}: {error.get('code')}: {error.get('info')}")
    return answer


def _revision_of(answer: dict, title: str, timestamp: str, lang: str) -> tuple[dict, dict]:
    pages = (answer.get("query") or {}).get("pages") or []
    if not pages:
        raise PageMissing(f"the MediaWiki API returned no page for {title!r}: check the title")
    page = pages[0]
    if page.get("missing") or page.get("invalid"):
        raise PageMissing(
            f"Wikipedia ({lang}) has no page titled {title!r}: check the title's spelling "
            f"(as in its URL, spaces allowed)"
        )
    revisions = page.get("revisions") or []
    if not revisions:
        raise PageMissing(
            f"{title!r} has no revision at or before {timestamp}: the page was created later; pin a later timestamp"
        )
    revision = revisions[0]
    if str(revision.get("timestamp", "")) > timestamp:  # both "YYYY-MM-DDTHH:MM:SSZ": text order is time order
        raise KilibError(
            f"the API returned a revision of {title!r} from {revision.get('timestamp')}, after the "
            f"pinned {timestamp}: report it; the revision pin was not honoured"
        )
    return page, revision


def fetch_wikipedia(
    title: str,
    timestamp: str = PINNED_TIMESTAMP,
    doc_id: str | None = None,
    lang: str = "en",
    client=None,
    *,
    min_chars: int = MIN_SECTION_CHARS,
) -> Documents:
    """One Wikipedia article as it stood at ``timestamp``, as section rows (Mecklenburg et al.
    §2; docs/methods.md, "## 01 SFT knowledge injection": "fetch each at a pinned date").

    Asks the MediaWiki API for the article's last revision at or before ``timestamp``
    (``rvstart=timestamp&rvdir=older&rvlimit=1``, redirects followed), parses its wikitext with
    :func:`parse_wikitext` and cleans the sections (:func:`clean_sections` with ``min_chars``).
    The API's answer is cached once per (title, timestamp, lang, parser version) under
    ``<cache>/documents/``: ``api.json`` (the raw answer), ``sections.jsonl`` and
    ``source.json`` (revision id and timestamp, permanent URL), so a second call makes no
    request and works offline. ``doc_id`` defaults to the paper's id for the six articles, else
    to the title in lower case with underscores. ``client`` is an ``httpx.Client`` to send the
    request with (tests pass one with a mock transport); by default one is made with a
    descriptive User-Agent, as Wikimedia's policy asks, and a 30 s timeout.
    """
    title = " ".join(str(title).split())
    if not title:
        raise KilibError("an empty Wikipedia title was given: pass the article's title, e.g. '2023 Cricket World Cup'")
    if not re.fullmatch(r"[a-z][a-z0-9-]*", str(lang)):
        raise KilibError(f"lang {lang!r} is not a Wikipedia language code: use e.g. 'en' or 'de'")
    timestamp = _utc_timestamp(timestamp)
    doc_id = doc_id or next((a.doc_id for a in PAPER_ARTICLES if a.title == title), None) or _slug(title)

    def build(folder: Path) -> None:
        own = client is None
        http = (
            client
            if not own
            else httpx.Client(headers={"User-Agent": USER_AGENT}, timeout=API_TIMEOUT_S, follow_redirects=True)
        )
        try:
            answer = _request_revision(http, title, timestamp, lang)
        finally:
            if own:
                http.close()
        page, revision = _revision_of(answer, title, timestamp, lang)
        wikitext = ((revision.get("slots") or {}).get("main") or {}).get("content")
        if not wikitext:
            raise PageMissing(f"revision {revision.get('revid')} of {title!r} has no wikitext: pin another timestamp")
        rows = parse_wikitext(wikitext, doc_id, page.get("title", title))
        if not rows:
            raise PageMissing(f"{title!r} at {timestamp} has no text left after cleaning: check the title")
        write_json(folder / "api.json", answer)
        write_jsonl(folder / "sections.jsonl", rows)
        write_json(
            folder / "source.json",
            {
                "title": title,
                "page_title": page.get("title", title),
                "lang": lang,
                "pageid": page.get("pageid"),
                "revid": revision.get("revid"),
                "revision_timestamp": revision.get("timestamp"),
                "pinned_timestamp": timestamp,
                "url": f"https://{lang}.wikipedia.org/w/index.php?oldid={revision.get('revid')}",
                "retrieved_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "parser_version": PARSER_VERSION,
            },
        )

    folder = cached_dir(
        "documents", {"title": title, "timestamp": timestamp, "lang": lang, "parser": PARSER_VERSION}, build
    )
    rows = [dict(r, doc_id=doc_id) for r in read_jsonl(folder / "sections.jsonl", required=FIELDS)]
    source = dict(read_json(folder / "source.json"), cache=str(folder))
    return Documents(clean_sections(rows, min_chars), {doc_id: source})


# ---------------------------------------------------------------------------------------
# A folder of your own documents
# ---------------------------------------------------------------------------------------
DOCUMENT_SUFFIXES = (".md", ".txt")
_ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def _slug(text: str) -> str:
    """Lower case, runs of anything but letters and digits as one underscore."""
    return re.sub(r"[\W_]+", "_", str(text).lower()).strip("_")


def _read_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise KilibError(f"{path}: line {line} (column {column}) is not valid UTF-8: save the file as UTF-8") from None
    if "\x00" in text:  # valid UTF-8 yet not text: a binary file saved under a text name
        line = text[: text.index("\x00")].count("\n") + 1
        raise KilibError(
            f"{path}: line {line} holds a NUL byte, so it looks binary: pass a plain text (.md or .txt) file"
        )
    return text


def _markdown_sections(text: str) -> list[tuple[str, str]]:
    """``(section name, text)`` pairs: ATX headings (``#`` to ``######``) start sections named
    by their heading path; text before the first heading is the Overview. Lines inside fenced
    code blocks are never headings."""
    sections: list[tuple[str, list[str]]] = [(OVERVIEW, [])]
    path: list[tuple[int, str]] = []
    fence: str | None = None
    for line in text.splitlines():
        opening = _FENCE.match(line)
        if opening:
            marker = opening.group(1)
            if fence is None:
                fence = marker[0] * 3
            elif marker.startswith(fence):
                fence = None
        heading = None if fence is not None or opening else _ATX_HEADING.match(line)
        if heading:
            level, name = len(heading.group(1)), " ".join(heading.group(2).split()) or "Untitled"
            while path and path[-1][0] >= level:
                path.pop()
            path.append((level, name))
            sections.append((" / ".join(n for _, n in path), []))
        else:
            sections[-1][1].append(line)
    return [(name, "\n".join(lines)) for name, lines in sections]


def load_folder(path: str | Path, *, min_chars: int = MIN_SECTION_CHARS) -> Documents:
    """Your own documents, for injecting knowledge the paper did not use: every ``.md`` and
    ``.txt`` file directly in ``path`` (not in subfolders), in name order, is one document.

    ``doc_id`` is the file name without its suffix, in lower case with runs of other characters
    as ``_`` (``"Team Handbook.md"`` -> ``team_handbook``); ``title`` is the file name without
    its suffix. Markdown headings (``#``, ``##``...) split a file into sections named by their
    heading path, as :func:`parse_wikitext` names Wikipedia's; text before the first heading,
    and the whole of a file without headings, is ``"Overview"``. Sections are cleaned by
    :func:`clean_sections` (``min_chars``); the text is otherwise kept as written.

    A missing folder, a folder without ``.md``/``.txt`` files, an empty file, a file that is
    not UTF-8 (the line is named) and two files with the same ``doc_id`` are
    :class:`KilibError`.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise KilibError(f"{folder} {what}: pass a folder of .md or .txt files, or 'paper' for the paper's articles")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in DOCUMENT_SUFFIXES)
    if not files:
        raise KilibError(
            f"{folder} holds no .md or .txt file: put one document per file there (subfolders are not read)"
        )
    rows: list[dict] = []
    sources: dict[str, dict] = {}
    for file in files:
        doc_id = _slug(file.stem)
        if not doc_id:
            raise KilibError(f"{file}: its name gives an empty document id: rename it with letters or digits")
        if doc_id in sources:
            raise KilibError(f"{file} and {sources[doc_id]['path']} both give document id {doc_id!r}: rename one")
        text = _read_utf8(file)
        if not text.strip():
            raise KilibError(f"{file} is empty: write the document's text in it or remove it")
        for name, section_text in _markdown_sections(text):
            rows.append({"doc_id": doc_id, "title": file.stem, "section": name, "text": section_text})
        sources[doc_id] = {"path": str(file.resolve()), "sha256": hashlib.sha256(file.read_bytes()).hexdigest()}
    return Documents(clean_sections(rows, min_chars), sources)


# ---------------------------------------------------------------------------------------
# One entry point for the notebook
# ---------------------------------------------------------------------------------------
def load_documents(
    spec: str | Path = "paper", timestamp: str = PINNED_TIMESTAMP, *, min_chars: int = MIN_SECTION_CHARS, client=None
) -> Documents:
    """The documents to inject: ``"paper"`` fetches the six articles of Mecklenburg et al. §2
    (:data:`PAPER_ARTICLES`, at ``timestamp``; cached after the first run), anything else is
    a folder of your own ``.md``/``.txt`` files (:func:`load_folder`). While stand-ins are on
    (:mod:`kilib.standin.switch`), ``"paper"`` is the six synthetic articles kilib.standin writes,
    the 2018 one the control as the paper's 2018 World Cup is (:func:`kilib.standin.data_articles.post_cutoff`)."""
    if isinstance(spec, str) and spec.strip().lower() == "paper" and switch.scale():
        docs = load_folder(switch.dataset_path(STANDIN_ARTICLES), min_chars=min_chars)
        flags = {_slug(title): after for title, after in data_articles.post_cutoff().items()}
        for doc_id in docs.doc_ids():
            docs.sources[doc_id]["post_cutoff"] = flags[doc_id]
        return docs
    if isinstance(spec, str) and spec.strip().lower() == "paper":
        docs = Documents()
        for article in PAPER_ARTICLES:
            fetched = fetch_wikipedia(
                article.title, timestamp, doc_id=article.doc_id, client=client, min_chars=min_chars
            )
            docs.extend(fetched)
            docs.sources.update(
                {article.doc_id: dict(fetched.sources[article.doc_id], post_cutoff=article.post_cutoff)}
            )
        return docs
    return load_folder(spec, min_chars=min_chars)
