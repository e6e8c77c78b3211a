"""BM25 retrieval over document sections: the RAG baseline of Mecklenburg et al.

The paper's RAG baseline "leverages the cleaned document sections to answer the eval
questions"; its retriever is not given. kilib uses BM25 (the ``bm25s`` package) over the
same sections the Q&A sets are built from, and puts the top-k passages before the question
(:func:`kilib.lm.data.qa_prompt`). A passage starts with its article's title and section name,
as Wikipedia passages do in retrieval benchmarks: a section such as "Final" rarely repeats
the edition's name, which the question always holds.
"""

from __future__ import annotations

from collections.abc import Sequence

from kilib.lm.data import qa_prompt
from kilib.runtime import KilibError


class SectionIndex:
    """A BM25 index over passages (one per document section)."""

    def __init__(self, passages: Sequence[str], ids: Sequence[str] | None = None):
        import bm25s

        passages = list(passages)
        if not passages:
            raise KilibError("no passages to index: the documents have no non-empty sections")
        empty = [i for i, p in enumerate(passages) if not str(p).strip()]
        if empty:
            raise KilibError(f"passage {empty[0]} is empty: clean the document sections before indexing")
        self.passages = passages
        self.ids = list(ids) if ids is not None else [str(i) for i in range(len(passages))]
        self._bm25s = bm25s
        self._index = bm25s.BM25()
        self._index.index(self._tokenize(passages), show_progress=False)

    @classmethod
    def from_sections(cls, rows, max_words: int = 0) -> SectionIndex:
        """An index over document sections: rows with ``doc_id``, ``title``, ``section`` and
        ``text`` (the fields of ``World.documents()`` and of the paper-profile loaders).

        ``max_words > 0`` cuts longer sections into consecutive passages of at most that many
        words (a long Wikipedia section would otherwise fill a model's context); each passage
        keeps its section's id, ``"<doc_id>/<section>"``."""
        rows = rows.to_list() if hasattr(rows, "to_list") else list(rows)
        passages, ids = [], []
        for r in rows:
            words = r["text"].split()
            step = max_words if max_words > 0 else max(1, len(words))
            for start in range(0, max(1, len(words)), step):
                passages.append(passage_text(r["title"], r["section"], " ".join(words[start : start + step])))
                ids.append(f"{r['doc_id']}/{r['section']}")
        return cls(passages, ids=ids)

    def _tokenize(self, texts: Sequence[str]):
        # No stopword list: the questions' content words ("won", "final") carry the match.
        return self._bm25s.tokenize(list(texts), stopwords=None, show_progress=False)

    def search(self, queries: Sequence[str], k: int = 1) -> list[list[int]]:
        """Indices of the top-``k`` passages for each query, best first."""
        k = min(k, len(self.passages))
        docs, _ = self._index.retrieve(self._tokenize(queries), k=k, show_progress=False)
        return [[int(i) for i in row] for row in docs]

    def rag_prompts(self, questions: Sequence[str], k: int = 1) -> list[str]:
        """Each question preceded by its top-``k`` retrieved passages."""
        return [qa_prompt(q, [self.passages[i] for i in hits]) for q, hits in zip(questions, self.search(questions, k))]


def passage_text(title: str, section: str, text: str) -> str:
    """A section as a retrievable passage: ``"<title>, <section>. <text>"``."""
    return f"{title}, {section}. {text.strip()}"
