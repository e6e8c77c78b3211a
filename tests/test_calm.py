"""CALM's composition against direct computations (docs/methods.md, "## 03 CALM composition")."""

import collections
import dataclasses

import pytest
import torch
from conftest import make_model, make_tokenizer

from kilib.calm import model, presets, probe, study, tasks
from kilib.runtime import KilibError


def _pair(tok, anchor_family="llama", augment_family="llama"):
    import torch
    from transformers import AutoModelForCausalLM, GPTNeoXConfig, LlamaConfig

    anchor = make_model(anchor_family, tok, seed=1)
    torch.manual_seed(2)  # m_A: 4 blocks, 128 wide, so its width differs from the anchor's 64
    common = dict(
        vocab_size=len(tok),
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    config = LlamaConfig(**common) if augment_family == "llama" else GPTNeoXConfig(**common)
    augment = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    return anchor, augment


def _randomise(composed, seed=0):
    """Non-zero bridges with outputs large enough to move the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in composed.bridges.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def test_layer_plan_is_every_fourth_m_A_block_onto_uniform_anchor_blocks():
    assert model.layer_plan(16, 8) == [(3, 1), (7, 3), (11, 5), (15, 7)]
    assert model.layer_plan(22, 32) == [(3, 5), (7, 12), (11, 18), (15, 25), (19, 31)]  # TinyLlama onto Llama-2-7b
    assert model.layer_plan(4, 6, every=2) == [(1, 2), (3, 5)]
    with pytest.raises(KilibError, match="lower every"):
        model.layer_plan(3, 6)
    with pytest.raises(KilibError, match="raise every"):
        model.layer_plan(8, 2, every=1)


def test_added_parameters_are_counted_exactly():
    tok = make_tokenizer()
    anchor, augment = _pair(tok)
    composed = model.compose(anchor, augment, tok, tok)
    n = len(composed.plan)
    assert n == 1
    counts = model.bridge_parameters(128, 64, n)
    assert composed.added_parameters == counts["exact"] == 128 * 64 + 64 + 4 * 64 * 64
    assert counts["paper_formula"] == n * (128 * 64 + 3 * 64 * 64)
    trainable = {name for name, p in composed.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith("bridges.") for name in trainable)
    assert not any(p.requires_grad for p in augment.parameters())


@pytest.mark.parametrize("families", [("llama", "llama"), ("gpt_neox", "llama"), ("llama", "gpt_neox")])
def test_composed_model_equals_the_anchor_at_step_0(families):
    tok = make_tokenizer()
    anchor, augment = _pair(tok, *families)
    composed = model.compose(anchor, augment, tok, tok, every=2)
    batch = tok(["who won the cup in the year", "the rovers"], return_tensors="pt", padding=True)
    with torch.no_grad():
        alone = anchor(**batch).logits
        both = composed(**batch).logits
    assert torch.equal(alone, both)
    _randomise(composed)
    with torch.no_grad():
        assert not torch.allclose(composed(**batch).logits, alone, atol=1e-3)  # the bridges do act ...
        assert torch.equal(anchor(**batch).logits, alone)  # ... only through the composed model


def test_cross_attention_is_causal_no_future_m_A_state_reaches_the_anchor():
    tok = make_tokenizer()
    anchor, augment = _pair(tok)
    composed = model.compose(anchor, augment, tok, tok, every=2)
    _randomise(composed)
    ids = tok("who won the cup in the year of the final", return_tensors="pt").input_ids
    changed = ids.clone()
    changed[0, 6:] = tok("rovers", add_special_tokens=False).input_ids[0]
    with torch.no_grad():
        a, b = composed(input_ids=ids).logits, composed(input_ids=changed).logits
    assert torch.equal(a[0, :6], b[0, :6])  # positions before the change see only m_A states before it
    assert not torch.allclose(a[0, 6:], b[0, 6:])


def test_padding_is_masked_in_the_cross_attention():
    tok = make_tokenizer()
    anchor, augment = _pair(tok)
    composed = model.compose(anchor, augment, tok, tok, every=2)
    _randomise(composed)
    texts = ["who won the cup in the year", "the rovers"]
    tok.padding_side = "right"
    batch = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        padded = composed(**batch).logits
        for row, text in enumerate(texts):
            alone = composed(**tok(text, return_tensors="pt")).logits[0]
            n = alone.shape[0]
            torch.testing.assert_close(padded[row, :n], alone, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rotary, encoder", [(False, False), (True, False), (False, True)])
def test_cached_generation_equals_recomputing_both_models_on_the_whole_sequence(rotary, encoder):
    """With m_A as encoder, m_A reads the prompt once while generating; recomputing marks the
    prompt by its labels, as training does."""
    from kilib.lm.inference import generate

    tok = make_tokenizer()
    anchor, augment = _pair(tok)
    composed = model.compose(anchor, augment, tok, tok, every=2, rotary=rotary, encoder=encoder)
    _randomise(composed, seed=3)
    prompts = ["who won the cup in the year", "the rovers", "in the year of the final?"]
    cached = generate(composed, tok, prompts, max_new_tokens=6, batch_size=3)
    assert cached != generate(anchor, tok, prompts, max_new_tokens=6, batch_size=3)  # composition changes the output
    # greedy decoding by hand, each step recomputing both models on the whole sequence, one prompt at a time
    for prompt, text in zip(prompts, cached):
        ids = tok(prompt, return_tensors="pt").input_ids
        n = ids.shape[1]
        with torch.no_grad():
            for _ in range(6):
                labels = ids.clone()
                labels[0, :n] = -100
                nxt = composed(input_ids=ids, labels=labels, use_cache=False).logits[0, -1].argmax()
                ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
                if nxt.item() == tok.eos_token_id:
                    break
        assert tok.decode(ids[0, n:], skip_special_tokens=True) == text


def test_gradients_reach_the_bridges_only_and_training_moves_the_logits():
    tok = make_tokenizer()
    anchor, augment = _pair(tok)
    composed = model.compose(anchor, augment, tok, tok, every=2)
    batch = tok(["who won the cup in the year"], return_tensors="pt")
    loss = composed(**batch, labels=batch.input_ids).loss
    loss.backward()
    # at step 0 only the output projections get a gradient (every update passes through W_O = 0)
    for bridge in composed.bridges:
        assert bridge.o.weight.grad is not None and bridge.o.weight.grad.abs().sum() > 0
        assert bridge.q.weight.grad.abs().sum() == 0 and bridge.v.weight.grad.abs().sum() == 0
    assert all(p.grad is None for p in anchor.parameters()) and all(p.grad is None for p in augment.parameters())


def test_bridges_round_trip_through_a_folder(tmp_path):
    tok = make_tokenizer()
    anchor, augment = _pair(tok)
    composed = model.compose(anchor, augment, tok, tok, every=2)
    _randomise(composed)
    model.save_bridges(composed, tmp_path)
    again = model.compose(anchor, augment, tok, tok, every=2)
    model.load_bridges(again, tmp_path)
    batch = tok(["the rovers won"], return_tensors="pt")
    composed.remove()
    with torch.no_grad():
        assert torch.equal(again(**batch).logits, _logits_of_saved(anchor, augment, tok, tmp_path, batch))
    other = model.compose(anchor, augment, tok, tok, every=4)
    with pytest.raises(KilibError, match="same every"):
        model.load_bridges(other, tmp_path)


def _logits_of_saved(anchor, augment, tok, folder, batch):
    fresh = model.compose(anchor, augment, tok, tok, every=2)
    model.load_bridges(fresh, folder)
    with torch.no_grad():
        out = fresh(**batch).logits
    fresh.remove()
    return out


def test_mismatched_tokenizers_are_refused_with_the_fix():
    tok, other = make_tokenizer(), make_tokenizer()
    other.add_tokens(["zorblat"])
    anchor, augment = _pair(tok)
    with pytest.raises(KilibError, match="different tokenizers: pick two models of one family"):
        model.compose(anchor, augment, tok, other)


def test_composition_runs_on_4bit_models(tmp_path):
    """The paper path: both models loaded in NF4 through load_causal_lm, composed, trained a step."""
    from kilib.lm.models import load_causal_lm

    tok = make_tokenizer()
    anchor, augment = _pair(tok)
    for name, lm in (("anchor", anchor), ("augment", augment)):
        lm.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    anchor4, tok_b = load_causal_lm(tmp_path / "anchor")
    augment4, tok_a = load_causal_lm(tmp_path / "augment")
    composed = model.compose(anchor4, augment4, tok_b, tok_a, every=2)
    batch = tok(["who won the cup in the year"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(composed(**batch).logits, anchor4(**batch).logits)
    composed(**batch, labels=batch.input_ids).loss.backward()
    assert all(b.o.weight.grad.abs().sum() > 0 for b in composed.bridges)
    # The paper profile's m_A unquantised beside an NF4 anchor: its weights are the saved ones,
    # the composition starts as the anchor and trains.
    m_a_loading = presets.quantization_of(presets.PRESETS["paper"], "trained")
    full, _ = load_causal_lm(tmp_path / "augment", quantization=m_a_loading)
    assert all(torch.equal(p, q) for p, q in zip(full.parameters(), augment.parameters()))
    mixed = model.compose(anchor4, full, tok_b, tok_a, every=2)
    with torch.no_grad():
        assert torch.equal(mixed(**batch).logits, anchor4(**batch).logits)
    mixed(**batch, labels=batch.input_ids).loss.backward()
    assert all(b.o.weight.grad.abs().sum() > 0 for b in mixed.bridges)


def test_m_A_precision_per_profile_and_in_the_keys():
    import dataclasses

    paper, tiny = presets.PRESETS["paper"], presets.PRESETS["tiny"]
    which = ("anchor", "trained", "vanilla", "random")
    assert [presets.quantization_of(paper, w) for w in which] == ["4bit"] + ["none"] * 3
    assert {presets.quantization_of(tiny, w) for w in which} == {"4bit"}
    assert presets.augment_precision(tiny) == {}  # the tiny keys are as before
    assert presets.augment_precision(paper) == {"augment_quantization": "none"}
    assert presets.augment_precision(dataclasses.replace(tiny, augment_quantization="4bit")) == {}


# -- the study ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world_tokenizer(tmp_path_factory):
    """The tiny zoo's tokenizer, built as the zoo builds it (BPE on the tiny world, digits split)."""
    from kilib.tiny import zoo

    config = zoo.zoo_config("tiny")
    return zoo.build_tokenizer(zoo.world_of(config), config.vocab_size, tmp_path_factory.mktemp("world-tokenizer"))


def _tokens(tokenizer, task, expression):
    from kilib.lm.training import render_prompt

    return tokenizer.convert_ids_to_tokens(
        tokenizer(render_prompt(tokenizer, tasks.task_prompt(task, expression)), add_special_tokens=False)["input_ids"]
    )


@pytest.mark.parametrize("aligned", [False, True])
def test_vocabulary_keys_are_single_tokens_and_aligned_ones_take_a_digit_place(world_tokenizer, aligned):
    keys = tasks.vocabulary_keys(world_tokenizer, 40, seed=3, aligned=aligned)
    assert keys == tasks.vocabulary_keys(world_tokenizer, 40, seed=3, aligned=aligned)  # seeded
    assert keys != tasks.vocabulary_keys(world_tokenizer, 40, seed=4, aligned=aligned)
    assert len(set(keys)) == 40 and all(k.isalpha() and k.islower() and 2 <= len(k) <= 6 for k in keys)
    for a, b in zip(keys, reversed(keys)):
        for task in ("kv", "substitution"):
            tokens = _tokens(world_tokenizer, task, f"{a} + {b} =")
            digits = _tokens(world_tokenizer, task, "7 + 3 =")
            spelled, numeric = (
                [world_tokenizer.convert_tokens_to_string([t]).strip() for t in x] for x in (tokens, digits)
            )
            extra = collections.Counter(spelled) - collections.Counter(numeric)
            assert extra[a] + extra[b] == 2 and len(spelled) <= len(numeric)  # each key one token
            if aligned:  # token for token where the digits stand
                assert len(tokens) == len(digits)
                assert [t for t, d in zip(tokens, digits) if t != d] == [a, b]


def test_vocabulary_keys_with_a_sentencepiece_style_tokenizer():
    """Llama-2's tokenizer marks a word's leading space with ▁ (Metaspace), as the paper profile's keys see it."""
    import random

    from conftest import make_metaspace_tokenizer

    from kilib.lm.training import render_prompt

    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 5))) for _ in range(300)]
    fast = make_metaspace_tokenizer(
        " ".join(rng.sample(words, 20)) + " [INST] Substitute: 12 + 7 = [/INST]" for _ in range(200)
    )
    fast.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
        "{% else %} {{ m['content'] }}</s>{% endif %}{% endfor %}"
    )
    keys = tasks.vocabulary_keys(fast, 20)
    for key in keys:
        for task in ("kv", "substitution"):
            text = render_prompt(fast, tasks.task_prompt(task, f"{key} + {key}"))
            tokens = fast.convert_ids_to_tokens(fast(text, add_special_tokens=False)["input_ids"])
            assert [t.lstrip("▁") for t in tokens].count(key) == 2  # "▁key", or "▁" then "key"


def test_vocabulary_keys_too_few_or_without_a_tokenizer_name_the_fix(world_tokenizer):
    with pytest.raises(
        KilibError, match="fewer than kv_keys=5000: lower kv_keys or choose keys='vocabulary' or 'random'"
    ):
        tasks.vocabulary_keys(world_tokenizer, 5000, aligned=True)
    with pytest.raises(KilibError, match="pass their tokenizer"):
        tasks.kv_table(presets.PRESETS["tiny"])
    with pytest.raises(KilibError, match="unknown keys 'words': choose one of vocabulary, aligned, random"):
        tasks.kv_table(dataclasses.replace(presets.PRESETS["tiny"], keys="words"))


def test_renamed_keys_keep_each_value_and_split():
    from kilib.tiny.world import evaluate_arithmetic

    world, table = tasks.kv_table(dataclasses.replace(presets.PRESETS["smoke"], keys="random"), "smoke")
    names = [f"k{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(len(table))]
    renamed = world.with_kv_keys(names)
    old, new = sorted(world._kv_table), names
    for split in ("train", "eval"):
        assert renamed.kv_keys(split) == {new[old.index(k)]: v for k, v in world.kv_keys(split).items()}
    for r in renamed.kv_arithmetic(20, seed=0, split="train").to_list():
        tokens = r["prompt"].split()
        assert set(tokens[::2]) <= set(renamed.kv_keys("train"))
        values = {**renamed.kv_keys("train")}
        assert int(r["target"]) == evaluate_arithmetic(
            " ".join(str(values[t]) if i % 2 == 0 else t for i, t in enumerate(tokens))
        )
    with pytest.raises(KilibError, match="distinct key names"):
        world.with_kv_keys(names[:-1] + names[:1])


def test_key_states_are_each_key_last_token_block_output_batched_as_alone():
    from kilib.lm.training import render_prompt

    tok = make_tokenizer()
    model = make_model("llama", tok)
    rows = [{"expression": "won + cup x the"}, {"expression": "rovers - it"}, {"expression": "the + year"}]
    features, keys = probe.key_states(model, tok, rows, blocks=[0], batch_size=2)
    assert keys == ["won", "cup", "the", "rovers", "it", "the", "year"]
    expected = []
    for r in rows:  # each prompt alone; a key's last token is the last token of the text up to the key's end
        text = render_prompt(tok, tasks.task_prompt("kv", r["expression"]))
        with torch.no_grad():
            block0 = model(**tok(text, return_tensors="pt"), output_hidden_states=True).hidden_states[1][0]
        where = text.rindex(r["expression"])
        for j, term in enumerate(r["expression"].split()):
            if j % 2 == 0:
                expected.append(block0[len(tok(text[: where + len(term)])["input_ids"]) - 1])
            where += len(term) + 1
    torch.testing.assert_close(features[0], torch.stack(expected), atol=1e-5, rtol=1e-5)


def test_linear_probe_reads_a_planted_code_and_not_noise():
    gen = torch.Generator().manual_seed(0)
    codes = torch.randn(8, 32, generator=gen)
    fit_y, test_y = torch.arange(200) % 8, torch.arange(100) % 8
    fit_x, test_x = (codes[y] + 0.3 * torch.randn(len(y), 32, generator=gen) for y in (fit_y, test_y))
    planted = probe.linear_probe(fit_x, fit_y, test_x, test_y)
    assert planted["fit"] == 1.0 and planted["test"] > 0.95 and planted["test_items"] == 100
    noise = probe.linear_probe(torch.randn(200, 32, generator=gen), fit_y, torch.randn(100, 32, generator=gen), test_y)
    assert noise["test"] < 0.3  # chance is 1/8
    unseen = probe.linear_probe(fit_x, fit_y, test_x, test_y + 8 * (test_y % 2))  # half the test labels never fitted
    assert unseen["test_items"] == 50


def test_value_probe_with_unique_values_loads_nothing():
    """The paper's table: no held-out key shares a value with a training key, so nothing can be
    scored, and the probe returns before loading m_A (the paths below do not exist)."""
    inputs = study.CalmInputs(
        "/no/anchor", "/no/augment", rows={}, keys={"train": {"ab": 1, "cd": 2}, "eval": {"ef": 3}}, source=""
    )
    assert probe.value_probe(inputs, presets.PRESETS["paper"]) == []


@pytest.mark.parametrize("profile", ["smoke", "tiny", "paper"])
def test_study_rows_keep_evaluation_apart_and_targets_right(profile, world_tokenizer, tmp_path, monkeypatch):
    import random

    from kilib.tiny import zoo
    from kilib.tiny.world import evaluate_arithmetic

    config = presets.PRESETS[profile]
    if profile == "paper":  # 200 keys need a vocabulary of many words, as Llama-2's: the world's text and 600 more
        rng = random.Random(0)
        words = " ".join(
            "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 6))) for _ in range(600)
        )
        texts = zoo.tokenizer_texts
        monkeypatch.setattr(zoo, "tokenizer_texts", lambda world: texts(world) + [words, words.replace(" ", "\n")] * 3)
        world_tokenizer = zoo.build_tokenizer(zoo.world_of(zoo.zoo_config("tiny")), 4096, tmp_path)
    rows, keys = tasks.study_rows(config, tokenizer=world_tokenizer)
    if config.keys != "random":  # the world's keys renamed to the vocabulary's
        assert set(keys["train"]) | set(keys["eval"]) == set(
            tasks.vocabulary_keys(world_tokenizer, config.kv_keys, aligned=config.keys == "aligned")
        )
    assert not set(keys["train"]) & set(keys["eval"])
    assert len(keys["train"]) == round(config.train_fraction * config.kv_keys)
    values = {**keys["train"], **keys["eval"]}
    assert len(values) == config.kv_keys and all(1 <= v <= config.kv_value_max for v in values.values())
    if config.kv_keys <= config.kv_value_max:
        assert len(set(values.values())) == len(values)  # unique integers, as the paper's
    else:  # more keys than values: every value has the same number of keys
        import collections

        assert set(collections.Counter(values.values()).values()) == {config.kv_keys // config.kv_value_max}
        assert len(set(values.values())) == config.kv_value_max
    for task in ("numeric", "substitution"):
        stage, held = ({r["expression"] for r in rows[task][s]} for s in ("stage", "eval"))
        assert not stage & held and len(held) == config.eval_examples  # no evaluated expression is trained on
    assert len(rows["numeric"]["stage"]) == config.anchor_stage.examples
    assert all(r in rows["numeric"]["stage"] for r in rows[tasks.SEEN]["eval"])  # the anchor's own training expressions
    # the composition's own training rows
    assert rows[tasks.KV_SEEN]["eval"] == rows["kv"]["train"][: config.eval_examples]
    assert len(rows[tasks.VALUES]["eval"]) == len(rows["kv"]["eval"])
    for kv, written in zip(
        rows["kv"]["eval"], rows[tasks.VALUES]["eval"]
    ):  # the held-out rows, each key's value written in
        tokens = kv["expression"].split()
        assert written["target"] == kv["target"]
        assert written["expression"] == " ".join(str(values[t]) if i % 2 == 0 else t for i, t in enumerate(tokens))
    lo, hi = config.kv_terms
    for split in ("train", "eval"):
        for r in rows["kv"][split]:
            tokens = r["expression"].split()
            assert lo <= (len(tokens) + 1) // 2 <= hi
            assert set(tokens[::2]) <= set(keys[split])  # every key of the split's own
            numeric = " ".join(str(values[t]) if i % 2 == 0 else t for i, t in enumerate(tokens))
            assert int(r["target"]) == evaluate_arithmetic(numeric)
    for r in rows["substitution"]["eval"][:20]:
        tokens = r["expression"].split()
        assert r["target"] == " ".join(str(values[t]) if i % 2 == 0 else t for i, t in enumerate(tokens))


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_lora_rank_matches_the_bridges_parameter_count(family):
    from kilib.lm.models import attach_lora

    tok = make_tokenizer()
    anchor, augment = _pair(tok, family)
    target = model.compose(anchor, augment, tok, tok).added_parameters

    def lora_count(r):  # peft's own count of the adapter's parameters
        model = attach_lora(make_model(family, tok, seed=1), r=r)
        return sum(p.numel() for p in model.parameters() if p.requires_grad)

    rank = study.lora_rank(make_model(family, tok, seed=1), target)
    assert rank >= 1
    assert all(abs(lora_count(rank) - target) <= abs(lora_count(r) - target) for r in (rank - 1, rank + 1) if r >= 1)


def test_run_names():
    assert study.run_name("trained", False) == "calm" and study.run_name("trained", True) == "calm (rotary)"
    assert (
        study.run_name("vanilla", False) == "calm (vanilla m_A)"
        and study.run_name("random", True) == "calm (rotary, random m_A)"
    )
    assert study.run_name("trained", False, encoder=True) == "calm (m_A as encoder)"


def test_m_A_as_encoder_sees_the_whole_prompt_and_nothing_after_it():
    """The paper's ablation: every anchor position sees m_A's states over the whole prompt (a
    later prompt token reaches an earlier position), and none over the answer."""
    tok = make_tokenizer()
    anchor, augment = _pair(tok)
    composed = model.compose(anchor, augment, tok, tok, every=2, encoder=True)
    ids = tok("who won the cup in the year of the final", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(composed(input_ids=ids).logits, anchor(input_ids=ids).logits)  # zero init: the anchor
    _randomise(composed)
    changed = ids.clone()
    changed[0, 6] = tok("rovers", add_special_tokens=False).input_ids[0]
    with torch.no_grad():
        a, b = composed(input_ids=ids).logits, composed(input_ids=changed).logits
    assert not torch.allclose(a[0, :6], b[0, :6])  # the prompt's token 6 reaches positions 0-5 through m_A
    labels = ids.clone()
    labels[0, :5] = -100  # a prompt of 5 tokens; the rest is the answer
    answer_changed = ids.clone()
    answer_changed[0, 7:] = tok("rovers", add_special_tokens=False).input_ids[0]
    with torch.no_grad():
        a = composed(input_ids=ids, labels=labels).logits
        b = composed(input_ids=answer_changed, labels=labels).logits
        prompt_only = composed(input_ids=ids[:, :5]).logits
    assert torch.equal(a[0, :7], b[0, :7])  # answer tokens reach no position through m_A ...
    torch.testing.assert_close(a[0, :5], prompt_only[0], rtol=1e-5, atol=1e-5)  # ... m_A read the prompt alone
    with pytest.raises(KilibError, match="mask the prompt's labels"):
        composed(input_ids=ids, labels=ids)
    with pytest.raises(KilibError, match="rotary=False"):
        model.compose(anchor, augment, tok, tok, every=2, encoder=True, rotary=True)


def test_rotary_cross_attention_is_causal_pads_cleanly_and_starts_as_the_anchor():
    """Positions count tokens: a left-padded row gives the same logits as the row alone."""
    tok = make_tokenizer()
    anchor, augment = _pair(tok)
    composed = model.compose(anchor, augment, tok, tok, every=2, rotary=True)
    batch = tok(["who won the cup in the year", "the rovers"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(composed(**batch).logits, anchor(**batch).logits)
    _randomise(composed)
    tok.padding_side = "left"
    try:
        padded = tok(["who won the cup in the year", "the rovers"], return_tensors="pt", padding=True)
    finally:
        tok.padding_side = "right"
    positions = (padded.attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        both = composed(**padded, position_ids=positions).logits
        alone = composed(**tok("the rovers", return_tensors="pt")).logits[0]
    torch.testing.assert_close(both[1, -alone.shape[0] :], alone, rtol=1e-4, atol=1e-4)
    # a rotary bridge differs from a plain one with the same weights: positions enter the scores
    plain = model.compose(anchor, augment, tok, tok, every=2)
    plain.bridges.load_state_dict(composed.bridges.state_dict())
    composed.remove()
    ids = tok("who won the cup in the year", return_tensors="pt").input_ids
    with torch.no_grad():
        assert not torch.allclose(plain(input_ids=ids).logits, _rotary_logits(anchor, augment, tok, plain, ids))


def _rotary_logits(anchor, augment, tok, plain, ids):
    again = model.compose(anchor, augment, tok, tok, every=2, rotary=True)
    again.bridges.load_state_dict(plain.bridges.state_dict())
    plain.remove()
    with torch.no_grad():
        out = again(input_ids=ids).logits
    again.remove()
    return out


def test_prompts_and_scoring():
    assert tasks.task_prompt("substitution", "ab + cd") == "Substitute: ab + cd ="
    assert tasks.task_prompt("kv", "ab + cd") == tasks.task_prompt("numeric", "ab + cd") == "ab + cd ="
    assert tasks.is_correct(" 32 ", "32") and tasks.is_correct("10  +  22", "10 + 22")
    assert not tasks.is_correct("32.", "32") and not tasks.is_correct("", "0")


def test_compare_pairs_rows_and_the_margin_shifts_the_verdict():
    answers = [
        {"task": "numeric", "model": m, "item": i, "correct": c}
        for i in range(200)
        for m, c in (("anchor", float(i % 2 == 0)), ("calm", float(i % 2 == 0 and i % 50 != 0)))
    ]
    strict = study.compare(answers, "numeric", "calm", "anchor", "calm beats anchor")
    assert strict["difference"] == pytest.approx(-2.0) and strict["verdict"] in ("opposite shown", "not shown")
    kept = study.compare(answers, "numeric", "calm", "anchor", "calm keeps the anchor's", margin=5.0)
    assert kept["difference"] == pytest.approx(-2.0) and kept["verdict"] == "shown"  # -2 points, interval above -5


def test_unknown_ablation_and_missing_trained_m_A_are_refused():
    import dataclasses

    config = dataclasses.replace(presets.PRESETS["smoke"], runs=(("vanilla", False),))
    with pytest.raises(KilibError, match="must include \\('trained', False\\)"):
        study.study_inputs(config)
    with pytest.raises(KilibError, match="SEEDS must be >= 0"):
        presets.notebook_overrides(seeds=-1)


def test_paper_profile_offline_names_the_fix(monkeypatch):
    """Without the Hub, the paper profile's models stop with one line that says what to do."""
    with pytest.raises(KilibError, match="HF_TOKEN|offline|Hub"):
        study.study_inputs(presets.PRESETS["paper"])
