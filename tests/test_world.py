"""The generated world (kilib.tiny.world): determinism, no post-cutoff leaks, labels right by
construction, and CALM's key-value arithmetic as the paper defines it."""

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from kilib.runtime import KilibError
from kilib.tiny.world import WorldSize, evaluate_arithmetic, generate_world
from kilib.tiny.world_text import (
    _PLANS,
    CLAIM_LABELS,
    CLAIM_TEMPLATES,
    NEI_TEMPLATES,
    QUESTION_BASES,
    RELATIONS,
    SNI_TASKS,
)


@pytest.fixture(scope="module")
def world():
    return generate_world(seed=0, size="smoke")


@pytest.fixture(scope="module")
def tiny():
    return generate_world(seed=0, size="tiny")


def mentions(text: str, phrase: str) -> bool:
    return re.search(r"(?<![\w-])" + re.escape(phrase) + r"(?![\w-])", text) is not None


def snapshot(w):
    return (
        [(a.id, a.kind, a.period, a.year, a.text, [s.fact_ids for s in a.sections]) for a in w.articles.values()],
        [tuple(vars(f).values()) for f in w.facts.values()],
        w.claims(per_page=3, seed=1).to_list(),
        w.kv_substitution(50, seed=2).to_list(),
        w.numeric_arithmetic(50, seed=2).to_list(),
        w.kv_arithmetic(50, seed=2, split="eval").to_list(),
        w.kv_keys("train"),
        w.mmlu(20, seed=3).to_list(),
        w.gsm(20, seed=3).to_list(),
        w.sni(20, seed=3).to_list(),
        w.open_ended(10, seed=3).to_list(),
    )


# -- sizes and errors -----------------------------------------------------------------------
def test_unknown_size_raises_and_names_the_valid_ones():
    with pytest.raises(KilibError, match="smoke, tiny"):
        generate_world(size="huge")
    with pytest.raises(KilibError, match="teams_per_series"):
        WorldSize(editions_per_series=2, teams_per_series=3, players_per_team=1, n_kv_keys=20, kv_value_max=30)
    with pytest.raises(KilibError, match="kv_value_max"):
        WorldSize(editions_per_series=2, teams_per_series=4, players_per_team=1, n_kv_keys=40, kv_value_max=30)


def test_bad_arguments_raise(world):
    with pytest.raises(KilibError, match="'train' or 'eval'"):
        world.questions(next(iter(world.facts)), "test")
    with pytest.raises(KilibError, match="unknown fact_id"):
        world.questions("nope", "train")
    with pytest.raises(KilibError, match="unknown doc_id"):
        world.documents(["nope"])
    with pytest.raises(KilibError, match="'train' or 'eval'"):
        world.kv_keys("all")


def test_asking_for_more_than_the_world_can_make_names_the_maximum(world):
    n_open = 6 * sum(a.kind == "edition" and a.period == "pre" for a in world.articles.values())
    with pytest.raises(KilibError, match=f"at most {n_open}"):
        world.open_ended(n_open + 1, seed=0)
    assert len(world.open_ended(n_open, seed=0)) == n_open
    k = len(world.kv_keys("train"))
    cap = sum(k**t * 3 ** (t - 1) for t in range(world.size.kv_min_terms, world.size.kv_max_terms + 1))
    with pytest.raises(KilibError, match=f"at most {cap}"):
        world.kv_arithmetic(cap + 1, seed=0, split="train")
    full = world.kv_arithmetic(cap, seed=0, split="train")
    assert len(set(full["prompt"])) == cap
    with pytest.raises(KilibError, match="at most"):
        world.mmlu(len(world.facts) + 1, seed=0)
    with pytest.raises(KilibError, match="per_page <="):
        world.claims(per_page=100)


def test_sizes_are_as_documented(world, tiny):
    n_tiny = len(tiny.facts)
    assert 300 <= n_tiny <= 600, n_tiny
    assert len(world.facts) < n_tiny
    for w in (world, tiny):
        pre_editions = [a for a in w.articles.values() if a.kind == "edition" and a.period == "pre"]
        assert len(pre_editions) == 6 * w.size.editions_per_series
    assert world.size.editions_per_series == 2 and tiny.size.editions_per_series == 4


# -- determinism ------------------------------------------------------------------------------
def test_same_seed_same_world_other_seed_differs(world):
    again = generate_world(seed=0, size="smoke")
    assert snapshot(again) == snapshot(world)
    assert again.fingerprint == world.fingerprint
    other = generate_world(seed=1, size="smoke")
    assert [a.text for a in other.articles.values()] != [a.text for a in world.articles.values()]
    assert other.kv_keys("train") != world.kv_keys("train")
    assert other.fingerprint != world.fingerprint
    assert generate_world(seed=0, size="smoke", cutoff_year=2010).fingerprint != world.fingerprint


def test_world_does_not_depend_on_python_hash_seed(world):
    code = "from kilib.tiny.world import generate_world; print(generate_world(0, 'smoke').fingerprint)"
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    )
    assert out.stdout.strip() == world.fingerprint


def test_method_seeds_change_samples(world):
    assert world.gsm(10, seed=0)["question"] != world.gsm(10, seed=1)["question"]
    assert world.claims(seed=0)["claim"] != world.claims(seed=1)["claim"]


# -- names and structure -----------------------------------------------------------------------
def test_names_are_plain_and_unique(tiny):
    titles = [a.title for a in tiny.articles.values()]
    assert len(set(titles)) == len(titles)
    words = Counter()
    for a in tiny.articles.values():
        if a.kind == "edition":
            assert re.fullmatch(r"\d{4} [A-Z][a-z]+ [A-Z][a-z]+", a.title), a.title
        else:
            assert re.fullmatch(r"[A-Z][a-z]+( [A-Z][a-z]+)?", a.title), a.title
        if a.kind in ("team", "venue", "city"):
            words[a.title.split()[0]] += 1  # the generated part; the suffix is a common word
        if a.kind == "person":
            words[a.title.split()[1]] += 1  # the surname; first names are a shared pool
    countries = {f.object for f in tiny.facts.values() if f.relation == "country"}
    words.update(countries)
    assert max(words.values()) == 1, words.most_common(3)
    for word in words:
        assert word.isascii() and word.isalpha() and 4 <= len(word) <= 8


def test_five_post_cutoff_documents_and_one_control(tiny):
    assert len(tiny.post_cutoff_doc_ids) == 5 == len(set(tiny.post_cutoff_doc_ids))
    control = tiny.articles[tiny.control_doc_id]
    assert control.kind == "edition" and control.period == "pre" and control.year < tiny.cutoff_year
    series_of = lambda a: a.title.split(" ", 1)[1]  # noqa: E731
    post_series = {series_of(tiny.articles[d]) for d in tiny.post_cutoff_doc_ids}
    assert series_of(control) not in post_series and len(post_series) == 5
    assert tiny.mirrors[tiny.control_doc_id].startswith("2018 FIFA World Cup")
    assert sorted(tiny.mirrors[d] for d in tiny.post_cutoff_doc_ids)[0] == "2023 Cricket World Cup"
    # the control is its series' most recent edition
    same = [a.year for a in tiny.articles.values() if a.kind == "edition" and series_of(a) == series_of(control)]
    assert control.year == max(same)
    by_series = {}
    for a in tiny.articles.values():
        if a.kind == "edition":
            assert (a.period == "post") == (a.year >= tiny.cutoff_year), a.title
            assert (a.period == "post") == (a.id in tiny.post_cutoff_doc_ids)
            by_series.setdefault(series_of(a), []).append(a.year)
        else:
            assert a.period == "pre" and a.year is None and 1 <= len(a.sections) <= 3
    assert len(by_series) == 6
    for years in by_series.values():
        assert all(2 <= b - a <= 4 for a, b in zip(years, years[1:])), years


def test_edition_articles_have_the_wikipedia_sections(tiny):
    titles = ("Overview", "Venues", "Group stage", "Knockout stage", "Final", "Statistics", "Awards")
    for a in tiny.articles.values():
        if a.kind == "edition":
            assert tuple(s.title for s in a.sections) == titles
            assert a.text.startswith(a.title + "\n\n== Overview ==\n")
            assert len({f.relation for f in tiny.facts_of(a.id)}) >= 10


def test_every_template_states_its_facts():
    edition_relations = set()
    for kind, plan in _PLANS.items():
        for _, slots in plan:
            for rels, templates in slots:
                assert len(templates) >= 3 and len(set(templates)) == len(templates)
                for t in templates:
                    fields = set(re.findall(r"{(\w+)}", t))
                    assert set(rels) <= fields and fields - set(rels) <= {"s", "sport", "unit"}, t
                if kind == "edition":
                    edition_relations.update(rels)
    assert len(edition_relations) >= 10
    assert set(RELATIONS) == set(QUESTION_BASES) == set(CLAIM_TEMPLATES)


def test_fact_objects_appear_where_stated_and_salience_counts_statements(tiny):
    saliences = Counter()
    for f in tiny.facts.values():
        article = tiny.articles[f.doc_id]
        stating = [s for s in article.sections if f.id in s.fact_ids]
        assert stating and stating[0].title == f.section
        assert f.salience == len(stating)
        for s in stating:
            assert mentions(s.text, f.object), (f, s.text)
        assert f.subject == article.title and f.period == article.period
        assert mentions(article.text, f.object)
        saliences[f.salience] += 1
        if f.relation == "champion":
            assert f.salience == 3 and article.text.count(f.object) >= 3
    assert saliences[1] > saliences[2] + saliences[3] and saliences[2] > 0 and saliences[3] > 0
    section_ids = {fid for a in tiny.articles.values() for s in a.sections for fid in s.fact_ids}
    assert section_ids == set(tiny.facts)


def test_relations_are_functional(tiny):
    pairs = [(f.subject, f.relation) for f in tiny.facts.values()]
    assert len(pairs) == len(set(pairs))
    assert set(tiny.relations) == {f.relation for f in tiny.facts.values()}


# -- no leaks -----------------------------------------------------------------------------------
def test_post_cutoff_facts_never_reach_pretraining(tiny):
    pre_ids = tiny.pretraining_doc_ids()
    assert tiny.control_doc_id in pre_ids and not set(pre_ids) & set(tiny.post_cutoff_doc_ids)
    assert set(pre_ids) | set(tiny.post_cutoff_doc_ids) == set(tiny.articles)
    pre_text = "\n".join(tiny.articles[d].text for d in pre_ids)
    known = {x for f in tiny.facts.values() if f.period == "pre" for x in (f.subject, f.object)}
    post_only = {f.object for f in tiny.facts.values() if f.period == "post"} - known
    assert any(f.relation == "attendance" and f.object in post_only for f in tiny.facts.values())
    post_names = [tiny.articles[d].title for d in tiny.post_cutoff_doc_ids]
    derived = "\n".join(
        list(tiny.claims(doc_ids=pre_ids, per_page=6)["claim"])
        + [" ".join([r["question"]] + r["choices"]) for r in tiny.mmlu(300, seed=0)]
        + [r["instruction"] + " " + r["reference"] for r in tiny.open_ended(50, seed=0)]
        + [r["input"] + " " + r["output"] for r in tiny.sni(300, seed=0)]
    )
    for text in (pre_text, derived):
        for name in post_names:
            assert name not in text
        for obj in post_only:
            assert not mentions(text, obj), obj
    for f in tiny.facts.values():
        if f.doc_id in tiny.post_cutoff_doc_ids:
            assert f.period == "post"


# -- questions ----------------------------------------------------------------------------------
def test_train_and_eval_questions_are_distinct_and_disjoint(tiny):
    for fid, f in tiny.facts.items():
        train, evals = tiny.questions(fid, "train"), tiny.questions(fid, "eval")
        assert len(set(train)) == len(train) >= 12
        assert len(set(evals)) == len(evals) >= 4
        assert not set(train) & set(evals)
        assert all(f.subject in q and q.endswith("?") and "{" not in q for q in train + evals)
    champion = next(f for f in tiny.facts.values() if f.relation == "champion")
    assert tiny.questions(champion.id, "train")[0] == f"Who won the {champion.subject}?"
    # the first questions are different phrasings, not one phrasing under several prefixes
    first = tiny.questions(champion.id, "train")[:4]
    assert not any(q.startswith(("Question:", "Quick question:")) for q in first)


# -- datasets -----------------------------------------------------------------------------------
def test_documents_and_facts_datasets(world):
    docs = world.documents()
    assert docs.column_names == ["doc_id", "title", "section", "text"]
    assert len(docs) == sum(len(a.sections) for a in world.articles.values())
    one = world.documents([world.control_doc_id])
    assert list(one["section"]) == [s.title for s in world.articles[world.control_doc_id].sections]
    facts = world.facts_dataset()
    assert facts.column_names == ["fact_id", "subject", "relation", "object", "doc_id", "section", "salience", "period"]
    assert len(facts) == len(world.facts) and sorted(facts["fact_id"]) == sorted(world.facts)
    # the "most common answer" baseline: one answer per relation, a real object of it
    by_rel = {}
    for rel, obj in zip(facts["relation"], facts["object"]):
        by_rel.setdefault(rel, Counter())[obj] += 1
    assert set(by_rel) == set(world.relations)
    assert by_rel["num_teams"].most_common(1)[0][1] >= 2
    post = world.facts_dataset(world.post_cutoff_doc_ids)
    assert set(post["period"]) == {"post"} and len(post) == 5 * 14


def test_claim_labels_are_right_by_construction(tiny):
    claims = tiny.claims(per_page=6, seed=0)
    assert len(claims) == 6 * len(tiny.articles)
    assert Counter(claims["label"]) == {label: 2 * len(tiny.articles) for label in CLAIM_LABELS}
    assert len(set(zip(claims["doc_id"], claims["claim"]))) == len(claims)
    nei_relations = {rel for group in NEI_TEMPLATES.values() for rel, _ in group}
    assert not nei_relations & set(tiny.relations)
    for row in claims:
        article = tiny.articles[row["doc_id"]]
        assert row["page"] == article.title and article.title in row["claim"]
        page_objects = [f.object for f in tiny.facts_of(article.id)]
        if row["label"] == "not enough info":
            assert row["fact_id"] == ""
            assert row["claim"] in {t.format(s=article.title) for _, t in NEI_TEMPLATES[article.kind]}
            assert not any(mentions(row["claim"], o) for o in page_objects)
            continue
        fact = tiny.facts[row["fact_id"]]
        assert fact.doc_id == article.id
        if row["label"] == "supports":
            assert mentions(row["claim"], fact.object)
        else:
            assert not mentions(row["claim"], fact.object)
            # the rest of the claim is a claim template of the fact's relation
            assert any(
                re.fullmatch(
                    re.escape(t.format(s=fact.subject, o="\0", unit="\1"))
                    .replace("\0", ".+")
                    .replace("\1", "(?:goals|runs|points)"),
                    row["claim"],
                )
                for t in CLAIM_TEMPLATES[fact.relation]
            ), row


def test_mmlu_answers_are_true_and_uniformly_placed(tiny):
    n = 200
    ds = tiny.mmlu(n, seed=0)
    counts = Counter(ds["answer"])
    assert set(counts) == set("ABCD") and max(counts.values()) - min(counts.values()) <= 1
    assert len(set(ds["fact_id"])) == n
    for row in ds:
        fact = tiny.facts[row["fact_id"]]
        assert fact.period == "pre"
        choices = row["choices"]
        assert len(choices) == 4 == len(set(choices))
        assert choices["ABCD".index(row["answer"])] == fact.object
        assert fact.object not in [c for i, c in enumerate(choices) if "ABCD"[i] != row["answer"]]
        assert fact.subject in row["question"]
        numeric = fact.object.replace("-", "").isdigit()
        assert all(c.replace("-", "").isdigit() == numeric for c in choices)


EQUATION = re.compile(r"(\d+) ([-+x/]) (\d+) = (\d+)")


def test_gsm_answers_check_against_the_rationale(world):
    ds = world.gsm(300, seed=0)
    assert len(set(ds["question"])) == 300
    steps = Counter()
    for row in ds:
        answer = int(row["answer"])
        assert 0 <= answer <= 999
        assert row["rationale"].endswith(row["answer"])
        assert re.findall(r"\d+", row["rationale"])[-1] == row["answer"]
        equations = EQUATION.findall(row["rationale"])
        assert 1 <= len(equations) <= 3
        for a, op, b, c in equations:
            a, b, c = int(a), int(b), int(c)
            assert {"+": a + b, "-": a - b, "x": a * b, "/": a // b}[op] == c and (op != "/" or a % b == 0)
            assert 0 <= c <= 999
        assert int(equations[-1][3]) == answer
        steps[len(equations)] += 1
    assert set(steps) == {1, 2, 3}


def test_sni_outputs_are_right(world):
    ds = world.sni(120, seed=0)
    assert Counter(ds["task"]) == {t: 20 for t in SNI_TASKS}
    assert len(set(zip(ds["task"], ds["input"]))) == 120
    teams = {a.title for a in world.articles.values() if a.kind == "team"}
    for row in ds:
        assert row["instruction"] == SNI_TASKS[row["task"]]
        inp, out = row["input"], row["output"]
        items = inp.split(", ")
        if row["task"] == "extract_year":
            assert re.findall(r"\b\d{4}\b", inp) == [out]
        elif row["task"] == "find_winner":
            named = [t for t in teams if t in inp]
            assert out in named and len(named) == 2
            loser = next(t for t in named if t != out)
            assert f"{out} beat {loser}" in inp or f"{loser} lost to {out}" in inp or f"{out} won" in inp
        elif row["task"] == "reverse_list":
            assert out.split(", ") == items[::-1]
        elif row["task"] == "sort_numbers":
            assert [int(x) for x in out.split(", ")] == sorted(int(x) for x in items)
        elif row["task"] == "uppercase_names":
            assert out == inp.upper() and out != inp
        else:
            assert int(out) == len(items)


def test_open_ended_references_render_pre_cutoff_facts(world):
    ds = world.open_ended(40, seed=0)
    assert len(set(ds["instruction"])) == 40
    for row in ds:
        article = world.articles[row["doc_id"]]
        assert article.kind == "edition" and article.period == "pre"
        assert article.title in row["instruction"] and article.title in row["reference"]
        values = {f.relation: f.object for f in world.facts_of(article.id)}
        if row["instruction"].startswith("Describe the final"):
            for rel in ("champion", "runner_up", "final_score", "final_venue", "attendance"):
                assert mentions(row["reference"], values[rel])
        stated = [v for v in values.values() if mentions(row["reference"], v)]
        assert len(stated) >= 2


# -- CALM key-value arithmetic ----------------------------------------------------------------------
def test_kv_keys_and_values(tiny):
    train, evals = tiny.kv_keys("train"), tiny.kv_keys("eval")
    table = {**train, **evals}
    assert len(table) == tiny.size.n_kv_keys and not set(train) & set(evals)
    assert len(train) == round(0.2 * tiny.size.n_kv_keys)
    assert all(re.fullmatch(r"[a-z]{2,6}", k) for k in table)
    assert len(set(table.values())) == len(table)
    assert all(1 <= v <= tiny.size.kv_value_max for v in table.values())


def python_value(expression: str) -> int:
    assert re.fullmatch(r"-?\d+( [-+x] \d+)*", expression)
    return eval(expression.replace("x", "*"))  # Python's own precedence: * before + and -


def test_kv_datasets_follow_calm(world):
    table = {**world.kv_keys("train"), **world.kv_keys("eval")}
    sub = world.kv_substitution(200, seed=0)
    assert len(set(sub["prompt"])) == 200
    for row in sub:
        tokens = row["prompt"].split()
        assert world.size.kv_min_terms <= (len(tokens) + 1) // 2 <= world.size.kv_max_terms
        expected = " ".join(str(table[t]) if i % 2 == 0 else t for i, t in enumerate(tokens))
        assert row["target"] == expected
    assert {t for p in sub["prompt"] for t in p.split()[::2]} & set(world.kv_keys("eval"))
    for row in world.numeric_arithmetic(200, seed=0):
        assert row["target"] == str(python_value(row["prompt"]))
    for split in ("train", "eval"):
        keys = world.kv_keys(split)
        for row in world.kv_arithmetic(200, seed=0, split=split):
            tokens = row["prompt"].split()
            assert all(t in keys for t in tokens[::2])
            numeric = " ".join(str(table[t]) if i % 2 == 0 else t for i, t in enumerate(tokens))
            assert row["target"] == str(python_value(numeric))
    ops = Counter(t for p in sub["prompt"] for t in p.split()[1::2])
    assert set(ops) == {"+", "-", "x"}


def test_evaluate_arithmetic_precedence():
    assert evaluate_arithmetic("10 + 22 x 24") == 538
    assert evaluate_arithmetic("2 x 3 - 4 x 5 + 6") == -8
    assert evaluate_arithmetic("7 - 2 - 3") == 2
    with pytest.raises(KilibError):
        evaluate_arithmetic("1 + ")
    with pytest.raises(KilibError):
        evaluate_arithmetic("1 * 2")


def test_generation_is_fast():
    import time

    start = time.perf_counter()
    generate_world(seed=3, size="smoke")
    assert time.perf_counter() - start < 0.5
