"""The world's tournament series and names: the six sports (one per paper document), how an
edition is played out, the syllable names every team, player, city, venue and country gets,
and the seeded random streams all of the generator draws from (docs/tiny-world.md)."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from kilib.tiny.world_text import (
    _GSM_OBJECTS,
    _OPEN_ENDED,
    _PLANS,
    CLAIM_TEMPLATES,
    NEI_TEMPLATES,
    QUESTION_BASES,
    QUESTION_WRAPPERS,
    SNI_TASKS,
)


def _rng(*labels: object) -> random.Random:
    """An independent stream per purpose, so changing one part never shifts another.

    String seeds are hashed with SHA-512 by ``random.Random``: stable across processes."""
    return random.Random("kilib.world|" + "|".join(str(x) for x in labels))


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
# Names
# ---------------------------------------------------------------------------------------
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
# Editions
# ---------------------------------------------------------------------------------------
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
