"""The generated world's datasets other than its articles (docs/tiny-world.md): FEVER-like
claims about its pages and the transfer study's task analogues (MMLU, AlpacaFarm, GSM8K,
Super-NI), as methods of :class:`kilib.tiny.world.World` through :class:`WorldTasks`.

Each method draws from its own seeded stream (``_rng(world seed, purpose, seed)``), so one
dataset never shifts another; ``datasets`` is imported when a dataset is built.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from typing import TYPE_CHECKING

from kilib.runtime import KilibError
from kilib.tiny.world_series import _NUM_TEAMS, _NUM_VENUES, _SPORTS, _rng
from kilib.tiny.world_text import (
    _GSM_OBJECTS,
    _OPEN_ENDED,
    CLAIM_LABELS,
    CLAIM_TEMPLATES,
    NEI_TEMPLATES,
    QUESTION_BASES,
    SNI_TASKS,
)

if TYPE_CHECKING:
    import datasets

# Object types: wrong answers (refutes, distractors) come from the same type, and for teams and
# players from the same series, so a wrong choice is never absurd.
_TEAM_RELATIONS = frozenset({"champion", "runner_up", "third_place", "fourth_place", "opening_match_winner", "team"})
_PERSON_RELATIONS = frozenset({"top_scorer", "player_of_tournament"})
_CITY_RELATIONS = frozenset({"host_city", "home_city", "city"})
_COUNTRY_RELATIONS = frozenset({"nationality", "country"})
_BIG_NUMBER_RELATIONS = frozenset({"attendance", "capacity"})
_YEAR_RELATIONS = frozenset({"founded_year", "birth_year"})

GSM_MAX = 50_000  # the problem space is far larger; this bounds rejection sampling
SNI_MAX = 50_000


def _check_n(n: int, maximum: int, what: str) -> None:
    if not isinstance(n, int) or n < 0:
        raise KilibError(f"{what}: n must be a non-negative integer, got {n!r}")
    if n > maximum:
        raise KilibError(
            f"{what}: asked for {n} distinct items but this world can make at most {maximum}; use n <= {maximum}"
        )


def _check_split(split: str) -> None:
    if split not in ("train", "eval"):
        raise KilibError(f"unknown split {split!r}: use 'train' or 'eval'")


def _dataset(rows: dict[str, list], types: dict[str, object]) -> datasets.Dataset:
    import datasets  # heavy (pyarrow, pandas): a world is generated and read without it

    features = datasets.Features(
        {
            k: datasets.Sequence(datasets.Value(t[0])) if isinstance(t, list) else datasets.Value(t)
            for k, t in types.items()
        }
    )
    return datasets.Dataset.from_dict(rows, features=features)


class WorldTasks:
    """Claims and task datasets, mixed into :class:`kilib.tiny.world.World`, whose data they
    read: ``articles``, ``facts``, ``_facts_by_doc``, ``_context``, ``_pools``, ``_given_names``
    and ``_post_only`` (``_post_only_re``)."""

    def _alternatives(self, fact) -> list[str]:
        """Wrong objects of the fact's type, in a fixed order (refutes claims, distractors).

        The relations are functional (one object per subject), so any other object is false."""
        rel, obj = fact.relation, fact.object
        ctx = self._context[fact.doc_id]
        if rel in _TEAM_RELATIONS:
            pool = list(ctx["teams"])
        elif rel in _PERSON_RELATIONS:
            pool = list(ctx["players"])
        elif rel in _CITY_RELATIONS:
            pool = list(self._pools["cities"])
        elif rel == "final_venue":
            pool = list(self._pools["venues"])
        elif rel in _COUNTRY_RELATIONS:
            pool = list(self._pools["countries"])
        elif rel == "position":
            pool = list(ctx["positions"]) + [p for s in _SPORTS for p in s.positions if p not in ctx["positions"]]
        elif rel == "num_teams":
            pool = [str(v) for v in _NUM_TEAMS]
        elif rel == "num_venues":
            pool = [str(v) for v in _NUM_VENUES]
        elif rel == "top_scorer_goals":
            lo, hi = _SPORTS[ctx["series"]].top_score
            pool = [str(v) for v in range(lo, hi + 1)]
        elif rel == "final_score":
            win, loss = (int(x) for x in obj.split("-"))
            pairs = [
                (win + 1, loss),
                (win, loss + 1),
                (win + 2, loss),
                (win - 1, loss),
                (win + 1, loss + 1),
                (win, loss - 1),
                (win + 2, loss + 1),
                (win + 3, loss),
            ]
            pool = [f"{a}-{b}" for a, b in pairs if a > b >= 0]
        elif rel in _BIG_NUMBER_RELATIONS:
            v = int(obj)
            pool = [str(v + d * 100) for k in range(1, 16) for d in (k, -k) if v + d * 100 > 0]
        elif rel in _YEAR_RELATIONS:
            v = int(obj)
            pool = [str(v + d) for k in range(1, 8) for d in (k, -k)]
        else:  # pragma: no cover - every relation is typed above
            raise KilibError(f"relation {rel!r} has no object type")
        out: list[str] = []
        for cand in pool:
            if cand != obj and cand not in out and not (fact.period == "pre" and cand in self._post_only):
                out.append(cand)
        return out

    def claims(self, doc_ids: Iterable[str] | None = None, per_page: int = 3, seed: int = 0) -> datasets.Dataset:
        """FEVER-like claims about pages (docs/methods.md §4), ``per_page`` per page.

        Labels cycle supports / refutes / not enough info from a seeded offset, so labels are
        balanced across pages. supports: a true fact in a claim phrasing; refutes: the same with
        the object swapped for another of its type (same series for teams and players);
        not enough info: a relation no page states. ``doc_ids=None`` means every article,
        post-cutoff ones included: pass :meth:`pretraining_doc_ids` for pretraining material.
        ``fact_id`` is "" for not-enough-info claims."""
        pages = self._check_doc_ids(doc_ids)
        if not isinstance(per_page, int) or per_page < 0:
            raise KilibError(f"claims: per_page must be a non-negative integer, got {per_page!r}")
        capacity = min((self.claim_capacity(d) for d in pages), default=0)
        if math.ceil(per_page / 3) > capacity:
            raise KilibError(
                f"claims: per_page={per_page} is more than these pages allow; use per_page <= {3 * capacity}"
            )
        rng = _rng(self.seed, "claims", seed)
        cols = ("claim", "label", "page", "doc_id", "fact_id")
        rows: dict[str, list] = {c: [] for c in cols}
        for d in pages:
            article = self.articles[d]
            facts = self._facts_by_doc.get(d, [])
            offset = rng.randrange(3)
            labels = [CLAIM_LABELS[(i + offset) % 3] for i in range(per_page)]
            pairs = [(f, t) for f in facts for t in CLAIM_TEMPLATES[f.relation]]
            supports = rng.sample(pairs, labels.count("supports"))
            refutes = rng.sample(pairs, labels.count("refutes"))
            nei = rng.sample(NEI_TEMPLATES[article.kind], labels.count("not enough info"))
            for label in labels:
                if label == "supports":
                    f, t = supports.pop(0)
                    claim, fid = self._claim_text(f, t, f.object), f.id
                elif label == "refutes":
                    f, t = refutes.pop(0)
                    claim, fid = self._claim_text(f, t, rng.choice(self._alternatives(f))), f.id
                else:
                    claim, fid = nei.pop(0)[1].format(s=article.title), ""
                for c, v in zip(cols, (claim, label, article.title, d, fid)):
                    rows[c].append(v)
        return _dataset(rows, {c: "string" for c in cols})

    def claim_capacity(self, doc_id: str) -> int:
        """How many claims of each label one page can host: :meth:`claims` takes up to three
        times this per page (its claim phrasings and its not-enough-info relations bound it)."""
        self._check_doc_ids([doc_id])
        return min(
            sum(len(CLAIM_TEMPLATES[f.relation]) for f in self._facts_by_doc.get(doc_id, [])),
            len(NEI_TEMPLATES[self.articles[doc_id].kind]),
        )

    def _claim_text(self, fact, template: str, obj: str) -> str:
        text = template.format(s=fact.subject, o=obj, unit=self._context[fact.doc_id].get("unit", ""))
        return text[0].upper() + text[1:]

    def mmlu(self, n: int, seed: int) -> datasets.Dataset:
        """Four-choice questions on pre-cutoff facts (MMLU analogue, docs/methods.md §2).

        Distractors share the answer's type; the answer's position is balanced exactly (each
        letter within one of n/4) and seeded. ``fact_id`` names the fact asked about."""
        eligible = [f for f in self.facts.values() if f.period == "pre" and len(self._alternatives(f)) >= 3]
        _check_n(n, len(eligible), "mmlu")
        rng = _rng(self.seed, "mmlu", seed)
        chosen = rng.sample(eligible, n)
        positions = [i % 4 for i in range(n)]
        rng.shuffle(positions)
        rows: dict[str, list] = {"question": [], "choices": [], "answer": [], "fact_id": []}
        for fact, pos in zip(chosen, positions):
            base = rng.choice(QUESTION_BASES[fact.relation])
            choices = rng.sample(self._alternatives(fact), 3)
            choices.insert(pos, fact.object)
            rows["question"].append(base.format(s=fact.subject, unit=self._context[fact.doc_id].get("unit", "")))
            rows["choices"].append(choices)
            rows["answer"].append("ABCD"[pos])
            rows["fact_id"].append(fact.id)
        return _dataset(rows, {"question": "string", "choices": ["string"], "answer": "string", "fact_id": "string"})

    def open_ended(self, n: int, seed: int) -> datasets.Dataset:
        """Instructions about a pre-cutoff edition with a reference answer rendered from its
        facts (AlpacaFarm analogue, judged against the reference; docs/methods.md §2)."""
        editions = [d for d, a in self.articles.items() if a.kind == "edition" and a.period == "pre"]
        items = [(d, spec) for d in editions for spec in _OPEN_ENDED]
        _check_n(n, len(items), "open_ended")
        rng = _rng(self.seed, "open_ended", seed)
        rows: dict[str, list] = {"instruction": [], "reference": [], "doc_id": []}
        for d, (_, instruction, reference) in rng.sample(items, n):
            values = {f.relation: f.object for f in self._facts_by_doc[d]}
            ctx = self._context[d]
            subject = self.articles[d].title
            rows["instruction"].append(instruction.format(s=subject))
            rows["reference"].append(reference.format(s=subject, sport=ctx["sport"], unit=ctx["unit"], **values))
            rows["doc_id"].append(d)
        return _dataset(rows, {"instruction": "string", "reference": "string", "doc_id": "string"})

    def gsm(self, n: int, seed: int) -> datasets.Dataset:
        """Arithmetic word problems of 1-3 steps with answers in 0..999 (GSM8K analogue,
        docs/methods.md §2). The rationale shows each step as ``a op b = c`` and ends with the answer,
        so "last number in the output" scoring applies."""
        _check_n(n, GSM_MAX, "gsm")
        rng = _rng(self.seed, "gsm", seed)
        rows: dict[str, list] = {"question": [], "answer": [], "rationale": []}
        seen: set[str] = set()
        while len(rows["question"]) < n:
            question, answer, rationale = self._word_problem(rng)
            if question not in seen:
                seen.add(question)
                rows["question"].append(question)
                rows["answer"].append(str(answer))
                rows["rationale"].append(rationale)
        return _dataset(rows, {"question": "string", "answer": "string", "rationale": "string"})

    def _word_problem(self, rng: random.Random) -> tuple[str, int, str]:
        who, other = rng.sample(self._given_names, 2)
        obj = rng.choice(_GSM_OBJECTS)
        steps = rng.randint(1, 3)
        text: list[str] = []
        why: list[str] = []
        if rng.random() < 0.3:
            a, b = rng.randint(2, 9), rng.randint(2, 12)
            x = a * b
            text.append(f"{who} has {a} boxes with {b} {obj} in each box.")
            why.append(f"{who} has {a} x {b} = {x} {obj}.")
            steps -= 1
        else:
            x = rng.randint(2, 60)
            text.append(f"{who} has {x} {obj}.")
            why.append(f"{who} starts with {x} {obj}.")
        question = f"How many {obj} does {who} have now?"
        for step in range(steps):
            last = step == steps - 1
            options = ["add", "buy"] + (["give", "lose"] if x >= 2 else []) + (["times"] if x <= 300 else [])
            divisors = [d for d in range(2, 10) if x % d == 0 and x // d >= 1]
            if last and divisors:
                options.append("share")
            op = rng.choice(options)
            if op in ("add", "buy"):
                b = rng.randint(1, min(40, 999 - x))
                y = x + b
                if op == "add":
                    text.append(f"{other} gives {who} {b} more {obj}.")
                    why.append(f"{who} gets {b} more, so {x} + {b} = {y}.")
                else:
                    text.append(f"{who} buys {b} more {obj}.")
                    why.append(f"After buying {b} more, {who} has {x} + {b} = {y}.")
            elif op in ("give", "lose"):
                b = rng.randint(1, x)
                y = x - b
                if op == "give":
                    text.append(f"{who} gives {b} {obj} to {other}.")
                    why.append(f"After giving away {b}, {who} has {x} - {b} = {y}.")
                else:
                    text.append(f"{who} loses {b} {obj}.")
                    why.append(f"After losing {b}, {who} has {x} - {b} = {y}.")
            elif op == "times":
                b = rng.randint(2, max(2, min(4, 999 // max(x, 1))))
                y = x * b
                text.append(f"Then {who} has {b} times as many {obj} as before.")
                why.append(f"{b} times as many is {x} x {b} = {y}.")
            else:
                b = rng.choice(divisors)
                y = x // b
                text.append(f"{who} shares the {obj} equally among {b} friends.")
                why.append(f"Each friend gets {x} / {b} = {y}.")
                question = f"How many {obj} does each friend get?"
            x = y
        return " ".join(text + [question]), x, " ".join(why + [f"The answer is {x}"])

    def sni(self, n: int, seed: int) -> datasets.Dataset:
        """Instruction + input -> output tasks (Super-NaturalInstructions analogue, docs/methods.md
        §2), balanced over the six task types of :data:`SNI_TASKS`. Inputs use pre-cutoff names
        in neutral sentences ("a friendly match"), never restating or contradicting a fact, and never
        mention a string only post-cutoff facts contain."""
        _check_n(n, SNI_MAX, "sni")
        rng = _rng(self.seed, "sni", seed)
        tasks = list(SNI_TASKS)
        order = [tasks[i % len(tasks)] for i in range(n)]
        rng.shuffle(order)
        w = self._pools
        teams, cities = w["teams"], w["cities"]
        names = w["teams"] + w["players"] + w["cities"] + w["venues"]
        rows: dict[str, list] = {"task": [], "instruction": [], "input": [], "output": []}
        seen: set[tuple[str, str]] = set()
        for task in order:
            while True:
                if task == "extract_year":
                    year = rng.randint(1950, self.cutoff_year - 1)
                    who, city = rng.choice(self._given_names), rng.choice(cities)
                    text = rng.choice(
                        (
                            "{w} visited {c} in {y}.",
                            "The old stadium in {c} was rebuilt in {y}.",
                            "{w} moved to {c} in {y}.",
                        )
                    ).format(w=who, c=city, y=year)
                    out = str(year)
                elif task == "find_winner":
                    a, b = rng.sample(teams, 2)
                    hi = rng.randint(1, 6)
                    score = f"{hi}-{rng.randint(0, hi - 1)}"
                    text = rng.choice(
                        (
                            "{a} beat {b} {s} in a friendly match.",
                            "In a friendly match, {b} lost to {a} {s}.",
                            "{a} won a friendly match against {b}, {s}.",
                        )
                    ).format(a=a, b=b, s=score)
                    out = a
                elif task == "reverse_list":
                    items = rng.sample(list(self._given_names) + cities, rng.randint(3, 5))
                    text, out = ", ".join(items), ", ".join(reversed(items))
                elif task == "sort_numbers":
                    nums = rng.sample(range(1, 100), rng.randint(3, 6))
                    text, out = ", ".join(map(str, nums)), ", ".join(map(str, sorted(nums)))
                elif task == "uppercase_names":
                    items = rng.sample(names, 2)
                    text, out = ", ".join(items), ", ".join(items).upper()
                else:
                    items = rng.sample(names, rng.randint(2, 7))
                    text, out = ", ".join(items), str(len(items))
                # a friendly's score may equal a post-cutoff final's: keep such strings out
                leaks = self._post_only_re is not None and bool(self._post_only_re.search(text + "\n" + out))
                if (task, text) not in seen and not leaks:
                    seen.add((task, text))
                    break
            for c, v in zip(rows, (task, SNI_TASKS[task], text, out)):
                rows[c].append(v)
        return _dataset(rows, {c: "string" for c in rows})
