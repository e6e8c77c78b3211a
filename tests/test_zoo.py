"""The tiny zoo: tokenizer, pretraining corpus, determinism, the 4-bit loading path."""

import dataclasses

import pytest
import torch

from kilib import zoo
from kilib.models import load_causal_lm

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
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Who won?"}], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|user|>Who won?<|assistant|>"


def test_pretraining_corpus_holds_no_post_cutoff_fact(tokenizer):
    world = zoo.world_of(SMOKE)
    corpus = "\n".join(zoo.pretraining_texts(world, tokenizer, SMOKE))
    for doc_id in world.post_cutoff_doc_ids:
        assert world.articles[doc_id].title not in corpus
    pre = [f for f in world.facts.values() if f.period == "pre"]
    assert all(f.object in corpus for f in pre)
    # Q&A in the chat format and reading comprehension with the section in context are both there.
    fact = pre[0]
    assert any(q in corpus for q in world.questions(fact.id, "train"))
    assert zoo.section_text(world, fact) + "\n\nQuestion:" in corpus
    assert not any(q in corpus for f in pre[:50] for q in world.questions(f.id, "eval"))


def test_zoo_member_loads_in_4bit_and_pretraining_is_deterministic(tmp_path, monkeypatch):
    import bitsandbytes as bnb

    folder = zoo.model_dir(SMOKE, "llama-s")
    model, tok = load_causal_lm(folder)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    assert tok.chat_template == zoo.CHAT_TEMPLATE

    # Same seed, same thread count, a fresh cache: byte-identical weights.
    from safetensors.torch import load_file

    monkeypatch.setenv("KILIB_CACHE_DIR", str(tmp_path))
    again = zoo.model_dir(SMOKE, "llama-s")
    assert again != folder
    a, b = load_file(folder / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = dataclasses.replace(SMOKE, train=dataclasses.replace(SMOKE.train, seed=1))
    c = load_file(zoo.model_dir(other, "llama-s") / "model.safetensors")
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_unknown_zoo_model_is_a_clear_error():
    from kilib.runtime import KilibError

    with pytest.raises(KilibError, match="no zoo model 'llama-xl'.*llama-s"):
        zoo.model_dir(SMOKE, "llama-xl")


def test_majority_baseline_is_each_relations_most_common_object():
    world = zoo.world_of(SMOKE)
    answers = zoo.majority_answers(world, "pre")
    from collections import Counter

    champions = Counter(f.object for f in world.facts.values() if f.period == "pre" and f.relation == "champion")
    assert champions[answers["champion"]] == max(champions.values())
