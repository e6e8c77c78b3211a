"""Token-based vs fact-based Q&A scaling (kilib.sft.rules; docs/methods.md, Mecklenburg et al. §2)
on the smoke world, with the zoo's tokenizer."""

from collections import Counter

import pytest

from kilib.runtime import KilibError
from kilib.sft import rules as R

SCALES = (1, 5, 10)


@pytest.fixture(scope="module")
def world():
    from kilib.tiny.zoo import world_of, zoo_config

    return world_of(zoo_config("smoke"))


@pytest.fixture(scope="module")
def zoo_tokenizer(world, tmp_path_factory):
    from kilib.tiny.zoo import build_tokenizer

    return build_tokenizer(world, 512, tmp_path_factory.mktemp("sft-tokenizer"))


@pytest.fixture(scope="module")
def doc(world):
    return world.post_cutoff_doc_ids[0]


@pytest.fixture(scope="module")
def token_sets(world, doc, zoo_tokenizer):
    return R.token_based_sets(world, doc, zoo_tokenizer, SCALES, seed=0)


@pytest.fixture(scope="module")
def fact_sets(world, doc, zoo_tokenizer):
    return R.fact_based_sets(world, doc, SCALES, per_fact_max=10, tokenizer=zoo_tokenizer)


@pytest.fixture(scope="module")
def evals(world, doc, zoo_tokenizer):
    return R.eval_sets(world, doc, zoo_tokenizer, seed=0)


def generated(pairs, section):
    return [p for p in pairs if p["section"] == section and p["origin"] == "generated"]


def test_scales_are_nested_sets_of_questions(token_sets, fact_sets):
    for sets in (token_sets, fact_sets):
        assert list(sets) == list(SCALES)
        q = {s: set(R.questions_of(sets[s])) for s in SCALES}
        assert q[1] < q[5] < q[10]  # strict: each scale adds pairs


def test_token_scales_are_prefixes_per_section(token_sets):
    for title in token_sets.section_tokens:
        full = generated(token_sets[10], title)
        assert full, title
        for s in (1, 5):
            part = generated(token_sets[s], title)
            assert 0 < len(part) < len(full)
            assert part == full[: len(part)]


def test_fact_scales_are_prefixes_per_fact(world, doc, fact_sets):
    for fact in world.facts_of(doc):
        full = [p for p in fact_sets[10] if p["fact_ids"] == [fact.id]]
        for s in SCALES:
            part = [p for p in fact_sets[s] if p["fact_ids"] == [fact.id]]
            assert len(part) == s  # exactly s pairs per fact at s-x
            assert part == full[:s]
    assert fact_sets.short_facts == {s: [] for s in SCALES}


@pytest.mark.parametrize("index", range(5))
def test_token_budget_rule_is_tight(world, zoo_tokenizer, index):
    doc_id = world.post_cutoff_doc_ids[index]
    sets = R.token_based_sets(world, doc_id, zoo_tokenizer, SCALES, seed=0)
    t_of = R.section_tokens(world, doc_id, zoo_tokenizer)
    assert t_of == sets.section_tokens and list(t_of) == [s.title for s in world.articles[doc_id].sections]
    assert all(t > 0 for t in t_of.values())
    for s in SCALES:
        for title, t in t_of.items():
            tokens = [p["tokens"] for p in generated(sets[s], title)]
            if title in sets.shortfalls[s]:  # only when the section's unique questions ran out
                assert sum(tokens) <= s * t
                used = set(R.questions_of(sets[s]))
                section = next(x for x in world.articles[doc_id].sections if x.title == title)
                assert all(set(world.questions(fid, "train")) <= used for fid in section.fact_ids)
                continue
            assert sum(tokens) > s * t, (s, title)
            assert sum(tokens) - tokens[-1] <= s * t, (s, title)  # stops at the first pair that crosses
    rows = R.budget_report(sets, t_of)
    assert len(rows) == len(SCALES) * len(t_of)
    for row in rows:
        shortfall = row["section"] in sets.shortfalls[row["scale"]]
        assert row["exceeds"] is (not shortfall) and row["tight"] is (not shortfall)
        assert row["budget"] == row["scale"] * row["T"]


def test_shortfall_is_recorded_when_questions_run_out(world, doc, zoo_tokenizer):
    # At 60x a two-fact section needs more than its facts' 32 train questions (about 870 tokens).
    sets = R.token_based_sets(world, doc, zoo_tokenizer, (1, 60), seed=0)
    assert sets.shortfalls[1] == {}
    short = sets.shortfalls[60]
    assert "Knockout stage" in short
    used = set(R.questions_of(sets[60]))
    for title, info in short.items():
        section = next(x for x in world.articles[doc].sections if x.title == title)
        pairs = generated(sets[60], title)
        assert info == {
            "budget": 60 * sets.section_tokens[title],
            "tokens": sum(p["tokens"] for p in pairs),
            "pairs": len(pairs),
        }
        assert info["tokens"] <= info["budget"]
        for fid in section.fact_ids:  # it ran out: every unique question of its facts is used
            assert set(world.questions(fid, "train")) <= used
    rows = {(r["scale"], r["section"]): r for r in R.budget_report(sets, sets.section_tokens)}
    assert not rows[60, "Knockout stage"]["exceeds"] and not rows[60, "Knockout stage"]["tight"]
    assert rows[1, "Knockout stage"]["exceeds"] and rows[1, "Knockout stage"]["tight"]


def test_no_question_repeats_within_a_set(token_sets, fact_sets, evals):
    for pairs in [*token_sets.values(), *fact_sets.values(), *evals.values()]:
        questions = R.questions_of(pairs)
        assert len(questions) == len(set(questions))


def test_eval_questions_never_in_training(world, doc, token_sets, fact_sets, evals):
    train = set()
    for pairs in [*token_sets.values(), *fact_sets.values()]:
        train |= set(R.questions_of(pairs))
    assert set(evals) == {"token", "fact"}
    for kind, pairs in evals.items():
        assert pairs and not set(R.questions_of(pairs)) & train, kind
        for p in pairs:
            assert p["question"] in world.questions(p["fact_ids"][0], "eval")
    # the fact eval set asks every fact once; the token one meets its 1x budget per section
    assert [p["fact_ids"] for p in evals["fact"]] == [[f.id] for f in world.facts_of(doc)]
    for title, t in evals.section_tokens.items():
        tokens = [p["tokens"] for p in generated(evals["token"], title)]
        assert title in evals.shortfalls["token"] or sum(tokens) - tokens[-1] <= t < sum(tokens)


def test_pairs_are_well_formed(world, doc, zoo_tokenizer, token_sets, fact_sets, evals):
    sections = {s.title: s for s in world.articles[doc].sections}
    n = lambda text: len(zoo_tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
    for pairs in [*token_sets.values(), *fact_sets.values(), *evals.values()]:
        for p in pairs:
            assert set(p) == {"question", "answer", "fact_ids", "doc_id", "section", "tokens", "origin"}
            (fid,) = p["fact_ids"]
            fact = world.facts[fid]
            assert p["answer"] == fact.object and p["doc_id"] == doc == fact.doc_id
            assert fid in sections[p["section"]].fact_ids  # its fact is stated in its section
            assert p["tokens"] == n(p["question"]) + n(p["answer"])
    assert all(p["section"] == world.facts[p["fact_ids"][0]].section for p in fact_sets[10])
    assert R.fact_based_sets(world, doc, SCALES)[1][0]["tokens"] is None  # no tokenizer, no count


def test_overview_seeds_come_first(world, doc, token_sets):
    overview = world.articles[doc].sections[0]
    assert overview.title == "Overview" and len(overview.fact_ids) == 4
    seeds = [world.questions(fid, "train")[0] for fid in overview.fact_ids]
    for s in SCALES:
        head = token_sets[s][: len(seeds)]
        assert R.questions_of(head) == seeds
        assert all(p["origin"] == "overview_seed" and p["section"] == "Overview" for p in head)
        assert all(p["origin"] == "generated" for p in token_sets[s][len(seeds) :])
        assert [p["section"] for p in token_sets[s][len(seeds) :]] == sorted(
            (p["section"] for p in token_sets[s][len(seeds) :]), key=list(token_sets.section_tokens).index
        )


def test_coverage_counts(world, doc, token_sets, fact_sets):
    fact_ids = [f.id for f in world.facts_of(doc)]
    for pairs in [*token_sets.values(), *fact_sets.values()]:
        coverage = R.fact_coverage(pairs, fact_ids)
        assert list(coverage) == fact_ids
        assert sum(coverage.values()) == len(pairs)
        direct = Counter(p["fact_ids"][0] for p in pairs)
        assert coverage == {fid: direct.get(fid, 0) for fid in fact_ids}
    with pytest.raises(KilibError, match="not listed"):
        R.fact_coverage(token_sets[10], fact_ids[1:])


def test_token_coverage_is_uneven_fact_coverage_uniform(world, doc, token_sets, fact_sets):
    fact_ids = [f.id for f in world.facts_of(doc)]
    token = R.coverage_summary(R.fact_coverage(token_sets[10], fact_ids))
    fact = R.coverage_summary(R.fact_coverage(fact_sets[10], fact_ids))
    assert fact == {"min": 10, "median": 10, "max": 10, "max_over_min": 1.0}
    assert token["max_over_min"] >= 3 > fact["max_over_min"]
    # salience drives it: facts stated three times get more pairs, on average, than those stated once
    coverage = R.fact_coverage(token_sets[10], fact_ids)
    by_salience = {}
    for f in world.facts_of(doc):
        by_salience.setdefault(f.salience, []).append(coverage[f.id])
    mean = {k: sum(v) / len(v) for k, v in by_salience.items()}
    assert mean[max(mean)] > 2 * mean[1]


def test_draws_are_salience_weighted(world, doc, zoo_tokenizer):
    # Each section's first draw has all its facts available, so fact f is chosen with
    # probability salience(f) / (sum of the section's saliences); uniform would give 1/k.
    sections = [s for s in world.articles[doc].sections if len({world.facts[f].salience for f in s.fact_ids}) > 1]
    assert len(sections) >= 3
    hits, weighted, uniform = 0, 0.0, 0.0
    for seed in range(300):
        sets = R.token_based_sets(world, doc, zoo_tokenizer, (1,), seed=seed)
        for section in sections:
            top = max(section.fact_ids, key=lambda f: world.facts[f].salience)
            sal = [world.facts[f].salience for f in section.fact_ids]
            hits += generated(sets[1], section.title)[0]["fact_ids"] == [top]
            weighted += max(sal) / sum(sal)
            uniform += 1 / len(sal)
    assert abs(hits - weighted) < 0.25 * abs(weighted - uniform), (hits, weighted, uniform)


def test_duplicate_questions_are_skipped(world, doc, monkeypatch):
    # Make the document's second fact ask its first fact's first question, and its third fact
    # have only three questions: the rules must skip the duplicate and report the short fact.
    first, second, third = (f.id for f in world.facts_of(doc)[:3])
    real = world.questions

    def questions(fact_id, split):
        qs = real(fact_id, split)
        if fact_id == second:
            return [real(first, split)[0]] + qs
        if fact_id == third:
            return qs[:3]
        return qs

    monkeypatch.setattr(world, "questions", questions)
    sets = R.fact_based_sets(world, doc, SCALES)
    for s in SCALES:
        assert len(set(R.questions_of(sets[s]))) == len(sets[s])
        assert sets.short_facts[s] == ([third] if s > 3 else [])
    assert [p["question"] for p in sets[10] if p["fact_ids"] == [second]] == real(second, "train")[:10]
    assert len([p for p in sets[10] if p["fact_ids"] == [third]]) == 3
    monkeypatch.setattr(world, "questions", lambda f, split: [] if f == third else real(f, split))
    with pytest.raises(KilibError, match="no unique train question"):
        R.fact_based_sets(world, doc, SCALES)


def test_deterministic_for_a_seed(world, doc, zoo_tokenizer, token_sets, evals):
    again = R.token_based_sets(world, doc, zoo_tokenizer, SCALES, seed=0)
    assert dict(again) == dict(token_sets) and again.shortfalls == token_sets.shortfalls
    assert dict(R.eval_sets(world, doc, zoo_tokenizer, seed=0)) == dict(evals)
    other = R.token_based_sets(world, doc, zoo_tokenizer, SCALES, seed=1)
    assert R.questions_of(other[10]) != R.questions_of(token_sets[10])
    assert dict(R.fact_based_sets(world, doc)) == dict(R.fact_based_sets(world, doc))


def test_bad_arguments_name_the_fix(world, doc, zoo_tokenizer):
    with pytest.raises(KilibError, match="positive integers"):
        R.token_based_sets(world, doc, zoo_tokenizer, (0, 5))
    with pytest.raises(KilibError, match="must not repeat"):
        R.fact_based_sets(world, doc, (5, 5))
    with pytest.raises(KilibError, match="per_fact_max"):
        R.fact_based_sets(world, doc, SCALES, per_fact_max=5)
    with pytest.raises(KilibError, match="unknown doc_id"):
        R.eval_sets(world, "no_such_doc", zoo_tokenizer)
    with pytest.raises(KilibError, match="encode"):
        R.token_based_sets(world, doc, None)
