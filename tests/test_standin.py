"""Stand-ins for the papers' Hub models (docs/standins.md): the real configurations (checked against the
published parameter counts), small configurations that keep what the studies rely on, tokenizers with the real
length, special ids, BOS rule and chat template, folders that load in 4-bit on the CPU, and builds that are
the same byte for byte."""

import collections
import json

import pytest
import torch

from kilib.runtime import KilibError
from kilib.standin import models, tokenizers

# Parameter counts as published (embeddings and output head included).
PUBLISHED = {
    "meta-llama/Llama-2-7b-hf": 6.74e9,
    "meta-llama/Llama-2-13b-hf": 13.0e9,
    "meta-llama/Llama-2-7b-chat-hf": 6.74e9,
    "meta-llama/Llama-2-13b-chat-hf": 13.0e9,
    "TinyLlama/TinyLlama_v1.1": 1.1e9,
    "Qwen/Qwen2.5-7B-Instruct": 7.61e9,
    "mistralai/Mistral-7B-Instruct-v0.3": 7.25e9,
    "EleutherAI/pythia-70m-deduped": 70.4e6,
    "EleutherAI/pythia-160m-deduped": 162.3e6,
    "EleutherAI/pythia-410m-deduped": 405.3e6,
    "EleutherAI/pythia-1b-deduped": 1.012e9,
    "EleutherAI/pythia-1.4b-deduped": 1.415e9,
    "EleutherAI/pythia-2.8b-deduped": 2.775e9,
    "EleutherAI/pythia-6.9b-deduped": 6.857e9,
    "EleutherAI/pythia-12b-deduped": 11.85e9,
}
# The published vocabulary size and BOS/EOS ids of each model.
VOCAB = {
    **dict.fromkeys(
        ["meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-13b-hf", "meta-llama/Llama-2-7b-chat-hf"], (32000, 1, 2)
    ),
    "meta-llama/Llama-2-13b-chat-hf": (32000, 1, 2),
    "TinyLlama/TinyLlama_v1.1": (32000, 1, 2),
    "Qwen/Qwen2.5-7B-Instruct": (152064, 151643, 151645),
    "mistralai/Mistral-7B-Instruct-v0.3": (32768, 1, 2),
    **{f"EleutherAI/pythia-{s}-deduped": (50304, 0, 0) for s in ("70m", "160m", "410m", "1b", "1.4b", "2.8b")},
    "EleutherAI/pythia-6.9b-deduped": (50432, 0, 0),
    "EleutherAI/pythia-12b-deduped": (50688, 0, 0),
}
# One model per tokenizer family, and the real facts each tokenizer must show.
FAMILIES = {
    "meta-llama/Llama-2-7b-chat-hf": dict(length=32000, bos=1, eos=2, unk=0, pad=None, special={"<s>": 1}),
    "mistralai/Mistral-7B-Instruct-v0.3": dict(
        length=32768, bos=1, eos=2, unk=0, pad=None, special={"[INST]": 3, "[/INST]": 4, "[control_768]": 770}
    ),
    "Qwen/Qwen2.5-7B-Instruct": dict(
        length=151665,
        bos=None,
        eos=151645,
        unk=None,
        pad=151643,
        special={"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|file_sep|>": 151664},
    ),
    "EleutherAI/pythia-70m-deduped": dict(
        length=50277, bos=0, eos=0, unk=0, pad=1, special={"<|endoftext|>": 0, "<|padding|>": 1, "  ": 50276}
    ),
}
ENGLISH = (
    "The committee met on Tuesday to discuss the new budget for the city's schools. Several members argued that "
    "the plan would raise taxes, while others said it was the only way to keep good teachers. The final decision "
    "is expected next month, after a public meeting at the town hall."
)
UNICODE = "Grüße aus Zürich! 東京 2023年 — naïve café, 🙂 Ελληνικά עברית\ttab\nnewline  two  spaces ~ {x: [1, 2]}"
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who won?"}]
RENDERED = {
    "meta-llama/Llama-2-7b-chat-hf": "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nWho won? [/INST]",
    "mistralai/Mistral-7B-Instruct-v0.3": "<s>[INST] Be brief.\n\nWho won?[/INST]",
    "Qwen/Qwen2.5-7B-Instruct": (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWho won?<|im_end|>\n<|im_start|>assistant\n"
    ),
}


def one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(KilibError) as err:
        fn(*args, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def tokenizer_folders(tmp_path_factory):
    """Each family's tokenizer, built into a folder and loaded back as a user would."""
    from transformers import AutoTokenizer

    out = {}
    for hub_id in FAMILIES:
        folder = tokenizers.build_tokenizer(hub_id, tmp_path_factory.mktemp("tok"))
        out[hub_id] = AutoTokenizer.from_pretrained(folder)
    return out


# ---------------------------------------------------------------------------------------
# Specs and configurations
# ---------------------------------------------------------------------------------------
def test_every_known_id_has_a_spec_and_no_spec_is_unknown():
    files = {p.stem for p in models.CONFIGS.glob("*.json")}
    assert files == {h.replace("/", "--") for h in models.KNOWN}
    for hub_id in models.KNOWN:
        standin = models.spec(hub_id)["standin"]
        assert standin["hub_id"] == hub_id
        assert set(standin["unverified"]) <= set(models.spec(hub_id)) | {"generation_config", "byte_tokens_from"}


def test_unknown_ids_and_scales_are_one_line_errors(tmp_path):
    assert "meta-llama/Llama-2-7b-hf" in one_line_error(models.spec, "gpt2")
    assert "EleutherAI/pythia-12b-deduped" in one_line_error(models.standin_folder, "meta-llama/Llama-3-8b")
    assert "small" in one_line_error(models.standin_config, "TinyLlama/TinyLlama_v1.1", "tiny")
    one_line_error(tokenizers.build_tokenizer, "no/such-model", tmp_path / "tok")
    assert not (tmp_path / "tok").exists()


@pytest.mark.parametrize("hub_id", models.KNOWN)
def test_real_config_has_the_published_parameter_count(hub_id):
    count = models.parameter_count(hub_id, "real")
    assert abs(count / PUBLISHED[hub_id] - 1) < 0.03, count


@pytest.mark.parametrize("hub_id", models.KNOWN)
def test_small_config_keeps_the_family(hub_id):
    real, small, spec = (
        models.standin_config(hub_id, "real"),
        models.standin_config(hub_id, "small"),
        models.spec(hub_id),
    )
    assert small.model_type == real.model_type == spec["model_type"]
    assert (small.vocab_size, small.bos_token_id, small.eos_token_id) == VOCAB[hub_id]
    assert small.vocab_size == real.vocab_size == spec["vocab_size"]
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings", "rope_parameters"):
        assert getattr(small, name) == getattr(real, name), name
    assert small.hidden_size % 64 == 0 and small.intermediate_size % 64 == 0  # bitsandbytes' 4-bit CPU blocks
    assert small.hidden_size % small.num_attention_heads == 0
    assert small.num_hidden_layers == max(models.SMALL_MIN_LAYERS, int(real.num_hidden_layers / 8 + 0.5))
    assert small.intermediate_size >= small.hidden_size * real.intermediate_size / real.hidden_size
    if hasattr(real, "num_key_value_heads"):
        assert small.num_attention_heads % small.num_key_value_heads == 0
        grouped = real.num_key_value_heads < real.num_attention_heads
        assert (small.num_key_value_heads < small.num_attention_heads) == grouped
    assert models.parameter_count(hub_id, "small") < 25e6


def test_small_configs_keep_teachers_larger_than_students():
    depth = {h: models.standin_config(h, "small").num_hidden_layers for h in models.KNOWN}
    real_depth = {h: models.standin_config(h, "real").num_hidden_layers for h in models.KNOWN}
    for a in models.KNOWN:  # depth order kept: a teacher has at least the blocks of its student
        for b in models.KNOWN:
            if real_depth[a] > real_depth[b]:
                assert depth[a] >= depth[b], (a, b)
    teacher, student = (models.standin_config(f"meta-llama/Llama-2-{s}-hf", "small") for s in ("13b", "7b"))
    assert (teacher.num_hidden_layers, teacher.hidden_size) == (5, 128)
    assert (student.num_hidden_layers, student.hidden_size) == (4, 64)
    # CALM composes every 4th block of its m_A (notebook 03's paper preset): the small TinyLlama has one
    assert models.standin_config("TinyLlama/TinyLlama_v1.1", "small").num_hidden_layers == 4


def test_models_of_a_family_share_one_tokenizer_spec():
    def tokenizer_spec(hub_id):
        return {k: v for k, v in models.spec(hub_id)["standin"]["tokenizer"].items() if k != "chat_template"}

    llama = [h for h in models.KNOWN if "Llama" in h]
    pythia = [h for h in models.KNOWN if "pythia" in h]
    assert len(llama) == 5 and len(pythia) == 8
    assert all(
        tokenizer_spec(h) | {"model_max_length": 0} == tokenizer_spec(llama[0]) | {"model_max_length": 0} for h in llama
    )
    assert all(tokenizer_spec(h) == tokenizer_spec(pythia[0]) for h in pythia)
    chats = {h: models.spec(h)["standin"]["tokenizer"]["chat_template"] is not None for h in models.KNOWN}
    assert {h for h, chat in chats.items() if chat} == {
        "meta-llama/Llama-2-7b-chat-hf",
        "meta-llama/Llama-2-13b-chat-hf",
        "Qwen/Qwen2.5-7B-Instruct",
        "mistralai/Mistral-7B-Instruct-v0.3",
    }


# ---------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("hub_id", FAMILIES)
def test_tokenizer_has_the_real_length_and_special_ids(tokenizer_folders, hub_id):
    tok, facts = tokenizer_folders[hub_id], FAMILIES[hub_id]
    assert len(tok) == facts["length"]
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, tok.pad_token_id) == (
        facts["bos"],
        facts["eos"],
        facts["unk"],
        facts["pad"],
    )
    for content, token_id in facts["special"].items():
        assert tok.convert_tokens_to_ids(content) == token_id, content
        assert tok.convert_ids_to_tokens(token_id) == content
    assert type(tok).__name__ == models.spec(hub_id)["standin"]["tokenizer"]["class"]


@pytest.mark.parametrize("hub_id", FAMILIES)
def test_tokenizer_encodes_any_text_and_english_at_a_realistic_rate(tokenizer_folders, hub_id):
    tok = tokenizer_folders[hub_id]
    ids = tok(UNICODE, add_special_tokens=False).input_ids
    assert tok.decode(ids) == UNICODE
    if tok.unk_token_id is not None:
        assert tok.unk_token_id not in ids
    rate = len(tok(ENGLISH, add_special_tokens=False).input_ids) / len(ENGLISH.split())
    assert 1.1 < rate < 1.8, rate
    pieces = tok.convert_ids_to_tokens(tok(ENGLISH + UNICODE, add_special_tokens=False).input_ids)
    assert not any(p.startswith("<standin_unused_") for p in pieces)  # filler is never produced


def test_llama_tokenizers_add_bos_and_mark_word_starts(tokenizer_folders):
    for hub_id in ("meta-llama/Llama-2-7b-chat-hf", "mistralai/Mistral-7B-Instruct-v0.3"):
        tok = tokenizer_folders[hub_id]
        ids = tok("Who won in 2023?").input_ids
        pieces = tok.convert_ids_to_tokens(ids)
        assert ids[0] == 1 and ids.count(1) == 1 and tok.eos_token_id not in ids
        assert pieces[1].startswith("▁") and ["▁", "2", "0", "2", "3"] == pieces[-6:-1]  # digits one by one
        assert tok.convert_ids_to_tokens(tok("東", add_special_tokens=False).input_ids) == [
            "▁",
            "<0xE6>",
            "<0x9D>",
            "<0xB1>",
        ]
    for hub_id in ("Qwen/Qwen2.5-7B-Instruct", "EleutherAI/pythia-70m-deduped"):  # no BOS
        tok = tokenizer_folders[hub_id]
        assert tok("Who won?").input_ids == tok("Who won?", add_special_tokens=False).input_ids


@pytest.mark.parametrize("hub_id", RENDERED)
def test_chat_template_renders_the_real_format(tokenizer_folders, hub_id):
    tok = tokenizer_folders[hub_id]
    text = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert text == RENDERED[hub_id]
    ids = tok(text, add_special_tokens=False).input_ids
    for content, token_id in FAMILIES[hub_id]["special"].items():
        if content in text:
            assert token_id in ids, content
    if hub_id.startswith("Qwen"):  # the default system prompt when none is given
        assert "You are Qwen" in tok.apply_chat_template(CHAT[1:], tokenize=False)


def test_llama_family_tokenizers_read_the_same_ids(tmp_path):
    from transformers import AutoTokenizer

    probe = "The 2023 final, won 3-1 at Zorblat Park: who scored? über naïve 東京"
    reads = []
    for hub_id in ("meta-llama/Llama-2-7b-hf", "TinyLlama/TinyLlama_v1.1", "meta-llama/Llama-2-13b-chat-hf"):
        tok = AutoTokenizer.from_pretrained(tokenizers.build_tokenizer(hub_id, tmp_path / hub_id))
        reads.append((tok.get_vocab(), tok.all_special_ids, tok(probe).input_ids))
        assert (tok.chat_template is None) == ("chat" not in hub_id)
    assert reads[0] == reads[1] == reads[2]


# ---------------------------------------------------------------------------------------
# Folders
# ---------------------------------------------------------------------------------------
def test_two_builds_are_byte_identical(tmp_path, monkeypatch):
    hub_id = "meta-llama/Llama-2-7b-hf"
    built = []
    for name in ("a", "b"):
        tokenizers.trained_bpe.cache_clear()  # train the BPE again
        monkeypatch.setenv("KILIB_CACHE_DIR", str(tmp_path / name))
        folder = models.standin_folder(hub_id)
        built.append({p.name: p.read_bytes() for p in sorted(folder.iterdir())})
    assert built[0].keys() == built[1].keys() >= {"config.json", "model.safetensors", "tokenizer.json", "STANDIN.json"}
    assert built[0] == built[1]
    assert folder.name == models.describe(hub_id)["folder"]


@pytest.mark.parametrize(
    "hub_id", ["meta-llama/Llama-2-13b-chat-hf", "Qwen/Qwen2.5-7B-Instruct", "EleutherAI/pythia-70m-deduped"]
)
def test_small_folder_loads_in_4bit_on_the_cpu_and_runs(hub_id):
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    folder = models.standin_folder(hub_id)
    assert models.is_standin(folder) and not models.is_standin(folder.parent)
    note = json.loads((folder / models.STANDIN_FILE).read_text())
    assert note["standin_of"] == hub_id and note["scale"] == "small" and "not the real model" in note["weights"]
    assert note["parameters"] == models.describe(hub_id)["parameters"] == models.parameter_count(hub_id)
    assert sum(p.stat().st_size for p in folder.glob("*.safetensors")) < 4.1 * note["parameters"]
    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )
    model, info = AutoModelForCausalLM.from_pretrained(
        folder, quantization_config=quantization, device_map={"": "cpu"}, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert collections.Counter(type(m).__name__ for m in model.modules())["Linear4bit"] > 0
    tok = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        logits = model(**tok("Who won the 2023 final?", return_tensors="pt")).logits
    assert logits.shape[-1] == models.spec(hub_id)["vocab_size"] and torch.isfinite(logits).all()
    assert model.generation_config.eos_token_id == models.spec(hub_id)["standin"]["generation_config"]["eos_token_id"]


def test_weights_are_initialised_as_the_model_class_does(tmp_path):
    from safetensors.torch import load_file

    config = models.standin_config("mistralai/Mistral-7B-Instruct-v0.3")
    models.write_weights(config, tmp_path, torch.float32, seed=1)
    weights = load_file(tmp_path / "model.safetensors")
    linear = torch.cat([w.flatten() for k, w in weights.items() if k.endswith("proj.weight")])
    assert abs(linear.std().item() - config.initializer_range) < 0.002 and abs(linear.mean().item()) < 0.001
    assert all(torch.equal(w, torch.ones_like(w)) for k, w in weights.items() if "norm" in k)


def test_sharded_weights_equal_one_file_and_load(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    config = models.standin_config("EleutherAI/pythia-160m-deduped")
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    for folder, shard_bytes in ((whole, None), (parts, 2_000_000)):
        folder.mkdir()
        names = models.write_weights(config, folder, torch.float32, seed=7, shard_bytes=shard_bytes)
        config.save_pretrained(folder)
    assert len(names) > 2 and (parts / "model.safetensors.index.json").is_file()
    index = json.loads((parts / "model.safetensors.index.json").read_text())
    merged = {}
    for name in names:
        merged.update(load_file(parts / name))
    assert set(index["weight_map"]) == set(merged)
    one = load_file(whole / "model.safetensors")
    assert one.keys() == merged.keys() and all(torch.equal(one[k], merged[k]) for k in one)
    model = AutoModelForCausalLM.from_pretrained(parts)  # the checkpoint's embed_out is the model's lm_head
    assert torch.equal(model.state_dict()["lm_head.weight"], one["embed_out.weight"])


def test_real_scale_refuses_without_disk_room(monkeypatch):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(models.shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 10**9, 10**9))
    message = one_line_error(models.standin_folder, "meta-llama/Llama-2-13b-hf", "real")
    assert "26." in message and "KILIB_CACHE_DIR" in message  # 13.0e9 bf16 parameters
    assert not list(
        (models.cache_root() / "standins").glob(models.describe("meta-llama/Llama-2-13b-hf", "real")["folder"])
    )
