"""The budget's analytic model against direct counts on small models: parameters, LoRA
parameters, 4-bit weight bytes, KV-cache bytes and the activations a LoRA step keeps; and the
paper series' table (every row estimated, hours adding up, the README block)."""

import json
import math

import pytest
import torch
from transformers import DynamicCache, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

from kilib.budget import cli, estimate, series
from kilib.budget.estimate import Shape, Work, activation_bytes, kv_cache_bytes, shape_of, weight_bytes
from kilib.lm.models import attach_lora, load_causal_lm
from kilib.runtime import KilibError

LLAMA = dict(
    vocab_size=512,
    hidden_size=256,
    intermediate_size=704,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)
NEOX = dict(
    vocab_size=512,
    hidden_size=256,
    intermediate_size=1024,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=512,
)


def test_parameters_match_a_built_model():
    for config, cls in ((LlamaConfig(**LLAMA), LlamaForCausalLM), (GPTNeoXConfig(**NEOX), GPTNeoXForCausalLM)):
        with torch.device("meta"):
            model = cls(config)
        shape = shape_of(config.to_dict())
        linear = sum(m.weight.numel() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear))
        head = model.get_output_embeddings().weight.numel()
        assert shape.linear == linear - head  # the head is counted apart
        total = sum(p.numel() for p in model.parameters())
        assert shape.parameters <= total
        assert shape.parameters == pytest.approx(total, rel=0.03)  # only norms and biases left out


def test_lora_parameters_match_peft():
    from peft import LoraConfig, get_peft_model

    config = LlamaConfig(**LLAMA)
    shape = shape_of(config.to_dict())
    for embeddings in (False, True):
        model = LlamaForCausalLM(config)
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        if embeddings:
            targets += ["embed_tokens", "lm_head"]
        peft_model = get_peft_model(model, LoraConfig(r=8, target_modules=targets))
        trained = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        assert shape.lora_parameters(8, embeddings) == trained


def test_kv_cache_bytes_match_a_cache():
    config = LlamaConfig(**LLAMA)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    cache = DynamicCache(config=config)
    with torch.no_grad():
        model(input_ids=torch.randint(0, 512, (3, 17)), past_key_values=cache, use_cache=True)
    held = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert kv_cache_bytes(shape_of(config.to_dict()), rows=3, length=17) == held


@pytest.fixture(scope="module")
def small_llama(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("llama")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**LLAMA)).save_pretrained(folder)
    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(512)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="t1", pad_token="t0").save_pretrained(folder)
    return folder


def test_four_bit_weight_bytes_match_a_quantized_model(small_llama):
    model, _ = load_causal_lm(small_llama, quantization="4bit", device="cpu")
    held = 0
    for p in model.parameters():
        held += p.numel() * p.element_size()
        state = getattr(p, "quant_state", None)
        if state is not None:
            held += state.absmax.numel() * state.absmax.element_size()
            if state.state2 is not None:
                held += state.state2.absmax.numel() * state.state2.absmax.element_size()
    shape = shape_of(LlamaConfig(**LLAMA).to_dict())
    # the CPU keeps the unquantised weights in float32 (4 bytes), the GPU's compute dtype is bf16
    expected = weight_bytes(shape, "4bit", upcast=True)
    assert expected == pytest.approx(held, rel=0.03)


def test_activations_match_the_saved_tensors_of_a_lora_step(small_llama):
    """The bytes autograd keeps for the backward pass of a 4-bit LoRA step, counted by
    saved-tensor hooks (parameters and storages shared between saves counted once), against
    the model's per-block count, with and without gradient checkpointing."""
    shape = shape_of(LlamaConfig(**LLAMA).to_dict())
    rows, length = 2, 96
    for checkpointing in (False, True):
        model, _ = load_causal_lm(small_llama, quantization="4bit", device="cpu")
        model = attach_lora(model, r=8, gradient_checkpointing=checkpointing)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        saved: dict[int, int] = {}

        def pack(t, saved=saved, params=params):
            storage = t.untyped_storage()
            if storage.data_ptr() not in params:
                saved[storage.data_ptr()] = storage.nbytes()
            return t

        ids = torch.randint(0, 512, (rows, length), generator=torch.Generator().manual_seed(0))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=ids, labels=ids, use_cache=False)
        # outside the blocks: the logits and the final norm's input, and without checkpointing the
        # embeddings' output (with it, that is the first block's input)
        outside = rows * length * (shape.vocab + (1 if checkpointing else 2) * shape.hidden) * 4
        kept = sum(saved.values()) - outside
        if checkpointing:  # the blocks' inputs only: the recomputed block is not saved in the forward
            modelled = activation_bytes(shape, rows * length, True, 4) - activation_bytes(
                Shape("one block", 1, shape.hidden, shape.ffn, shape.heads, shape.kv_heads, shape.vocab),
                rows * length,
                False,
                4,
            )
        else:
            modelled = activation_bytes(shape, rows * length, False, 4)
        assert modelled == pytest.approx(kept, rel=0.1), checkpointing


def test_unknown_kind_and_model_are_one_line_errors():
    with pytest.raises(KilibError, match="unknown stage kind"):
        Work("01", "x", "m", "dance", 1, 1, 1, "step")
    with pytest.raises(KilibError, match="no config kept for"):
        estimate.paper_shape("org/not-a-model")


def test_time_is_the_larger_of_flops_and_launches():
    shape = shape_of(LlamaConfig(**LLAMA).to_dict())
    r = estimate.rates()
    small = estimate.estimate(Work("01", "s", "m", "lora-train", 1, 8, 10, "step"), shape)
    assert small.bound == "launches"
    assert small.unit_seconds == pytest.approx(r["train_block_s"].value * shape.layers)
    big = Shape("big", 32, 4096, 11008, 32, 32, 32000)
    work = Work("02", "b", "m", "lora-train", 16, 2048, 10, "step")
    e = estimate.estimate(work, big)
    assert e.bound == "flops"
    assert e.unit_seconds == pytest.approx(4 * big.parameters * 16 * 2048 / r["flops"].value)
    assert e.hours == pytest.approx(round(e.unit_seconds * 10 / 3600, 2))


def test_the_bench_rate_comes_from_the_committed_measurement():
    rate = estimate.rates()["flops"]
    assert "qlora_sft_cuda.json" in rate.source
    assert 1e13 < rate.value < 1e15


@pytest.mark.skipif(not estimate.config_dir().exists(), reason="no kept configs")
def test_the_paper_series_table():
    report = cli.estimate_report()
    rows = report["stages"]
    assert {r["notebook"] for r in rows} == {"01", "02", "03", "04"}
    assert all(r["kind"] == "estimated" for r in rows)
    assert report["hours_total"] == pytest.approx(sum(r["hours"] for r in rows), abs=0.1 * len(rows))
    assert all(r["fits_target"] == (r["reserved_gib"] <= estimate.TARGET_GIB) for r in rows)
    for row in rows:
        assert row["hours"] == pytest.approx(row["unit_seconds"] * row["units"] / 3600, abs=0.01)
        assert math.isfinite(row["reserved_gib"]) and row["reserved_gib"] > 0
    text = cli.table(report)
    assert text.count("\n| 0") == len(rows)
    assert "H100-hours" in text


def _row(notebook: str, hours: float) -> dict:
    return {"notebook": notebook, "stage": "s", "hours": hours, "reserved_gib": 1.0, "fits_target": True}


def test_readme_block_is_rendered(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- budget -->\nold\n<!-- /budget -->\nend\n")
    report = {
        "stages": [],
        "hours_by_notebook": {"01": 1.0},
        "hours_total": 1.0,
        "largest_stage": "01 x (1.0 h)",
        "stages_over_target": [],
        "target_reserved_gib": 22.5,
    }
    out = cli.render_readme(readme, {**report, "stages": [_row("01", 1.0)]})
    assert "old" not in out and "1.0 H100-hours" in out and out.endswith("end\n")
    readme.write_text("no block\n")
    with pytest.raises(KilibError, match="budget"):
        cli.render_readme(readme, report)
    assert series.counts_sources()["facts"]["value"] == series.Counts().facts


@pytest.mark.skipif(not estimate.config_dir().exists(), reason="no kept configs")
def test_the_committed_budget_is_current():
    """The README's block and results/budget/ are what make budget writes now."""
    from kilib.runtime import repo_root

    report = cli.estimate_report()
    readme = repo_root() / "README.md"
    assert cli.render_readme(readme, report) == readme.read_text(), "run make budget"
    committed = json.loads((repo_root() / "results" / "budget" / "estimated.json").read_text())
    assert committed["stages"] == json.loads(json.dumps(report["stages"])), "run make budget"


def test_measuring_on_stand_ins_records_every_stage(tmp_path, monkeypatch):
    """The measured budget's mechanics, at the small scale: each stage run through kilib's code on
    its stand-in, the JSON written after each, a repeated shape measured once, an out-of-memory
    recorded and the run going on, study-specific stages left to the estimate, the deadline kept."""
    from kilib.budget import measure

    works = [
        Work("02", "train", "meta-llama/Llama-2-7b-hf", "lora-train", 2, 16, 1, "step", lora_embeddings=True),
        Work(
            "01", "train again", "meta-llama/Llama-2-7b-chat-hf", "lora-train", 2, 16, 1, "step", lora_embeddings=True
        ),
        Work("01", "generate", "mistralai/Mistral-7B-Instruct-v0.3", "generate", 2, 8, 1, "request", new_tokens=3),
        Work("02", "score", "meta-llama/Llama-2-13b-hf", "score", 2, 8, 1, "batch", logits_kept=1),
        Work("02", "sensitivity", "meta-llama/Llama-2-13b-hf", "sensitivity", 1, 12, 1, "sample"),
        Work("03", "stage", "TinyLlama/TinyLlama_v1.1", "full-train", 2, 8, 1, "step", quantization="none"),
        Work("03", "compositions", "meta-llama/Llama-2-7b-hf", "module-train", 2, 8, 1, "step", trained=10),
        Work(
            "04",
            "memory",
            "EleutherAI/pythia-70m-deduped",
            "module-train",
            2,
            8,
            1,
            "step",
            backward_fraction=0.25,
            reused_over_epochs=25,
            module="memory",
        ),
    ]
    out = tmp_path / "measured.json"
    written = []
    real_write = measure.write_json
    monkeypatch.setattr(
        measure, "write_json", lambda path, obj: written.append(len(obj["stages"])) or real_write(path, obj)
    )
    report = measure.measure(works, out, scale="small", units=1)
    assert written == list(range(1, len(works) + 1))  # after every stage
    stages = {s["stage"]: s for s in json.loads(out.read_text())["stages"]}
    assert report["kind"] == "measured" and report["scale"] == "small"
    for name in ("train", "generate", "score", "sensitivity", "stage", "memory"):
        assert stages[name]["status"] == "ok" and stages[name]["unit_seconds"] > 0, name
        assert stages[name]["hours"] == round(stages[name]["unit_seconds"] * stages[name]["units"] / 3600, 2)
    assert stages["train again"]["same_as"] == "02 train"  # the chat model has its base's shape
    assert stages["compositions"]["status"].startswith("not measured")

    def no_room(work, model):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setitem(measure.STEPS, "score", no_room)
    report = measure.measure(works[2:5], out, scale="small", units=1)
    status = {s["stage"]: s["status"] for s in report["stages"]}
    assert status == {"generate": "ok", "score": "out of memory", "sensitivity": "ok"}
    report = measure.measure(works[:2], out, scale="small", units=1, deadline_s=-1)
    assert {s["status"] for s in report["stages"]} == {"not reached before the deadline"}
    with pytest.raises(KilibError, match="units must be at least 1"):
        measure.measure(works, out, units=0)


def test_measuring_without_a_gpu_is_refused_in_the_results_folder(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU measures")
    assert cli.main(["--measure", "yes"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: measuring needs a CUDA GPU") and err.count("\n") == 1
