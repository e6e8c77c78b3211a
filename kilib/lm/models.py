"""Loading causal LMs (Hub id or local folder, 4-bit NF4 by default) and attaching LoRA.

One path serves both profiles: the paper profile loads Hub models, the tiny profile loads
the zoo's ``save_pretrained`` folders, both through ``from_pretrained`` with a
``BitsAndBytesConfig``. bitsandbytes runs NF4 on the CPU too; there the compute dtype
stays float32 (bf16 matmuls are an order of magnitude slower on CPUs without bf16 units).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from huggingface_hub import HfApi, constants, hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import (
    GatedRepoError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
from transformers.utils import logging as hf_logging

from kilib.results import stable_hash
from kilib.runtime import KilibError, cache_root, cuda_available, hub_offline
from kilib.standin import switch

QUANTIZATIONS = ("4bit", "8bit", "none")

# LoRA targets per architecture: every linear of attention and MLP (Zhong et al. §4, the
# QLoRA recipe). GPT-NeoX (Pythia) fuses q, k, v into one ``query_key_value`` matrix.
LORA_TARGETS = {
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "gpt_neox": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
}
EMBEDDING_MODULES = {
    "llama": ("embed_tokens", "lm_head"),
    "gpt_neox": ("embed_in", "embed_out"),
}


def _quiet_bitsandbytes() -> None:
    # bitsandbytes looks for an optional Hub kernel package on the CPU and logs a warning
    # when it is absent; the built-in CPU kernels are used instead and work.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*kernels-community.*")


def compute_dtype(device: str | None = None):
    """bf16 on CUDA, float32 on the CPU."""
    device = device or ("cuda" if cuda_available() else "cpu")
    return torch.bfloat16 if device.startswith("cuda") else torch.float32


def quantization_config(quantization: str, device: str | None = None):
    """The ``BitsAndBytesConfig`` for ``"4bit"`` (NF4, double quant) or ``"8bit"``; None for ``"none"``."""
    if quantization not in QUANTIZATIONS:
        raise KilibError(f"unknown quantization {quantization!r}: choose one of {', '.join(QUANTIZATIONS)}")
    if quantization == "none":
        return None
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype(device),
    )


SMALL_MODEL_BYTES = 256 * 2**20  # local models under this load without a progress bar


@contextlib.contextmanager
def progress_bars(enabled: bool):
    """transformers' own progress bars on or off for a block: off while a zoo member trains (each
    epoch's checkpoint printed a bar, and a cold notebook 00 showed hundreds of lines) and while
    a small local model loads."""
    was = hf_logging.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


GATED_ORGS = ("meta-llama/", "google/gemma")  # Hub ids whose download needs an accepted licence and a token


def _hub_error(name: str, err: BaseException) -> KilibError | None:
    """Translate a Hub failure (possibly wrapped by transformers) into a one-line fix."""
    chain, e = [], err
    while e is not None and len(chain) < 10:
        chain.append(e)
        e = e.__cause__ or e.__context__
    text = " ".join(str(c) for c in chain).lower()
    if any(isinstance(c, GatedRepoError) for c in chain) or "gated repo" in text:
        return KilibError(
            f"{name} is a gated model: accept its licence on its Hub page, then set HF_TOKEN "
            "(or run `hf auth login`) and try again"
        )
    if any(isinstance(c, RevisionNotFoundError) for c in chain):
        return KilibError(f"revision not found for {name}: check the revision pinned in the preset")
    if any(isinstance(c, RepositoryNotFoundError) for c in chain) and not hub_offline():
        return KilibError(f"{name} is neither a local folder nor a Hub repository: check the name (or pass a path)")
    if (
        any(isinstance(c, LocalEntryNotFoundError) for c in chain)
        or "offline" in text
        or "cannot find the requested files" in text
        or "couldn't connect" in text
    ):
        gated = name.lower().startswith(GATED_ORGS)
        return KilibError(
            f"{name} is not in the local Hugging Face cache and the Hub cannot be reached: download it once "
            f"on a connected machine (`hf download {name}`"
            + (", after accepting its licence on its Hub page and setting HF_TOKEN" if gated else "")
            + ") or pass a local folder"
        )
    return None


def _local_or_hub(name_or_path: str | Path, marks: tuple[str, ...] = ("config.json",)) -> str:
    """A model folder as its expanded path, a Hub id as given, or its stand-in's folder while
    stand-ins are on (:mod:`kilib.standin.switch`); a path that is not a model folder (one of
    ``marks`` in it) is a one-line error rather than the Hub client's complaint about repo ids."""
    text = str(switch.model_folder(str(name_or_path)) or name_or_path)
    local = Path(text).expanduser()
    if local.exists():
        if not any((local / m).exists() for m in marks):
            raise KilibError(
                f"{local} is a folder without {' or '.join(marks)}: point to a `save_pretrained` model folder"
            )
        return str(local)
    if text.startswith(("/", ".", "~")) or text.count("/") > 1 or "\\" in text:
        raise KilibError(f"{text} does not exist: pass a `save_pretrained` model folder or a Hub id (org/name)")
    return text


def folder_fingerprint(folder: Path) -> str:
    """A local model folder as ``path@hash`` of its config and weight files' names, sizes and
    modification times (and the config's text), so weights replaced in place (same shapes,
    same sizes) are not mistaken for the old ones."""
    files = sorted(p for p in folder.iterdir() if p.suffix in (".json", ".safetensors", ".bin", ".model"))
    marks = [
        (p.name, p.stat().st_size, p.stat().st_mtime_ns, p.read_text() if p.name == "config.json" else "")
        for p in files
    ]
    return f"{folder}@{stable_hash(marks)}"


_COMMIT = re.compile(r"[0-9a-f]{40}")


@functools.cache
def hub_commit(name: str, revision: str | None = None, token: str | None = None) -> str:
    """The Hub commit that ``name`` at ``revision`` (default: main) resolves to now: from the
    local Hugging Face cache when offline, else asked of the Hub (one small request, for
    config.json). A full commit hash is returned as given."""
    if revision and _COMMIT.fullmatch(revision):
        return revision
    try:
        path = Path(hf_hub_download(name, "config.json", revision=revision, token=token))
    except Exception as e:  # noqa: BLE001 - translated below, or raised as it came
        raise (_hub_error(name, e) or e) from e
    # <cache>/models--org--name/snapshots/<commit>/config.json
    commit = path.parent.name
    if not _COMMIT.fullmatch(commit):
        raise KilibError(
            f"could not tell which commit of {name} the Hugging Face cache holds ({path}): "
            "pin a full commit hash as its revision"
        )
    return commit


def model_ref(name_or_path: str | Path, revision: str | None = None, token: str | None = None) -> str:
    """What names a model in a cache key, so that a cached result is never reused for other
    weights: a Hub id as ``id@commit`` (the commit ``revision`` resolves to, see
    :func:`hub_commit`: a model updated on the Hub gets new keys), a folder under kilib's own
    cache (the zoo, a training stage, a stand-in: its path is already the hash of what made it)
    as its path, any other folder as :func:`folder_fingerprint`."""
    text = str(switch.model_folder(str(name_or_path)) or name_or_path)
    local = Path(text).expanduser()
    if local.is_dir():
        if local.resolve().is_relative_to(cache_root().resolve()):
            return text
        return folder_fingerprint(local)
    return f"{_local_or_hub(text)}@{hub_commit(text, revision, token)}"


def load_tokenizer(
    name_or_path: str | Path, *, revision: str | None = None, trust_remote_code: bool = False, token: str | None = None
):
    """``AutoTokenizer`` with a pad token guaranteed (eos, else unk)."""
    name_or_path = _local_or_hub(name_or_path, ("tokenizer_config.json", "config.json"))
    try:
        tok = AutoTokenizer.from_pretrained(
            str(name_or_path), revision=revision, trust_remote_code=trust_remote_code, token=token
        )
    except (OSError, ValueError) as e:
        raise (_hub_error(str(name_or_path), e) or e) from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    if tok.pad_token is None:
        raise KilibError(f"the tokenizer of {name_or_path} has no pad, eos or unk token: add one before training")
    return tok


@contextlib.contextmanager
def padding_side(tokenizer, side: str):
    """Pad on ``side`` ("left" for generation, "right" to keep each row's tokens where they
    are alone) inside the block; the tokenizer's own side is restored after it."""
    saved = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side = saved


def load_causal_lm(
    name_or_path: str | Path,
    *,
    quantization: str = "4bit",
    revision: str | None = None,
    device: str | None = None,
    dtype: Any = None,
    trust_remote_code: bool = False,
    token: str | None = None,
):
    """Load ``(model, tokenizer)`` by Hub id or local folder.

    ``quantization``: ``"4bit"`` (NF4 through ``BitsAndBytesConfig``, the default),
    ``"8bit"`` or ``"none"`` (full precision in ``dtype``, default: the compute dtype).
    ``revision`` pins a Hub commit. ``trust_remote_code`` stays off unless passed.
    """
    _quiet_bitsandbytes()
    device = device or ("cuda" if cuda_available() else "cpu")
    if device.startswith("cuda") and not cuda_available():
        raise KilibError("a CUDA device was asked for and none was found: pass device='cpu' or use a GPU machine")
    name_or_path = _local_or_hub(name_or_path)
    if not Path(name_or_path).is_dir():
        check_download_room(name_or_path, revision=revision, token=token)
    tokenizer = load_tokenizer(name_or_path, revision=revision, trust_remote_code=trust_remote_code, token=token)
    if quantization == "4bit" and not device.startswith("cuda"):
        _check_cpu_4bit_widths(name_or_path, revision, token)
    qconfig = quantization_config(quantization, device)
    kwargs: dict[str, Any] = dict(
        revision=revision,
        trust_remote_code=trust_remote_code,
        token=token,
        dtype=dtype or compute_dtype(device),
        device_map={"": 0} if device.startswith("cuda") else {"": "cpu"},
    )
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
    local = Path(name_or_path)
    small = local.is_dir() and sum(p.stat().st_size for p in local.glob("*.safetensors")) < SMALL_MODEL_BYTES
    try:
        with progress_bars(not small):  # a bar per tiny zoo model loaded filled notebook outputs
            model = AutoModelForCausalLM.from_pretrained(str(name_or_path), **kwargs)
    except (OSError, ValueError) as e:
        raise (_hub_error(str(name_or_path), e) or e) from e
    if qconfig is not None and not device.startswith("cuda"):
        keep_trainable_4bit_layout(model)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    torch.set_grad_enabled(True)
    return model, tokenizer


def _weight_files(siblings) -> list:
    """The files ``from_pretrained`` downloads the weights from: the top-level safetensors (the
    sharded ``model-*`` ones where a repository has those too), else the PyTorch ``.bin`` files."""
    top = [s for s in siblings if "/" not in s.rfilename]
    for pattern in (r"model.*\.safetensors", r".*\.safetensors", r"pytorch_model.*\.bin"):
        found = [s for s in top if re.fullmatch(pattern, s.rfilename)]
        if found:
            return found
    return []


def check_download_room(name: str, *, revision: str | None = None, token: str | None = None) -> None:
    """Before a Hub model is downloaded: a one-line error naming the fix where its weight files
    not yet in the local Hugging Face cache would not fit on that cache's disk, instead of a
    disk-full error halfway through (the memory study's sweep alone downloads about 130 GB).
    Offline, or where the Hub cannot say, nothing is checked: the loaders report those cases."""
    if hub_offline() or constants.HF_HUB_OFFLINE:
        return
    try:
        info = HfApi().model_info(name, revision=revision, token=token, files_metadata=True, timeout=10)
    except Exception:  # noqa: BLE001 - gated, missing or unreachable: the load itself says which
        return
    cache = Path(constants.HF_HUB_CACHE)
    blobs = cache / f"models--{name.replace('/', '--')}" / "blobs"

    def cached(s) -> bool:  # in this snapshot, or as a blob another snapshot shares
        sha = getattr(getattr(s, "lfs", None), "sha256", None)
        return isinstance(try_to_load_from_cache(name, s.rfilename, revision=info.sha), str) or bool(
            sha and (blobs / sha).is_file()
        )

    missing = sum(s.size or 0 for s in _weight_files(info.siblings or []) if not cached(s))
    existing = next((p for p in (cache, *cache.parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(existing).free
    if missing > free:
        raise KilibError(
            f"{name} needs {missing / 1e9:.1f} GB more in the Hugging Face cache ({cache}) and its disk "
            f"has {free / 1e9:.1f} GB free: free space, point HF_HOME at a larger disk, or run fewer models "
            "at a time (notebook 04: -p MODELS)"
        )


def load_config(name_or_path: str | Path, *, revision: str | None = None, token: str | None = None):
    """A model's ``AutoConfig`` by Hub id or local folder, with the loaders' one-line errors."""
    name_or_path = _local_or_hub(name_or_path)
    try:
        return AutoConfig.from_pretrained(str(name_or_path), revision=revision, token=token)
    except (OSError, ValueError) as e:
        raise (_hub_error(str(name_or_path), e) or e) from e


def _check_cpu_4bit_widths(name_or_path, revision, token) -> None:
    """bitsandbytes' CPU 4-bit kernels need every quantized layer's width divisible by 64
    (the quantization block size)."""
    config = load_config(name_or_path, revision=revision, token=token)
    widths = {w for w in (getattr(config, "hidden_size", 0), getattr(config, "intermediate_size", 0)) if w}
    odd = sorted(w for w in widths if w % 64)
    if odd:
        raise KilibError(
            f"{name_or_path} has layer widths {odd} not divisible by 64, which bitsandbytes' 4-bit CPU kernels "
            "need: load it with quantization='none' on the CPU, or use a GPU"
        )


def keep_trainable_4bit_layout(model) -> None:
    """Stop bitsandbytes from moving this model's 4-bit weights to its CPU inference layout.

    On a CPU with AVX512-BF16, the first no-grad forward in eval mode repacks each 4-bit layer
    for a bf16 kernel that has no backward: training or a sensitivity pass after that gets
    wrong gradients through the base layers without an error (a LoRA's gradients differed by
    as much as their size), and the scales come back rounded to bf16. The float32 path it
    replaces is as fast on the tiny zoo (0.55 s against 0.62 s for 192 answers)."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def is_4bit_param(param) -> bool:
    """A bitsandbytes 4-bit weight (packed bytes with a quantization state)."""
    return getattr(param, "quant_state", None) is not None


def dense_weight(param):
    """A parameter as a float32 tensor of its logical shape: a 4-bit weight is dequantised."""
    if is_4bit_param(param):
        import bitsandbytes.functional as bnbf  # only a 4-bit weight needs it; bitsandbytes may be absent

        return bnbf.dequantize_4bit(param.data, param.quant_state).float()
    return param.detach().float()


def logical_shape(param) -> tuple[int, ...]:
    """A parameter's shape before packing (a 4-bit weight is stored as bytes of another shape)."""
    return tuple(param.quant_state.shape) if is_4bit_param(param) else tuple(param.shape)


def check_trainable_4bit_layout(model) -> None:
    """Raise if a 4-bit weight is in bitsandbytes' CPU inference layout, whose kernel has no
    backward (:func:`keep_trainable_4bit_layout`)."""
    for name, param in model.named_parameters():
        if is_4bit_param(param) and getattr(param.quant_state, "packing_format_for_cpu", False):
            raise KilibError(
                f"{name} is packed for bitsandbytes' CPU inference kernel, which has no backward: "
                "load the model with kilib.lm.models.load_causal_lm, which keeps it trainable"
            )


def is_quantized(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def model_type(model) -> str:
    return getattr(getattr(model, "config", None), "model_type", "") or ""


def lora_target_modules(model, include_embeddings: bool = False) -> list[str]:
    """The linear layers LoRA adapts for this architecture (Llama and GPT-NeoX known)."""
    kind = model_type(model)
    if kind not in LORA_TARGETS:
        raise KilibError(f"no LoRA target list for model type {kind!r}: pass target_modules explicitly")
    targets = list(LORA_TARGETS[kind])
    if include_embeddings:
        targets += list(EMBEDDING_MODULES[kind])
    return targets


def attach_lora(
    model,
    *,
    r: int = 16,
    alpha: float | None = None,
    dropout: float = 0.0,
    target_modules: list[str] | None = None,
    include_embeddings: bool = False,
    gradient_checkpointing: bool = False,
):
    """Wrap ``model`` with a LoRA adapter (peft); quantized bases first go through
    ``prepare_model_for_kbit_training`` (the QLoRA recipe). ``alpha`` defaults to ``r``
    (a LoRA scale of 1)."""
    config = LoraConfig(
        r=r,
        lora_alpha=alpha if alpha is not None else r,
        lora_dropout=dropout,
        target_modules=target_modules or lora_target_modules(model, include_embeddings),
        bias="none",
        task_type="CAUSAL_LM",
    )
    with peft_quietly():
        if is_quantized(model):
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
        return get_peft_model(model, config)


def load_adapter(model, folder: str | Path):
    """``model`` with the peft adapter saved in ``folder`` (``save_pretrained``) attached."""
    with peft_quietly():
        return PeftModel.from_pretrained(model, str(folder))


@contextlib.contextmanager
def peft_quietly():
    """peft reads a transformers property and calls a method deprecated in v5; their warnings
    say nothing to a user."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        # and prepare_model_for_kbit_training calls the v5-deprecated gradient_checkpointing_enable
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing_enable.*", category=FutureWarning)
        yield


def decoder_layers_slot(model) -> tuple[nn.Module, str]:
    """Where the transformer blocks sit: ``(owner, name)`` with ``getattr(owner, name)`` the
    blocks' ``nn.ModuleList`` (through peft wrappers)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for path in ("model.layers", "gpt_neox.layers", "transformer.h", "model.decoder.layers"):
        *parents, name = path.split(".")
        owner = base
        for part in parents:
            owner = getattr(owner, part, None)
            if owner is None:
                break
        if owner is not None and isinstance(getattr(owner, name, None), nn.ModuleList):
            return owner, name
    raise KilibError(
        f"cannot find the decoder blocks of {type(base).__name__}: supported are Llama and GPT-NeoX families"
    )


def decoder_layers(model):
    """The ``nn.ModuleList`` of transformer blocks (through peft wrappers)."""
    owner, name = decoder_layers_slot(model)
    return getattr(owner, name)


def block_hidden(output):
    """The hidden state a decoder block returned: the tensor itself (transformers 5) or the
    first item of the tuple older blocks return."""
    return output[0] if isinstance(output, tuple) else output


def with_block_hidden(output, hidden):
    """``output`` with its hidden state replaced, in the form the block returned it."""
    return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden


class WrappedLM(nn.Module):
    """The base of kilib's wrappers around a frozen Hugging Face causal LM (CALM's composed
    model, the memory model): a plain ``nn.Module`` (``Trainer`` refuses a quantized model that
    gained modules) that presents the wrapped model's ``config``, ``generation_config`` and
    ``device``, and forwards ``forward`` and ``generate`` to it. A subclass names the wrapped
    model's attribute in ``wrapped``."""

    wrapped = "base"

    @property
    def _model(self):
        return getattr(self, self.wrapped)

    @property
    def config(self):
        return self._model.config

    @property
    def generation_config(self):
        return self._model.generation_config

    @property
    def device(self):
        return self._model.device

    def forward(self, *args, **kwargs):
        return self._model(*args, **kwargs)

    def generate(self, *args, **kwargs):
        return self._model.generate(*args, **kwargs)


def check_same_tokenizer(tok_a, tok_b, names: tuple[str, str] = ("model A", "model B")) -> None:
    """Fail clearly when two models do not read the same token ids (CALM needs that): the same
    vocabulary, the same special tokens, and the same ids for a probe text (one vocabulary can
    split text differently under other merges)."""
    for name, tok in zip(names, (tok_a, tok_b)):
        if not callable(getattr(tok, "get_vocab", None)):
            raise KilibError(
                f"{name}'s tokenizer is a {type(tok).__name__}, not a tokenizer: pass the tokenizers "
                "that load_causal_lm returned"
            )
    probe = "The 2023 final, won 3-1 at Zorblat Park: who scored? 1234567 + 89 = x; über naïve 東京"

    def reads(tok) -> tuple:
        return tok.get_vocab(), tok.all_special_ids, tok(probe, add_special_tokens=True).input_ids

    if reads(tok_a) != reads(tok_b):
        raise KilibError(
            f"{names[0]} and {names[1]} use different tokenizers: pick two models of one family "
            "(same vocabulary), since both must read the same token ids"
        )
