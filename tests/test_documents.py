"""Documents as section rows (kilib.lm.documents; docs/methods.md, "## 01 SFT knowledge injection";
Mecklenburg et al. §2): Wikipedia at a pinned revision through a mock MediaWiki API, a folder of your
own files, and their errors."""

import json
from pathlib import Path

import httpx
import pytest

from kilib.lm import documents as D
from kilib.runtime import KilibError

FIXTURE = Path(__file__).parent / "fixtures" / "wikipedia_example_cup.wikitext"
TITLE = "2023 Example Cup"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test its own cache, so a fetch in one test is never a cache hit in another."""
    monkeypatch.setenv("KILIB_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def api_answer(title, wikitext, revid=1201, timestamp="2024-02-27T10:11:12Z"):
    """What the MediaWiki API (formatversion=2) answers for one revision."""
    return {
        "batchcomplete": True,
        "query": {
            "pages": [
                {
                    "pageid": 555,
                    "ns": 0,
                    "title": title,
                    "revisions": [
                        {
                            "revid": revid,
                            "parentid": revid - 1,
                            "timestamp": timestamp,
                            "slots": {
                                "main": {
                                    "contentmodel": "wikitext",
                                    "contentformat": "text/x-wiki",
                                    "content": wikitext,
                                }
                            },
                        }
                    ],
                }
            ]
        },
    }


class MockWikipedia:
    """An httpx transport standing in for Wikipedia; records every request it sees."""

    def __init__(self, answer=None, error=None):
        self.requests = []
        self.answer, self.error = answer, error

    def __call__(self, request):
        self.requests.append(request)
        if self.error is not None:
            raise self.error
        title = request.url.params["titles"]
        answer = self.answer(title) if callable(self.answer) else self.answer
        return httpx.Response(200, json=answer)

    def client(self):
        return httpx.Client(transport=httpx.MockTransport(self))


def test_wikitext_is_split_into_clean_sections():
    rows = D.parse_wikitext(FIXTURE.read_text(), "example_cup", TITLE)
    names = [r["section"] for r in rows]
    # The lead is the Overview; nested headings keep their parent; reference-like sections (and
    # their subsections, "References / Sources") and sections left empty ("Statistics", holding
    # only a template; "Knockout stage", holding only a subsection) are gone.
    assert names == [
        "Overview",
        "Host selection",
        "Venues",
        "Group stage",
        "Group stage / Group A",
        "Group stage / Group B",
        "Knockout stage / Final",
    ]
    assert all(set(r) == {"doc_id", "title", "section", "text"} for r in rows)
    text = "\n".join(r["text"] for r in rows)
    for noise in (
        "{{",
        "}}",
        "[[",
        "]]",
        "<ref",
        "</",
        "thumb",
        "Retrieved",
        "Example cup dates confirmed",
        "Capacity",
        "60,000",
        "Harbour Park",
        "Please do not",
        "__NOTOC__",
        "trophy lift",
        "Official website",
        "Category",
        "Excluding the third-place",
        "  ",
        "( )",
    ):
        assert noise.lower() not in text.lower(), noise
    overview = rows[0]["text"]
    assert overview.startswith("The 2023 Example Cup was the fifth edition of the Example Cup")
    assert "Sylvania won the tournament, beating Freedonia 3–1 in the final." in overview  # link label kept, ref gone
    assert rows[2]["text"] == "Three stadiums in two cities hosted matches."  # the table is gone
    assert rows[5]["text"] == "Ruritania won all three of its Group B matches, scoring nine goals."
    assert "Anna Berg scored twice" in rows[6]["text"]


def test_clean_sections_drops_short_sections_and_makes_names_unique():
    rows = [
        {"doc_id": "d", "title": "T", "section": "A", "text": "  first   text\n\n\twith  spaces "},
        {"doc_id": "d", "title": "T", "section": "A", "text": "second text, also long enough"},
        {"doc_id": "d", "title": "T", "section": "B", "text": "tiny"},
    ]
    assert D.clean_sections(rows, min_chars=10) == [
        {"doc_id": "d", "title": "T", "section": "A", "text": "first text\nwith spaces"},
        {"doc_id": "d", "title": "T", "section": "A (2)", "text": "second text, also long enough"},
    ]
    with pytest.raises(KilibError, match="no section of at least 100 characters"):
        D.clean_sections(rows, min_chars=100)
    with pytest.raises(KilibError, match="lacks text"):
        D.clean_sections([{"doc_id": "d", "title": "T", "section": "A"}])


def test_fetch_pins_the_revision_and_caches_it(private_cache):
    wiki = MockWikipedia(api_answer(TITLE, FIXTURE.read_text()))
    with wiki.client() as client:
        docs = D.fetch_wikipedia(TITLE, "2024-03-01T00:00:00Z", doc_id="example_cup", client=client)
    assert len(wiki.requests) == 1
    request = wiki.requests[0]
    assert request.url.host == "en.wikipedia.org" and request.url.path == "/w/api.php"
    params = dict(request.url.params)
    assert params == {
        "action": "query",
        "prop": "revisions",
        "titles": TITLE,
        "rvlimit": "1",
        "rvdir": "older",
        "rvstart": "2024-03-01T00:00:00Z",
        "rvprop": "ids|timestamp|content",
        "rvslots": "main",
        "format": "json",
        "formatversion": "2",
        "redirects": "1",
    }
    assert request.headers["user-agent"].startswith("kilib/")  # Wikimedia's User-Agent policy
    assert [r["section"] for r in docs][:2] == ["Overview", "Host selection"]
    assert {r["doc_id"] for r in docs} == {"example_cup"} and {r["title"] for r in docs} == {TITLE}
    source = docs.sources["example_cup"]
    assert source["revid"] == 1201 and source["url"] == "https://en.wikipedia.org/w/index.php?oldid=1201"
    assert (
        source["revision_timestamp"] == "2024-02-27T10:11:12Z" and source["pinned_timestamp"] == "2024-03-01T00:00:00Z"
    )
    folder = Path(source["cache"])
    assert {p.name for p in folder.iterdir()} == {
        "api.json",
        "sections.jsonl",
        "source.json",
        "key.json",
        "manifest.json",
    }
    assert json.loads((folder / "api.json").read_text())["query"]["pages"][0]["revisions"][0]["revid"] == 1201

    # A second fetch of the same (title, timestamp) is a cache hit: no request, even offline.
    offline = MockWikipedia(error=httpx.ConnectError("no network"))
    with offline.client() as client:
        again = D.fetch_wikipedia(TITLE, "2024-03-01T00:00:00+00:00", doc_id="example_cup", client=client)
    assert offline.requests == [] and list(again) == list(docs)


def test_offline_without_cache_is_one_line_naming_the_fix(private_cache):
    wiki = MockWikipedia(error=httpx.ConnectError("Name or service not known"))
    with wiki.client() as client, pytest.raises(KilibError) as info:
        D.fetch_wikipedia("Super Bowl LVII", client=client)
    message = str(info.value)
    assert "\n" not in message and "Super Bowl LVII" in message
    assert "run once with network access" in message and "folder of your own documents" in message
    # Nothing half-written: no finished entry and no leftover work folder.
    assert not (private_cache / "documents").exists() or list((private_cache / "documents").iterdir()) == []


def test_missing_page_and_page_created_later_name_the_title():
    wiki = MockWikipedia(
        {"batchcomplete": True, "query": {"pages": [{"ns": 0, "title": "No Such Cup", "missing": True}]}}
    )
    with wiki.client() as client, pytest.raises(KilibError, match="no page titled 'No Such Cup'"):
        D.fetch_wikipedia("No Such Cup", client=client)
    later = MockWikipedia({"query": {"pages": [{"pageid": 1, "ns": 0, "title": "Future Cup", "revisions": []}]}})
    with (
        later.client() as client,
        pytest.raises(KilibError, match="'Future Cup' has no revision at or before 2024-03-01"),
    ):
        D.fetch_wikipedia("Future Cup", client=client)
    with pytest.raises(KilibError, match="not ISO 8601"):
        D.fetch_wikipedia(TITLE, "March 2024")


def test_paper_documents_are_the_six_articles_at_the_pinned_timestamp():
    assert len(D.PAPER_ARTICLES) == 6 and len({a.doc_id for a in D.PAPER_ARTICLES}) == 6
    assert [a.title for a in D.PAPER_ARTICLES if not a.post_cutoff] == ["2018 FIFA World Cup"]
    assert D.PINNED_TIMESTAMP == "2024-03-01T00:00:00Z"
    wiki = MockWikipedia(lambda title: api_answer(title, FIXTURE.read_text().replace("2023 Example Cup", title)))
    with wiki.client() as client:
        docs = D.load_documents("paper", client=client)
    assert [r.url.params["titles"] for r in wiki.requests] == [a.title for a in D.PAPER_ARTICLES]
    assert {r.url.params["rvstart"] for r in wiki.requests} == {D.PINNED_TIMESTAMP}
    assert docs.doc_ids() == [a.doc_id for a in D.PAPER_ARTICLES]
    assert docs.sources["fifa_world_cup_2018"]["post_cutoff"] is False
    assert docs.of("super_bowl_lvii")[0]["text"].startswith("The Super Bowl LVII was the fifth edition")
    dataset = D.documents_dataset(docs)
    assert dataset.column_names == ["doc_id", "title", "section", "text"] and len(dataset) == len(docs)
    assert all(dataset.features[c].dtype == "string" for c in dataset.column_names)


# ---------------------------------------------------------------------------------------
# A folder of your own documents
# ---------------------------------------------------------------------------------------
def test_folder_markdown_headings_split_sections(tmp_path):
    (tmp_path / "Team Handbook.md").write_text(
        "We build boats in Kiel since 1990.\n\n# Products\nThe Kiel 30 is our best-selling sailing yacht.\n"
        "## Prices\nThe Kiel 30 costs 80,000 euros in 2024.\n```\n# not a heading inside code, kept as text\n```\n"
        "# Staff\nForty people work at the yard in 2024.\n",
        encoding="utf-8",
    )
    (tmp_path / "notes.txt").write_text("A plain note without headings,\nlong enough to be kept.\n", encoding="utf-8")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")  # not a document
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "ignored.md").write_text("subfolders are not read, by design")
    docs = D.load_folder(tmp_path)
    assert docs.doc_ids() == ["team_handbook", "notes"]  # name order: "T" < "n"
    assert [(r["doc_id"], r["section"]) for r in docs] == [
        ("team_handbook", "Overview"),
        ("team_handbook", "Products"),
        ("team_handbook", "Products / Prices"),
        ("team_handbook", "Staff"),
        ("notes", "Overview"),
    ]
    assert docs[0]["title"] == "Team Handbook"
    assert "# not a heading inside code" in docs[2]["text"]
    assert docs[4]["text"] == "A plain note without headings,\nlong enough to be kept."
    assert len(docs.sources["notes"]["sha256"]) == 64
    assert D.load_documents(str(tmp_path)) == docs


def test_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(KilibError, match="does not exist"):
        D.load_folder(tmp_path / "missing")
    (tmp_path / "a.pdf").write_bytes(b"%PDF")
    with pytest.raises(KilibError, match="holds no .md or .txt file"):
        D.load_folder(tmp_path)
    (tmp_path / "empty.txt").write_text("  \n\n")
    with pytest.raises(KilibError, match="empty.txt is empty"):
        D.load_folder(tmp_path)
    (tmp_path / "empty.txt").unlink()
    (tmp_path / "latin1.md").write_bytes("first line is fine\nsecond: caf\xe9\n".encode("latin-1"))
    with pytest.raises(KilibError, match=r"latin1.md: line 2 \(column 12\) is not valid UTF-8"):
        D.load_folder(tmp_path)
    (tmp_path / "latin1.md").unlink()
    (tmp_path / "blob.md").write_bytes(b"looks like text\nthen\x00\x01\x02")  # valid UTF-8, yet binary
    with pytest.raises(KilibError, match="blob.md: line 2 holds a NUL byte, so it looks binary"):
        D.load_folder(tmp_path)
    (tmp_path / "blob.md").unlink()
    (tmp_path / "Cup 2023.md").write_text("The cup was won by the Rovers in 2023.")
    (tmp_path / "cup-2023.txt").write_text("The cup was won by the Rovers in 2023.")
    with pytest.raises(KilibError, match="both give document id 'cup_2023'"):
        D.load_folder(tmp_path)
