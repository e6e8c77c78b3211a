"""The tiny zoo: tokenizer, pretraining corpus, determinism, the 4-bit loading path."""

import dataclasses

import pytest
import torch

from kilib.lm.models import load_causal_lm
from kilib.tiny import zoo

SMOKE = zoo.zoo_config("smoke")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(zoo.tokenizer_dir(SMOKE))


def test_tokenizer_round_trips_the_world_and_splits_digits(tokenizer):
    world = zoo.world_of(SMOKE)
    text = world.articles[world.post_cutoff_doc_ids[0]].text
    assert tokenizer.decode(tokenizer(text).input_ids) == text
    assert [tokenizer.decode([i]) for i in tokenizer("50700", add_special_tokens=False).input_ids] == list("50700")
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Who won?"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<|user|>Who won?<|assistant|>"


def test_pretraining_corpus_holds_no_post_cutoff_fact(tokenizer):
    world = zoo.world_of(SMOKE)
    corpus = "\n".join(zoo.pretraining_texts(world, tokenizer, SMOKE))
    for doc_id in world.post_cutoff_doc_ids:
        assert world.articles[doc_id].title not in corpus
    pre = [f for f in world.facts.values() if f.period == "pre"]
    assert all(f.object in corpus for f in pre)
    # Q&A in the chat format is there; eval paraphrases are not.
    fact = pre[0]
    assert any(q in corpus for q in world.questions(fact.id, "train"))
    assert not any(q in corpus for f in pre[:50] for q in world.questions(f.id, "eval"))


def test_reading_examples_are_answerable_only_from_the_passage():
    """The reading stage's passages describe editions this world does not have, name only
    this world's entities, and state the answer."""
    world = zoo.world_of(SMOKE)
    rows = zoo.reading_examples(world, 1500, seed=0)
    assert len(rows) == 1500 and len({r["prompt"] for r in rows}) > 1000  # several fresh worlds, few repeats
    titles = {a.title for a in world.articles.values()}
    entities = {n for names in world.entity_names.values() for n in names}
    for r in rows:
        passage, question = r["prompt"].split("\n\nQuestion: ", 1)
        assert r["answer"] in passage  # answerable by reading
        assert not any(t in question for t in titles)  # about an edition this world does not have
        if not any(ch.isdigit() for ch in r["answer"]):
            assert r["answer"] in entities  # a name the model knows, in a role it cannot recall
    # a development set from other seeds asks with eval paraphrases
    dev = zoo.reading_examples(world, 50, seed=1, split="eval", first_world=1000)
    assert len(dev) == 50 and not {r["prompt"] for r in dev} & {r["prompt"] for r in rows}


def test_known_series_reading_examples_are_unseen_editions_of_this_worlds_series():
    """With ``known_series`` the fresh editions take this world's series names and each
    series' own teams and players, yet are still editions this world does not have."""
    world = zoo.world_of(SMOKE)
    rows = zoo.reading_examples(world, 600, seed=0, known_series=1.0)
    titles = {a.title for a in world.articles.values()}
    series = {s["name"]: s for s in world.series}
    roles = {
        "champion": "teams",
        "runner_up": "teams",
        "third_place": "teams",
        "fourth_place": "teams",
        "top_scorer": "players",
        "player_of_tournament": "players",
    }
    checked = 0
    for r in rows:
        passage, question = r["prompt"].split("\n\nQuestion: ", 1)
        assert r["answer"] in passage and not any(t in question for t in titles)
        named = [name for name in series if name in question]
        assert len(named) == 1  # an edition of one of this world's series
        if r["relation"] in roles:
            assert r["answer"] in series[named[0]][roles[r["relation"]]]  # that series' own team or player
            checked += 1
    assert checked > 100
    mixed = zoo.reading_examples(world, 600, seed=0, known_series=0.5)
    known = sum(any(name in r["prompt"].split("\n\nQuestion: ", 1)[1] for name in series) for r in mixed)
    assert 0 < known < len(mixed)
    assert zoo.reading_examples(world, 300, seed=0) == zoo.reading_examples(world, 300, seed=0, known_series=0.0)


def test_closed_book_replay_covers_pre_cutoff_facts_evenly_with_train_paraphrases():
    from collections import Counter

    world = zoo.world_of(SMOKE)
    pre = [f for f in world.facts.values() if f.period == "pre"]
    rows = zoo.closed_book_examples(world, 2 * len(pre) + 3, seed=0)
    assert len(rows) == 2 * len(pre) + 3
    assert set(Counter(r["fact_id"] for r in rows).values()) == {2, 3}  # even, and every pre-cutoff fact
    assert len({r["fact_id"] for r in rows}) == len(pre)
    for r in rows:
        fact = world.facts[r["fact_id"]]
        assert r["prompt"] in world.questions(fact.id, "train") and r["answer"] == fact.object


def test_reading_stage_is_cached_on_top_of_pretraining_and_starts_from_it():
    from safetensors.torch import load_file

    base = zoo.pretrained_dir(SMOKE, "llama-m")
    reader = zoo.model_dir(SMOKE, "llama-m")
    assert reader != base and (reader / "key.json").exists()
    log = zoo.pretraining_log(SMOKE, "llama-m")
    stage = log["reading_stage"]
    assert stage["examples"] == SMOKE.reading.reading_examples + SMOKE.reading.closed_book_examples
    assert 0 < stage["answer_tokens"] < stage["tokens"]  # the loss covers answers, not passages
    assert stage["losses"][-1]["loss"] < stage["losses"][0]["loss"]
    a, b = load_file(base / "model.safetensors"), load_file(reader / "model.safetensors")
    assert a.keys() == b.keys() and not all(torch.equal(a[k], b[k]) for k in a)  # the stage trained
    no_stage = dataclasses.replace(SMOKE, reading=zoo.ReadingStage())
    assert zoo.model_dir(no_stage, "llama-m") == base
    for other in ("llama-s", "neox-xs"):  # only the reader reads
        assert zoo.model_dir(SMOKE, other) == zoo.pretrained_dir(SMOKE, other)


def test_zoo_member_loads_in_4bit_and_pretraining_is_deterministic(tmp_path, monkeypatch):
    import bitsandbytes as bnb

    folder = zoo.model_dir(SMOKE, "llama-m")
    model, tok = load_causal_lm(folder)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    assert tok.chat_template == zoo.CHAT_TEMPLATE

    # Same seed, same thread count, a fresh cache: byte-identical weights (pretraining and reading stage).
    from safetensors.torch import load_file

    monkeypatch.setenv("KILIB_CACHE_DIR", str(tmp_path))
    again = zoo.model_dir(SMOKE, "llama-m")
    assert again != folder
    a, b = load_file(folder / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = dataclasses.replace(SMOKE, train=dataclasses.replace(SMOKE.train, seed=1))
    c = load_file(zoo.model_dir(other, "llama-m") / "model.safetensors")
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_unknown_zoo_model_is_a_clear_error():
    from kilib.runtime import KilibError

    with pytest.raises(KilibError, match="no zoo model 'llama-xl'.*llama-s"):
        zoo.model_dir(SMOKE, "llama-xl")
    with pytest.raises(KilibError, match="reading stage names no zoo model 'llama-xl'.*choose among llama-s"):
        dataclasses.replace(SMOKE, reading=dataclasses.replace(SMOKE.reading, models=("llama-xl",)))


def test_majority_baseline_is_each_relations_most_common_object():
    world = zoo.world_of(SMOKE)
    answers = zoo.majority_answers(world, "pre")
    from collections import Counter

    champions = Counter(f.object for f in world.facts.values() if f.period == "pre" and f.relation == "champion")
    assert champions[answers["champion"]] == max(champions.values())
