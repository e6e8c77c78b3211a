"""Generated text for :mod:`kilib.standin.data`: the word lists and prose maker the other
generators share, and the rows of the GSM8K and MMLU stand-ins, each drawn from a
``random.Random`` the caller seeds, so the same seed gives the same text.

Every name, place and event here is made up from the lists below; none is a fact about the world.
"""

from __future__ import annotations

import math
import random
import re
import string

FIRST_NAMES = (
    ("Mara", "she"), ("Tobin", "he"), ("Ilse", "she"), ("Corin", "he"), ("Nadia", "she"), ("Oren", "he"),
    ("Priya", "she"), ("Lucan", "he"), ("Selma", "she"), ("Dario", "he"), ("Wren", "she"), ("Hollis", "he"),
    ("Anouk", "she"), ("Emeric", "he"), ("Talia", "she"), ("Bram", "he"), ("Odile", "she"), ("Kaspar", "he"),
    ("Ysolde", "she"), ("Marek", "he"), ("Fenna", "she"), ("Joachim", "he"), ("Liesel", "she"), ("Quill", "he"),
)  # fmt: skip
LAST_NAMES = (
    "Verrane", "Holloway", "Castellan", "Okonjo", "Brannigan", "Szeto", "Lindqvist", "Marchetti", "Adeyemi",
    "Korvin", "Ashdown", "Pellegrin", "Navarro", "Whitlock", "Ferreira", "Halvorsen", "Quenneville", "Abara",
    "Draycott", "Mistral", "Oyelaran", "Vasquez-Linn", "Thorne-Aldous", "Kemble",
)  # fmt: skip
PLACES = (
    "Orvale", "Kestrel Bay", "Dunmore Falls", "Lanthorn", "Brightwater", "Calder Ridge", "Port Avery", "Mirefield",
    "Ashgrove", "Vellmouth", "Stonemarch", "Harrowgate", "Saltreach", "Eldham", "Greywick", "Thornbury Cross",
)  # fmt: skip
# (country, demonym): invented states the stand-in texts are set in
COUNTRIES = (
    ("Aldoria", "Aldorian"), ("Kestovia", "Kestovian"), ("Velmora", "Velmoran"), ("Drovania", "Drovanian"),
    ("Sarneth", "Sarnethi"), ("Ulmark", "Ulmarkish"), ("Corvinia", "Corvinian"), ("East Pellmar", "Pellmari"),
)  # fmt: skip
ORGS = (
    "the Meridian Institute", "the Lanthorn City Council", "Northgate Bank", "the Aldorian Rail Authority",
    "the Harbor Freight Cooperative", "Kestrel Bay University", "the Velmoran Water Board", "Saltreach Media",
    "the Orvale Historical Society", "Greywick Motors", "the Drovanian Health Service", "Calder Ridge Energy",
)  # fmt: skip
NOUNS = (
    "bridge", "festival", "library", "railway", "survey", "reservoir", "market", "school", "museum", "ferry service",
    "stadium", "clinic", "archive", "orchestra", "vineyard", "observatory", "canal", "tram line", "harbor", "park",
)  # fmt: skip
VERBS = ("opened", "closed", "expanded", "renovated", "funded", "delayed", "approved", "inspected", "relocated")
ADJECTIVES = ("larger", "smaller", "busier", "cheaper", "older", "quieter", "more popular", "more expensive")
ROLES = (
    "the director", "a spokesperson", "the mayor", "the chief engineer", "a senior analyst", "the treasurer",
    "a local historian", "the head of planning",
)  # fmt: skip
MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November",
    "December",
)  # fmt: skip

_PROSE = (
    "{Org} {verb} the {noun} in {place} in {month} {year}.",
    "According to {person}, {role} of {org}, the {noun} is {adj} than it was {n} years ago.",
    "More than {big} people visited the {noun} during its first {n} weeks.",
    "The work cost about {n} million crowns and took {n2} months to complete.",
    "Critics argued that the {noun} in {place} should have been {verb} much earlier.",
    "{Person} said the decision would affect about {big} residents of {place}.",
    "In {year}, the council of {place} voted {n} to {n2} to approve the plan.",
    "Local newspapers described the {noun} as one of the most visited in {country}.",
    "Work on the {noun} resumed in {month} after a pause caused by heavy rain.",
    "The {noun} is run by {org}, which also manages a {noun2} in {place2}.",
    "Residents of {place2} had asked for a {noun2} of their own since {year}.",
    "{Person} noted that the {noun2} near {place} was {adj} than expected.",
    "A report published in {month} {year} counted {big} visitors and {n} complaints.",
    "The plan was first proposed by {person} at a public meeting in {place}.",
    "Since then, the {noun} has been {verb} twice, most recently in {year2}.",
    "Officials in {country} expect the number of visitors to grow by {n} percent next year.",
)


def person(rng: random.Random, pron: str = "") -> str:
    """A made-up full name; ``pron`` ("she" or "he"): a first name of that kind."""
    first = rng.choice([n for n, p in FIRST_NAMES if p == pron] if pron else FIRST_NAMES)
    return f"{first if pron else first[0]} {rng.choice(LAST_NAMES)}"


# how each slot of the prose templates is filled; ``n`` is the sentence's first number
_SLOTS = {
    "Org": lambda rng, n: rng.choice(ORGS).replace("the ", "The ", 1),
    "org": lambda rng, n: rng.choice(ORGS),
    "verb": lambda rng, n: rng.choice(VERBS),
    "noun": lambda rng, n: rng.choice(NOUNS),
    "noun2": lambda rng, n: rng.choice(NOUNS),
    "place": lambda rng, n: rng.choice(PLACES),
    "place2": lambda rng, n: rng.choice(PLACES),
    "country": lambda rng, n: rng.choice(COUNTRIES)[0],
    "month": lambda rng, n: rng.choice(MONTHS),
    "year": lambda rng, n: rng.randint(1950, 2022),
    "year2": lambda rng, n: rng.randint(1990, 2022),
    "person": lambda rng, n: person(rng),
    "Person": lambda rng, n: person(rng),
    "role": lambda rng, n: rng.choice(ROLES),
    "adj": lambda rng, n: rng.choice(ADJECTIVES),
    "n": lambda rng, n: n,
    "n2": lambda rng, n: rng.randint(1, n),
    "big": lambda rng, n: f"{rng.randint(2, 950) * 100:,}",
}
_PROSE_SLOTS = tuple(tuple(f for _, f, _, _ in string.Formatter().parse(t) if f) for t in _PROSE)
_AN = re.compile(r"\ba (?=[aeiou])")


def sentence(rng: random.Random) -> str:
    """One sentence of made-up news prose."""
    k, n = rng.randrange(len(_PROSE)), rng.randint(3, 40)
    text = _PROSE[k].format(**{f: _SLOTS[f](rng, n) for f in _PROSE_SLOTS[k]})
    return _AN.sub("an ", text)


def prose(rng: random.Random, words: int, paragraph: int = 0) -> str:
    """Sentences of :func:`sentence` until ``words`` words; ``paragraph`` > 0: a blank line every
    that many sentences."""
    out, count = [], 0
    while count < words:
        s = sentence(rng)
        out.append(s)
        count += len(s.split())
    if paragraph <= 0:
        return " ".join(out)
    return "\n\n".join(" ".join(out[i : i + paragraph]) for i in range(0, len(out), paragraph))


def long_tail_words(rng: random.Random, median: float, sigma: float, low: int, high: int) -> int:
    """A word count drawn from a log-normal distribution around ``median``, kept in [low, high]."""
    return int(min(high, max(low, math.exp(rng.gauss(math.log(median), sigma)))))


# ---------------------------------------------------------------------------------------
# GSM8K: grade-school word problems with calculator annotations
# ---------------------------------------------------------------------------------------
_OBJECTS = (
    "stickers", "marbles", "pencils", "cupcakes", "seashells", "books", "apples", "trading cards", "beads",
    "postcards", "stamps", "toy cars", "buttons", "cookies",
)  # fmt: skip
_FILLERS = (
    "{Name} keeps them in a {color} box under {pos} bed.",
    "{Pron} has been collecting them since {pron} was {age} years old.",
    "{Pos} favorite ones are the {color} ones that {pos} grandmother gave {obj_pron}.",
    "Every weekend {pron} sorts them by size and counts them twice.",
    "{Pos} friend {friend} collects them too, but has far fewer.",
    "{Pron} wants to show them at the school fair next month.",
)
_COLORS = ("blue", "green", "red", "yellow", "wooden", "striped", "silver")
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _pronouns(pron: str) -> dict[str, str]:
    pos, obj = ("her", "her") if pron == "she" else ("his", "him")
    return {"pron": pron, "Pron": pron.capitalize(), "pos": pos, "Pos": pos.capitalize(), "obj_pron": obj}


def _step(a: int, op: str, b: int) -> tuple[str, int]:
    """``a op b = <<a op b=c>>c`` as GSM8K writes a calculator step, and c."""
    c = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
    return f"{a} {op} {b} = <<{a}{op}{b}={c}>>{c}", c


def _gsm_collection(rng: random.Random) -> tuple[str, list[str], int]:
    """A collection that grows and shrinks over a few events; 2 to 8 steps."""
    name, pron = rng.choice(FIRST_NAMES)
    words = dict(_pronouns(pron), Name=name, color=rng.choice(_COLORS), age=rng.randint(5, 9))
    words["friend"] = rng.choice([n for n, _ in FIRST_NAMES if n != name])
    obj, v = rng.choice(_OBJECTS), rng.randint(12, 90)
    text = [f"{name} has {v} {obj}."]
    lines: list[str] = []
    target, money = rng.choice((2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 6, 7, 8)), rng.random() < 0.35
    while len(lines) < target - money:
        day = rng.choice(_DAYS)
        kind = rng.choice(("add", "packs", "give", "fraction", "grow", "percent"))
        if kind == "add" or v < 8:
            k = rng.randint(3, 40)
            text.append(f"On {day}, {pron} got {k} more {obj} from {words['friend']}.")
            step, v = _step(v, "+", k)
            lines.append(f"After {day}, {name} had {step} {obj}.")
        elif kind == "packs" and len(lines) + 2 <= target - money:
            g, s = rng.randint(2, 6), rng.randint(3, 12)
            text.append(f"Then {pron} bought {g} packs of {obj} with {s} {obj} in each pack.")
            step, t = _step(g, "*", s)
            lines.append(f"The packs held {step} {obj}.")
            step, v = _step(v, "+", t)
            lines.append(f"So {pron} had {step} {obj}.")
        elif kind == "give":
            k = rng.randint(1, v // 2)
            text.append(f"{words['Pron']} gave {k} {obj} to {words['pos']} cousin on {day}.")
            step, v = _step(v, "-", k)
            lines.append(f"{name} had {step} {obj} left.")
        elif kind == "fraction" and len(lines) + 2 <= target - money:
            d = next((d for d in rng.sample((2, 3, 4, 5), 4) if v % d == 0), None)
            if d is None:
                continue
            text.append(f"{words['Pron']} donated {('half', 'a third', 'a quarter', 'a fifth')[d - 2]} of them.")
            step, x = _step(v, "/", d)
            lines.append(f"{words['Pron']} donated {step} {obj}.")
            step, v = _step(v, "-", x)
            lines.append(f"That left {step} {obj}.")
        elif kind == "grow" and v <= 400:
            m = rng.choice((2, 3))
            text.append(
                f"Over the summer, {words['pos']} collection grew to {('twice', 'three times')[m - 2]} its size."
            )
            step, v = _step(v, "*", m)
            lines.append(f"The collection grew to {step} {obj}.")
        elif kind == "percent" and len(lines) + 2 <= target - money:
            p = next((p for p in rng.sample((10, 20, 25, 50), 4) if v * p % 100 == 0), None)
            if p is None:
                continue
            x = v * p // 100
            text.append(f"{words['Pron']} sold {p}% of {words['pos']} {obj} at a yard sale.")
            lines.append(f"{words['Pron']} sold {v} * {p} / 100 = <<{v}*{p}/100={x}>>{x} {obj}.")
            step, v = _step(v, "-", x)
            lines.append(f"{words['Pron']} kept {step} {obj}.")
    if money:
        price = rng.randint(2, 9)
        text.append(f"If {pron} sells each of the {obj} {pron} has left for ${price}, how much money does {pron} make?")
        c = v * price
        lines.append(f"{words['Pron']} makes {v} * {price} = $<<{v}*{price}={c}>>{c}.")
    else:
        c = v
        text.append(f"How many {obj} does {name} have now?")
    fillers, length = rng.sample(_FILLERS, len(_FILLERS)), rng.randint(40, 52)
    while fillers and sum(len(t.split()) for t in text) < length:  # context sentences, as GSM8K's stories have
        text.insert(1, fillers.pop().format(**words))
    return " ".join(text), lines, c


_STORES = ("hardware store", "bakery", "craft shop", "farmers market", "bookshop", "garden center")
_ITEMS = (
    "notebooks", "paint brushes", "flower pots", "loaves of bread", "candles", "picture frames", "jars of honey",
    "packs of seeds", "rolls of tape", "boxes of tea",
)  # fmt: skip
_EVENTS = ("a school play", "her sister's birthday", "the neighborhood picnic", "a charity sale", "the art club")


def _gsm_shopping(rng: random.Random) -> tuple[str, list[str], int]:
    """A shopping trip: item totals, the sum, and perhaps the change; 3 to 5 steps."""
    name, pron = rng.choice(FIRST_NAMES)
    w = _pronouns(pron)
    (n1, i1), (n2, i2) = ((rng.randint(2, 9), i) for i in rng.sample(_ITEMS, 2))
    p1, p2 = rng.randint(2, 15), rng.randint(2, 15)
    text = [
        f"{name} went to the {rng.choice(_STORES)} to buy supplies for {rng.choice(_EVENTS)}.",
        f"{w['Pron']} bought {n1} {i1} for ${p1} each and {n2} {i2} for ${p2} each.",
    ]
    s1, c1 = _step(n1, "*", p1)
    s2, c2 = _step(n2, "*", p2)
    lines = [f"The {i1} cost {s1} dollars.", f"The {i2} cost {s2} dollars."]
    total_step, total = _step(c1, "+", c2)
    if rng.random() < 0.5:
        extra = rng.randint(3, 30)
        text.append(f"{w['Pron']} also paid ${extra} for a gift bag and a card.")
        s3, total = _step(c1 + c2, "+", extra)
        total_step = f"{c1} + {c2} + {extra} = <<{c1}+{c2}+{extra}={total}>>{total}"
    lines.append(f"In total {pron} spent {total_step} dollars.")
    if rng.random() < 0.6:
        bill = rng.choice((20, 50, 100))
        bills = total // bill + 1
        text.append(f"{w['Pron']} paid with {bills} ${bill} bills. How much change did {pron} get back?")
        paid_step, paid = _step(bills, "*", bill)
        lines.append(f"{w['Pron']} paid {paid_step} dollars.")
        change_step, change = _step(paid, "-", total)
        lines.append(f"So {pron} got {change_step} dollars back.")
        return " ".join(text), lines, change
    text.append(f"The shop was busy, so {pron} waited in line for a while. How much did {name} spend in all?")
    return " ".join(text), lines, total


def gsm_row(rng: random.Random) -> dict[str, str]:
    """One GSM8K-format row: ``question`` and ``answer`` (rationale lines, each calculator step
    annotated ``<<a*b=c>>``, then ``#### <answer>``)."""
    question, lines, answer = (_gsm_collection if rng.random() < 0.7 else _gsm_shopping)(rng)
    return {"question": question, "answer": "\n".join(lines) + f"\n#### {answer}"}


# ---------------------------------------------------------------------------------------
# MMLU: four-choice questions in 57 subjects
# ---------------------------------------------------------------------------------------
# The 57 subjects with the test split's row count in each (MMLU's test set: 14,042 rows).
MMLU_TEST_COUNTS = {
    "abstract_algebra": 100, "anatomy": 135, "astronomy": 152, "business_ethics": 100, "clinical_knowledge": 265,
    "college_biology": 144, "college_chemistry": 100, "college_computer_science": 100, "college_mathematics": 100,
    "college_medicine": 173, "college_physics": 102, "computer_security": 100, "conceptual_physics": 235,
    "econometrics": 114, "electrical_engineering": 145, "elementary_mathematics": 378, "formal_logic": 126,
    "global_facts": 100, "high_school_biology": 310, "high_school_chemistry": 203,
    "high_school_computer_science": 100, "high_school_european_history": 165, "high_school_geography": 198,
    "high_school_government_and_politics": 193, "high_school_macroeconomics": 390, "high_school_mathematics": 270,
    "high_school_microeconomics": 238, "high_school_physics": 151, "high_school_psychology": 545,
    "high_school_statistics": 216, "high_school_us_history": 204, "high_school_world_history": 237,
    "human_aging": 223, "human_sexuality": 131, "international_law": 121, "jurisprudence": 108,
    "logical_fallacies": 163, "machine_learning": 112, "management": 103, "marketing": 234, "medical_genetics": 100,
    "miscellaneous": 783, "moral_disputes": 346, "moral_scenarios": 895, "nutrition": 306, "philosophy": 311,
    "prehistory": 324, "professional_accounting": 282, "professional_law": 1534, "professional_medicine": 272,
    "professional_psychology": 612, "public_relations": 110, "security_studies": 245, "sociology": 201,
    "us_foreign_policy": 100, "virology": 166, "world_religions": 171,
}  # fmt: skip
MMLU_SUBJECTS = tuple(MMLU_TEST_COUNTS)
_MATH = {"abstract_algebra", "college_mathematics", "elementary_mathematics", "high_school_mathematics"}
_STATS = {"high_school_statistics", "econometrics"}
_TRUE_FALSE = {"abstract_algebra", "machine_learning", "college_computer_science"}
_PASSAGE = {"high_school_european_history", "high_school_us_history", "high_school_world_history"}
_SYLLABLES = ("ka", "lo", "ven", "dra", "mi", "sor", "tel", "qua", "ri", "bel", "nox", "the", "pra", "lin", "go")
_STEMS = (
    "Which of the following best describes {term} in {field}?",
    "Which of the following is most closely associated with {term}?",
    "According to the {name} model of {term}, which of the following is true?",
    "In {field}, {term} is primarily used to",
    "Which of the following would most likely increase {term}?",
    "A researcher studying {term} observes an unexpected result. Which of the following explains it best?",
    "{Name} argued that {term} depends on which of the following?",
    "Which of the following is NOT a feature of {term}?",
)
_OPTIONS = (
    "a decrease in {term}", "the {name} effect", "an increase in {term} over time", "the {name} principle",
    "a stable {term} under pressure", "the interaction of {term} with its surroundings", "none of the other options",
    "a temporary shift toward {term}", "the absence of {term}", "a gradual loss of {term}", "the {name} criterion",
)  # fmt: skip


def coined(rng: random.Random, parts: int = 3) -> str:
    """A made-up word of ``parts`` syllables."""
    return "".join(rng.choice(_SYLLABLES) for _ in range(parts))


def _answer_choices(rng: random.Random, right: str, wrong: list[str]) -> tuple[list[str], int]:
    """Four distinct choices with ``right`` at a random index."""
    pool = [w for w in dict.fromkeys(wrong) if w != right][:3]
    answer = rng.randrange(4)
    return pool[:answer] + [right] + pool[answer:], answer


def _numbers(rng: random.Random, right: int) -> tuple[list[str], int]:
    offsets = rng.sample([-3, -2, -1, 1, 2, 3, 4, 5, 6, 10], 6)
    return _answer_choices(rng, str(right), [str(right + d) for d in offsets])


def _math_question(rng: random.Random, subject: str) -> tuple[str, list[str], int]:
    kind = rng.randrange(3)
    if subject == "abstract_algebra" and kind == 0:
        n = rng.choice((6, 8, 9, 10, 12, 14, 15, 18, 20, 24))
        a = rng.randint(1, n - 1)
        question = f"Find the order of the element {a} in the additive group Z_{n}."
        return (question, *_numbers(rng, n // math.gcd(a, n)))
    if kind == 0:
        x, a, b = rng.randint(-9, 12), rng.randint(2, 9), rng.randint(-20, 30)
        question = f"Find the value of x that satisfies {a}x + {b} = {a * x + b}."
        return (question, *_numbers(rng, x))
    if kind == 1:
        a, b, c = rng.randint(2, 30), rng.randint(2, 30), rng.randint(1, 50)
        question = f"What is the value of {a} * {b} - {c}?"
        return (question, *_numbers(rng, a * b - c))
    w, h = rng.randint(3, 20), rng.randint(3, 20)
    question = f"A rectangle has a length of {w} cm and a width of {h} cm. What is its perimeter, in centimeters?"
    return (question, *_numbers(rng, 2 * (w + h)))


def _stats_question(rng: random.Random) -> tuple[str, list[str], int]:
    k = rng.randint(4, 7)
    values = [rng.randint(1, 30) for _ in range(k - 1)]
    mean = rng.randint(max(values) // 2 + 1, 30)
    values.append(mean * k - sum(values))
    rng.shuffle(values)
    question = f"A sample of {k} observations has the values {', '.join(map(str, values))}. What is the sample mean?"
    return (question, *_numbers(rng, mean))


def mmlu_row(rng: random.Random, subject: str, long_share: float = 0.0) -> dict:
    """One MMLU-format row: ``question``, ``subject``, four ``choices`` and the right one's index
    ``answer``. History subjects open with a source passage, professional law and medicine pose a
    case, moral scenarios use MMLU's two-scenario form; ``long_share`` of the other rows carry a
    reading passage (the auxiliary training set's reading comprehension rows)."""
    field = subject.replace("_", " ") if subject else "general knowledge"
    term = f"{coined(rng)} {rng.choice(('index', 'response', 'structure', 'ratio', 'cycle', 'doctrine', 'rate'))}"
    name = coined(rng, 2).capitalize()
    if subject in _MATH and rng.random() < 0.8:
        question, choices, answer = _math_question(rng, subject)
    elif subject in _STATS and rng.random() < 0.6:
        question, choices, answer = _stats_question(rng)
    elif subject == "moral_scenarios":
        acts = [
            f"I {rng.choice(('returned', 'kept', 'borrowed', 'sold', 'hid'))} my neighbor's {rng.choice(_OBJECTS)[:-1]}"
            f" {rng.choice(('without asking', 'after thanking her', 'before the party', 'while she was away'))}."
            for _ in range(2)
        ]
        question = (
            "For which of these two scenarios does the main character (who uses I/me/my) do something clearly "
            "morally wrong, according to ordinary moral standards in the US as of 2020? "
            f"Scenario 1 | {acts[0]} Scenario 2 | {acts[1]}"
        )
        choices, answer = (
            ["Wrong, Wrong", "Wrong, Not wrong", "Not wrong, Wrong", "Not wrong, Not wrong"],
            rng.randrange(4),
        )
    elif subject in _TRUE_FALSE and rng.random() < 0.3:
        question = (
            f"Statement 1 | Every {term} has a {coined(rng)} bound. Statement 2 | The {name} map of a {term} is "
            f"always {rng.choice(('injective', 'finite', 'convex', 'linear'))}."
        )
        choices, answer = ["True, True", "False, False", "True, False", "False, True"], rng.randrange(4)
    else:
        stem = rng.choice(_STEMS).format(term=term, field=field, name=name, Name=name)
        if subject in _PASSAGE:
            stem = (
                "This question refers to the following information.\n"
                f"{prose(rng, long_tail_words(rng, 160, 0.4, 60, 420))}\n{stem}"
            )
        elif subject in ("professional_law", "professional_medicine") or rng.random() < long_share:
            stem = f"{prose(rng, long_tail_words(rng, 140, 0.5, 40, 480))}\n{stem}"
        options = [o.format(term=term, name=coined(rng, 2).capitalize()) for o in rng.sample(_OPTIONS, 6)]
        question, (choices, answer) = stem, _answer_choices(rng, options[0], options[1:])
    return {"question": question, "subject": subject, "choices": choices, "answer": answer}


def allocate(total: int, weights: dict[str, int], minimum: int = 0) -> dict[str, int]:
    """``total`` split over the keys in proportion to ``weights`` (largest remainders), each key
    getting at least ``minimum``."""
    keys = list(weights)
    base = {k: minimum for k in keys}
    left = total - minimum * len(keys)
    whole = sum(weights.values())
    shares = {k: left * weights[k] / whole for k in keys}
    for k in keys:
        base[k] += int(shares[k])
    rest = total - sum(base.values())
    for k in sorted(keys, key=lambda k: (-(shares[k] - int(shares[k])), keys.index(k)))[:rest]:
        base[k] += 1
    return base
