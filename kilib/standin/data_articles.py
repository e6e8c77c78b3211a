"""Generated articles for :mod:`kilib.standin.data`: six Markdown documents of 4,000 to 8,000
words about made-up sporting events, shaped as the Wikipedia articles of notebook 01's paper
corpus (:data:`kilib.lm.documents.PAPER_ARTICLES`): five events of 2023 and one of 2018 (the
paper's control), each a lead, then sections and subsections under ``##``/``###`` headings.

Each event is simulated first (teams, matches, scores, scorers, a champion), and the text
states the simulation's results, so the facts in one article agree with one another.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import date, timedelta

from kilib.standin.data_text import COUNTRIES, PLACES, coined, person

# (title = file name, sport, year): five 2023 events and the 2018 control, as PAPER_ARTICLES has
ARTICLES = (
    ("2023 Meridian Cricket Cup", "cricket", 2023),
    ("Harbor Bowl LVII", "gridiron", 2023),
    ("2023 Continental Women's Football Cup", "football", 2023),
    ("2023 Greystone Golf Championship", "golf", 2023),
    ("2023 Collegiate Basketball Invitational", "basketball", 2023),
    ("2018 Intercontinental Football Cup", "football", 2018),
)
CUTOFF_YEAR = 2023  # an event of this year or later lies after the paper trainee's pretraining data


def post_cutoff() -> dict[str, bool]:
    """Each article's title and whether its event lies after the trainee's pretraining cutoff:
    the 2023 ones, as :data:`kilib.lm.documents.PAPER_ARTICLES` marks the paper's; the 2018 one
    is the control."""
    return {title: year >= CUTOFF_YEAR for title, _, year in ARTICLES}


_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")
_BROADCASTERS = ("Channel Meridian", "Aldoria Sport", "KBN", "Velmora One", "StreamArc", "Pellmar Radio")
_HOLE_PLAYS = ("made par", "made a birdie", "saved par from a bunker", "two-putted for par", "made a bogey")
_SPONSORS = ("Greywick Motors", "Northgate Bank", "Calder Ridge Energy", "Saltreach Media", "Orvale Breweries")


def _nth(n: int) -> str:
    """1 -> "1st", 12 -> "12th", 23 -> "23rd"."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _day(d: date) -> str:
    return f"{d.day} {d.strftime('%B')} {d.year}"


def _nations(rng: random.Random, n: int) -> list[str]:
    names = [c for c, _ in COUNTRIES]
    while len(names) < n:
        name = coined(rng, rng.choice((2, 3))).capitalize() + rng.choice(("ia", "land", "a", "ova", "istan", ""))
        if name not in names:
            names.append(name)
    rng.shuffle(names)
    return names[:n]


def _venues(rng: random.Random, n: int) -> list[tuple[str, str, int]]:
    """(stadium, city, capacity) for ``n`` venues."""
    kinds = ("Stadium", "Arena", "Park", "Oval", "Ground", "Field")
    cities = rng.sample(PLACES, min(n, len(PLACES)))
    return [(f"{coined(rng, 2).capitalize()} {rng.choice(kinds)}", c, rng.randint(18, 95) * 1000) for c in cities]


def _squads(rng: random.Random, teams: list[str], size: int = 8, pron: str = "") -> dict[str, list[str]]:
    return {t: [person(rng, pron) for _ in range(size)] for t in teams}


def _background(rng: random.Random, name: str, host: str, year: int, teams: int, sport: str) -> list[str]:
    """The Background and Format sections, common to every event."""
    bid = rng.choice([c for c, _ in COUNTRIES if c != host])
    out = ["## Background", "", "### Host selection", ""]
    out.append(
        f"The hosting rights for the {name} were awarded to {host} in {year - rng.randint(4, 6)}, after a vote in "
        f"which its bid defeated a joint proposal from {bid} and its neighbours by {rng.randint(9, 20)} votes to "
        f"{rng.randint(2, 8)}. The {host} bid promised new training grounds, free public transport for ticket "
        f"holders and a fan festival in each host city. Critics in {bid} said the decision was taken before the "
        f"inspection reports had been published, a claim the organisers rejected. {host} had last staged a "
        f"major {sport} event in {year - rng.randint(12, 30)}, and the government pledged "
        f"{rng.randint(80, 600)} million crowns towards stadiums, roads and security."
    )
    out += ["", "### Format", ""]
    if teams == 2:
        out.append(
            f"The game was played between the champions of the league's two conferences over four quarters of 15 "
            f"minutes, with sudden-death overtime if the score was level. Kickoff was set for "
            f"{rng.randint(5, 7)}:30 pm local time. Ticket prices ranged from {rng.randint(400, 900)} to "
            f"{rng.randint(3000, 9000):,} crowns, and the game sold out within {rng.randint(2, 40)} minutes."
        )
        return out
    out.append(
        f"A total of {teams} teams took part. The organisers kept the format of the previous edition, with "
        f"minor changes to the schedule: rest days between rounds were extended to at least "
        f"{rng.randint(2, 4)} days, and kick-off times were moved later in the day to avoid the summer heat. "
        f"Ticket prices ranged from {rng.randint(10, 30)} to {rng.randint(150, 900)} crowns, and "
        f"{rng.randint(55, 90)} percent of tickets were sold within the first week of general sale."
    )
    return out


def _closing(rng: random.Random, name: str, host: str, champion: str, year: int) -> list[str]:
    """The Broadcasting and Reception sections, common to every event."""
    chans = rng.sample(_BROADCASTERS, 3)
    out = ["", "## Broadcasting", ""]
    out.append(
        f"Rights in {host} were held by {chans[0]}, which showed every match live and reported an average "
        f"audience of {rng.randint(2, 15)}.{rng.randint(0, 9)} million viewers, peaking at "
        f"{rng.randint(16, 40)}.{rng.randint(0, 9)} million for the final. {chans[1]} and {chans[2]} shared the "
        f"international rights, and matches were streamed in {rng.randint(60, 180)} territories. The organisers "
        f"said that clips from the event were viewed more than {rng.randint(200, 900)} million times online "
        f"during the {year} tournament, a record for the competition. {rng.choice(_SPONSORS)} and "
        f"{rng.choice(_SPONSORS)} were the principal sponsors."
    )
    out += ["", "## Reception", ""]
    out.append(
        f"The {name} was widely praised for its organisation and its attendance figures. Writing after the "
        f"final, {person(rng)} called it the best-run edition in a generation, while {person(rng)} of "
        f"{rng.choice(_BROADCASTERS)} noted that the quality of play had improved markedly since the previous "
        f"edition. Some supporters criticised the cost of travel between host cities and the late finishes of "
        f"evening matches. {champion}'s victory was celebrated with a parade attended by an estimated "
        f"{rng.randint(50, 400) * 1000:,} people. An independent report published after the event estimated its "
        f"economic benefit to {host} at {rng.randint(300, 2000)} million crowns."
    )
    return out


# ---------------------------------------------------------------------------------------
# Football: groups of four, then knockout rounds
# ---------------------------------------------------------------------------------------
def _goals(rng: random.Random) -> int:
    return rng.choices(range(6), weights=(30, 33, 20, 10, 5, 2))[0]


def _football_match(rng, a, b, squads, venue, when, knockout, scored) -> tuple[list[str], str | None, tuple[int, int]]:
    """A football match report, its winner (None for a draw) and the score; each goal is counted
    in ``scored`` under (scorer, team)."""
    ga, gb = _goals(rng), _goals(rng)
    stadium, city, capacity = venue
    text = [
        f"{a} and {b} met at the {stadium} in {city} on {_day(when)}, in front of "
        f"{rng.randint(capacity // 2, capacity):,} spectators."
    ]
    minutes = sorted(rng.sample(range(2, 91), ga + gb))
    sides = rng.sample([a] * ga + [b] * gb, ga + gb)
    score = {a: 0, b: 0}
    for minute, side in zip(minutes, sides):
        score[side] += 1
        scorer = rng.choice(squads[side][1:])
        scored[(scorer, side)] += 1
        how = rng.choice(
            ("with a header", "from the penalty spot", "with a low shot", "from a free kick", "on a volley")
        )
        text.append(f"{scorer} scored for {side} {how} in the {_nth(minute)} minute to make it {score[a]}–{score[b]}.")
    winner = a if ga > gb else b if gb > ga else None
    if winner:
        text.append(f"{winner} won {max(ga, gb)}–{min(ga, gb)}.")
    elif ga == 0:
        text.append("Neither side found a way through, and the match ended goalless.")
    else:
        text.append(f"The match ended in a {ga}–{gb} draw.")
    if knockout and not winner:
        winner = rng.choice((a, b))
        pa = rng.randint(3, 5)
        text.append(f"After a goalless extra time, {winner} won {pa}–{pa - rng.randint(1, 2)} on penalties.")
    text.append(
        f"{rng.choice(squads[winner or a])} was named player of the match, and the referee, {person(rng)}, "
        f"showed {rng.randint(0, 6)} yellow cards."
    )
    return text, winner, (ga, gb)


def _football(rng: random.Random, name: str, year: int) -> list[str]:
    teams, host = _nations(rng, 32), rng.choice(COUNTRIES)[0]
    squads, venues = _squads(rng, teams, pron="she" if "Women" in name else "he"), _venues(rng, 8)
    scored: Counter[tuple[str, str]] = Counter()
    start = date(year, rng.choice((6, 7)), rng.randint(10, 20))
    groups = [teams[i : i + 4] for i in range(0, 32, 4)]
    body, qualified, day, goals = ["", "## Group stage", ""], [], 0, {}
    for g, group in enumerate(groups):
        letter = "ABCDEFGH"[g]
        body += [f"### Group {letter}", ""]
        table = {t: [0, 0, 0] for t in group}  # points, goal difference, goals for
        for i, a in enumerate(group):
            for b in group[i + 1 :]:
                text, winner, (ga, gb) = _football_match(
                    rng, a, b, squads, rng.choice(venues), start + timedelta(day // 4), False, scored
                )
                day += 1
                body += [" ".join(text), ""]
                for t, gf, gaa in ((a, ga, gb), (b, gb, ga)):
                    table[t][0] += 3 if winner == t else 1 if winner is None else 0
                    table[t][1] += gf - gaa
                    table[t][2] += gf
                    goals[t] = goals.get(t, 0) + gf
        order = sorted(group, key=lambda t: (-table[t][0], -table[t][1], -table[t][2], group.index(t)))
        qualified.append(order[:2])
        body.append(
            f"{order[0]} won Group {letter} with {table[order[0]][0]} points, and {order[1]} finished second with "
            f"{table[order[1]][0]} points; both advanced to the round of 16. {order[2]} and {order[3]} were eliminated."
        )
        body += [""] + [
            f"{i + 1}. {t}: {table[t][0]} points, goal difference {table[t][1]:+d}" for i, t in enumerate(order)
        ]
        body.append("")
    body += ["## Knockout stage", ""]
    field = [qualified[i][0] if k == 0 else qualified[i ^ 1][1] for i in range(8) for k in range(2)]
    rounds = ("Round of 16", "Quarter-finals", "Semi-finals", "Final")
    day = day // 4 + 3
    champion, runner_up, final_score = "", "", ""
    for title in rounds:
        body += [f"### {title}", ""]
        winners = []
        for i in range(0, len(field), 2):
            a, b = field[i], field[i + 1]
            text, winner, (ga, gb) = _football_match(
                rng, a, b, squads, rng.choice(venues), start + timedelta(day), True, scored
            )
            body += [" ".join(text), ""]
            winners.append(winner)
            if title == "Final":
                champion, runner_up = winner, b if winner == a else a
                final_score = f"on penalties after a {ga}–{gb} draw" if ga == gb else f"{max(ga, gb)}–{min(ga, gb)}"
        field, day = winners, day + 4
    lead = (
        f"The {name} was the {_nth(rng.randint(8, 25))} edition of the {name.split(' ', 1)[1]}, the quadrennial "
        f"tournament contested by national teams. It was held in {host} from {_day(start)} to "
        f"{_day(start + timedelta(day))}. {champion} won the title, beating {runner_up} {final_score} in the final "
        f"at the {venues[0][0]} in {venues[0][1]}. A total of {sum(goals.values())} goals were scored in the "
        f"group stage, and {max(goals, key=lambda t: (goals[t], t))} scored the most of any team."
    )
    top = [(n, p, t) for (p, t), n in sorted(scored.items(), key=lambda kv: (-kv[1], kv[0]))[:8]]
    stats = ["", "## Statistics", "", "### Top scorers", ""]
    stats += [f"- {p} ({t}): {n} goal{'s' * (n > 1)}" for n, p, t in top] + [""]
    stats.append(
        f"{top[0][1]} of {top[0][2]} won the Golden Boot with {top[0][0]} goals. {squads[champion][0]} of "
        f"{champion} was named the best player of the tournament, and {squads[runner_up][0]} the best goalkeeper."
    )
    venue_text = ["", "## Venues", ""] + [f"- {s}, {c} (capacity {n:,})" for s, c, n in venues]
    out = [lead, ""] + _background(rng, name, host, year, 32, "football") + venue_text + body + stats
    return out + _closing(rng, name, host, champion, year)


# ---------------------------------------------------------------------------------------
# Cricket: a round robin of ten teams, semi-finals and a final
# ---------------------------------------------------------------------------------------
def _cricket_match(rng, a, b, squads, venue, when) -> tuple[str, str]:
    first, second = rng.sample((a, b), 2)
    runs, wk = rng.randint(170, 390), rng.randint(3, 10)
    overs = "50 overs" if wk < 10 else f"{rng.randint(38, 49)}.{rng.randint(1, 5)} overs"
    text = [
        f"At the {venue[0]} in {venue[1]} on {_day(when)}, {first} won the toss and chose to bat.",
        f"{first} made {runs}{' all out' if wk == 10 else f' for {wk}'} in {overs}, "
        f"with {rng.choice(squads[first])} scoring {rng.randint(45, 150)} off {rng.randint(50, 140)} balls.",
        f"{rng.choice(squads[second])} took {rng.randint(2, 6)} wickets for {rng.randint(20, 70)} runs.",
    ]
    if rng.random() < 0.5:
        lost = rng.randint(2, 9)
        text.append(
            f"{second} reached the target of {runs + 1} with {10 - lost} wickets in hand and "
            f"{rng.randint(1, 60)} balls to spare, led by {rng.choice(squads[second])}'s {rng.randint(50, 140)}."
        )
        winner = second
    else:
        margin = rng.randint(1, 150)
        text.append(f"{second} were bowled out for {runs - margin}, and {first} won by {margin} runs.")
        winner = first
    text.append(
        f"The opening partnership of {first} was worth {rng.randint(5, 140)} runs, and {rng.choice(squads[first])} "
        f"hit {rng.randint(1, 7)} sixes. {second} scored {rng.randint(30, 75)} runs in the first ten overs of their "
        f"innings, and {rng.choice(squads[second])} made {rng.randint(10, 80)}."
    )
    text.append(f"{rng.choice(squads[winner])} was named player of the match.")
    return " ".join(text), winner


def _cricket(rng: random.Random, name: str, year: int) -> list[str]:
    teams, host = _nations(rng, 10), rng.choice(COUNTRIES)[0]
    squads, venues = _squads(rng, teams), _venues(rng, 10)
    start = date(year, 10, rng.randint(1, 8))
    wins = {t: 0 for t in teams}
    body, k = ["", "## League stage", ""], 0
    pairs = [(a, b) for i, a in enumerate(teams) for b in teams[i + 1 :]]
    rng.shuffle(pairs)
    for week in range(0, len(pairs), 9):
        body += [f"### Week {week // 9 + 1}", ""]
        for a, b in pairs[week : week + 9]:
            text, winner = _cricket_match(rng, a, b, squads, rng.choice(venues), start + timedelta(k // 2))
            wins[winner] += 1
            body += [text, ""]
            k += 1
    order = sorted(teams, key=lambda t: (-wins[t], teams.index(t)))
    body += ["### Standings", ""] + [f"{i + 1}. {t}: {wins[t]} wins, {2 * wins[t]} points" for i, t in enumerate(order)]
    body += ["", f"{', '.join(order[:3])} and {order[3]} qualified for the semi-finals.", "", "## Knockout stage", ""]
    day = k // 2 + 3
    finalists = []
    for i, (a, b) in enumerate(((order[0], order[3]), (order[1], order[2]))):
        body += [f"### {_ORDINALS[i].capitalize()} semi-final", ""]
        text, winner = _cricket_match(rng, a, b, squads, venues[i + 1], start + timedelta(day + i))
        body += [text, ""]
        finalists.append(winner)
    body += ["### Final", ""]
    text, champion = _cricket_match(rng, *finalists, squads, venues[0], start + timedelta(day + 4))
    body += [text, ""]
    runner_up = finalists[1] if champion == finalists[0] else finalists[0]
    lead = (
        f"The {name} was the {_nth(rng.randint(5, 14))} Meridian Cricket Cup, the one-day international tournament "
        f"for national men's teams. It was hosted by {host} from {_day(start)} to "
        f"{_day(start + timedelta(day + 4))}, with ten teams playing {len(pairs)} league matches, two semi-finals "
        f"and a final. {champion} beat {runner_up} in the final at the {venues[0][0]} in {venues[0][1]} to win the "
        f"title. {order[0]} topped the league table with {wins[order[0]]} wins."
    )
    venue_text = ["", "## Venues", ""] + [f"- {s}, {c} (capacity {n:,})" for s, c, n in venues]
    venue_text += ["", "## Squads", ""]
    for t in teams:
        roles = (rng.choice(("batter", "bowler", "all-rounder", "wicket-keeper")) for _ in squads[t])
        listed = ", ".join(f"{p} ({role})" for p, role in zip(squads[t], roles))
        venue_text += [f"{t} named a squad of {len(squads[t])} players, captained by {squads[t][0]}: {listed}.", ""]
    out = [lead, ""] + _background(rng, name, host, year, 10, "cricket") + venue_text + body
    return out + _closing(rng, name, host, champion, year)


# ---------------------------------------------------------------------------------------
# Basketball: a 64-team single-elimination bracket in four regions
# ---------------------------------------------------------------------------------------
def _colleges(rng: random.Random, n: int) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        stem = rng.choice((rng.choice(PLACES), coined(rng, 2).capitalize()))
        name = rng.choice((f"{stem} State", f"University of {stem}", f"{stem} Tech", f"{stem} College", stem))
        if name not in out:
            out.append(name)
    return out


def _basketball(rng: random.Random, name: str, year: int) -> list[str]:
    host = rng.choice(COUNTRIES)[0]
    teams = _colleges(rng, 64)
    squads, venues = _squads(rng, teams, 5), _venues(rng, 8)
    regions = ("East", "West", "South", "Midwest")
    seed = {t: i % 16 + 1 for i, t in enumerate(teams)}
    start = date(year, 3, rng.randint(14, 17))
    rounds = ("First round", "Second round", "Regional semifinals", "Regional finals", "National semifinals")
    body = ["", "## Selection", ""]
    for r in range(4):
        body += [f"### {regions[r]} region teams", ""]
        for t in teams[16 * r : 16 * r + 16]:
            wins = rng.randint(14, 31)
            body.append(f"{seed[t]}. {t} ({wins}–{rng.randint(2, 33 - wins)}), coached by {person(rng)}")
        body.append("")
    body += ["## Tournament", ""]
    field = []
    for r in range(4):
        region = teams[16 * r : 16 * r + 16]
        order = (1, 16, 8, 9, 5, 12, 4, 13, 6, 11, 3, 14, 7, 10, 2, 15)
        field.append([region[s - 1] for s in order])
    final_four = []
    for r, region_field in enumerate(field):
        body += [f"### {regions[r]} region", ""]
        for k, title in enumerate(rounds[:4]):
            body += [f"#### {regions[r]} {title.lower()}", ""]
            region_field = _basketball_round(rng, region_field, squads, seed, venues, start + timedelta(2 * k), body)
        final_four += region_field
    body += ["### Final Four", ""]
    finalists = _basketball_round(rng, final_four, squads, seed, venues[:1], start + timedelta(16), body)
    body += ["### National championship", ""]
    champion = _basketball_round(rng, finalists, squads, seed, venues[:1], start + timedelta(18), body)[0]
    runner_up = finalists[1] if champion == finalists[0] else finalists[0]
    lead = (
        f"The {name} was a single-elimination tournament of 64 college teams played in {host} to decide the "
        f"national champion of the {year - 1}–{str(year)[2:]} season. It began on {_day(start)} and ended with "
        f"the championship game at the {venues[0][0]} in {venues[0][1]} on {_day(start + timedelta(18))}, where "
        f"No. {seed[champion]} seed {champion} beat No. {seed[runner_up]} seed {runner_up}. "
        f"{', '.join(final_four[:3])} and {final_four[3]} reached the Final Four."
    )
    venue_text = ["", "## Venues", ""] + [f"- {s}, {c} (capacity {n:,})" for s, c, n in venues]
    out = [lead, ""] + _background(rng, name, host, year, 64, "basketball") + venue_text + body
    return out + _closing(rng, name, host, champion, year)


def _basketball_round(rng, field, squads, seed, venues, when, body) -> list[str]:
    winners = []
    for i in range(0, len(field), 2):
        a, b = field[i], field[i + 1]
        p_a = 0.5 + (seed[b] - seed[a]) * 0.03
        winner = a if rng.random() < p_a else b
        loser = b if winner == a else a
        hi = rng.randint(62, 98)
        lo = hi - rng.randint(1, 25)
        star = rng.choice(squads[winner])
        overtime = " in overtime" if hi - lo <= 3 and rng.random() < 0.3 else ""
        venue = rng.choice(venues)
        body.append(
            f"No. {seed[winner]} seed {winner} defeated No. {seed[loser]} seed {loser} {hi}–{lo}{overtime} at the "
            f"{venue[0]} in {venue[1]} on {_day(when)}. {star} led {winner} with {rng.randint(12, 38)} points and "
            f"{rng.randint(2, 15)} rebounds, while {rng.choice(squads[loser])} scored {rng.randint(8, 30)} for "
            f"{loser}. {winner} shot {rng.randint(38, 58)} percent from the field and made {rng.randint(3, 14)} "
            f"three-pointers, and {loser} committed {rng.randint(6, 19)} turnovers."
            + (" The result was the biggest upset of the round." if seed[winner] - seed[loser] >= 5 else "")
        )
        body.append("")
        winners.append(winner)
    return winners


# ---------------------------------------------------------------------------------------
# Golf: four rounds of stroke play with a cut after two
# ---------------------------------------------------------------------------------------
def _golf(rng: random.Random, name: str, year: int) -> list[str]:
    host, par = rng.choice(COUNTRIES)[0], 70
    course, city = f"{coined(rng, 2).capitalize()} Hills Golf Club", rng.choice(PLACES)
    players = list(dict.fromkeys(person(rng) for _ in range(170)))[:156]
    skill = {p: rng.gauss(0, 1.2) for p in players}
    nation = {p: rng.choice(COUNTRIES)[0] for p in players}
    start = date(year, 5, rng.randint(15, 20))
    totals = {p: 0 for p in players}
    body = ["", "## Field", ""]
    for p in players[:80]:
        body.append(
            f"{p} of {nation[p]} entered the championship ranked {_nth(rng.randint(1, 200))} in the world, having won "
            f"{rng.randint(0, 9)} professional events, {rng.randint(0, 3)} of them in the previous season."
        )
    body += ["", "## Round summaries", ""]
    field = players
    for rnd in range(4):
        scores = {p: par + round(rng.gauss(-skill[p] * 0.8, 2.4)) for p in field}
        for p in field:
            totals[p] += scores[p]
        board = sorted(field, key=lambda p: (totals[p], players.index(p)))
        when = start + timedelta(rnd)
        body += [f"### {_ORDINALS[rnd].capitalize()} round", ""]
        low = min(field, key=lambda p: (scores[p], players.index(p)))
        body.append(
            f"The {_ORDINALS[rnd]} round was played on {_day(when)} in "
            f"{rng.choice(('calm', 'windy', 'wet', 'warm', 'overcast'))} conditions. {low} had the lowest round of "
            f"the day, a {scores[low]} ({scores[low] - par:+d}). After {rnd + 1} round{'s' * (rnd > 0)}, "
            f"{board[0]} led at {totals[board[0]] - par * (rnd + 1):+d}, one ahead of {board[1]}."
        )
        body.append("")
        for p in board[1:30]:
            body.append(
                f"{p} shot {scores[p]} to stand at {totals[p] - par * (rnd + 1):+d}, "
                f"with {rng.randint(1, 6)} birdies and {rng.randint(0, 4)} bogeys."
            )
        body.append("")
        if rnd == 1:
            cut = totals[board[69]]
            field = [p for p in board if totals[p] <= cut]
            body += [f"The cut fell at {cut - 2 * par:+d}; {len(field)} players made it to the weekend.", ""]
    board = sorted(field, key=lambda p: (totals[p], players.index(p)))
    champion = board[0]
    body += ["### Final round detail", ""]
    for hole in range(1, 19):
        body.append(
            f"On the {_nth(hole)} hole, a par {rng.choice((3, 4, 4, 5))}, {champion} {rng.choice(_HOLE_PLAYS)}."
        )
    money = rng.randint(12, 20) * 1_000_000
    body += ["", "## Final leaderboard", ""]
    body += [f"{i + 1}. {p} ({nation[p]}): {totals[p]} ({totals[p] - 4 * par:+d})" for i, p in enumerate(board[:20])]
    body += ["", f"The purse was {money:,} crowns, of which the winner received {money * 18 // 100:,}."]
    margin = totals[board[1]] - totals[champion]
    lead = (
        f"The {name} was the {_nth(year - rng.randint(1900, 1950))} edition of the Greystone Golf Championship, a "
        f"major championship in men's professional golf. It was held from {_day(start)} to "
        f"{_day(start + timedelta(3))} at {course} near {city}, {host}. {champion} won at "
        f"{totals[champion] - 4 * par:+d}, {margin} stroke{'s' * (margin != 1)} ahead of {board[1]}."
    )
    out = [lead, ""] + _background(rng, name, host, year, 156, "golf")
    out += ["", "## Course", "", f"The championship was played at {course}, a par-{par} course near {city}."]
    return out + body + _closing(rng, name, host, champion, year)


# ---------------------------------------------------------------------------------------
# Gridiron: one championship game, the teams' seasons before it
# ---------------------------------------------------------------------------------------
def _gridiron(rng: random.Random, name: str, year: int) -> list[str]:
    host = rng.choice(COUNTRIES)[0]
    mascots = rng.sample(("Herons", "Foxes", "Pilots", "Millers", "Comets", "Rangers", "Stags", "Wolves"), 2)
    teams = [f"{city} {m}" for city, m in zip(rng.sample(PLACES, 2), mascots)]
    squads = _squads(rng, teams, 10)
    stadium, city, capacity = _venues(rng, 1)[0]
    when = date(year, 2, rng.randint(5, 14))
    body = ["", "## Teams", ""]
    for t in teams:
        body += [f"### {t}", ""]
        wins = 0
        for week in range(1, 18):
            won = rng.random() < 0.72
            wins += won
            a, b = rng.randint(10, 45), rng.randint(3, 38)
            hi, lo = max(a, b + 1), min(a, b)
            opp = f"{rng.choice(PLACES)} {rng.choice(('Bears', 'Hawks', 'Kings', 'Sharks', 'Owls'))}"
            verb = f"beat the {opp} {hi}–{lo}" if won else f"lost to the {opp} {lo}–{hi}"
            body.append(
                f"In week {week}, the {t} {verb} {rng.choice(('at home', 'on the road'))} before "
                f"{rng.randint(40_000, 80_999):,} fans; {squads[t][0]} threw for {rng.randint(120, 420)} yards "
                f"and {rng.choice(squads[t][1:4])} ran for {rng.randint(10, 160)}."
            )
        body += ["", f"The {t} finished the regular season at {wins}–{17 - wins}.", "", "#### Playoffs", ""]
        for stage in ("divisional round", "conference semifinal", "conference championship"):
            opp = f"{rng.choice(PLACES)} {rng.choice(('Bears', 'Hawks', 'Kings', 'Sharks', 'Owls'))}"
            hi, lo = rng.randint(20, 42), rng.randint(6, 19)
            body.append(
                f"In the {stage}, the {t} beat the {opp} {hi}–{lo} at home. {rng.choice(squads[t])} scored "
                f"{rng.randint(2, 3)} touchdowns, and the defense held the {opp} to {rng.randint(40, 130)} rushing "
                f"yards, forcing {rng.randint(1, 4)} turnovers."
            )
        body += ["", "#### Players", ""]
        for i, p in enumerate(squads[t]):
            body.append(
                f"{p} joined the {t} in {year - rng.randint(1, 12)} from {rng.choice(_colleges(rng, 1))} and "
                f"started {rng.randint(9, 17)} games in the season{', as the captain' if i == 0 else ''}, "
                f"{'earning a place in the all-league team' if rng.random() < 0.4 else 'missing no practices'}. "
                f"{p} wore number {rng.randint(1, 99)}."
            )
        body += ["", "#### Coaching staff", ""]
        for role in ("Head coach", "Offensive coordinator", "Defensive coordinator", "Special teams coordinator"):
            body.append(
                f"{role}: {person(rng)}, in {rng.choice(('a first', 'a second', 'a third', 'a fifth'))} season with "
                f"the {t}, previously with the {rng.choice(PLACES)} {rng.choice(('Bears', 'Hawks', 'Kings', 'Owls'))}."
            )
        body.append("")
    body += ["## Pregame", ""]
    body.append(
        f"Security around the {stadium} was the largest operation in the history of {city}, with "
        f"{rng.randint(2, 9) * 1000:,} police officers and volunteers on duty. Tickets on the resale market sold for "
        f"an average of {rng.randint(3, 9) * 1000:,} crowns, the highest price for the game in a decade. Both teams "
        f"arrived in {city} a week before the game and practised at local university grounds."
    )
    body += ["", "### Injury reports", ""]
    for t in teams:
        for p in rng.sample(squads[t], 5):
            body.append(
                f"{p} of the {t} was listed as {rng.choice(('questionable', 'probable', 'doubtful'))} with a "
                f"{rng.choice(('knee', 'hamstring', 'ankle', 'shoulder', 'wrist'))} injury, and "
                f"{rng.choice(('played', 'was limited in practice but played', 'did not play'))}."
            )
    body += ["", "## Game summary", ""]
    score = {t: 0 for t in teams}
    for q in range(4):
        body += [f"### {_ORDINALS[q].capitalize()} quarter", ""]
        for _ in range(rng.randint(10, 12)):
            t = rng.choice(teams)
            qb, runner = squads[t][0], rng.choice(squads[t][1:])
            outcome = rng.choices(("td", "fg", "punt", "turnover"), weights=(12, 12, 60, 16))[0]
            drive = (
                f"The {t} drove {rng.randint(5, 80)} yards in {rng.randint(3, 14)} plays over "
                f"{rng.randint(1, 7)}:{rng.randint(0, 59):02d}, helped by a {rng.randint(8, 35)}-yard catch by "
                f"{rng.choice(squads[t][1:])},"
            )
            if outcome == "td":
                score[t] += 7
                play = rng.choice(
                    (
                        f"a {rng.randint(1, 40)}-yard pass from {qb} to {runner}",
                        f"a {rng.randint(1, 15)}-yard run by {runner}",
                    )
                )
                body.append(f"{drive} scoring on {play} to make it {score[teams[0]]}–{score[teams[1]]}.")
            elif outcome == "fg":
                score[t] += 3
                body.append(
                    f"{drive} and kicked a {rng.randint(20, 55)}-yard field goal ({score[teams[0]]}–{score[teams[1]]})."
                )
            elif outcome == "punt":
                body.append(f"{drive} before punting.")
            else:
                body.append(f"{drive} before {qb} was intercepted by {rng.choice(squads[teams[teams.index(t) - 1]])}.")
        body.append("")
    if score[teams[0]] == score[teams[1]]:
        t = rng.choice(teams)
        score[t] += 3
        body += ["### Overtime", "", f"The {t} won the game with a field goal on the first drive of overtime.", ""]
    champion = max(teams, key=lambda t: score[t])
    loser = teams[1] if champion == teams[0] else teams[0]
    mvp = squads[champion][0]
    body += ["## Statistics", ""]
    for t in teams:
        body.append(
            f"{squads[t][0]} completed {rng.randint(14, 32)} of {rng.randint(33, 45)} passes for "
            f"{rng.randint(180, 400)} yards for the {t}. {squads[t][1]} ran for {rng.randint(20, 140)} yards, and "
            f"{squads[t][2]} caught {rng.randint(3, 12)} passes for {rng.randint(30, 160)} yards."
        )
    body.append("")
    for t in teams:
        for p in squads[t][3:]:
            body.append(
                f"On defense for the {t}, {p} made {rng.randint(1, 12)} tackles, with {rng.randint(0, 2)} sacks and "
                f"{rng.randint(0, 3)} passes defended."
            )
    body += ["", f"{mvp} was named the game's most valuable player.", "", "### Records", ""]
    for p in rng.sample(squads[champion] + squads[loser], 8):
        what = rng.choice(("receptions", "rushing yards", "tackles", "sacks"))
        when_ = rng.choice(("a first appearance", "a single half", "a losing effort", "the first quarter"))
        body.append(f"{p} set a championship game record for {what} by a player in {when_}.")
    body += ["", "### Officials", ""]
    roles = ("Referee", "Umpire", "Down judge", "Line judge", "Field judge", "Side judge", "Back judge")
    body += [f"- {role}: {person(rng)}" for role in roles] + [""]
    body += ["## Entertainment", ""]
    body.append(
        f"{person(rng)} sang the national anthem before kickoff, and the halftime show, headlined by "
        f"{person(rng)}, ran for {rng.randint(12, 15)} minutes and drew {rng.randint(80, 130)} million viewers. "
        f"A flyover by the {host} air force followed the anthem."
    )
    body += ["", "### Commercials", ""]
    for sponsor in rng.sample(_SPONSORS + _BROADCASTERS, 10):
        body.append(
            f"{sponsor} bought a {rng.choice((15, 30, 45, 60))}-second slot in the {rng.choice(_ORDINALS[:4])} "
            f"quarter, at a reported price of {rng.randint(4, 8)}.{rng.randint(0, 9)} million crowns per 30 seconds."
        )
    lead = (
        f"{name} was the championship game of the {host} professional football league for the {year - 1} season. "
        f"The {champion} defeated the {loser} {score[champion]}–{score[loser]}. The game was played on "
        f"{_day(when)} at the {stadium} in {city}, in front of {rng.randint(capacity // 2, capacity):,} spectators. "
        f"{mvp} was named most valuable player."
    )
    out = [lead, ""] + _background(rng, name, host, year, 2, "football")
    return out + body + _closing(rng, name, host, champion, year)


_SPORTS = {"football": _football, "cricket": _cricket, "basketball": _basketball, "golf": _golf, "gridiron": _gridiron}


def article_text(rng: random.Random, title: str, sport: str, year: int) -> str:
    """One article in Markdown: the lead (the Overview), then ``##`` sections and ``###``
    subsections, about the made-up event ``title``."""
    return "\n".join(_SPORTS[sport](rng, title, year)).strip() + "\n"
