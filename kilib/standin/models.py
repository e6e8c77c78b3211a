"""Stand-in model folders for the papers' Hub models (docs/standins.md).

A stand-in of a Hub model is a ``save_pretrained`` folder that loads like the real one, offline: the real
``config.json`` (``scale="real"``) or the same family scaled down (``scale="small"``), the tokenizer of
:mod:`kilib.standin.tokenizers` (real class, length, special ids, chat template) and random weights, seeded
from the Hub id and initialised as the model class's own ``_init_weights`` does. ``STANDIN.json`` beside
them says what the folder is, so no result can pass it off as the real model.

The small scale keeps what the studies rely on: model type, vocabulary size, special ids, tokenizer, chat
template, rope settings, tied or untied embeddings, grouped-query layout where it fits, a 13B teacher wider and
deeper than its 7B student (blocks scaled by 1/8, at least 2), and layer widths divisible by 64 so
bitsandbytes' 4-bit CPU kernels load it. Real-scale folders are for a GPU machine with disk room; they are
written shard by shard from a model on the meta device, so memory holds one shard at a time.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
from pathlib import Path
from typing import Any

from kilib.results import cache_path, cached_dir, is_cached, stable_hash, write_json
from kilib.runtime import KilibError, cache_root

CONFIGS = Path(__file__).resolve().parent / "configs"
KNOWN: tuple[str, ...] = (
    "meta-llama/Llama-2-7b-hf",
    "meta-llama/Llama-2-13b-hf",
    "meta-llama/Llama-2-7b-chat-hf",
    "meta-llama/Llama-2-13b-chat-hf",
    "TinyLlama/TinyLlama_v1.1",
    "Qwen/Qwen2.5-7B-Instruct",
    "mistralai/Mistral-7B-Instruct-v0.3",
    *(f"EleutherAI/pythia-{s}-deduped" for s in ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")),
)
"""The Hub models that have a stand-in (one ``configs/<org>--<name>.json`` each)."""
SCALES = ("real", "small")
BUILDER_VERSION = 2
"""Bump when a change alters what a build writes, so cached folders of the old build are not reused."""
SMALL_HEAD_DIM = 8
SMALL_WIDTH_OVER_4096 = 128  # a small stand-in's hidden size where the real one is wider than 4096 (13B, 12B)
# A small stand-in keeps an eighth of the real depth, and at least 4 blocks: CALM composes every 4th block of
# its m_A (TinyLlama's 22 blocks would leave 3), and a study's block mapping needs a few to choose from.
SMALL_MIN_LAYERS = 4
SMALL_WIDTH = 64
SHARD_BYTES = 2 * 2**30
"""Largest weight file of a build; a real-scale build holds about one shard in memory."""
STANDIN_FILE = "STANDIN.json"
_DROP = ("standin", "transformers_version", "_name_or_path")  # spec keys that are not configuration


# ---------------------------------------------------------------------------------------
# Specs and configurations
# ---------------------------------------------------------------------------------------
def spec(hub_id: str) -> dict[str, Any]:
    """``hub_id``'s spec: its published ``config.json`` fields and a ``standin`` section (tokenizer, generation
    config, fields not confirmed from a source)."""
    if hub_id not in KNOWN:
        raise KilibError(f"no stand-in for {hub_id!r}: choose one of {', '.join(KNOWN)}")
    return json.loads((CONFIGS / (hub_id.replace("/", "--") + ".json")).read_text())


def _check_scale(scale: str) -> None:
    if scale not in SCALES:
        raise KilibError(f"unknown stand-in scale {scale!r}: choose one of {', '.join(SCALES)}")


def _fields(hub_id: str) -> dict[str, Any]:
    return {k: v for k, v in spec(hub_id).items() if k not in _DROP}


def small_fields(hub_id: str) -> dict[str, Any]:
    """The small stand-in's configuration fields: the real ones with width, depth and heads scaled down."""
    fields = _fields(hub_id)
    hidden, heads, layers = fields["hidden_size"], fields["num_attention_heads"], fields["num_hidden_layers"]
    width = SMALL_WIDTH_OVER_4096 if hidden > 4096 else SMALL_WIDTH
    small_heads = width // SMALL_HEAD_DIM
    small_layers = max(SMALL_MIN_LAYERS, int(layers / 8 + 0.5))
    fields.update(
        hidden_size=width,
        num_attention_heads=small_heads,
        num_hidden_layers=small_layers,
        intermediate_size=64 * math.ceil(width * fields["intermediate_size"] / hidden / 64),  # same ratio, 64s
        torch_dtype="float32",
    )
    if "num_key_value_heads" in fields:  # keep the grouping (queries per key/value head) where it fits
        group = max(1, heads // fields["num_key_value_heads"])
        kv = max(1, small_heads // group)
        while small_heads % kv:
            kv -= 1
        fields["num_key_value_heads"] = kv
    if "max_window_layers" in fields:  # Qwen2: the same share of layers without a sliding window
        fields["max_window_layers"] = round(fields["max_window_layers"] * small_layers / layers)
    return fields


def standin_config(hub_id: str, scale: str = "small"):
    """The transformers configuration of ``hub_id``'s stand-in at ``scale`` (``real`` or ``small``)."""
    from transformers import AutoConfig

    _check_scale(scale)
    fields = small_fields(hub_id) if scale == "small" else _fields(hub_id)
    return AutoConfig.for_model(**fields)


def meta_model(config):
    """``config``'s causal LM built on the meta device: shapes without memory."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


@functools.cache
def parameter_count(hub_id: str, scale: str = "small") -> int:
    """The stand-in's parameter count (tied weights counted once), from the configuration alone."""
    return sum(p.numel() for p in meta_model(standin_config(hub_id, scale)).parameters())


def weight_dtype(scale: str):
    """The dtype a stand-in's weights are initialised and written in: float32 small, bfloat16 real."""
    import torch

    return torch.float32 if scale == "small" else torch.bfloat16


# ---------------------------------------------------------------------------------------
# Folders
# ---------------------------------------------------------------------------------------
def _key(hub_id: str, scale: str) -> dict[str, Any]:
    return {"standin": hub_id, "scale": scale, "spec": spec(hub_id), "builder_version": BUILDER_VERSION}


def seed_of(hub_id: str) -> int:
    """The seed of ``hub_id``'s random weights (the same for every scale and build)."""
    return int(stable_hash(hub_id, 8), 16)


def describe(hub_id: str, scale: str = "small") -> dict[str, Any]:
    """What a run records about the stand-in it used: the Hub id it stands for, the scale, the folder name
    (the hash of its spec, scale and builder version), the parameter count and that its weights are random."""
    _check_scale(scale)
    return {
        "standin_of": hub_id,
        "scale": scale,
        "folder": cache_path("standins", _key(hub_id, scale)).name,
        "parameters": parameter_count(hub_id, scale),
        "weights": "random",
        "builder_version": BUILDER_VERSION,
    }


def is_standin(folder: str | Path) -> bool:
    """Whether ``folder`` is a stand-in (it holds ``STANDIN.json``), not a real model."""
    return (Path(folder) / STANDIN_FILE).is_file()


def _check_room(hub_id: str, scale: str, root: Path) -> None:
    """Refuse a build that the disk under ``root`` cannot hold (weights, plus 1% and the tokenizer's files)."""
    need = int(parameter_count(hub_id, scale) * weight_dtype(scale).itemsize * 1.01) + 64 * 2**20
    where = root
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    if free < need:
        raise KilibError(
            f"the {scale} stand-in of {hub_id} needs {need / 1e9:.1f} GB ({need} bytes) of disk under {root} and "
            f"{free / 1e9:.1f} GB is free: free disk space, or set KILIB_CACHE_DIR to a disk with room"
        )


def standin_folder(hub_id: str, scale: str = "small") -> Path:
    """``hub_id``'s stand-in folder at ``scale``, built once under ``<cache>/standins/<hash>`` (atomically: an
    interrupted build leaves no folder). Load it with ``AutoModelForCausalLM.from_pretrained`` and
    ``AutoTokenizer.from_pretrained``; ``STANDIN.json`` in it names what it stands in for."""
    _check_scale(scale)
    key = _key(hub_id, scale)  # checks the id
    if not is_cached("standins", key):
        _check_room(hub_id, scale, cache_root() / "standins")
    return cached_dir("standins", key, functools.partial(_build, hub_id, scale))


def _build(hub_id: str, scale: str, folder: Path) -> None:
    from transformers import GenerationConfig

    from kilib.standin.tokenizers import build_tokenizer

    config = standin_config(hub_id, scale)
    config.dtype = weight_dtype(scale)
    write_weights(config, folder, weight_dtype(scale), seed_of(hub_id))
    config.save_pretrained(folder)
    GenerationConfig(**spec(hub_id)["standin"]["generation_config"]).save_pretrained(folder)
    build_tokenizer(hub_id, folder)
    write_json(
        folder / STANDIN_FILE,
        {
            "standin_of": hub_id,
            "scale": scale,
            "weights": f"random (seed {seed_of(hub_id)}, the model class's own initialisation): "
            "this is not the real model and knows nothing",
            "parameters": parameter_count(hub_id, scale),
            "builder_version": BUILDER_VERSION,
            "spec": f"kilib/standin/configs/{hub_id.replace('/', '--')}.json",
        },
    )


# ---------------------------------------------------------------------------------------
# Weights, module by module
# ---------------------------------------------------------------------------------------
def _units(model) -> list[tuple[str, Any, list[str]]]:
    """The modules that own weights, in the order the model initialises them, each with the names of the
    tensors it saves (its parameters and persistent buffers; tied copies left out, as save_pretrained does)."""
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    units = []
    for name, module in model.named_modules():
        own = [n for n, p in module.named_parameters(recurse=False) if p is not None]
        own += [n for n, b in module.named_buffers(recurse=False) if b is not None]
        own = [n for n in own if n not in module._non_persistent_buffers_set]
        keys = [f"{name}.{n}" if name else n for n in own]
        keys = [k for k in keys if k not in tied]
        if keys:
            units.append((name, module, keys))
    return units


def _checkpoint_names(model, tensors: dict[str, Any]) -> dict[str, Any]:
    """``tensors`` under the names ``save_pretrained`` writes: transformers renames some weights when it loads
    a checkpoint (GPT-NeoX's ``embed_out`` is its ``lm_head``) and back when it saves."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # a transformers without load-time renaming saves the module names
        return tensors
    return dict(revert_weight_conversion(model, tensors))


def _shards(model, units, shard_bytes: int) -> list[list[int]]:
    """Unit indices grouped into files of at most ``shard_bytes`` (a unit larger than that gets a file)."""
    state = dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers(remove_duplicate=False))
    shards: list[list[int]] = [[]]
    size = 0
    for i, (_, _, keys) in enumerate(units):
        nbytes = sum(state[k].numel() * state[k].element_size() for k in keys)
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(i)
        size += nbytes
    return shards


def write_weights(config, folder: Path, dtype, seed: int, shard_bytes: int | None = None) -> list[str]:
    """Write ``config``'s model with random weights into ``folder`` as safetensors, one shard at a time: each
    module is materialised from the meta device, initialised by the model's ``_init_weights`` under ``seed``
    (the order the model's own initialisation follows), written, and dropped. Returns the files written
    (``model.safetensors``, or shards with ``model.safetensors.index.json``)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    shard_bytes = shard_bytes or SHARD_BYTES
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    units = _units(model)
    shards = _shards(model, units, shard_bytes)
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    weight_map, total = {}, 0
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for shard, file in zip(shards, names):
            tensors = {}
            for i in shard:
                name, module, keys = units[i]
                module.to_empty(device="cpu", recurse=False)
                model._init_weights(module)
                local = dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))
                for key in keys:
                    tensors[key] = local[key.rsplit(".", 1)[-1]].detach().contiguous()
                    total += tensors[key].numel() * tensors[key].element_size()
                module.to_empty(device="meta", recurse=False)
            tensors = _checkpoint_names(model, tensors)
            weight_map.update(dict.fromkeys(tensors, file))
            save_file(tensors, str(folder / file), metadata={"format": "pt"})
            del tensors
    if len(names) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return names
