"""The RAG baseline's retriever: BM25 over document sections."""

import pytest

from kilib.lm.retrieval import SectionIndex
from kilib.runtime import KilibError
from kilib.tiny.world import generate_world


def test_rag_prompt_contains_the_retrieved_section_of_the_fact():
    world = generate_world(0, "smoke")
    doc_ids = list(world.post_cutoff_doc_ids) + [world.control_doc_id]
    rows = world.documents(doc_ids).to_list()
    index = SectionIndex.from_sections(rows)
    facts = [f for d in doc_ids for f in world.facts_of(d)]
    questions = [world.questions(f.id, "eval")[0] for f in facts]
    hits = index.search(questions, k=3)
    prompts = index.rag_prompts(questions, k=3)
    found = 0
    for fact, question, top, prompt in zip(facts, questions, hits, prompts):
        assert prompt.endswith(f"Question: {question}")
        assert all(index.passages[i] in prompt for i in top)
        found += any(
            index.ids[i] == f"{fact.doc_id}/{s.title}"
            for i in top
            for s in world.articles[fact.doc_id].sections
            if fact.id in s.fact_ids
        )
    # With titled passages BM25 finds a section stating the fact among the top 3 for nearly all
    # questions (0.98 on this world when written).
    assert found / len(facts) > 0.9


def test_empty_passages_are_refused():
    with pytest.raises(KilibError, match="no passages"):
        SectionIndex([])
    with pytest.raises(KilibError, match="passage 1 is empty"):
        SectionIndex(["the cup", "  "])


def test_long_sections_are_cut_into_passages_that_keep_their_section_id():
    text = " ".join(f"w{i}" for i in range(25))
    index = SectionIndex.from_sections(
        [
            {"doc_id": "d", "title": "T", "section": "S", "text": text},
            {"doc_id": "d", "title": "T", "section": "R", "text": "short one"},
        ],
        max_words=10,
    )
    assert index.ids == ["d/S"] * 3 + ["d/R"]
    assert [len(p.split(". ", 1)[1].split()) for p in index.passages] == [10, 10, 5, 2]
    assert " ".join(p.split(". ", 1)[1] for p in index.passages[:3]) == text  # nothing lost, nothing repeated
    assert len(SectionIndex.from_sections([{"doc_id": "d", "title": "T", "section": "S", "text": text}]).passages) == 1
