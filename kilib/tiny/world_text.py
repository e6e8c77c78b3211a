"""The generated world's text (docs/tiny-world.md): the article plans each page is rendered
from, question paraphrases and their wrappers, claim and not-enough-info templates, and the
task texts (open-ended instructions, word-problem objects, instruction tasks).

Plain data, read by :mod:`kilib.tiny.world` and the modules it draws on; nothing is random here.
"""

from __future__ import annotations

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

# Declarative claims (FEVER-like, docs/methods.md §4): two phrasings per relation, different from
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

# Open-ended instructions (the AlpacaFarm analogue, docs/methods.md §2) and their reference answers.
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

# Word problems (GSM8K analogue) and instruction tasks (Super-NI analogue).
_GSM_OBJECTS = ("balls", "tickets", "shirts", "flags", "cards", "medals", "caps", "scarves")
SNI_TASKS: dict[str, str] = {
    "extract_year": "Find the year in the sentence and write it down.",
    "find_winner": "Name the team that won the match in the sentence.",
    "reverse_list": "Write the list in reverse order.",
    "sort_numbers": "Sort the numbers from smallest to largest.",
    "uppercase_names": "Write the names in capital letters.",
    "count_items": "Count the names in the list.",
}
