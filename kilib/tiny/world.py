"""The tiny profile's world: a seeded, generated fictional encyclopedia (tiny-world.md).

The paper profile reads six Wikipedia articles and Hub datasets; the tiny profile replaces them
with a world no model has seen, so that "knows the control, not the new events" is true by
construction rather than by a model's training cutoff. One call, :func:`generate_world`, builds:

- six tournament series with editions before ``cutoff_year`` (pre-cutoff, pretraining material)
  and, for five of them, one edition at or after it: the five post-cutoff articles mirror the
  paper's five 2023 events and the sixth series' last pre-cutoff edition is the control, as the
  2018 FIFA World Cup is in Mecklenburg et al. (methods.md §1);
- teams, players, cities and venues with their own short pages (the FEVER-like pages of §4);
- atomic facts (subject, relation, object) with a salience (how often the article states them),
  which makes token-based Q&A cover facts unevenly (§1, Fig 2);
- question paraphrases per relation, split into disjoint train and eval sets (§1);
- claims, transfer-study task analogues (§2) and CALM's key-value arithmetic (§3).

Everything is drawn from ``random.Random`` instances seeded by strings (hashed with SHA-512 by
Python, so independent of ``PYTHONHASHSEED``): the same ``(seed, size, cutoff_year)`` gives the
same world byte for byte. Nothing runs at import; ``datasets`` is imported when a dataset is built.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from kilib.runtime import KilibError

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
    kv_min_terms: int = 3  # CALM (methods.md §3): expressions over 3-6 keys
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
# Series: one per paper document
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Sport:
    sport: str  # the word used in text ("a cricket tournament")
    trophy: str  # the series name's last word
    unit: str  # what the top scorer scores
    win_score: tuple[int, int]  # the winner's score in the final
    max_margin: int  # the loser scores at least win - max_margin
    top_score: tuple[int, int]  # the top scorer's tally
    positions: tuple[str, ...]
    mirrors: str


# Index 0 is the control series (no post-cutoff edition); 1-5 each get one post-cutoff edition.
_SPORTS: tuple[_Sport, ...] = (
    _Sport(
        "football",
        "Cup",
        "goals",
        (1, 5),
        5,
        (4, 9),
        ("forward", "midfielder", "defender"),
        "2018 FIFA World Cup (the control)",
    ),
    _Sport(
        "cricket",
        "Trophy",
        "runs",
        (150, 320),
        80,
        (250, 600),
        ("batter", "bowler", "keeper"),
        "2023 Cricket World Cup",
    ),
    _Sport(
        "gridiron", "Bowl", "points", (14, 45), 21, (30, 90), ("quarterback", "receiver", "kicker"), "Super Bowl LVII"
    ),
    _Sport(
        "women's football",
        "Cup",
        "goals",
        (1, 5),
        5,
        (4, 9),
        ("forward", "midfielder", "defender"),
        "2023 FIFA Women's World Cup",
    ),
    _Sport(
        "team golf",
        "Open",
        "points",
        (8, 16),
        6,
        (6, 14),
        ("captain", "singles player", "pairs player"),
        "2023 PGA Championship",
    ),
    _Sport(
        "basketball",
        "Tournament",
        "points",
        (60, 99),
        25,
        (70, 160),
        ("guard", "forward", "center"),
        "2023 NCAA Division I men's basketball tournament",
    ),
)
_NUM_TEAMS = (8, 10, 12, 14, 16)
_NUM_VENUES = tuple(range(3, 10))
_TEAM_SUFFIXES = ("Rovers", "United", "Stars", "Lions", "Wolves", "Rangers", "Falcons", "Giants")
_VENUE_SUFFIXES = ("Arena", "Park", "Stadium", "Ground", "Field")
_N_GIVEN_NAMES = 24  # first names shared by players and word problems


# ---------------------------------------------------------------------------------------
# Templates. Each slot states the facts named in its tuple; the rng picks one of >= 3 phrasings.
# ---------------------------------------------------------------------------------------
_Plan = tuple[tuple[str, tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]], ...]

EDITION_PLAN: _Plan = (
    (
        "Overview",
        (
            (
                ("host_city", "num_teams"),
                (
                    "The {s} was a {sport} tournament held in {host_city}, with {num_teams} teams taking part.",
                    "The {s} was a {sport} tournament for {num_teams} teams, hosted by {host_city}.",
                    "{num_teams} teams played in the {s}, a {sport} tournament held in {host_city}.",
                ),
            ),
            (
                ("champion", "runner_up"),
                (
                    "{champion} won the title, and {runner_up} finished second.",
                    "The tournament was won by {champion}, with {runner_up} as runners-up.",
                    "{champion} became champions, ahead of {runner_up}.",
                ),
            ),
        ),
    ),
    (
        "Venues",
        (
            (
                ("num_venues", "host_city"),
                (
                    "Matches were played at {num_venues} venues in {host_city}.",
                    "{host_city} used {num_venues} venues for the tournament.",
                    "The tournament used {num_venues} venues, all in {host_city}.",
                ),
            ),
            (
                ("final_venue",),
                (
                    "The main venue was {final_venue}, which hosted the final.",
                    "{final_venue} was chosen to host the final.",
                    "The final was staged at {final_venue}.",
                ),
            ),
        ),
    ),
    (
        "Group stage",
        (
            (
                ("num_teams",),
                (
                    "The {num_teams} teams were drawn into groups.",
                    "The group stage had {num_teams} teams.",
                    "All {num_teams} teams began in the group stage.",
                ),
            ),
            (
                ("opening_match_winner",),
                (
                    "{opening_match_winner} won the opening match.",
                    "The opening match was won by {opening_match_winner}.",
                    "In the opening match, {opening_match_winner} took the win.",
                ),
            ),
        ),
    ),
    (
        "Knockout stage",
        (
            (
                ("third_place", "fourth_place"),
                (
                    "{third_place} beat {fourth_place} in the match for third place.",
                    "In the third place match, {third_place} defeated {fourth_place}.",
                    "{fourth_place} lost the third place match to {third_place}.",
                ),
            ),
        ),
    ),
    (
        "Final",
        (
            (
                ("champion", "runner_up", "final_score"),
                (
                    "{champion} beat {runner_up} {final_score} in the final.",
                    "In the final, {champion} defeated {runner_up} {final_score}.",
                    "The final ended {final_score}, with {champion} beating {runner_up}.",
                ),
            ),
            (
                ("final_venue", "attendance"),
                (
                    "The final was played at {final_venue} in front of {attendance} fans.",
                    "A crowd of {attendance} watched the final at {final_venue}.",
                    "{final_venue} hosted the final, with {attendance} people in attendance.",
                ),
            ),
        ),
    ),
    (
        "Statistics",
        (
            (
                ("top_scorer", "top_scorer_goals"),
                (
                    "{top_scorer} was the top scorer with {top_scorer_goals} {unit}.",
                    "The top scorer was {top_scorer}, who scored {top_scorer_goals} {unit}.",
                    "With {top_scorer_goals} {unit}, {top_scorer} scored more than any other player.",
                ),
            ),
        ),
    ),
    (
        "Awards",
        (
            (
                ("player_of_tournament",),
                (
                    "{player_of_tournament} was named player of the tournament.",
                    "The player of the tournament award went to {player_of_tournament}.",
                    "{player_of_tournament} won the award for player of the tournament.",
                ),
            ),
            (
                ("top_scorer",),
                (
                    "{top_scorer} received the award for top scorer.",
                    "The top scorer award went to {top_scorer}.",
                    "{top_scorer} won the top scorer award.",
                ),
            ),
            (
                ("champion",),
                (
                    "{champion} received the trophy as champions.",
                    "The trophy was presented to {champion}.",
                    "{champion} lifted the trophy.",
                ),
            ),
        ),
    ),
)

TEAM_PLAN: _Plan = (
    (
        "Overview",
        (
            (
                ("founded_year",),
                (
                    "{s} is a {sport} team founded in {founded_year}.",
                    "{s} was founded in {founded_year} as a {sport} team.",
                    "Founded in {founded_year}, {s} is a {sport} team.",
                ),
            ),
            (
                ("home_city",),
                (
                    "The team is based in {home_city}.",
                    "{s} plays its home games in {home_city}.",
                    "The home city of {s} is {home_city}.",
                ),
            ),
        ),
    ),
)

PERSON_PLAN: _Plan = (
    (
        "Early life",
        (
            (
                ("birth_year", "nationality"),
                (
                    "{s} was born in {birth_year} in {nationality}.",
                    "Born in {birth_year}, {s} comes from {nationality}.",
                    "{s} is from {nationality} and was born in {birth_year}.",
                ),
            ),
        ),
    ),
    (
        "Career",
        (
            (
                ("team", "position"),
                (
                    "{s} plays {sport} as a {position} for {team}.",
                    "{s} is a {position} who plays for {team}.",
                    "At {team}, {s} plays as a {position}.",
                ),
            ),
        ),
    ),
)

CITY_PLAN: _Plan = (
    (
        "Overview",
        (
            (
                ("country",),
                (
                    "{s} is a city in {country}.",
                    "The city of {s} lies in {country}.",
                    "{s} is one of the cities of {country}.",
                ),
            ),
        ),
    ),
)

VENUE_PLAN: _Plan = (
    (
        "Overview",
        (
            (
                ("city", "capacity"),
                (
                    "{s} is a stadium in {city} that holds {capacity} people.",
                    "{s}, in {city}, has room for {capacity} fans.",
                    "{s} is located in {city} and seats {capacity} people.",
                ),
            ),
        ),
    ),
)

_PLANS: dict[str, _Plan] = {
    "edition": EDITION_PLAN,
    "team": TEAM_PLAN,
    "person": PERSON_PLAN,
    "city": CITY_PLAN,
    "venue": VENUE_PLAN,
}


def _plan_relations(plan: _Plan) -> tuple[str, ...]:
    seen: list[str] = []
    for _, slots in plan:
        for rels, _ in slots:
            seen += [r for r in rels if r not in seen]
    return tuple(seen)


RELATIONS: tuple[str, ...] = tuple(r for kind in _PLANS for r in _plan_relations(_PLANS[kind]))
"""Every relation, edition relations first, in article order."""

# Question paraphrases, per relation: four train phrasings, then two eval phrasings. Each
# phrasing is crossed with every wrapper below, so a split's questions are all distinct and the
# eval split asks with phrasings never seen in training (Mecklenburg et al. §1: "questions
# unique and absent from training").
_N_TRAIN_BASES = 4
QUESTION_BASES: dict[str, tuple[str, ...]] = {
    "champion": (
        "Who won the {s}?",
        "Which team won the {s}?",
        "Who were the champions of the {s}?",
        "Which team lifted the trophy at the {s}?",
        "Who was crowned champion at the {s}?",
        "Which side took the title at the {s}?",
    ),
    "runner_up": (
        "Who finished second at the {s}?",
        "Which team was runner-up at the {s}?",
        "Who lost the final of the {s}?",
        "Which team were the runners-up of the {s}?",
        "Which team came second in the {s}?",
        "Who was beaten in the final of the {s}?",
    ),
    "host_city": (
        "Where was the {s} held?",
        "Which city hosted the {s}?",
        "In which city did the {s} take place?",
        "What was the host city of the {s}?",
        "Which city was the host of the {s}?",
        "Where did the {s} take place?",
    ),
    "num_teams": (
        "How many teams took part in the {s}?",
        "How many teams played in the {s}?",
        "What was the number of teams at the {s}?",
        "How many sides entered the {s}?",
        "How many teams competed at the {s}?",
        "How many teams were in the {s}?",
    ),
    "num_venues": (
        "How many venues were used at the {s}?",
        "How many venues hosted matches at the {s}?",
        "At how many venues was the {s} played?",
        "What was the number of venues at the {s}?",
        "How many stadiums were used for the {s}?",
        "How many grounds hosted games at the {s}?",
    ),
    "final_venue": (
        "Where was the final of the {s} played?",
        "Which venue hosted the final of the {s}?",
        "At which stadium was the {s} final held?",
        "What was the venue of the {s} final?",
        "Which ground staged the final of the {s}?",
        "In which stadium did the {s} final take place?",
    ),
    "opening_match_winner": (
        "Who won the opening match of the {s}?",
        "Which team won the first match of the {s}?",
        "Which side won the opening game at the {s}?",
        "Who was the winner of the opening match at the {s}?",
        "Which team took the opening match of the {s}?",
        "Who won the first game of the {s}?",
    ),
    "third_place": (
        "Who finished third at the {s}?",
        "Which team came third in the {s}?",
        "Who won the third place match at the {s}?",
        "Which team took third place at the {s}?",
        "Which side ended in third place at the {s}?",
        "Who claimed third place in the {s}?",
    ),
    "fourth_place": (
        "Who finished fourth at the {s}?",
        "Which team came fourth in the {s}?",
        "Who lost the third place match at the {s}?",
        "Which team took fourth place at the {s}?",
        "Which side ended in fourth place at the {s}?",
        "Who was beaten in the third place match of the {s}?",
    ),
    "final_score": (
        "What was the score in the final of the {s}?",
        "How did the final of the {s} end?",
        "What was the final score at the {s}?",
        "By what score was the {s} final won?",
        "What score did the {s} final finish with?",
        "What was the result of the {s} final?",
    ),
    "attendance": (
        "How many people watched the final of the {s}?",
        "What was the attendance at the {s} final?",
        "How many fans attended the final of the {s}?",
        "How big was the crowd at the {s} final?",
        "How large was the crowd for the final of the {s}?",
        "How many people were at the {s} final?",
    ),
    "top_scorer": (
        "Who was the top scorer of the {s}?",
        "Who scored the most {unit} at the {s}?",
        "Which player was top scorer at the {s}?",
        "Who won the top scorer award at the {s}?",
        "Which player scored more {unit} than anyone else at the {s}?",
        "Who finished as the leading scorer of the {s}?",
    ),
    "top_scorer_goals": (
        "How many {unit} did the top scorer of the {s} score?",
        "How many {unit} did the leading scorer score at the {s}?",
        "What was the top scorer's tally at the {s}?",
        "How many {unit} won the top scorer award at the {s}?",
        "How many {unit} did the best scorer at the {s} get?",
        "What total did the top scorer reach at the {s}?",
    ),
    "player_of_tournament": (
        "Who was the player of the tournament at the {s}?",
        "Who was named player of the tournament at the {s}?",
        "Which player won the player of the tournament award at the {s}?",
        "Who was the best player at the {s}?",
        "Who received the player of the tournament award at the {s}?",
        "Which player was voted best player of the {s}?",
    ),
    "founded_year": (
        "When was {s} founded?",
        "In which year was {s} founded?",
        "What year was {s} founded in?",
        "In what year did {s} form?",
        "What is the founding year of {s}?",
        "When was the team {s} formed?",
    ),
    "home_city": (
        "Where is {s} based?",
        "Which city is {s} from?",
        "What is the home city of {s}?",
        "In which city does {s} play its home games?",
        "Which city is home to {s}?",
        "Where does {s} play at home?",
    ),
    "birth_year": (
        "When was {s} born?",
        "In which year was {s} born?",
        "What year was {s} born in?",
        "What is the birth year of {s}?",
        "In what year was {s} born?",
        "Which year saw the birth of {s}?",
    ),
    "nationality": (
        "What is the nationality of {s}?",
        "Which country is {s} from?",
        "Where does {s} come from?",
        "What country does {s} come from?",
        "Which country does {s} represent?",
        "Of which country is {s} a citizen?",
    ),
    "team": (
        "Which team does {s} play for?",
        "What team is {s} on?",
        "Who does {s} play for?",
        "For which team does {s} play?",
        "What is the team of {s}?",
        "Which club does {s} play for?",
    ),
    "position": (
        "What position does {s} play?",
        "Which position does {s} play?",
        "In what position does {s} play?",
        "What is the playing position of {s}?",
        "What is the position of {s}?",
        "Where on the field does {s} play?",
    ),
    "country": (
        "Which country is {s} in?",
        "In which country is {s}?",
        "What country is the city of {s} in?",
        "Where is {s} located?",
        "In what country does {s} lie?",
        "Which country does the city of {s} belong to?",
    ),
    "city": (
        "Where is {s}?",
        "Which city is {s} in?",
        "In which city is {s} located?",
        "What city is {s} found in?",
        "In what city does {s} stand?",
        "Which city is home to the stadium {s}?",
    ),
    "capacity": (
        "How many people does {s} hold?",
        "What is the capacity of {s}?",
        "How many fans can {s} hold?",
        "How many seats does {s} have?",
        "How large is the capacity of {s}?",
        "How many people fit in {s}?",
    ),
}
# Wrapper-major order: a caller taking the first k questions gets k different phrasings.
QUESTION_WRAPPERS: tuple[str, ...] = ("{q}", "Question: {q}", "Quick question: {q}", "Please answer: {q}")

# Declarative claims (FEVER-like, methods.md §4): two phrasings per relation, different from
# the article's sentences, so a claim is a paraphrase rather than a copy of the page.
CLAIM_TEMPLATES: dict[str, tuple[str, ...]] = {
    "champion": ("The {s} was won by {o}.", "{o} won the {s}."),
    "runner_up": ("{o} finished second at the {s}.", "{o} were the runners-up of the {s}."),
    "host_city": ("The {s} was held in {o}.", "{o} hosted the {s}."),
    "num_teams": ("{o} teams took part in the {s}.", "The {s} had {o} teams."),
    "num_venues": ("The {s} was played at {o} venues.", "{o} venues were used at the {s}."),
    "final_venue": ("The final of the {s} was played at {o}.", "{o} hosted the final of the {s}."),
    "opening_match_winner": ("{o} won the opening match of the {s}.", "The opening match of the {s} was won by {o}."),
    "third_place": ("{o} finished third at the {s}.", "Third place at the {s} went to {o}."),
    "fourth_place": ("{o} finished fourth at the {s}.", "Fourth place at the {s} went to {o}."),
    "final_score": ("The final of the {s} ended {o}.", "The {s} final finished {o}."),
    "attendance": ("{o} people watched the final of the {s}.", "The attendance at the {s} final was {o}."),
    "top_scorer": ("{o} was the top scorer of the {s}.", "The top scorer at the {s} was {o}."),
    "top_scorer_goals": (
        "The top scorer of the {s} scored {o} {unit}.",
        "The leading scorer at the {s} got {o} {unit}.",
    ),
    "player_of_tournament": (
        "{o} was the player of the tournament at the {s}.",
        "The player of the tournament award at the {s} went to {o}.",
    ),
    "founded_year": ("{s} was founded in {o}.", "{s} was formed in {o}."),
    "home_city": ("{s} is based in {o}.", "{s} plays its home games in {o}."),
    "birth_year": ("{s} was born in {o}.", "The birth year of {s} is {o}."),
    "nationality": ("{s} is from {o}.", "{s} comes from {o}."),
    "team": ("{s} plays for {o}.", "{s} is a player of {o}."),
    "position": ("{s} plays as a {o}.", "The position of {s} is {o}."),
    "country": ("{s} is a city in {o}.", "{s} lies in {o}."),
    "city": ("{s} is in {o}.", "{s} is located in {o}."),
    "capacity": ("{s} holds {o} people.", "The capacity of {s} is {o}."),
}

# "Not enough info" claims: relations no page states (FEVER's NEI label), per page kind.
# No numbers and no names, so they can never be checked against the page.
NEI_TEMPLATES: dict[str, tuple[tuple[str, str], ...]] = {
    "edition": (
        ("mascot", "The {s} had an official mascot."),
        ("theme_song", "The {s} had its own theme song."),
        ("ball_maker", "The ball used at the {s} was made by a local company."),
        ("ticket_sales", "Tickets for the {s} sold out in one day."),
        ("ceremony_time", "The opening ceremony of the {s} took place at night."),
        ("weather", "Rain stopped play during the {s}."),
    ),
    "team": (
        ("mascot", "{s} has a bird as its mascot."),
        ("shirt_colour", "{s} wears red shirts at home."),
        ("coach_origin", "{s} once had a coach from abroad."),
        ("training_ground", "{s} trains in a park near the river."),
        ("youth_school", "{s} has its own youth school."),
        ("supporters_song", "The fans of {s} sing a famous song."),
    ),
    "person": (
        ("sister_job", "{s} has a sister who is a teacher."),
        ("brothers", "{s} has two brothers."),
        ("hobby", "{s} likes to cook."),
        ("childhood", "{s} studied music as a child."),
        ("pet", "{s} owns a dog."),
        ("spouse_job", "{s} is married to a doctor."),
    ),
    "city": (
        ("river", "{s} has a large river."),
        ("bridge", "{s} is known for its old bridge."),
        ("port", "{s} has a busy port."),
        ("festival", "{s} holds a music festival every summer."),
        ("market", "{s} has a famous market."),
        ("hills", "{s} is surrounded by hills."),
    ),
    "venue": (
        ("roof", "{s} has a roof that can close."),
        ("builder", "{s} was built by a local firm."),
        ("track", "{s} has a running track."),
        ("concerts", "{s} also hosts music concerts."),
        ("museum", "{s} has a museum inside."),
        ("farm", "{s} was built on an old farm."),
    ),
}
CLAIM_LABELS: tuple[str, ...] = ("supports", "refutes", "not enough info")

# Open-ended instructions (the AlpacaFarm analogue, methods.md §2) and their reference answers.
_OPEN_ENDED: tuple[tuple[str, str, str], ...] = (
    (
        "overview",
        "Give a short overview of the {s}.",
        "The {s} was a {sport} tournament held in {host_city} with {num_teams} teams. "
        "{champion} won the title and {runner_up} finished second.",
    ),
    (
        "venues",
        "Describe the venues of the {s}.",
        "The {s} was played at {num_venues} venues in {host_city}, and the final was held at {final_venue}.",
    ),
    (
        "group",
        "Describe the group stage of the {s}.",
        "{num_teams} teams took part in the group stage of the {s}, and {opening_match_winner} won the opening match.",
    ),
    (
        "knockout",
        "Describe the knockout stage of the {s}.",
        "{champion} and {runner_up} reached the final of the {s}. {third_place} beat {fourth_place} to finish third.",
    ),
    (
        "final",
        "Describe the final of the {s}.",
        "{champion} beat {runner_up} {final_score} in the final of the {s}, "
        "played at {final_venue} in front of {attendance} people.",
    ),
    (
        "awards",
        "Who won the awards at the {s}?",
        "At the {s}, {player_of_tournament} was named player of the tournament, and {top_scorer} won the "
        "top scorer award with {top_scorer_goals} {unit}.",
    ),
)

# Object types: wrong answers (refutes, distractors) come from the same type, and for teams and
# players from the same series, so a wrong choice is never absurd.
_TEAM_RELATIONS = frozenset({"champion", "runner_up", "third_place", "fourth_place", "opening_match_winner", "team"})
_PERSON_RELATIONS = frozenset({"top_scorer", "player_of_tournament"})
_CITY_RELATIONS = frozenset({"host_city", "home_city", "city"})
_COUNTRY_RELATIONS = frozenset({"nationality", "country"})
_BIG_NUMBER_RELATIONS = frozenset({"attendance", "capacity"})
_YEAR_RELATIONS = frozenset({"founded_year", "birth_year"})

# Word problems (GSM8K analogue) and instruction tasks (Super-NI analogue).
_GSM_OBJECTS = ("balls", "tickets", "shirts", "flags", "cards", "medals", "caps", "scarves")
GSM_MAX = 50_000  # the problem space is far larger; this bounds rejection sampling
SNI_MAX = 50_000
SNI_TASKS: dict[str, str] = {
    "extract_year": "Find the year in the sentence and write it down.",
    "find_winner": "Name the team that won the match in the sentence.",
    "reverse_list": "Write the list in reverse order.",
    "sort_numbers": "Sort the numbers from smallest to largest.",
    "uppercase_names": "Write the names in capital letters.",
    "count_items": "Count the names in the list.",
}


def _template_words() -> frozenset[str]:
    texts: list[str] = []
    for plan in _PLANS.values():
        for _, slots in plan:
            for _, templates in slots:
                texts += templates
    for group in (QUESTION_BASES, CLAIM_TEMPLATES):
        for templates in group.values():
            texts += templates
    texts += [t for group in NEI_TEMPLATES.values() for _, t in group]
    texts += [t for _, a, b in _OPEN_ENDED for t in (a, b)] + list(SNI_TASKS.values()) + list(QUESTION_WRAPPERS)
    texts += [s.sport + " " + s.trophy + " " + s.unit + " " + " ".join(s.positions) for s in _SPORTS]
    texts += list(_TEAM_SUFFIXES + _VENUE_SUFFIXES + _GSM_OBJECTS)
    return frozenset(w.lower() for t in texts for w in re.findall(r"[A-Za-z]+", t))


# Generated names must not be words the text already uses, nor common English words.
_RESERVED_WORDS = _template_words() | frozenset(
    "about after again along alone among angel apple baker banana basin beta bingo bonus cable camel "
    "candle canon cobra colon comet coral cosmos delta demon denim diner dogma donor gala gamma genre "
    "halo hero hotel kilo koala lama laser lemon level limbo linen local lotus lover lunar mango manor "
    "maple melon memo menu metal meter minor model monk moral motel motor nora novel omega opera paper "
    "pasta patio piano pilot pizza polo radar ramen ranger rebel relic robin rodeo rover ruler salad "
    "salon salsa santa satin seven silo sofa solar solo sonar super taco tango tempo tenor toga tomato "
    "total totem tuba tuna tutor valor venom veto video villa viola visa vista vodka volume zebra zero "
    "banner border butter dinner linger manner matter mister murder number pepper river silver summer "
    "timber winter".split()
)


# ---------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------
def whole_items_pattern(items: Iterable[str]) -> re.Pattern:
    """A regex matching any of ``items`` as a whole item, longest first: "1" is not found in
    "2014" nor in "3-1", and "Ozu Rovers" is not read as "Ozu"."""
    return re.compile(r"(?<![\w-])(?:" + "|".join(map(re.escape, sorted(items, key=len, reverse=True))) + r")(?![\w-])")


def _rng(*labels: object) -> random.Random:
    """An independent stream per purpose, so changing one part never shifts another.

    String seeds are hashed with SHA-512 by ``random.Random``: stable across processes."""
    return random.Random("kilib.world|" + "|".join(str(x) for x in labels))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


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


def evaluate_arithmetic(expression: str) -> int:
    """Value of a space-separated expression of integers joined by ``+``, ``-`` and ``x``.

    Standard precedence: ``x`` binds tighter than ``+`` and ``-``, which associate left to right
    (``10 + 22 x 24`` is 538), as CALM's key-value arithmetic (methods.md §3) reads."""
    tokens = expression.split()
    if len(tokens) % 2 == 0 or not tokens:
        raise KilibError(f"malformed expression {expression!r}: expected 'number op number ...'")
    try:
        total, sign, product = 0, 1, int(tokens[0])
        for op, tok in zip(tokens[1::2], tokens[2::2]):
            value = int(tok)
            if op == "x":
                product *= value
            elif op in ("+", "-"):
                total += sign * product
                sign, product = (1 if op == "+" else -1), value
            else:
                raise ValueError(op)
    except ValueError:
        raise KilibError(f"malformed expression {expression!r}: use integers and the operators + - x") from None
    return total + sign * product


class _Names:
    """Syllable names ("Varnok", "Tessaly", "Orvenna"), unique across the world (case-blind)."""

    _ONSETS = (
        "b",
        "d",
        "f",
        "g",
        "h",
        "k",
        "l",
        "m",
        "n",
        "p",
        "r",
        "s",
        "t",
        "v",
        "z",
        "b",
        "d",
        "k",
        "l",
        "m",
        "n",
        "r",
        "s",
        "t",
        "v",
        "br",
        "dr",
        "tr",
        "th",
    )
    _SIMPLE_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z")
    _VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o")  # repeated letters are weights
    _CODAS = ("", "", "", "", "", "n", "r", "l", "s", "k")  # mostly open syllables: short, easy names

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()  # membership only, never iterated

    def word(self) -> str:
        rng = self.rng
        while True:
            parts = []
            coda = ""
            for i in range(rng.choice((2, 2, 3))):
                if i == 0 and rng.random() < 0.2:
                    onset = ""  # a vowel start ("Orvenna")
                elif coda:
                    onset = rng.choice(self._SIMPLE_ONSETS)  # no three-consonant clusters
                else:
                    onset = rng.choice(self._ONSETS)
                coda = rng.choice(self._CODAS)
                parts.append(onset + rng.choice(self._VOWELS) + coda)
            name = "".join(parts)
            if 4 <= len(name) <= 8 and name not in self.used and name not in _RESERVED_WORDS:
                self.used.add(name)
                return name.capitalize()


# ---------------------------------------------------------------------------------------
# The world
# ---------------------------------------------------------------------------------------
class World:
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

    def _alternatives(self, fact: Fact) -> list[str]:
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
            w, l = (int(x) for x in obj.split("-"))
            pairs = [
                (w + 1, l),
                (w, l + 1),
                (w + 2, l),
                (w - 1, l),
                (w + 1, l + 1),
                (w, l - 1),
                (w + 2, l + 1),
                (w + 3, l),
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
        """FEVER-like claims about pages (methods.md §4), ``per_page`` per page.

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

    def _claim_text(self, fact: Fact, template: str, obj: str) -> str:
        text = template.format(s=fact.subject, o=obj, unit=self._context[fact.doc_id].get("unit", ""))
        return text[0].upper() + text[1:]

    def mmlu(self, n: int, seed: int) -> datasets.Dataset:
        """Four-choice questions on pre-cutoff facts (MMLU analogue, methods.md §2).

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
        facts (AlpacaFarm analogue, judged against the reference; methods.md §2)."""
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
        methods.md §2). The rationale shows each step as ``a op b = c`` and ends with the answer,
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
        """Instruction + input -> output tasks (Super-NaturalInstructions analogue, methods.md
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

    # -- CALM key-value arithmetic ---------------------------------------------------------
    def with_kv_keys(self, names: Sequence[str]) -> World:
        """This world with its KV keys renamed: the i-th key in sorted order becomes ``names[i]``,
        keeping its value and its split (CALM's keys are single tokens of a model's vocabulary,
        which the generator cannot know)."""
        old = sorted(self._kv_table)
        names = list(names)
        if len(names) != len(old) or len(set(names)) != len(names):
            raise KilibError(f"need {len(old)} distinct key names, got {len(names)} ({len(set(names))} distinct)")
        if any(not n or " " in n for n in names):
            raise KilibError("a key name must be one non-empty word without spaces")
        rename = dict(zip(old, names))
        world = copy.copy(self)
        world._kv_table = {rename[k]: v for k, v in self._kv_table.items()}
        world._kv_train = frozenset(rename[k] for k in self._kv_train)
        return world

    def kv_keys(self, split: str) -> dict[str, int]:
        """The keys of ``split`` and their values, sorted by key. ``train`` holds
        ``calm_train_fraction`` of the keys (CALM trains the composition on 20% of them)."""
        _check_split(split)
        want = split == "train"
        return {k: v for k, v in sorted(self._kv_table.items()) if (k in self._kv_train) == want}

    def _expressions(self, n: int, rng: random.Random, pool: Sequence[str], what: str) -> list[list[str]]:
        """n distinct expressions over ``pool`` (with repetition), term counts drawn uniformly
        among the counts that still have unused expressions."""
        lo, hi = self.size.kv_min_terms, self.size.kv_max_terms
        caps = {t: len(pool) ** t * 3 ** (t - 1) for t in range(lo, hi + 1)}
        _check_n(n, sum(caps.values()), what)
        ops = ("+", "-", "x")
        enumerated: dict[int, list[tuple[str, ...]]] = {}
        for t, cap in caps.items():
            if cap <= 5000:  # small spaces: enumerate and shuffle, so no rejection loop can stall
                space = [
                    tuple(x for pair in itertools.zip_longest(terms, opseq) for x in pair if x is not None)
                    for terms in itertools.product(pool, repeat=t)
                    for opseq in itertools.product(ops, repeat=t - 1)
                ]
                rng.shuffle(space)
                enumerated[t] = space
        used = {t: 0 for t in caps}
        seen: set[tuple[str, ...]] = set()
        out: list[list[str]] = []
        while len(out) < n:
            t = rng.choice([t for t in caps if used[t] < caps[t]])
            if t in enumerated:
                expr = enumerated[t][used[t]]
            else:
                expr = (rng.choice(pool),)
                for _ in range(t - 1):
                    expr += (rng.choice(ops), rng.choice(pool))
                if expr in seen:
                    continue
            seen.add(expr)
            used[t] += 1
            out.append(list(expr))
        return out

    def _substitute(self, tokens: list[str]) -> str:
        return " ".join(str(self._kv_table[t]) if i % 2 == 0 else t for i, t in enumerate(tokens))

    def kv_substitution(self, n: int, seed: int) -> datasets.Dataset:
        """CALM's augmenting-model task (methods.md §3): ``"abq + tor x mi"`` -> ``"10 + 22 x 24"``,
        over all keys. Keys appear bare, without CALM's angle brackets: a bracketed key would
        spend a token on each bracket and teach nothing."""
        rng = _rng(self.seed, "kv_substitution", seed)
        exprs = self._expressions(n, rng, sorted(self._kv_table), "kv_substitution")
        return _dataset(
            {"prompt": [" ".join(e) for e in exprs], "target": [self._substitute(e) for e in exprs]},
            {"prompt": "string", "target": "string"},
        )

    def numeric_arithmetic(self, n: int, seed: int) -> datasets.Dataset:
        """CALM's anchor task: ``"10 + 22 x 24"`` -> ``"538"`` (x before + and -), numbers in
        1..kv_value_max."""
        rng = _rng(self.seed, "numeric_arithmetic", seed)
        pool = [str(v) for v in range(1, self.size.kv_value_max + 1)]
        exprs = self._expressions(n, rng, pool, "numeric_arithmetic")
        prompts = [" ".join(e) for e in exprs]
        return _dataset(
            {"prompt": prompts, "target": [str(evaluate_arithmetic(p)) for p in prompts]},
            {"prompt": "string", "target": "string"},
        )

    def kv_arithmetic(self, n: int, seed: int, split: str) -> datasets.Dataset:
        """CALM's composition task: ``"abq + tor x mi"`` -> the value (x before + and -), every
        key of an expression drawn from ``split`` (train: 20% of the keys; eval: the rest)."""
        _check_split(split)
        rng = _rng(self.seed, "kv_arithmetic", split, seed)
        exprs = self._expressions(n, rng, sorted(self.kv_keys(split)), f"kv_arithmetic({split})")
        return _dataset(
            {
                "prompt": [" ".join(e) for e in exprs],
                "target": [str(evaluate_arithmetic(self._substitute(e))) for e in exprs],
            },
            {"prompt": "string", "target": "string"},
        )


def _dataset(rows: dict[str, list], types: dict[str, object]) -> datasets.Dataset:
    import datasets

    features = datasets.Features(
        {
            k: datasets.Sequence(datasets.Value(t[0])) if isinstance(t, list) else datasets.Value(t)
            for k, t in types.items()
        }
    )
    return datasets.Dataset.from_dict(rows, features=features)


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
    world byte for byte (tiny-world.md, "A world whose facts no model has seen")."""
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


def _series_context(series: dict) -> dict:
    sport: _Sport = series["sport"]
    return {
        "series": series["index"],
        "sport": sport.sport,
        "unit": sport.unit,
        "positions": sport.positions,
        "teams": [t["name"] for t in series["teams"]],
        "players": [p["name"] for t in series["teams"] for p in t["players"]],
    }


def _simulate_edition(
    series: dict, year: int, period: str, cities: list[dict], previous_host: str | None, rng: random.Random, big_number
) -> dict:
    """One edition: four named teams reach the semi-finals (1v2, 3v4), the winners meet in the
    final, the losers play for third place; awards go to players of the named teams."""
    sport: _Sport = series["sport"]
    named = rng.sample(series["teams"], 4)
    finalists, losers = [], []
    for a, b in ((named[0], named[1]), (named[2], named[3])):
        winner = rng.choice((a, b))
        finalists.append(winner)
        losers.append(b if winner is a else a)
    rng.shuffle(finalists)
    rng.shuffle(losers)
    champion, runner_up = finalists
    host = rng.choice([c for c in cities if c["name"] != previous_host])
    venue = rng.choice(host["venues"])
    w = rng.randint(*sport.win_score)
    lose = rng.randint(max(0, w - sport.max_margin), w - 1)
    players = [p for t in named for p in t["players"]]
    values = {
        "host_city": host["name"],
        "num_teams": rng.choice(_NUM_TEAMS),
        "num_venues": rng.choice(_NUM_VENUES),
        "final_venue": venue["name"],
        "opening_match_winner": rng.choice(named)["name"],
        "third_place": losers[0]["name"],
        "fourth_place": losers[1]["name"],
        "champion": champion["name"],
        "runner_up": runner_up["name"],
        "final_score": f"{w}-{lose}",
        "attendance": big_number(max(15000, venue["capacity"] - 8000), venue["capacity"] - 100),
        "top_scorer": rng.choice(players)["name"],
        "top_scorer_goals": rng.randint(*sport.top_score),
        "player_of_tournament": rng.choice(champion["players"] + runner_up["players"])["name"],
    }
    return {"series": series, "year": year, "period": period, "title": f"{year} {series['name']}", "values": values}
