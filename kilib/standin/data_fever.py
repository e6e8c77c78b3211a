"""Generated FEVER pages and claims for :mod:`kilib.standin.data`: made-up people, films, bands
and towns, each with a page of lead sentences written as FEVER's 2017 wiki dump writes them
(tokenized, ``-LRB-`` for "(", ids with ``_``), and claims about them labelled SUPPORTS, REFUTES or
NOT ENOUGH INFO with evidence in copenlu/fever_gold_evidence's form, ``[page id, sentence number,
sentence]``.
"""

from __future__ import annotations

import random

from kilib.standin.data_text import COUNTRIES, FIRST_NAMES, LAST_NAMES, MONTHS, PLACES, coined

_OCCUPATIONS = ("actor", "singer", "footballer", "novelist", "politician", "painter", "chef", "architect")
_GENRES = ("drama", "comedy", "thriller", "science fiction", "musical", "war", "horror", "documentary")
_MUSIC = ("rock", "folk", "jazz", "electronic", "punk", "pop", "metal", "soul")
_TITLE_ADJ = ("Glass", "Silent", "Northern", "Last", "Hollow", "Burning", "Paper", "Iron", "Velvet", "Quiet", "Amber")
_TITLE_NOUN = ("Orchard", "Harbor", "Letters", "Crossing", "Winter", "Garden", "Lantern", "Tide", "Frontier", "Hours")
_RIVERS = ("Vell", "Arden", "Mottle", "Casp", "Lune", "Orrin")
_NEI = (
    "{name} has a twin sibling.",
    "{name} was once the subject of a radio documentary.",
    "{name} is mentioned in a song by a band from {place}.",
    "{name} was discussed in a newspaper column in {year}.",
    "{name} has been visited by more than a million tourists.",
)


def _fever(text: str) -> str:
    """Text as FEVER's dump tokenizes it: brackets as -LRB-/-RRB-, punctuation split off."""
    text = text.replace("(", "-LRB- ").replace(")", " -RRB-").replace("$", "$ ")
    for mark in (",", ".", ";", ":"):
        text = text.replace(mark + " ", f" {mark} ")
    return text[:-1] + " ." if text.endswith(".") else text


def _page_id(title: str) -> str:
    """A title as a FEVER page id: ``Gladiator (2000 film)`` -> ``Gladiator_-LRB-2000_film-RRB-``."""
    return title.replace(" ", "_").replace("(", "-LRB-").replace(")", "-RRB-")


def _a(word: str) -> str:
    return f"an {word}" if word[0].lower() in "aeiou" else f"a {word}"


def _other(rng: random.Random, options, value):
    return rng.choice([o for o in options if o != value])


def _person(rng: random.Random, taken: set[str]) -> dict:
    first, pron = rng.choice(FIRST_NAMES)
    name = f"{first} {rng.choice(LAST_NAMES)}"
    while name in taken:
        name = f"{coined(rng, 2).capitalize()} {rng.choice(LAST_NAMES)}"
    job, (country, demonym) = rng.choice(_OCCUPATIONS), rng.choice(COUNTRIES)
    title = f"{name} ({job})" if rng.random() < 0.15 else name
    year, place, awards = rng.randint(1930, 2000), rng.choice(PLACES), rng.randint(1, 9)
    pos = "Her" if pron == "she" else "His"
    sentences = [
        f"{name} (born {rng.choice(MONTHS)} {rng.randint(1, 28)}, {year}) is {_a(demonym)} {job}.",
        f"{pron.capitalize()} was born in {place}, {country}.",
        f"{pos} first major work appeared in {year + rng.randint(18, 30)}.",
        f"{pron.capitalize()} has won {awards} {demonym} national awards.",
        f"In {year + rng.randint(31, 40)}, {pron} moved to {rng.choice(PLACES)}.",
    ]
    claims = [
        (0, f"{name} was born in {year}.", f"{name} was born in {year + rng.choice((-7, -3, 2, 5, 11))}."),
        (0, f"{name} is {_a(job)}.", f"{name} is only {_a(_other(rng, _OCCUPATIONS, job))}."),
        (1, f"{name} was born in {country}.", f"{name} was born in {_other(rng, COUNTRIES, (country, demonym))[0]}."),
        (3, f"{name} has won an award.", f"{name} has never won an award."),
    ]
    return {"title": title, "name": name, "sentences": sentences, "claims": claims}


def _film(rng: random.Random, taken: set[str]) -> dict:
    name = f"The {rng.choice(_TITLE_ADJ)} {rng.choice(_TITLE_NOUN)}"
    year, genre, (_, demonym) = rng.randint(1950, 2016), rng.choice(_GENRES), rng.choice(COUNTRIES)
    title = f"{name} ({year} film)" if name in taken or rng.random() < 0.5 else name
    director, star = (f"{rng.choice(FIRST_NAMES)[0]} {rng.choice(LAST_NAMES)}" for _ in range(2))
    sentences = [
        f"{name} is a {year} {demonym} {genre} film directed by {director}.",
        f"It stars {star} and {rng.choice(FIRST_NAMES)[0]} {rng.choice(LAST_NAMES)}.",
        f"The film was shot in {rng.choice(PLACES)} over {rng.randint(5, 20)} weeks.",
        f"It was released on {rng.choice(MONTHS)} {rng.randint(1, 28)}, {year}.",
        f"The film grossed ${rng.randint(2, 300)} million worldwide.",
    ]
    claims = [
        (0, f"{name} is a {genre} film.", f"{name} is a {_other(rng, _GENRES, genre)} film."),
        (0, f"{name} was directed by {director}.", f"{name} was directed by {star}."),
        (1, f"{star} starred in {name}.", f"{star} has never appeared in a film."),
        (0, f"{name} was released in the {year // 10 * 10}s.", f"{name} was released in {year + 12}."),
    ]
    return {"title": title, "name": name, "sentences": sentences, "claims": claims}


def _band(rng: random.Random, taken: set[str]) -> dict:
    name = f"{rng.choice(_TITLE_ADJ)} {rng.choice(_TITLE_NOUN)}"
    title = f"{name} (band)" if name in taken or rng.random() < 0.6 else name
    year, genre, place = rng.randint(1960, 2012), rng.choice(_MUSIC), rng.choice(PLACES)
    members = [f"{rng.choice(FIRST_NAMES)[0]} {rng.choice(LAST_NAMES)}" for _ in range(3)]
    album = f"{rng.choice(_TITLE_ADJ)} {rng.choice(_TITLE_NOUN)}"
    sentences = [
        f"{name} are a {genre} band formed in {place} in {year}.",
        f"The band consists of {members[0]}, {members[1]} and {members[2]}.",
        f"Their debut album, {album}, was released in {year + rng.randint(1, 4)}.",
        f"The band has toured {rng.choice(COUNTRIES)[0]} {rng.randint(2, 9)} times.",
    ]
    claims = [
        (0, f"{name} is a {genre} band.", f"{name} is a {_other(rng, _MUSIC, genre)} band."),
        (0, f"{name} was formed in {place}.", f"{name} was formed in {_other(rng, PLACES, place)}."),
        (1, f"{members[1]} is a member of {name}.", f"{name} is a solo project."),
        (2, f"{name} released an album called {album}.", f"{name} has never released an album."),
    ]
    return {"title": title, "name": name, "sentences": sentences, "claims": claims}


def _town(rng: random.Random, taken: set[str]) -> dict:
    name = coined(rng, rng.choice((2, 3))).capitalize()
    while name in taken:
        name = coined(rng, 3).capitalize()
    (country, _), river, people = rng.choice(COUNTRIES), rng.choice(_RIVERS), rng.randint(2, 900) * 100
    kind = "city" if people > 50_000 else "town"
    sentences = [
        f"{name} is a {kind} in the {rng.choice(('northern', 'southern', 'eastern', 'western'))} part of {country}.",
        f"As of the 2011 census, it had a population of {people:,}.",
        f"It lies on the River {river}.",
        f"{name} is twinned with {rng.choice(PLACES)}.",
    ]
    claims = [
        (0, f"{name} is in {country}.", f"{name} is in {_other(rng, COUNTRIES, (country, _))[0]}."),
        (
            1,
            f"{name} has more than {people // 2:,} inhabitants.",
            f"{name} has fewer than {people // 4:,} inhabitants.",
        ),
        (2, f"{name} lies on a river.", f"{name} has no river."),
    ]
    title = f"{name}, {country}" if rng.random() < 0.3 else name
    return {"title": title, "name": name, "sentences": sentences, "claims": claims}


def fever_entities(rng: random.Random, n: int) -> list[dict]:
    """``n`` made-up entities, each with ``id`` (a FEVER page id, unique), ``title``,
    ``sentences`` (the page's lead, tokenized as FEVER's dump) and ``claims`` (sentence number,
    a claim the sentence supports, one it refutes)."""
    out, taken, ids = [], set(), set()
    makers = (_person, _person, _film, _band, _town)
    while len(out) < n:
        entity = rng.choice(makers)(rng, taken)
        entity["id"] = _page_id(entity["title"])
        if entity["id"] in ids:
            continue
        taken.add(entity["name"])
        ids.add(entity["id"])
        entity["sentences"] = [_fever(s) for s in entity["sentences"]]
        out.append(entity)
    return out


def page_row(entity: dict, empty: bool = False) -> dict:
    """A wiki-pages row: ``id``, ``text`` (the sentences joined) and ``lines`` (``<n>\\t<sentence>``
    per line); ``empty``: a page with no text, as some of the dump's pages are."""
    if empty:
        return {"id": entity["id"], "text": "", "lines": ""}
    lines = "\n".join(f"{i}\t{s}" for i, s in enumerate(entity["sentences"]))
    return {"id": entity["id"], "text": " ".join(entity["sentences"]), "lines": lines}


def claim_row(rng: random.Random, claim_id: int, entity: dict, label: str) -> dict:
    """A copenlu/fever_gold_evidence row about ``entity``: SUPPORTS and REFUTES claims cite the
    sentence they rest on (now and then a second sentence of the page); NOT ENOUGH INFO claims
    cite a sentence of the page that does not settle them, as that dataset samples evidence for them."""
    line, supported, refuted = rng.choice(entity["claims"])
    sentences = entity["sentences"]
    if label == "NOT ENOUGH INFO":
        claim = rng.choice(_NEI).format(name=entity["name"], place=rng.choice(PLACES), year=rng.randint(1990, 2016))
        line = rng.randrange(len(sentences))
    else:
        claim = supported if label == "SUPPORTS" else refuted
    evidence = [[entity["id"], line, sentences[line]]]
    if label != "NOT ENOUGH INFO" and rng.random() < 0.15:
        extra = rng.choice([i for i in range(len(sentences)) if i != line])
        evidence.append([entity["id"], extra, sentences[extra]])
    return {
        "id": claim_id,
        "verifiable": "NOT VERIFIABLE" if label == "NOT ENOUGH INFO" else "VERIFIABLE",
        "label": label,
        "claim": claim,
        "evidence": evidence,
    }
