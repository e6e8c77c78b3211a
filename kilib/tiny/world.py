"""The tiny profile's world: a seeded, generated fictional encyclopedia (docs/tiny-world.md).

The paper profile reads six Wikipedia articles and Hub datasets; the tiny profile replaces them
with a world no model has seen, so that "knows the control, not the new events" is true by
construction rather than by a model's training cutoff. One call, :func:`generate_world`, builds:

- six tournament series with editions before ``cutoff_year`` (pre-cutoff, pretraining material)
  and, for five of them, one edition at or after it: the five post-cutoff articles mirror the
  paper's five 2023 events and the sixth series' last pre-cutoff edition is the control, as the
  2018 FIFA World Cup is in Mecklenburg et al. (docs/methods.md §1);
- teams, players, cities and venues with their own short pages (the FEVER-like pages of §4);
- atomic facts (subject, relation, object) with a salience (how often the article states them),
  which makes token-based Q&A cover facts unevenly (§1, Fig 2);
- question paraphrases per relation, split into disjoint train and eval sets (§1);
- claims, transfer-study task analogues (§2) and CALM's key-value arithmetic (§3).

Everything is drawn from ``random.Random`` instances seeded by strings (hashed with SHA-512 by
Python, so independent of ``PYTHONHASHSEED``): the same ``(seed, size, cutoff_year)`` gives the
same world byte for byte. Nothing runs at import; ``datasets`` is imported when a dataset is built.

The generator's parts: its text in :mod:`kilib.tiny.world_text`, the series, names and seeded
streams in :mod:`kilib.tiny.world_series`, claims and task datasets in
:mod:`kilib.tiny.world_tasks`, CALM's key-value arithmetic in :mod:`kilib.tiny.world_kv`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from kilib.runtime import KilibError
from kilib.tiny.world_kv import WorldKV, evaluate_arithmetic
from kilib.tiny.world_series import (
    _N_GIVEN_NAMES,
    _SPORTS,
    _TEAM_SUFFIXES,
    _VENUE_SUFFIXES,
    _Names,
    _rng,
    _series_context,
    _simulate_edition,
    _Sport,
)
from kilib.tiny.world_tasks import WorldTasks, _check_split, _dataset
from kilib.tiny.world_text import (
    _N_TRAIN_BASES,
    _PLANS,
    CLAIM_LABELS,
    NEI_TEMPLATES,
    QUESTION_BASES,
    QUESTION_WRAPPERS,
    RELATIONS,
    _plan_relations,
)

if TYPE_CHECKING:
    import datasets

__all__ = [
    "WorldSize",
    "WORLD_SIZES",
    "Fact",
    "Section",
    "Article",
    "World",
    "generate_world",
    "evaluate_arithmetic",
    "RELATIONS",
    "CLAIM_LABELS",
    "NEI_TEMPLATES",
]


# ---------------------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorldSize:
    """How big the world is. Six series always (the paper's five new events plus a control);
    everything else scales here."""

    editions_per_series: int  # pre-cutoff editions per series (the post-cutoff one is extra)
    teams_per_series: int  # named teams per series; >= 4: the semi-finals name four teams
    players_per_team: int  # players with their own page, per team
    n_kv_keys: int  # CALM key-value table size
    kv_value_max: int  # values are unique integers in 1..kv_value_max
    n_countries: int = 4  # >= 4 so every country question has three wrong choices
    n_cities: int = 8  # host and home cities, shared by all series
    venues_per_city: int = 1  # stadiums per city; finals are played in one of them
    kv_min_terms: int = 3  # CALM (docs/methods.md §3): expressions over 3-6 keys
    kv_max_terms: int = 6
    calm_train_fraction: float = 0.2  # CALM trains the composition on 20% of the keys

    def __post_init__(self) -> None:
        checks = [
            (self.editions_per_series >= 1, "editions_per_series must be >= 1"),
            (self.teams_per_series >= 4, "teams_per_series must be >= 4 (four teams reach the semi-finals)"),
            (self.players_per_team >= 1, "players_per_team must be >= 1"),
            (self.n_countries >= 4, "n_countries must be >= 4 (multiple choice needs three wrong countries)"),
            (self.n_cities >= 4, "n_cities must be >= 4 (multiple choice needs three wrong cities)"),
            (self.venues_per_city >= 1, "venues_per_city must be >= 1"),
            (2 <= self.kv_min_terms <= self.kv_max_terms, "need 2 <= kv_min_terms <= kv_max_terms"),
            (1 <= self.n_kv_keys <= self.kv_value_max, "need 1 <= n_kv_keys <= kv_value_max (values are unique)"),
            (0.0 < self.calm_train_fraction < 1.0, "calm_train_fraction must be in (0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise KilibError(f"invalid WorldSize: {message}")
        n_train = self.n_kv_train_keys
        if n_train < 2 or self.n_kv_keys - n_train < 2:
            raise KilibError(
                f"invalid WorldSize: {n_train} train and {self.n_kv_keys - n_train} eval keys; "
                "raise n_kv_keys or change calm_train_fraction so each split has >= 2 keys"
            )

    @property
    def n_kv_train_keys(self) -> int:
        return int(round(self.calm_train_fraction * self.n_kv_keys))


WORLD_SIZES: dict[str, WorldSize] = {
    # Tests build it in a few milliseconds: two pre-cutoff editions per series, the fewest
    # teams the knockout needs, one player per team; about 400 facts.
    "smoke": WorldSize(
        editions_per_series=2,
        teams_per_series=4,
        players_per_team=1,
        n_kv_keys=20,  # 4 train keys still give 600+ distinct train expressions
        kv_value_max=30,
        n_countries=4,
        n_cities=4,
        venues_per_city=1,
        kv_min_terms=2,  # short expressions: smoke models train for seconds
        kv_max_terms=3,
    ),
    # Four pre-cutoff editions per series and one player per team keep the world near 560
    # facts, which 1-3M parameter models memorise in minutes on a CPU.
    "tiny": WorldSize(
        editions_per_series=4,
        teams_per_series=4,
        players_per_team=1,
        n_kv_keys=40,  # 8 train keys -> 4,800 distinct train expressions, enough for CALM
        kv_value_max=60,  # small values keep results to a few digits for tiny anchors
        n_countries=4,
        n_cities=8,
        venues_per_city=1,
        kv_min_terms=2,  # the paper uses 3-6 terms; 2-3 keep tiny arithmetic learnable in minutes
        kv_max_terms=3,
    ),
}


# ---------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fact:
    """An atomic fact (subject, relation, object), as the generator LLM lists them in
    Mecklenburg et al. §3 (fact-based scaling). ``section`` is the first section (in article
    order) that states it; ``salience`` counts the sentences of the article that state it."""

    id: str
    subject: str
    relation: str
    object: str
    doc_id: str
    section: str
    salience: int
    period: str  # "pre" | "post"


@dataclass(frozen=True)
class Section:
    """One section of an article; the paper splits each document by section (§1)."""

    title: str
    text: str
    fact_ids: tuple[str, ...]


@dataclass(frozen=True)
class Article:
    """A Wikipedia-like page: an edition (the paper's documents) or an entity page (FEVER's)."""

    id: str
    title: str
    kind: str  # "edition" | "team" | "person" | "venue" | "city"
    period: str  # "pre" | "post"
    year: int | None
    sections: tuple[Section, ...]

    @property
    def text(self) -> str:
        return f"{self.title}\n\n" + "\n\n".join(f"== {s.title} ==\n{s.text}" for s in self.sections)


# ---------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------
def whole_items_pattern(items: Iterable[str]) -> re.Pattern:
    """A regex matching any of ``items`` as a whole item, longest first: "1" is not found in
    "2014" nor in "3-1", and "Ozu Rovers" is not read as "Ozu"."""
    return re.compile(r"(?<![\w-])(?:" + "|".join(map(re.escape, sorted(items, key=len, reverse=True))) + r")(?![\w-])")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


# ---------------------------------------------------------------------------------------
# The world
# ---------------------------------------------------------------------------------------
class World(WorldTasks, WorldKV):
    """A generated world; build it with :func:`generate_world`.

    Attributes are plain data; every method is deterministic given its arguments and the
    world's ``(seed, size, cutoff_year)``."""

    seed: int
    size: WorldSize
    cutoff_year: int
    articles: dict[str, Article]
    facts: dict[str, Fact]
    post_cutoff_doc_ids: tuple[str, ...]  # the five new-knowledge articles (the paper's 2023 events)
    control_doc_id: str  # the pre-cutoff control (the paper's 2018 FIFA World Cup)
    relations: tuple[str, ...]
    mirrors: dict[str, str]  # each of those six doc ids -> the paper document it stands for

    def __init__(
        self,
        *,
        seed: int,
        size: WorldSize,
        cutoff_year: int,
        articles: dict[str, Article],
        facts: dict[str, Fact],
        post_cutoff_doc_ids: tuple[str, ...],
        control_doc_id: str,
        context: dict[str, dict],
        pools: dict[str, list[str]],
        given_names: tuple[str, ...],
        kv_table: dict[str, int],
        kv_train: tuple[str, ...],
    ) -> None:
        self.seed = seed
        self.size = size
        self.cutoff_year = cutoff_year
        self.articles = articles
        self.facts = facts
        self.post_cutoff_doc_ids = post_cutoff_doc_ids
        self.control_doc_id = control_doc_id
        self.relations = RELATIONS
        self.mirrors = {d: _SPORTS[context[d]["series"]].mirrors for d in (*post_cutoff_doc_ids, control_doc_id)}
        self._context = context  # doc_id -> series index, sport, unit, the series' teams and players
        self._pools = pools  # world-wide names by type: cities, venues, countries, teams, players
        self._given_names = given_names
        self._kv_table = kv_table
        self._kv_train = frozenset(kv_train)
        self._facts_by_doc: dict[str, list[Fact]] = {}
        for fact in facts.values():
            self._facts_by_doc.setdefault(fact.doc_id, []).append(fact)
        pre_known: set[str] = set()
        for fact in facts.values():
            if fact.period == "pre":
                pre_known.update((fact.subject, fact.object))
        pre_known.update(a.title for a in articles.values() if a.period == "pre")
        # Strings only post-cutoff facts contain (a new attendance, a new score): no pre-cutoff
        # material, wrong answers included, may mention them.
        self._post_only = tuple(
            sorted({f.object for f in facts.values() if f.period == "post" and f.object not in pre_known})
        )
        # whole items only: "1" is not in "2014" nor in "3-1"
        self._post_only_re = whole_items_pattern(self._post_only) if self._post_only else None

    def __repr__(self) -> str:
        n_pre = sum(f.period == "pre" for f in self.facts.values())
        return (
            f"World(seed={self.seed}, articles={len(self.articles)}, facts={len(self.facts)} "
            f"({n_pre} pre, {len(self.facts) - n_pre} post), cutoff_year={self.cutoff_year})"
        )

    # -- lookups ---------------------------------------------------------------------------
    def _check_doc_ids(self, doc_ids: Iterable[str] | None) -> list[str]:
        if doc_ids is None:
            return list(self.articles)
        if isinstance(doc_ids, str):
            doc_ids = [doc_ids]
        doc_ids = list(doc_ids)
        for d in doc_ids:
            if d not in self.articles:
                raise KilibError(f"unknown doc_id {d!r}: use a key of world.articles (e.g. {self.control_doc_id!r})")
        return doc_ids

    @property
    def entity_names(self) -> dict[str, tuple[str, ...]]:
        """Every name by type: cities, venues, countries, teams, players."""
        return {kind: tuple(names) for kind, names in self._pools.items()}

    @property
    def series(self) -> list[dict[str, Any]]:
        """The tournament series in index order (the same sport at each index in every
        world): name, sport, teams and players."""
        out: dict[int, dict[str, Any]] = {}
        for doc_id, article in self.articles.items():
            if article.kind == "edition":
                ctx = self._context[doc_id]
                out.setdefault(
                    ctx["series"],
                    {
                        "name": article.title.split(" ", 1)[1],
                        "sport": ctx["sport"],
                        "teams": tuple(ctx["teams"]),
                        "players": tuple(ctx["players"]),
                    },
                )
        return [out[i] for i in sorted(out)]

    def facts_of(self, doc_id: str) -> list[Fact]:
        """The facts an article states, in the order it first states them."""
        self._check_doc_ids([doc_id])
        return list(self._facts_by_doc.get(doc_id, []))

    def pretraining_doc_ids(self) -> list[str]:
        """Every pre-cutoff article: editions (the control included) and entity pages."""
        return [d for d, a in self.articles.items() if a.period == "pre"]

    @property
    def fingerprint(self) -> str:
        """SHA-256 of everything generated: a cache key for models pretrained on this world."""
        payload = {
            "seed": self.seed,
            "size": asdict(self.size),
            "cutoff_year": self.cutoff_year,
            "articles": [[a.id, a.kind, a.period, a.year, a.text] for a in self.articles.values()],
            "facts": [list(asdict(f).values()) for f in self.facts.values()],
            "kv": sorted(self._kv_table.items()),
            "kv_train": sorted(self._kv_train),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    # -- questions -------------------------------------------------------------------------
    def questions(self, fact_id: str, split: str) -> list[str]:
        """Every paraphrase asking for ``fact_id`` in ``split``: 16 train, 8 eval questions.

        The splits use disjoint phrasings (Mecklenburg et al. §1, evaluation questions absent
        from training). Order: wrapper-major, so the first questions are plain phrasings."""
        _check_split(split)
        if fact_id not in self.facts:
            raise KilibError(f"unknown fact_id {fact_id!r}: use a key of world.facts")
        fact = self.facts[fact_id]
        bases = QUESTION_BASES[fact.relation]
        bases = bases[:_N_TRAIN_BASES] if split == "train" else bases[_N_TRAIN_BASES:]
        unit = self._context[fact.doc_id].get("unit", "")
        rendered = [b.format(s=fact.subject, unit=unit) for b in bases]
        return [w.format(q=q) for w in QUESTION_WRAPPERS for q in rendered]

    # -- datasets --------------------------------------------------------------------------
    def documents(self, doc_ids: Iterable[str] | None = None) -> datasets.Dataset:
        """One row per section (the paper splits each article by section, §1)."""
        rows: dict[str, list] = {"doc_id": [], "title": [], "section": [], "text": []}
        for d in self._check_doc_ids(doc_ids):
            article = self.articles[d]
            for s in article.sections:
                for k, v in zip(rows, (d, article.title, s.title, s.text)):
                    rows[k].append(v)
        return _dataset(rows, {"doc_id": "string", "title": "string", "section": "string", "text": "string"})

    def facts_dataset(self, doc_ids: Iterable[str] | None = None) -> datasets.Dataset:
        """One row per fact; group by ``relation`` for the "most common answer" baseline."""
        cols = ("fact_id", "subject", "relation", "object", "doc_id", "section", "salience", "period")
        rows: dict[str, list] = {c: [] for c in cols}
        for d in self._check_doc_ids(doc_ids):
            for f in self._facts_by_doc.get(d, []):
                for c, v in zip(
                    cols, (f.id, f.subject, f.relation, f.object, f.doc_id, f.section, f.salience, f.period)
                ):
                    rows[c].append(v)
        return _dataset(rows, {c: ("int64" if c == "salience" else "string") for c in cols})


# ---------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------
def _render(
    doc_id: str,
    kind: str,
    title: str,
    period: str,
    year: int | None,
    values: dict[str, str],
    extra: dict[str, str],
    seed: int,
) -> tuple[Article, list[Fact]]:
    """Render one article from its plan and derive its facts (section = first statement,
    salience = number of statements)."""
    rng = _rng(seed, "article", doc_id)
    sections: list[Section] = []
    first: dict[str, str] = {}
    count: dict[str, int] = {}
    for sec_title, slots in _PLANS[kind]:
        sentences: list[str] = []
        ids: list[str] = []
        for rels, templates in slots:
            sentence = rng.choice(templates).format(s=title, **values, **extra)
            sentences.append(sentence[0].upper() + sentence[1:])
            for rel in rels:
                fid = f"{doc_id}.{rel}"
                if fid not in ids:
                    ids.append(fid)
                first.setdefault(rel, sec_title)
                count[rel] = count.get(rel, 0) + 1
        sections.append(Section(sec_title, " ".join(sentences), tuple(ids)))
    facts = [
        Fact(f"{doc_id}.{rel}", title, rel, values[rel], doc_id, first[rel], count[rel], period)
        for rel in _plan_relations(_PLANS[kind])
    ]
    return Article(doc_id, title, kind, period, year, tuple(sections)), facts


def generate_world(seed: int = 0, size: str | WorldSize = "tiny", cutoff_year: int = 2020) -> World:
    """Generate the world for ``(seed, size, cutoff_year)``; the same arguments give the same
    world byte for byte (docs/tiny-world.md, "A world whose facts no model has seen")."""
    if isinstance(size, str):
        if size not in WORLD_SIZES:
            raise KilibError(
                f"unknown world size {size!r}: choose one of {', '.join(WORLD_SIZES)} (or pass a WorldSize)"
            )
        size = WORLD_SIZES[size]
    elif not isinstance(size, WorldSize):
        raise KilibError(f"size must be a name ({', '.join(WORLD_SIZES)}) or a WorldSize, got {type(size).__name__}")
    if not isinstance(seed, int):
        raise KilibError(f"seed must be an integer, got {seed!r}")
    if not isinstance(cutoff_year, int) or not 1900 <= cutoff_year <= 2200:
        raise KilibError(f"cutoff_year must be an integer year in 1900..2200, got {cutoff_year!r}")

    rng = _rng(seed, "entities")
    names = _Names(_rng(seed, "names"))
    big_numbers: set[int] = set()  # capacities and attendances are unique world-wide

    def big_number(lo: int, hi: int) -> int:
        for _ in range(1000):
            v = rng.randint(lo // 100, hi // 100) * 100
            if v not in big_numbers:
                big_numbers.add(v)
                return v
        raise KilibError("too many finals per venue to keep attendances unique: raise n_cities or venues_per_city")

    countries = [names.word() for _ in range(size.n_countries)]
    cities: list[dict] = []
    for i in range(size.n_cities):
        cities.append({"name": names.word(), "country": countries[i % len(countries)]})  # every country has a city
    venues: list[dict] = []
    for city in cities:
        city["venues"] = []
        for _ in range(size.venues_per_city):
            venue = {
                "name": f"{names.word()} {rng.choice(_VENUE_SUFFIXES)}",
                "city": city["name"],
                "capacity": big_number(20000, 90000),
            }
            venues.append(venue)
            city["venues"].append(venue)
    given = tuple(names.word() for _ in range(_N_GIVEN_NAMES))

    series_list: list[dict] = []
    for index, sport in enumerate(_SPORTS):
        series = {"index": index, "sport": sport, "name": f"{names.word()} {sport.trophy}", "teams": []}
        for _ in range(size.teams_per_series):
            team = {
                "name": f"{names.word()} {rng.choice(_TEAM_SUFFIXES)}",
                "home_city": rng.choice(cities)["name"],
                "founded_year": cutoff_year - rng.randint(25, 120),
                "players": [],
            }
            for _ in range(size.players_per_team):
                team["players"].append(
                    {
                        "name": f"{rng.choice(given)} {names.word()}",
                        "birth_year": cutoff_year - rng.randint(19, 36),
                        "nationality": rng.choice(countries),
                        "team": team["name"],
                        "position": rng.choice(sport.positions),
                    }
                )
            series["teams"].append(team)
        series_list.append(series)

    # Editions: the last pre-cutoff one 1-3 years before the cutoff, earlier ones every 2-4
    # years; series 1-5 get one more, 2-4 years later and at or after the cutoff.
    editions: list[dict] = []
    for series in series_list:
        last = cutoff_year - rng.randint(1, 3)
        years = [last]
        for _ in range(size.editions_per_series - 1):
            years.insert(0, years[0] - rng.randint(2, 4))
        periods = ["pre"] * len(years)
        if series["index"] != 0:
            years.append(last + rng.randint(max(2, cutoff_year - last), 4))
            periods.append("post")
        previous_host = None
        for year, period in zip(years, periods):
            editions.append(_simulate_edition(series, year, period, cities, previous_host, rng, big_number))
            previous_host = editions[-1]["values"]["host_city"]

    articles: dict[str, Article] = {}
    facts: dict[str, Fact] = {}
    context: dict[str, dict] = {}

    def add(kind: str, title: str, period: str, year: int | None, values: dict, extra: dict, ctx: dict) -> str:
        doc_id = f"{kind}_{_slug(title)}"
        article, doc_facts = _render(
            doc_id, kind, title, period, year, {k: str(v) for k, v in values.items()}, extra, seed
        )
        articles[doc_id] = article
        facts.update((f.id, f) for f in doc_facts)
        context[doc_id] = ctx
        return doc_id

    post_ids: list[str] = []
    control_id = ""
    for e in editions:
        series = e["series"]
        sport: _Sport = series["sport"]
        ctx = _series_context(series)
        doc_id = add(
            "edition", e["title"], e["period"], e["year"], e["values"], {"sport": sport.sport, "unit": sport.unit}, ctx
        )
        if e["period"] == "post":
            post_ids.append(doc_id)
        elif series["index"] == 0:
            control_id = doc_id  # the last pre-cutoff edition of the control series
    for series in series_list:
        for team in series["teams"]:
            add(
                "team",
                team["name"],
                "pre",
                None,
                {"founded_year": team["founded_year"], "home_city": team["home_city"]},
                {"sport": series["sport"].sport},
                _series_context(series),
            )
    for series in series_list:
        for team in series["teams"]:
            for p in team["players"]:
                add(
                    "person",
                    p["name"],
                    "pre",
                    None,
                    {k: p[k] for k in ("birth_year", "nationality", "team", "position")},
                    {"sport": series["sport"].sport},
                    _series_context(series),
                )
    for city in cities:
        add("city", city["name"], "pre", None, {"country": city["country"]}, {}, {})
    for venue in venues:
        add("venue", venue["name"], "pre", None, {"city": venue["city"], "capacity": venue["capacity"]}, {}, {})
    pools = {
        "cities": [c["name"] for c in cities],
        "venues": [v["name"] for v in venues],
        "countries": countries,
        "teams": [t["name"] for s in series_list for t in s["teams"]],
        "players": [p["name"] for s in series_list for t in s["teams"] for p in t["players"]],
    }

    kv_rng = _rng(seed, "kv")
    keys: list[str] = []
    key_set: set[str] = set()
    while len(keys) < size.n_kv_keys:
        key = "".join(kv_rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(kv_rng.randint(2, 6)))
        if key not in key_set:
            key_set.add(key)
            keys.append(key)
    values = kv_rng.sample(range(1, size.kv_value_max + 1), size.n_kv_keys)
    shuffled = list(keys)
    kv_rng.shuffle(shuffled)

    return World(
        seed=seed,
        size=size,
        cutoff_year=cutoff_year,
        articles=articles,
        facts=facts,
        post_cutoff_doc_ids=tuple(post_ids),
        control_doc_id=control_id,
        context=context,
        pools=pools,
        given_names=given,
        kv_table=dict(zip(keys, values)),
        kv_train=tuple(shuffled[: size.n_kv_train_keys]),
    )
