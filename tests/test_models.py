"""The one loading path: local folders and Hub ids, 4-bit NF4, LoRA, clear errors."""

import shutil
from types import SimpleNamespace

import httpx
import huggingface_hub
import huggingface_hub.constants as hub
import pytest
import torch
from conftest import KeyRecorded, make_model, make_tokenizer
from huggingface_hub.errors import GatedRepoError
from tokenizers import normalizers
from transformers import AutoModelForCausalLM

from kilib.lm import models
from kilib.lm.models import attach_lora, check_same_tokenizer, decoder_layers, load_causal_lm
from kilib.lm.training import TrainConfig, sft_dataset, train
from kilib.runtime import KilibError, cache_root


def test_saved_model_loads_through_the_4bit_path(saved_model):
    import bitsandbytes as bnb

    family, folder, reference = saved_model
    model, tok = load_causal_lm(folder)  # 4-bit NF4 is the default
    linear4 = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert linear4 and linear4[0].weight.quant_type == "nf4"
    # float32 compute on the CPU, bf16 on CUDA
    assert linear4[0].compute_dtype == (torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    assert tok.pad_token_id is not None and model.config.pad_token_id == tok.pad_token_id
    ids = tok(["the rovers won the cup"], return_tensors="pt")
    with torch.no_grad():
        q = model(**ids.to(model.device)).logits.float().cpu()
        ref = reference(**ids.to("cpu")).logits
    # NF4 is lossy, but close to the full-precision model it came from.
    assert torch.nn.functional.cosine_similarity(q.flatten(), ref.flatten(), dim=0) > 0.95
    full, _ = load_causal_lm(folder, quantization="none", device="cpu")
    with torch.no_grad():
        assert torch.allclose(full(**ids.to("cpu")).logits, ref, atol=1e-5)
    assert len(decoder_layers(model)) == 2


def test_lora_on_a_4bit_base_trains_only_the_adapter(saved_model):
    family, folder, _ = saved_model
    model, tok = load_causal_lm(folder)
    peft_model = attach_lora(model, r=4)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    ids = tok(["the rovers won"], return_tensors="pt").input_ids.to(peft_model.device)
    peft_model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None for p in peft_model.parameters() if p.requires_grad)
    # LoRA starts as the identity: B is zero, so the adapted model equals the base.
    with torch.no_grad(), peft_model.disable_adapter():
        base = peft_model(input_ids=ids).logits
    with torch.no_grad():
        assert torch.allclose(peft_model(input_ids=ids).logits, base)
    assert len(decoder_layers(peft_model)) == 2


def _lora_grads(model, ids):
    torch.manual_seed(0)
    model = attach_lora(model, r=4)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02)  # B = 0 would leave every A gradient zero
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_inference_before_training_leaves_4bit_gradients_right(saved_model):
    """bitsandbytes repacks 4-bit weights for a CPU kernel without backward on the first no-grad
    forward (AVX512-BF16 CPUs). A model from load_causal_lm stays trainable: after inference,
    its LoRA gradients are those of a fresh load. One loaded around it is refused by train."""
    family, folder, _ = saved_model
    tok = make_tokenizer()
    ids = tok(["who won the cup in the year of the final?"], return_tensors="pt").input_ids
    fresh = _lora_grads(load_causal_lm(folder, device="cpu")[0], ids)
    used, _ = load_causal_lm(folder, device="cpu")
    with torch.no_grad():
        used(input_ids=ids)
    after = _lora_grads(used, ids)
    for n in fresh:
        torch.testing.assert_close(after[n], fresh[n])

    raw = AutoModelForCausalLM.from_pretrained(
        folder,
        quantization_config=models.quantization_config("4bit", "cpu"),
        dtype=torch.float32,
        device_map={"": "cpu"},
    ).eval()
    with torch.no_grad():
        raw(input_ids=ids)
    if not any(getattr(getattr(p, "quant_state", None), "packing_format_for_cpu", False) for p in raw.parameters()):
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes keeps the trainable layout")
    data = sft_dataset(tok, [{"prompt": "who won?", "answer": "the rovers"}])
    with pytest.raises(KilibError, match="packed for bitsandbytes' CPU inference kernel.*load_causal_lm"):
        train(
            attach_lora(raw, r=4),
            data,
            TrainConfig(progress=False, save_every_epoch=False),
            folder / "run",
            tokenizer=tok,
        )


def test_missing_model_offline_is_one_line_naming_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(KilibError) as e:
        load_causal_lm("kilib-test/no-such-model")
    msg = str(e.value)
    assert (
        "\n" not in msg
        and "not in the local Hugging Face cache" in msg
        and "hf download kilib-test/no-such-model" in msg
    )
    assert "licence" not in msg
    with pytest.raises(
        KilibError, match=r"hf download meta-llama/kilib-no-such-model`, after accepting its licence .* HF_TOKEN\)"
    ):
        load_causal_lm("meta-llama/kilib-no-such-model")  # a gated organisation: the download needs a token too


def test_gated_model_without_token_names_the_fix(monkeypatch):
    response = httpx.Response(401, request=httpx.Request("GET", "https://huggingface.co/meta-llama/Llama-2-7b-hf"))

    def gated(*args, **kwargs):
        try:
            raise GatedRepoError(
                "401 Client Error: access to model meta-llama/Llama-2-7b-hf is restricted", response=response
            )
        except GatedRepoError as inner:
            raise OSError("You are trying to access a gated repo.") from inner

    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", gated)
    with pytest.raises(KilibError, match="gated model.*HF_TOKEN"):
        load_causal_lm("meta-llama/Llama-2-7b-hf")


def test_folder_without_config_and_unknown_quantization(tmp_path, saved_model, monkeypatch):
    with pytest.raises(KilibError, match="without config.json"):
        load_causal_lm(tmp_path)
    with pytest.raises(KilibError, match="without tokenizer_config.json or config.json"):
        models.load_tokenizer(tmp_path)
    for path in (tmp_path / "no" / "such" / "model", "./models/my-llama", "~/nowhere"):  # paths, not Hub ids
        with pytest.raises(KilibError, match="does not exist: pass a `save_pretrained` model folder or a Hub id"):
            load_causal_lm(path)
    with pytest.raises(KilibError, match="unknown quantization"):
        load_causal_lm(saved_model[1], quantization="3bit")
    monkeypatch.setattr(models, "cuda_available", lambda: False)
    with pytest.raises(KilibError, match="CUDA device was asked for"):
        load_causal_lm(saved_model[1], device="cuda")


def test_mismatched_tokenizers_are_refused():
    a = make_tokenizer()
    check_same_tokenizer(a, make_tokenizer())

    b = make_tokenizer()
    b.add_tokens(["<new>"])
    with pytest.raises(KilibError, match="different tokenizers"):
        check_same_tokenizer(a, b, ("anchor", "augmenting model"))

    c = make_tokenizer()  # the same vocabulary, yet other ids for the same text
    c.backend_tokenizer.normalizer = normalizers.Lowercase()
    assert c.get_vocab() == a.get_vocab()
    with pytest.raises(KilibError, match="different tokenizers"):
        check_same_tokenizer(a, c)
    with pytest.raises(KilibError, match="augmenting model's tokenizer is a str, not a tokenizer"):
        check_same_tokenizer(a, "path/to/tokenizer", ("anchor", "augmenting model"))


def test_padding_side_pads_inside_and_restores_after_an_error():
    tok = make_tokenizer()
    tok.padding_side = "right"
    with models.padding_side(tok, "left"):
        ids = tok(["a", "a b c"], padding=True)["attention_mask"]
    assert ids[0][0] == 0 and ids[0][-1] == 1  # padded on the left inside the block
    assert tok.padding_side == "right"
    with pytest.raises(ValueError), models.padding_side(tok, "left"):
        raise ValueError("boom")
    assert tok.padding_side == "right"


def _hub_snapshot(cache, repo: str, commit: str, model, tokenizer) -> None:
    """``repo`` at ``commit`` laid out as huggingface_hub caches a download, and made main."""
    root = cache / f"models--{repo.replace('/', '--')}"
    model.save_pretrained(root / "snapshots" / commit)
    tokenizer.save_pretrained(root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)


@pytest.fixture
def offline_hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache of this test's own, read offline; commits resolved afresh."""
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    models.hub_commit.cache_clear()
    yield tmp_path / "hub"
    models.hub_commit.cache_clear()


def test_model_ref_names_the_commit_a_hub_id_resolves_to(offline_hub_cache, tokenizer):
    first, second = "a" * 40, "b" * 40
    _hub_snapshot(offline_hub_cache, "org/tiny", first, make_model("llama", tokenizer, seed=0), tokenizer)
    assert models.model_ref("org/tiny") == f"org/tiny@{first}"
    # what the loaders read for that id is that snapshot
    assert models.load_config("org/tiny").hidden_size == 64
    assert models.model_ref("org/tiny", revision=second) == f"org/tiny@{second}"  # a full hash is a pin already
    # the Hub's main moves on: the id names other weights, so every key holding it changes
    _hub_snapshot(offline_hub_cache, "org/tiny", second, make_model("llama", tokenizer, seed=1), tokenizer)
    models.hub_commit.cache_clear()
    assert models.model_ref("org/tiny") == f"org/tiny@{second}"
    models.hub_commit.cache_clear()
    with pytest.raises(KilibError, match=r"hf download org/absent"):
        models.model_ref("org/absent")


def test_model_ref_of_folders(tmp_path, saved_model):
    _, folder, _ = saved_model
    # a folder of one's own: its files' fingerprint, which follows weights replaced in place
    assert models.model_ref(folder) == models.folder_fingerprint(folder)
    assert models.model_ref(folder).startswith(f"{folder}@")
    # kilib's own cache folders are named by the hash of what made them: the path as given
    inside = cache_root() / "test-model-ref" / "some-hash"
    inside.mkdir(parents=True, exist_ok=True)
    (inside / "config.json").write_text("{}")
    try:
        assert models.model_ref(str(inside)) == str(inside)
    finally:
        shutil.rmtree(inside.parent)
    with pytest.raises(KilibError, match="does not exist"):
        models.model_ref(tmp_path / "nowhere")


def test_study_cache_keys_name_a_hub_model_by_its_commit(offline_hub_cache, tokenizer, cache_keys):
    """calm, transfer and memory key their runs on model_ref, not on the id as given: a Hub
    id's key changes when its main moves (checked where each study keys a Hub id directly)."""
    from kilib.calm import presets as calm_presets
    from kilib.calm import study as C
    from kilib.memory import fever as memory_fever
    from kilib.memory import presets as memory_presets
    from kilib.memory import study as M
    from kilib.transfer import presets as transfer_presets
    from kilib.transfer import study as T

    keys = cache_keys
    pool = [
        {"page": f"P{i}", "claim": f"claim {i}", "label": label} for i in range(3) for label in memory_fever.DEMO_LABELS
    ]
    calls = [
        lambda: C.prepared(C.CalmInputs("org/tiny", "org/tiny", {}, {}, ""), calm_presets.PRESETS["smoke"], "random"),
        lambda: T.baseline(
            T.TransferInputs("org/tiny", "org/tiny", {"gsm": {"eval": [], "demos": []}}, ""),
            transfer_presets.TRANSFER_PRESETS["smoke"],
            "gsm",
            "student",
        ),
        lambda: M.sweep(
            M.MemoryInputs(
                models={"m": "org/tiny"}, pages={}, eval=[], train=[], demo_pool=pool, selection={}, source=""
            ),
            memory_presets.MEMORY_PRESETS["smoke"],
            "m",
        ),
    ]
    for commit in ("a" * 40, "b" * 40):
        _hub_snapshot(offline_hub_cache, "org/tiny", commit, make_model("llama", tokenizer), tokenizer)
        models.hub_commit.cache_clear()
        for call in calls:
            with pytest.raises(KeyRecorded):
                call()
    first, second = keys[:3], keys[3:]
    assert [k.get("model") for k in first] == [f"org/tiny@{'a' * 40}"] * 3
    assert [k.get("model") for k in second] == [f"org/tiny@{'b' * 40}"] * 3


def test_a_download_that_would_not_fit_is_one_line_before_it_starts(offline_hub_cache, tokenizer, monkeypatch):
    """Online, a Hub model's weight files not yet cached are weighed against the cache disk's free
    space: too big is one line naming the fix, before the tokenizer or any weight is fetched."""
    commit = "c" * 40
    _hub_snapshot(offline_hub_cache, "org/cached", commit, make_model("llama", tokenizer), tokenizer)
    files = {
        "org/big": [
            ("model-00001-of-00002.safetensors", 6e9),
            ("model-00002-of-00002.safetensors", 4e9),
            ("pytorch_model-00001-of-00002.bin", 6e9),
            ("original/consolidated.safetensors", 9e9),
        ],
        "org/cached": [("model.safetensors", 6e9), ("pytorch_model.bin", 6e9)],
        "org/moved": [("model.safetensors", 6e9)],
    }  # a new commit whose weights another snapshot holds
    blob = offline_hub_cache / "models--org--moved" / "blobs" / ("e" * 64)
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"weights")
    asked = []

    def model_info(self, name, revision=None, token=None, files_metadata=False, timeout=None):
        asked.append(name)
        if name not in files:
            raise huggingface_hub.errors.RepositoryNotFoundError("no such repo")
        return SimpleNamespace(
            sha=commit,
            siblings=[
                SimpleNamespace(rfilename=f, size=n, lfs=SimpleNamespace(sha256="e" * 64)) for f, n in files[name]
            ],
        )

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(total=2e9, used=1e9, free=1e9))
    message = "org/big needs 10.0 GB more in the Hugging Face cache .* has 1.0 GB free: free space, point HF_HOME"
    with pytest.raises(KilibError, match=message):
        models.check_download_room("org/big")
    with pytest.raises(KilibError, match=message):
        models.load_causal_lm("org/big", device="cpu")  # stops before the tokenizer is fetched
    models.check_download_room("org/cached")  # its weights are in the cache already: nothing to fetch
    models.check_download_room("org/moved")
    models.check_download_room("org/unknown")  # the Hub cannot say: the load reports it
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    models.check_download_room("org/big")  # offline: nothing is asked
    assert asked == ["org/big", "org/big", "org/cached", "org/moved", "org/unknown"]
