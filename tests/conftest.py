"""Shared fixtures: offline Hub, a private cache and results folder, tiny local models."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def kilib_dirs(tmp_path_factory):
    """Every test session gets its own cache and results folder (also seen by notebook kernels,
    which inherit the environment), so tests never read or write the user's results."""
    root = tmp_path_factory.mktemp("kilib")
    old = {k: os.environ.get(k) for k in ("KILIB_CACHE_DIR", "KILIB_RESULTS_DIR")}
    os.environ["KILIB_CACHE_DIR"] = os.environ.get("KILIB_TEST_CACHE_DIR") or str(root / "cache")
    os.environ["KILIB_RESULTS_DIR"] = str(root / "results")
    yield root
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def make_tokenizer(chat: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from kilib.tiny.zoo import CHAT_TEMPLATE, SPECIAL_TOKENS

    tok = Tokenizer(models.BPE(unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["who won the cup in the year of the final? the rovers won it 3-1."] * 5, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|eos|>", unk_token="<|unk|>")
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def make_metaspace_tokenizer(texts, special=("<unk>", "<s>", "</s>"), vocab_size: int = 600, legacy: bool = False):
    """A SentencePiece-style BPE tokenizer as Llama-2's: a word's leading space is ▁ (Metaspace),
    and the first piece of a text gets one too. ``legacy``: as Llama-2's own tokenizer.json
    writes it, a normaliser that prepends ▁ to every text and turns each space into ▁, so a text
    that starts with a space starts with two."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    if legacy:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")  # SentencePiece's word pieces
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    tok.train_from_iterator(
        list(texts), trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special), show_progress=False)
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>"
    )


def make_model(family: str, tokenizer, seed: int = 0):
    import torch
    from transformers import AutoModelForCausalLM, GPTNeoXConfig, LlamaConfig

    torch.manual_seed(seed)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = LlamaConfig(**common) if family == "llama" else GPTNeoXConfig(**common)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session", params=["llama", "gpt_neox"])
def saved_model(request, tmp_path_factory, tokenizer):
    """A tiny model of each family saved with save_pretrained, as a Hub download would be."""
    folder = tmp_path_factory.mktemp(f"model-{request.param}")
    model = make_model(request.param, tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return request.param, folder, model


class KeyRecorded(Exception):
    """Raised in place of a build by the ``cache_keys`` fixture."""


@pytest.fixture
def cache_keys(monkeypatch):
    """The keys studies pass to ``kilib.results.cached_dir``, recorded in call order; each call
    raises :class:`KeyRecorded` instead of building anything. Every kilib module is imported
    first, so that those that took ``cached_dir`` by name are patched too."""
    import importlib
    import pkgutil
    import sys

    import kilib
    from kilib import results

    for info in pkgutil.walk_packages(kilib.__path__, "kilib."):
        importlib.import_module(info.name)
    keys = []

    def record(kind, key, build, **kwargs):
        keys.append(key)
        raise KeyRecorded

    original = results.cached_dir
    for name, module in list(sys.modules.items()):
        if name.startswith("kilib") and getattr(module, "cached_dir", None) is original:
            monkeypatch.setattr(module, "cached_dir", record)
    return keys
