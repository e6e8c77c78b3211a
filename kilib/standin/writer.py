"""The stand-in for notebook 01's Q&A generator in a stand-in run.

Notebook 01 asks an instruct model (Qwen2.5-7B-Instruct in the paper profile; GPT-4 in the paper)
to write Q&A pairs and list atomic facts. A random-weight stand-in cannot follow an instruction: its
replies parse to nothing, and the study would stop with no training data. So while stand-ins are on,
the generator's role is taken by :class:`StandinWriter`, which answers kilib's three generation
prompts (:mod:`kilib.sft.qa_format`: a section's Q&A pairs, its atomic facts, a fact's Q&A pairs) in
their reply formats, from the prompt's own text: each sentence of a section is a fact, and a
question is the sentence with one word blanked (a number where it has one, else a name), asked in
one of a few wordings. It is synthetic data in the generator's format, as :mod:`kilib.standin.data`
is synthetic data in the datasets' formats: every step after it (parsing, de-duplication, the token
and fact budgets, training, answering, judging) runs the paper profile's code. The judge stays a
random-weight stand-in, whose unparseable verdicts the study counts as wrong.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

VERSION = "1"
NAME_PREFIX = "standin-writer:"
WORDINGS = (
    'In the article on {title}, what is missing from "{cloze}"?',
    'According to the article on {title}, what completes "{cloze}"?',
    'Which word or number fills the blank about {title}: "{cloze}"?',
    'What does the article on {title} give for the blank in "{cloze}"?',
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_NUMBER = re.compile(r"\b\d[\d,.]*\d\b|\b\d\b")
_NAME = re.compile(r"(?<!^)(?<![.!?]\s)\b[A-Z][a-z]{2,}\b")
_N = re.compile(r"Write (\d+) (?:different )?question-answer pairs")
MIN_FACT_WORDS = 5  # a shorter sentence is listed as skipped, as the prompt asks of unclear statements


class StandinWriter:
    """A generator (``name``, ``revision``, ``settings``, ``complete``) that writes format-true
    replies to kilib's Q&A prompts from their own text. ``model`` is the generator it stands in for;
    its name goes into the writer's, so cached sets name both."""

    def __init__(self, model: str) -> None:
        self.model = str(model)
        self.name = f"{NAME_PREFIX}{self.model}"
        self.revision = f"v{VERSION}"
        self.settings = {"backend": "standin-writer", "version": VERSION}
        self._asked: dict[str, int] = {}

    def complete(self, prompts: Sequence[str]) -> list[str]:
        return [self._reply(str(p)) for p in prompts]

    def _reply(self, prompt: str) -> str:
        title = _field(prompt, "Article")
        if "List the atomic facts" in prompt:
            lines = []
            for sentence in sentences(_section(prompt)):
                lines.append(sentence if len(sentence.split()) >= MIN_FACT_WORDS else f"SKIP: {sentence}")
            return "\n".join(lines)
        match = _N.search(prompt)
        if not match:
            return ""  # not a prompt this writer knows: no reply, which the caller counts as malformed
        n = int(match.group(1))
        fact = _field(prompt, "Fact")
        facts = [fact] if fact else [s for s in sentences(_section(prompt)) if len(s.split()) >= MIN_FACT_WORDS]
        if not facts:
            return ""
        # each request for the same text continues where the last one stopped, so that a section asked
        # again and again (the token-based rule asks until the pairs' tokens reach 10x the section's)
        # gets new questions: the next wording, then a numbered variant once every wording is used
        key = f"{title}|{fact or _section(prompt)}"
        start = self._asked.get(key, 0)
        self._asked[key] = start + n
        return "\n".join(_pair_line(title, facts, k) for k in range(start, start + n))


def sentences(text: str) -> list[str]:
    """The sentences of ``text``, whitespace collapsed."""
    return [" ".join(s.split()) for s in _SENTENCE.split(text) if s.strip()]


def blank(sentence: str) -> tuple[str, str]:
    """``(cloze, answer)``: ``sentence`` with its last number blanked, else its last name
    (a capitalised word not starting a sentence), else its last word."""
    found = list(_NUMBER.finditer(sentence)) or list(_NAME.finditer(sentence))
    if found:
        m = found[-1]
        return sentence[: m.start()] + "___" + sentence[m.end() :], m.group(0)
    words = sentence.rstrip(".!?").split()
    return " ".join(words[:-1] + ["___"]) + ".", words[-1]


def _pair_line(title: str, facts: list[str], k: int) -> str:
    cloze, answer = blank(facts[k % len(facts)])
    rounds = k // len(facts)
    wording = WORDINGS[rounds % len(WORDINGS)].format(title=title or "the subject", cloze=cloze)
    if rounds >= len(WORDINGS):
        wording += f" (variant {rounds // len(WORDINGS) + 1})"
    return json.dumps({"question": wording, "answer": answer}, ensure_ascii=False)


def _field(prompt: str, name: str) -> str:
    match = re.search(rf"^{name}: (.+)$", prompt, re.MULTILINE)
    return match.group(1).strip() if match else ""


def _section(prompt: str) -> str:
    parts = prompt.split("\n---\n")
    return parts[1] if len(parts) >= 3 else ""
