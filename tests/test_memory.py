"""The memory study (docs/methods.md, "## 04 Memory modules on FEVER") against direct computations:
the module, the hook, the data pipeline."""

import contextlib
import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from conftest import make_model, make_tokenizer

from kilib.memory import fever, presets, study
from kilib.memory import model as memory_model
from kilib.runtime import KilibError

TEXT = ["who won the cup in the year of the final", "the rovers won it 3-1"]


def _batch(tok):
    return tok(TEXT, return_tensors="pt", padding=True)


def _randomise(memory, seed=0, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in memory.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def test_memory_layer_is_at_three_quarters_depth():
    assert memory_model.memory_layer(32) == 23  # Llama-2 7B: after block 24 of 32
    assert memory_model.memory_layer(40) == 29  # 13B: after block 30 of 40
    assert memory_model.memory_layer(12) == 8  # Pythia-160m
    assert memory_model.memory_layer(6) == 3  # Pythia-70m: after block 4 of 6
    assert memory_model.memory_layer(4) == 2
    assert memory_model.memory_layer(2) == 0 and memory_model.memory_layer(1) == 0
    for n in (12, 16, 24, 32, 36, 40):
        assert 0.7 <= (memory_model.memory_layer(n) + 1) / n <= 0.8
    with pytest.raises(KilibError, match="nowhere"):
        memory_model.memory_layer(0)
    with pytest.raises(KilibError, match="depth"):
        memory_model.memory_layer(8, depth=1.5)


def test_memory_module_is_layernorm_of_the_bottleneck_times_the_gate():
    torch.manual_seed(0)
    mem = memory_model.MemoryModule(64, 128, gate=1.0)
    _randomise(mem)
    h = torch.randn(2, 5, 64)
    up = h @ mem.up.weight.T + mem.up.bias
    act = 0.5 * up * (1 + torch.erf(up / 2**0.5))  # exact GELU
    down = act @ mem.down.weight.T + mem.down.bias
    normed = (down - down.mean(-1, keepdim=True)) / torch.sqrt(down.var(-1, unbiased=False, keepdim=True) + 1e-5)
    expected = (normed * mem.ln.weight + mem.ln.bias) * mem.gate
    assert torch.allclose(mem(h), expected, atol=1e-5)
    assert memory_model.MemoryModule(64).gate.item() == 1.0  # the note's starting gate
    assert (
        sum(p.numel() for p in memory_model.MemoryModule(64).parameters())
        == 64 * 128 + 128 + 128 * 64 + 64 + 2 * 64 + 1
    )


class _Wrapped(nn.Module):
    """Block L replaced by a module that returns block(h) + mem(block(h)): the same sum, with no hook."""

    def __init__(self, block, memory):
        super().__init__()
        self.block, self.memory = block, memory

    def forward(self, *args, **kwargs):
        out = self.block(*args, **kwargs)
        hidden = out[0] if isinstance(out, tuple) else out
        hidden = hidden + self.memory(hidden)
        return (hidden,) + tuple(out[1:]) if isinstance(out, tuple) else hidden


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_memory_adds_to_the_residual_stream_after_its_block(family):
    import copy

    from kilib.lm.models import decoder_layers

    tok = make_tokenizer()
    base = make_model(family, tok)
    batch = _batch(tok)
    with torch.no_grad():
        alone = base(**batch).logits
    reference = copy.deepcopy(base)
    model = memory_model.attach_memory(base, 128, seed=0)
    assert model.layer == 0  # 2 blocks: after the first
    _randomise(model.memory)
    blocks = decoder_layers(reference)
    blocks[model.layer] = _Wrapped(blocks[model.layer], copy.deepcopy(model.memory))
    with torch.no_grad():
        with_memory = model(**batch).logits
        assert torch.allclose(with_memory, reference(**batch).logits, atol=1e-5)
        assert not torch.allclose(with_memory, alone, atol=1e-3)
        model.memory.gate.zero_()  # a zero gate adds exactly nothing
        assert torch.equal(model(**batch).logits, alone)
    model.remove()
    with torch.no_grad():
        assert torch.equal(base(**batch).logits, alone)


class _TupleBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, h):
        return (self.lin(h), "extra")


class _TensorBlock(_TupleBlock):
    def forward(self, h):
        return self.lin(h)


class _Toy(nn.Module):
    """A model whose blocks return a tuple (older transformers) or a tensor (transformers 5)."""

    def __init__(self, block, d=64):
        super().__init__()
        self.config = type("C", (), {"hidden_size": d})()
        self.model = nn.Module()
        self.model.layers = nn.ModuleList([block(d), block(d)])

    def forward(self, h):
        for b in self.model.layers:
            out = b(h)
            h = out[0] if isinstance(out, tuple) else out
        return h


@pytest.mark.parametrize("block", [_TupleBlock, _TensorBlock])
def test_hook_handles_blocks_returning_a_tensor_or_a_tuple(block):
    torch.manual_seed(0)
    toy = _Toy(block)
    h = torch.randn(2, 3, 64)
    with torch.no_grad():
        first = toy.model.layers[0](h)
        first = first[0] if isinstance(first, tuple) else first
    model = memory_model.attach_memory(toy, 128, depth=0.5, seed=0)
    _randomise(model.memory)
    assert model.layer == 0
    with torch.no_grad():
        after = first + model.memory(first)
        second = toy.model.layers[1].lin(after)
        assert torch.allclose(model(h), second, atol=1e-6)


def test_hook_never_hides_an_error():
    tok = make_tokenizer()
    base = make_model("llama", tok)
    model = memory_model.MemoryLM(base, memory_model.MemoryModule(65), 0)  # the wrong width: the hook's matmul fails
    with pytest.raises(RuntimeError):
        model(**_batch(tok))

    class Broken(nn.Module):
        def forward(self, h):
            raise ValueError("memory failed")

    model.remove()
    with pytest.raises(ValueError, match="memory failed"):
        memory_model.MemoryLM(base, Broken(), 1)(**_batch(tok))


def _train(model, tok, tmp_path, steps=20):
    from kilib.lm.training import TrainConfig, lm_dataset, train

    data = lm_dataset(tok, TEXT * 8, block_size=16)
    config = TrainConfig(
        epochs=100, max_steps=steps, batch_size=4, lr=1e-2, logging_steps=1, save_every_epoch=False, progress=False
    )
    return train(model, data, config, tmp_path / "run", tokenizer=tok)


def test_a_trained_memory_changes_the_logits_and_only_the_memory_trains(tmp_path):
    tok = make_tokenizer()
    base = make_model("gpt_neox", tok)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    batch = _batch(tok)
    with torch.no_grad():
        alone = base(**batch).logits
    model = memory_model.attach_memory(base, 128, gate=0.0, seed=0)  # starts as the base model
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, alone)
    start = {k: v.clone() for k, v in model.memory.state_dict().items()}
    result = _train(model, tok, tmp_path)
    assert result.losses[-1]["loss"] < result.losses[0]["loss"]
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())  # the base is frozen
    assert any(not torch.equal(v, model.memory.state_dict()[k]) for k, v in start.items())
    with torch.no_grad():
        trained = model(**batch).logits
    assert (trained - alone).abs().max() > 1e-2  # the trained memory moves the logits
    # the saved memory, loaded back onto the base (its hook removed first), gives the same logits
    memory_model.save_memory(model, tmp_path / "memory")
    model.remove()
    again = memory_model.load_memory(base, tmp_path / "memory")
    with torch.no_grad():
        assert torch.allclose(again(**batch).logits, trained, atol=1e-6)
    assert json.loads((tmp_path / "memory" / "memory.json").read_text())["layer"] == again.layer
    again.remove()
    from transformers import AutoModelForCausalLM

    wider = AutoModelForCausalLM.from_config(type(base.config)(**{**base.config.to_dict(), "hidden_size": 128}))
    with pytest.raises(KilibError, match="hidden size 64"):
        memory_model.load_memory(wider, tmp_path / "memory")
    with pytest.raises(KilibError, match="holds no memory"):
        memory_model.load_memory(base, tmp_path)


def test_memory_trains_on_a_4bit_base(saved_model, tmp_path):
    from kilib.lm.models import load_causal_lm

    _, folder, _ = saved_model
    base, tok = load_causal_lm(folder, quantization="4bit")
    batch = _batch(tok)
    with torch.no_grad():
        alone = base(**batch).logits
    model = memory_model.attach_memory(base, 128, seed=0)
    result = _train(model, tok, tmp_path, steps=10)
    assert result.losses[-1]["loss"] < result.losses[0]["loss"]
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        f"memory.{n}" for n, _ in model.memory.named_parameters()
    }
    with torch.no_grad():
        assert not torch.allclose(model(**batch).logits, alone, atol=1e-3)


# -- the blocks below the memory, run once per row ------------------------------------------
def _deep(family, tok, layers=4):
    """A model of ``layers`` blocks (the memory after block 2 of 4), so that blocks sit below and above it."""
    from transformers import AutoModelForCausalLM

    base = make_model(family, tok)
    torch.manual_seed(1)
    return AutoModelForCausalLM.from_config(
        type(base.config)(**{**base.config.to_dict(), "num_hidden_layers": layers}), dtype=torch.float32
    ).eval()


def _memory_grads(model, batch):
    model.zero_grad(set_to_none=True)
    out = model(**batch, use_cache=False)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.memory.named_parameters()}


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_reusing_the_lower_blocks_gives_the_gradients_of_the_full_forward(family):
    """With the blocks below the memory run once per row and reused, a training step's loss and
    the memory's gradients equal the full forward's, on the step that fills the store and on the
    next ones (rows in another order and batch, padding included); the blocks below run once per
    distinct row; eval-mode calls and generation take the full model; the store is gone after."""
    tok = make_tokenizer()
    base = _deep(family, tok)
    model = memory_model.attach_memory(base, 16, seed=0)
    _randomise(model.memory, scale=0.3)
    texts = TEXT + ["the final was won 3-1 by the rovers in the year of the cup"]
    enc = tok(texts, return_tensors="pt", padding=True)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    full = {**enc, "labels": labels}
    swapped = {k: v[[2, 0]] for k, v in full.items()}  # another batch: two of the rows, in another order
    model.train()
    want = [_memory_grads(model, b) for b in (full, swapped)]
    runs = []
    handle = memory_model.decoder_layers(base)[0].register_forward_hook(lambda m, a, o: runs.append(a[0].shape[0]))
    with model.reusing_lower_blocks():
        got = [_memory_grads(model, b) for b in (full, swapped, full)]
        assert sum(runs) == 3  # three distinct rows, each through the lower blocks once
        model.eval()
        with torch.no_grad():
            assert torch.allclose(model(**enc).logits, base(**enc).logits)  # eval: the full model, memory included
        assert sum(runs) == 3 + 2 * 3  # both eval calls ran every block on every row
    handle.remove()
    model.train()
    assert model._lower is None
    for (loss, grads), (want_loss, want_grads) in zip(got, [*want, want[0]]):
        torch.testing.assert_close(loss, want_loss, rtol=1e-6, atol=1e-7)
        assert grads.keys() == want_grads.keys()
        for n in grads:
            torch.testing.assert_close(grads[n], want_grads[n], rtol=1e-5, atol=1e-7, msg=n)
        assert all(g.abs().sum() > 0 for g in grads.values())


def test_reusing_the_lower_blocks_trains_as_the_full_forward(tmp_path):
    """Several epochs through ``train``: the same losses as without reuse (a Llama base); a base
    with dropout is refused with one line naming the fix."""
    tok = make_tokenizer()
    losses = []
    for reuse in (False, True):
        model = memory_model.attach_memory(_deep("llama", tok), 16, seed=0)
        with model.reusing_lower_blocks() if reuse else contextlib.nullcontext():
            losses.append([r["loss"] for r in _train(model, tok, tmp_path / str(reuse), steps=12).losses])
    assert len(losses[0]) == 12
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    dropping = make_model("gpt_neox", tok)
    dropping.config.hidden_dropout = 0.1
    with pytest.raises(KilibError, match="has dropout.*set its dropout to 0"):
        with memory_model.attach_memory(dropping, 16).reusing_lower_blocks():
            pass


# -- the data ------------------------------------------------------------------------------
def _claim(page, label="supports", text=None):
    return {"claim": text or f"a claim about {page}", "label": label, "page": page}


def test_select_pages_follows_the_note_pipeline():
    validation = [_claim("A")] * 3 + [_claim("B")] * 5 + [_claim("C")] * 4 + [_claim("D")] * 4 + [_claim("E")]
    train = [_claim(p) for p in ("A", "B", "D", "E")]
    texts = {"A": "text", "B": "  ", "C": "text", "D": "text", "E": "text"}
    kept, counts = fever.select_pages(validation, train, texts, top=4)
    # top 4 by claim count: B (5), C (4, seen before D), D (4), A (3); B is empty, C has no training claim
    assert kept == ["D", "A"]
    assert counts == {"n_full": 5, "n_top": 4, "n_trunc": 2, "no_text": 1, "no_training_claims": 1}
    with pytest.raises(KilibError, match="none of the top"):
        fever.select_pages(validation, [], texts, top=4)
    with pytest.raises(KilibError, match="no validation claims"):
        fever.select_pages([], train, texts, top=4)


def test_demonstrations_cycle_the_labels_and_grow_by_one():
    pool = [_claim(f"P{i}", label, f"claim {i} {label}") for i in range(4) for label in fever.DEMO_LABELS]
    five = fever.demonstrations(pool, 5)
    assert [label for _, label in five] == ["supports", "refutes", "not enough info", "supports", "refutes"]
    assert len({c for c, _ in five}) == 5
    for k in range(6):
        assert fever.demonstrations(pool, k) == five[:k]  # k counts demonstrations; k-shot extends (k-1)-shot
    assert fever.demonstrations(pool, 3, seed=1) != fever.demonstrations(pool, 3, seed=0)
    with pytest.raises(KilibError, match="too few 'refutes'"):
        fever.demonstrations([c for c in pool if c["label"] != "refutes"], 2)


def test_cache_keys_hold_the_demonstrations_used_not_their_pool():
    pool = [_claim(f"P{i}", label, f"claim {i} {label}") for i in range(40) for label in fever.DEMO_LABELS]
    inputs = study.MemoryInputs(models={}, pages={}, eval=[], train=[], demo_pool=pool, selection={}, source="")
    config = presets.MEMORY_PRESETS["smoke"]
    key = study._eval_key(inputs, config)
    assert "demo_pool" not in key and key["demos"] == fever.demonstrations(
        pool, max((*config.shots, config.memory_shots))
    )
    assert study._eval_key(inputs, dataclasses.replace(config, demo_seed=1))["demos"] != key["demos"]


def test_tiny_claims_are_unseen_disjoint_and_cover_every_page():
    from kilib.tiny import zoo

    config = zoo.zoo_config("smoke")
    world = zoo.world_of(config)
    train, validation = fever.tiny_claims(world, config)
    seen = set(zoo.pretraining_claims(world, config, seed=config.train.seed)["claim"])
    assert seen and not seen & {c["claim"] for c in validation + train}  # no claim the zoo read
    assert not {c["claim"] for c in train} & {c["claim"] for c in validation}
    assert {c["page"] for c in validation} == {a.title for a in world.articles.values()}
    assert {c["period"] for c in validation} == {"pre", "post"}
    assert fever.tiny_claims(world, config) == (train, validation)  # deterministic


def test_scores_count_unparseable_answers_as_wrong():
    answers = [
        {"model": "m", "shots": 1, "label": g, "parsed": p} for g, p in [("a", "a"), ("b", "b"), ("c", ""), ("a", "b")]
    ]
    s = study.scores(answers).iloc[0]
    assert s.accuracy == 0.5 and s.unparsed == 0.25
    assert s.micro_f1 == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))  # 2 TP, 1 FP, 2 FN
    assert s.accuracy_low < s.accuracy < s.accuracy_high  # a real interval: the point alone would pass "<="


def test_evidence_pages_and_titles():
    assert fever.fever_title("Gladiator_-LRB-2000_film-RRB-") == "Gladiator (2000 film)"
    gold = {"evidence": [["Roman_Atwood", 0, "Roman Atwood is a vlogger."], ["YouTube", 1, "..."]]}
    raw = {"evidence": [[[1, 2, "Oliver_Reed", 0]], [[3, 4, "Castaway_-LRB-film-RRB-", 0]]]}
    assert fever.evidence_page(gold) == "Roman Atwood"
    assert fever.evidence_page(raw) == "Oliver Reed"
    assert fever.evidence_page({"evidence": [[[5, 6, None, None]]]}) is None  # FEVER's not-enough-info rows


@pytest.fixture
def fever_folder(tmp_path, monkeypatch):
    """copenlu/fever_gold_evidence and FEVER's wiki dump in miniature, as local files."""
    claims = tmp_path / "claims"
    claims.mkdir()

    def rows(split, n):
        out = []
        for i in range(n):
            page = ["Roman_Atwood", "Tetris", "Keith_Urban", "Empty_page"][i % 4]
            label = ["SUPPORTS", "REFUTES", "NOT ENOUGH INFO"][i % 3]
            out.append(
                {"id": i, "claim": f"{split} claim {i} on {page}.", "label": label, "evidence": [[page, 0, "sentence"]]}
            )
        return out

    for split, n in (("train", 24), ("validation", 13)):
        (claims / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(split, n)))
    pages = tmp_path / "wiki-pages.jsonl"
    pages.write_text(
        "".join(
            json.dumps({"id": t, "text": text}) + "\n"
            for t, text in [
                ("Roman_Atwood", "Roman Atwood is a vlogger."),
                ("Tetris", "Tetris is a game."),
                ("Keith_Urban", "Keith Urban is a singer."),
                ("Empty_page", ""),
            ]
        )
    )
    monkeypatch.setitem(fever.PAPER_DATA, "claims", str(claims))
    monkeypatch.setitem(fever.PAPER_DATA, "pages", str(pages))
    return claims


def test_paper_profile_reads_fever_from_local_files(fever_folder):
    config = presets.MemoryConfig(models=("EleutherAI/pythia-70m-deduped",), pages=3)
    inputs = study.study_inputs(config)
    # validation counts: Roman Atwood 4, Tetris 3, Keith Urban 3, Empty page 3: the top 3 keep all text-bearing pages
    assert inputs.selection == {
        "n_full": 4,
        "n_top": 3,
        "n_trunc": 3,
        "no_text": 0,
        "no_training_claims": 0,
        "dropped_as_training_claims": 0,
    }
    assert list(inputs.pages) == ["Roman Atwood", "Tetris", "Keith Urban"]
    assert {c["label"] for c in inputs.eval} == {"supports", "refutes", "not enough info"}
    assert len(inputs.eval) == 10 and all(c["page"] in inputs.pages for c in inputs.eval + inputs.train)
    assert {c["page"] for c in inputs.demo_pool} == {"Empty page"}
    assert inputs.models == {"EleutherAI/pythia-70m-deduped": "EleutherAI/pythia-70m-deduped"}


def test_paper_profile_rejects_malformed_claims(fever_folder):
    (fever_folder / "validation.jsonl").write_text(
        json.dumps({"claim": "x", "label": "MAYBE", "evidence": [["A", 0, ""]]}) + "\n"
    )
    with pytest.raises(KilibError, match="unknown claim label 'MAYBE'"):
        study.study_inputs(presets.MemoryConfig(models=("m",)))
    (fever_folder / "validation.jsonl").write_text(json.dumps({"claim": "x", "verdict": "SUPPORTS"}) + "\n")
    with pytest.raises(KilibError, match="need claim, label and evidence"):
        study.study_inputs(presets.MemoryConfig(models=("m",)))
    (fever_folder / "validation.jsonl").unlink()
    with pytest.raises(KilibError, match="no validation.jsonl"):
        study.study_inputs(presets.MemoryConfig(models=("m",)))


def test_malformed_local_fever_files_are_one_line_naming_them(fever_folder):
    """A claims file or a pages file whose JSON lines are cut off: one line naming the file and a
    local fix (not the Hub's), instead of the datasets reader's traceback."""
    good = (fever_folder / "validation.jsonl").read_text()
    (fever_folder / "validation.jsonl").write_text(good[: len(good) // 2])
    with pytest.raises(
        KilibError, match=r"cannot read validation.jsonl in .* as json .*claim, label and evidence"
    ) as e:
        study.study_inputs(presets.MemoryConfig(models=("m",)))
    assert "\n" not in str(e.value) and "Hub" not in str(e.value)
    (fever_folder / "validation.jsonl").write_text(good)
    pages = Path(fever.PAPER_DATA["pages"])
    pages.write_text(pages.read_text()[:30])
    with pytest.raises(KilibError, match=r"cannot read wiki-pages.jsonl .* as json .*id and text"):
        study.study_inputs(presets.MemoryConfig(models=("m",), pages=3))


def test_notebook_overrides_and_bad_config():
    assert presets.notebook_overrides() == {}
    over = presets.notebook_overrides("neox-xs, neox-m", 2)
    assert over == {
        "seeds": (0, 1),
        "models": ("neox-xs", "neox-m"),
        "memory_models": ("neox-xs", "neox-m"),
        "ablation_models": ("neox-m",),
        "gate_ablation_models": ("neox-xs",),
        "full_update_models": ("neox-xs",),
        "size_pair": ("neox-xs", "neox-m"),
    }
    with pytest.raises(KilibError, match="SEEDS must be >= 0"):
        presets.notebook_overrides(seeds=-1)
    with pytest.raises(KilibError, match="unknown variant"):
        study.study_inputs(presets.MemoryConfig(zoo="smoke", models=("neox-xs",), variants=("wiki",)))
    with pytest.raises(KilibError, match="names no model"):
        study.study_inputs(presets.MemoryConfig(zoo="smoke"))
    assert study.method_name(presets.MEMORY_PRESETS["tiny"], "document", 0.01) == "memory: document (weight decay 0.01)"
    assert study.method_name(presets.MEMORY_PRESETS["tiny"], "template", 0.05) == "memory: template"
    assert (
        study.method_name(presets.MEMORY_PRESETS["tiny"], "template", 0.05, gate=0.0)
        == "memory: template (gate 0 at the start)"
    )


def test_paper_profile_drops_claims_it_trains_on_and_checks_demonstrations(fever_folder):
    lines = (fever_folder / "validation.jsonl").read_text().splitlines()
    train = (fever_folder / "train.jsonl").read_text().splitlines()
    copied = dict(json.loads(train[0]), id=99)  # a training claim, on Roman Atwood, also in validation
    (fever_folder / "validation.jsonl").write_text("\n".join(lines + [json.dumps(copied)]) + "\n")
    inputs = study.study_inputs(presets.MemoryConfig(models=("m",), pages=3))
    assert inputs.selection["dropped_as_training_claims"] == 1
    assert copied["claim"] not in {c["claim"] for c in inputs.eval}
    with pytest.raises(KilibError, match="too few 'supports' claims for 7"):  # checked before any model loads
        study.study_inputs(
            presets.MemoryConfig(models=("m",), pages=3, shots=tuple(range(8)))
        )  # 2 per label in the pool
    (fever_folder / "validation.jsonl").write_text("")
    with pytest.raises(KilibError, match="validation.jsonl in .* is empty: rewrite them"):
        study.study_inputs(presets.MemoryConfig(models=("m",)))
    with pytest.raises(KilibError, match="no answers to score"):
        study.scores([])


def test_paper_pages_from_parquet_or_wikipedia(fever_folder, monkeypatch, tmp_path):
    import pandas as pd

    from kilib.lm import documents

    folder = tmp_path / "pages"
    folder.mkdir()
    pd.DataFrame(
        {"id": ["Roman_Atwood", "Tetris"], "text": ["Roman Atwood is a vlogger.", "Tetris is a game."]}
    ).to_parquet(folder / "wiki-001.parquet")
    monkeypatch.setitem(fever.PAPER_DATA, "pages", str(folder))
    inputs = study.study_inputs(presets.MemoryConfig(models=("m",), pages=3))
    assert list(inputs.pages) == ["Roman Atwood", "Tetris"] and inputs.selection["no_text"] == 1  # Keith Urban: no text
    # no local dump: Wikipedia as of the pinned time; a page it lacks is dropped, a failed request is an error
    monkeypatch.setitem(fever.PAPER_DATA, "pages", "")

    def fetch(title, timestamp):
        if title == "Tetris":
            raise documents.PageMissing("no page titled 'Tetris'")
        return [{"text": f"{title} text"}]

    monkeypatch.setattr(documents, "fetch_wikipedia", fetch)
    inputs = study.study_inputs(presets.MemoryConfig(models=("m",), pages=3))
    assert list(inputs.pages) == ["Roman Atwood", "Keith Urban"] and inputs.selection["no_text"] == 1

    def offline(title, timestamp):
        raise KilibError("cannot reach the API")

    monkeypatch.setattr(documents, "fetch_wikipedia", offline)
    with pytest.raises(KilibError, match="cannot reach"):
        study.study_inputs(presets.MemoryConfig(models=("m",), pages=3))


def test_each_preset_names_what_it_runs_on():
    assert {p: c.zoo for p, c in presets.MEMORY_PRESETS.items()} == {
        "tiny": "tiny",
        "smoke": "smoke",
        "paper": "",
        "standin": "",
    }
