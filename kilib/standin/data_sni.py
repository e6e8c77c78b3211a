"""Generated Super-NaturalInstructions tasks for :mod:`kilib.standin.data`: a task is a made-up
name and a definition of 30 to 150 words in one of eleven task families (classification,
extraction, generation), and each instance an input and its target, drawn from a seeded
``random.Random``. The long-document families give the inputs a long tail (some past 2,000 words).
"""

from __future__ import annotations

import random

from kilib.standin.data_text import NOUNS, PLACES, VERBS, coined, long_tail_words, person, prose, sentence

# ---------------------------------------------------------------------------------------
# Super-NaturalInstructions: tasks with a definition and instances
# ---------------------------------------------------------------------------------------
_GUIDANCE = (
    "Do not add any explanation to your answer.",
    "Your answer must rest only on the information given in the input, not on outside knowledge.",
    "If more than one answer seems possible, give the one that is most specific.",
    "Pay attention to negations, since they can change the meaning of a sentence.",
    "The input may contain spelling mistakes; they should not change your answer.",
    "Some inputs are long, so read the whole input before you answer.",
    "Write the answer exactly as the options are written, with the same capitalization.",
    "Note that names of people, places and organizations in the input may be unfamiliar to you.",
    "A good answer is short, fluent and faithful to the input.",
    "Treat numbers written as words the same way as numbers written as digits.",
    "Avoid copying long stretches of the input into your answer unless the task asks for it.",
    "Ignore any formatting in the input such as line breaks or repeated spaces.",
)
_REVIEW = {
    "pos": (
        "The {thing} arrived early and works exactly as described.", "I would happily buy this {thing} again.",
        "Setting it up took only a few minutes and the instructions were clear.", "It feels sturdy and well made.",
        "My {relative} loved it and uses it every day.", "For the price, this {thing} is an excellent deal.",
    ),
    "neg": (
        "The {thing} stopped working after two weeks.", "I regret buying this {thing} and will return it.",
        "The instructions were confusing and a part was missing.", "It feels flimsy and cheaply made.",
        "My {relative} tried it once and gave up.", "For the price, I expected a much better {thing}.",
    ),
    "mixed": (
        "The box it came in was slightly damaged.", "Delivery took about a week.", "It comes in three colors.",
        "I bought it as a gift for my {relative}.", "The {thing} is a little heavier than I thought it would be.",
    ),
}  # fmt: skip
_THINGS = ("kettle", "lamp", "backpack", "blender", "phone case", "desk chair", "tent", "umbrella", "headset")
_RELATIVES = ("son", "daughter", "husband", "wife", "mother", "father", "neighbor")


def _review(rng: random.Random, label: str) -> str:
    words = {"thing": rng.choice(_THINGS), "relative": rng.choice(_RELATIVES)}
    picks = rng.sample(_REVIEW[label], rng.randint(2, 4)) + rng.sample(_REVIEW["mixed"], rng.randint(0, 3))
    rng.shuffle(picks)
    return " ".join(p.format(**words) for p in picks)


def _key_fact(rng: random.Random) -> tuple[str, str, str]:
    """(a sentence naming who led some work, the question it answers, the answer)."""
    who, noun, place = person(rng), rng.choice(NOUNS), rng.choice(PLACES)
    return f"{who} led the work on the {noun} in {place}.", f"Who led the work on the {noun} in {place}?", who


def _passage(rng: random.Random, words: int, fact: str | None) -> str:
    sentences = prose(rng, words).split(". ")
    if fact:
        sentences.insert(rng.randrange(len(sentences) + 1), fact.rstrip("."))
    return ". ".join(s.rstrip(".") for s in sentences) + "."


def _sni_sentiment(rng, labels):
    label = rng.choice(("pos", "neg"))
    return _review(rng, label), labels[label == "neg"]


def _sni_title(rng, _):
    body = prose(rng, long_tail_words(rng, 380, 0.8, 60, 3200), paragraph=4)
    return body, f"{rng.choice(PLACES)} {rng.choice(NOUNS)} {rng.choice(VERBS)} after {rng.randint(2, 30)} years"


def _sni_summary(rng, _):
    body = prose(rng, long_tail_words(rng, 950, 0.45, 300, 3200), paragraph=5)
    return body, body.split(". ")[0].rstrip(".") + "."


def _sni_extraction(rng, _):
    fact, question, answer = _key_fact(rng)
    return f"Passage: {_passage(rng, long_tail_words(rng, 260, 0.9, 40, 2600), fact)} Question: {question}", answer


def _sni_answerable(rng, labels):
    fact, question, _ = _key_fact(rng)
    yes = rng.random() < 0.5
    text = _passage(rng, long_tail_words(rng, 200, 0.7, 40, 2000), fact if yes else None)
    return f"Context: {text}\nQuestion: {question}", labels[not yes]


def _sni_filter(rng, labels):
    k = int(labels[0])
    values = [rng.randint(-99, 99) for _ in range(rng.randint(4, 14))]
    kept = [v for v in values if v % k]
    return f"[{', '.join(map(str, values))}]", f"[{', '.join(map(str, kept))}]"


def _sni_count(rng, labels):
    letter = labels[0]
    text = sentence(rng)
    count = sum(w.lower().startswith(letter) for w in text.split())
    return f"Sentence: '{text}'. Count the number of words in the sentence that start with the letter '{letter}'.", str(
        count
    )


def _sni_question(rng, _):
    noun, place, verb, year = rng.choice(NOUNS), rng.choice(PLACES), rng.choice(VERBS), rng.randint(1900, 2022)
    return f"Fact: the {noun} in {place} was {verb} in {year}.", f"When was the {noun} in {place} {verb}?"


def _sni_acceptability(rng, labels):
    words = sentence(rng).rstrip(".").split()
    good = rng.random() < 0.5
    if not good:
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words) + ".", labels[not good]


def _sni_topic(rng, labels):
    body = prose(rng, long_tail_words(rng, 600, 0.6, 120, 3000), paragraph=4)
    return body, rng.choice(labels)


def _sni_paraphrase(rng, labels):
    first = sentence(rng)
    same = rng.random() < 0.5
    second = first.replace(" the ", " that ", 1) if same else sentence(rng)
    return f"Sentence 1: {first} Sentence 2: {second}", labels[not same]


# stem -> (definition, how it makes an instance, answer-label choices)
SNI_FAMILIES = {
    "sentiment_classification": (
        "In this task, you are given a review of a product from an online store. Your task is to classify the "
        'review as "{0}" if its overall sentiment is positive or as "{1}" if it is negative.',
        _sni_sentiment,
        (("POS", "NEG"), ("Positive", "Negative"), ("Good", "Bad")),
    ),
    "title_generation": (
        "In this task, you are given a news article. Your task is to generate a title for the article. A title "
        "should be short, under fifteen words, and should name the main subject of the article.",
        _sni_title,
        ((),),
    ),
    "document_summarization": (
        "In this task, you are given a long document made of several paragraphs. Your task is to write a "
        "one-sentence summary that states the main point of the document.",
        _sni_summary,
        ((),),
    ),
    "answer_extraction": (
        "In this task, you are given a passage and a question about it. Your task is to answer the question "
        "with a span of the passage: copy the words that answer it.",
        _sni_extraction,
        ((),),
    ),
    "answerability_classification": (
        'In this task, you are given a context passage and a question. Answer "{0}" if the passage contains '
        'the information needed to answer the question, and "{1}" otherwise.',
        _sni_answerable,
        (("Yes", "No"), ("True", "False")),
    ),
    "list_filtering": (
        "In this task you will be given a list of integers. You should remove every integer that is divisible "
        "by {0}. If every integer is divisible by {0}, an empty list should be returned. The answer is a list "
        "of integers in brackets, separated by commas, in their original order.",
        _sni_filter,
        (("3",), ("4",), ("5",)),
    ),
    "letter_counting": (
        "In this task, you need to count the number of words in a sentence that start with the given letter. "
        "Answer with a number in digits.",
        _sni_count,
        (("t",), ("a",), ("s",)),
    ),
    "question_generation": (
        "In this task, you are given a fact. Your task is to write a question that can be answered by the fact. "
        "The question should not contain the answer itself.",
        _sni_question,
        ((),),
    ),
    "grammar_acceptability": (
        'In this task, you are given a sentence. Answer "{0}" if the sentence is grammatical and fluent, and '
        '"{1}" if the word order makes it ungrammatical.',
        _sni_acceptability,
        (("acceptable", "unacceptable"),),
    ),
    "topic_classification": (
        "In this task, you are given an article. Classify the article into one of these topics: {0}, {1}, {2} "
        "or {3}. Answer with the topic's name only.",
        _sni_topic,
        (("Culture", "Business", "Politics", "Transport"), ("Local news", "Economy", "Science", "Sport")),
    ),
    "paraphrase_identification": (
        'In this task, you are given two sentences. Answer "{0}" if the second sentence says the same as the '
        'first, and "{1}" otherwise.',
        _sni_paraphrase,
        (("Yes", "No"),),
    ),
}
_SOURCES = ("news", "reviews", "qa", "wiki", "forum", "mail", "quiz", "stories")


def sni_task(rng: random.Random, number: int, index: int) -> dict:
    """A task: ``task_name`` (``task<number>_<source>_<family>``), a ``definition`` of 30 to
    150 words, its family (the ``index``-th, cycling) and answer labels."""
    stem = list(SNI_FAMILIES)[index % len(SNI_FAMILIES)]
    template, _, choices = SNI_FAMILIES[stem]
    labels = rng.choice(choices)
    words, target = template.format(*labels).split(), rng.randint(30, 132)
    for extra in rng.sample(_GUIDANCE, len(_GUIDANCE)):  # the longest adds 17 words: 30 to 148 in all
        if len(words) >= target:
            break
        words += extra.split()
    return {
        "task_name": f"task{number:03d}_{coined(rng, 2)}{rng.choice(_SOURCES)}_{stem}",
        "number": number,
        "definition": " ".join(words),
        "family": stem,
        "labels": labels,
    }


def sni_row(rng: random.Random, task: dict) -> dict:
    """One instance of ``task`` in the Hub's fields: task_name, id, definition, inputs, targets."""
    inputs, targets = SNI_FAMILIES[task["family"]][1](rng, task["labels"])
    return {
        "task_name": task["task_name"],
        "id": f"task{task['number']:03d}-{rng.getrandbits(128):032x}",
        "definition": task["definition"],
        "inputs": inputs,
        "targets": targets,
    }
