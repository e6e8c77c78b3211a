"""The stand-in Q&A writer: replies in the formats kilib's generation prompts ask for, parsed by
the same code a real generator's replies go through, and new questions each time a text is asked again."""

from kilib.lm.llm import fill_prompt
from kilib.lm.scoring import normalize_answer
from kilib.sft.qa_format import (
    FACT_QA_PROMPT,
    FACTS_PROMPT,
    TOKEN_QA_PROMPT,
    avoid_block,
    parse_fact_lines,
    parse_qa_reply,
)
from kilib.standin.writer import StandinWriter, blank

TEXT = (
    "The 2023 Meridian Cricket Cup was held in Ulmark from 5 October to 19 November. "
    "Ten teams took part. Corvinia beat Ulmark by 6 wickets in the final at Portvale. "
    "The tournament drew 1,250,000 spectators."
)


def test_blank_takes_the_last_number_else_a_name():
    assert blank("Corvinia beat Ulmark by 6 wickets in the final at Portvale.") == (
        "Corvinia beat Ulmark by ___ wickets in the final at Portvale.",
        "6",
    )
    assert blank("The final was played at Portvale.") == ("The final was played at ___.", "Portvale")
    assert blank("the teams played well again today.") == ("the teams played well again ___.", "today")


def test_section_pairs_parse_and_are_new_on_every_request():
    writer = StandinWriter("Qwen/Qwen2.5-7B-Instruct")
    assert writer.name == "standin-writer:Qwen/Qwen2.5-7B-Instruct"
    prompt = fill_prompt(
        TOKEN_QA_PROMPT, title="2023 Meridian Cricket Cup", section="Overview", text=TEXT, n=5, avoid=""
    )
    seen = set()
    for _ in range(4):
        pairs, malformed = parse_qa_reply(writer.complete([prompt])[0])
        assert len(pairs) == 5 and malformed == 0
        for question, answer in pairs:
            assert "2023 Meridian Cricket Cup" in question and normalize_answer(answer)
            assert normalize_answer(question) not in seen
            seen.add(normalize_answer(question))
    # every answer is the blanked word of a sentence of the section
    assert all(a in TEXT for q, a in pairs)


def test_facts_and_fact_pairs():
    writer = StandinWriter("m")
    prompt = fill_prompt(FACTS_PROMPT, title="T", section="Overview", text=TEXT)
    facts, skipped, malformed = parse_fact_lines(writer.complete([prompt])[0])
    assert facts == [s for s in facts if len(s.split()) >= 5] and skipped == ["Ten teams took part."]
    assert malformed == 0 and len(facts) == 3
    fact_prompt = fill_prompt(FACT_QA_PROMPT, title="T", fact=facts[1], n=10, avoid=avoid_block(["q?"]))
    pairs, malformed = parse_qa_reply(writer.complete([fact_prompt])[0])
    assert len(pairs) == 10 and malformed == 0 and {a for _, a in pairs} == {"6"}
    assert len({normalize_answer(q) for q, _ in pairs}) == 10


def test_an_unknown_prompt_gets_no_reply():
    assert StandinWriter("m").complete(["Tell me a joke."]) == [""]
