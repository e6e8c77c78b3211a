"""An analytic model of a stage's GPU memory and time, from the model's shape and the stage's work.

What it counts, per stage (:class:`Work`), for a causal LM of shape :class:`Shape`:

* **weights**: a 4-bit NF4 linear weight costs half a byte per value, plus one absmax byte per
  64-value block, quantised again per 256 blocks (bitsandbytes' double quantisation); the
  embeddings, the output head and the norms stay in the compute dtype (bf16), or float32 where
  ``prepare_model_for_kbit_training`` upcasts them (QLoRA training).
* **trainable state**: each trained parameter in float32 with its gradient and AdamW's two
  moments: 16 bytes.
* **activations** kept for the backward pass, per token and block, in the activation dtype:
  ``ACTIVATION_FACTORS`` hidden- and ffn-wide vectors (the inputs of every linear LoRA adapts,
  the norms' inputs, the attention output, the gated MLP's ffn-wide tensors). With gradient
  checkpointing, one hidden vector per block is kept and one block's activations are recomputed.
  Flash/SDPA attention keeps no T x T matrix.
* **logits**: the full-vocabulary logits of the positions asked for, in float32, three times over
  (logits, their log-softmax, its gradient) when training; once when scoring.
* **KV cache**: 2 x blocks x KV heads x head width x 2 bytes per token of every row, for decoding.
* **reserved**: PyTorch's caching allocator reserves more than it allocates; ``RESERVED_OVER``
  is that ratio, an assumption the measured runs check.

Time per unit comes from three rates (:data:`RATES`), each saying where it came from: the
committed H100 QLoRA bench (tokens/s at about 1B parameters) as an effective FLOP rate, and
assumed per-block launch costs for batch-1 steps and 4-bit decoding, which dominate those stages
on a GPU. A step takes the larger of its FLOP time and its launch time. Every figure this module
gives is an estimate; :mod:`kilib.budget.series` marks it so beside any measured one.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kilib.lm.inference import row_bytes, rows_that_fit
from kilib.runtime import KilibError, repo_root
from kilib.standin import models as standin_models

GIB = 2**30
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # packed values, 8-bit absmax per 64, float32 absmax per 256 blocks
BF16, FP32 = 2, 4
ADAMW_TRAINED_BYTES = 16  # float32 weight, gradient and two moments
# Per token and block, the hidden-wide and ffn-wide vectors a frozen-base LoRA step keeps for its
# backward pass, counted with saved-tensor hooks on a 4-bit LoRA Llama (tests/test_budget.py counts
# them again): 7 hidden-wide (the norms' and linears' inputs, the attention output, the residual)
# and 4 ffn-wide (gate and up outputs, the activation and the product).
ACTIVATION_FACTORS = {"hidden": 7, "ffn": 4}
RESERVED_OVER = 1.12  # reserved / allocated of PyTorch's caching allocator (an assumption)
OVERHEAD_BYTES = 0.6 * GIB  # cuBLAS workspaces, bitsandbytes buffers, the CUDA allocator's rounding
TARGET_GIB = 22.5  # one 24 GB card, with room for the CUDA context


@dataclass(frozen=True)
class Shape:
    """What memory and time depend on in a decoder-only LM."""

    name: str
    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool = False
    gated: bool = True  # SwiGLU (Llama, Mistral, Qwen2): three ffn matrices; GPT-NeoX: two

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def block_linear(self) -> int:
        """Values in one block's linear weights (the ones 4-bit quantises)."""
        attention = self.hidden * self.hidden * 2 + 2 * self.hidden * self.kv_heads * self.head_dim
        return attention + (3 if self.gated else 2) * self.hidden * self.ffn

    @property
    def linear(self) -> int:
        return self.layers * self.block_linear

    @property
    def embedding(self) -> int:
        return self.vocab * self.hidden

    @property
    def head(self) -> int:
        return 0 if self.tied else self.vocab * self.hidden

    @property
    def parameters(self) -> int:
        """Linear weights, embeddings and head (norms and biases are a rounding error)."""
        return self.linear + self.embedding + self.head

    def lora_parameters(self, rank: int, embeddings: bool = False) -> int:
        """LoRA of ``rank`` on every linear of every block (the QLoRA recipe), and with
        ``embeddings`` on the input embeddings and the output head as well."""
        kv = self.kv_heads * self.head_dim
        pairs = [(self.hidden, self.hidden)] * 2 + [(self.hidden, kv)] * 2
        pairs += [(self.hidden, self.ffn)] * (3 if self.gated else 2)
        n = self.layers * sum(rank * (i + o) for i, o in pairs)
        if embeddings:
            n += 2 * rank * (self.vocab + self.hidden)
        return n


def shape_of(config: dict[str, Any], name: str = "") -> Shape:
    """A :class:`Shape` from a Hugging Face ``config.json`` (Llama, Mistral, Qwen2, GPT-NeoX)."""
    kind = config.get("model_type", "")
    try:
        heads = int(config["num_attention_heads"])
        return Shape(
            name=name or config.get("_name_or_path", kind),
            layers=int(config["num_hidden_layers"]),
            hidden=int(config["hidden_size"]),
            ffn=int(config["intermediate_size"]),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            vocab=int(config["vocab_size"]),
            tied=bool(config.get("tie_word_embeddings", False)),
            gated=kind != "gpt_neox",
        )
    except KeyError as e:
        raise KilibError(f"{name or kind} config lacks {e.args[0]}: pass a decoder-only LM's config.json") from e


def config_dir() -> Path:
    """Where kilib keeps the paper models' published configs (:data:`kilib.standin.models.CONFIGS`)."""
    return standin_models.CONFIGS


@functools.cache
def paper_shape(hub_id: str) -> Shape:
    """The real shape of a paper model, from the config kilib keeps of it (:func:`kilib.standin.models.spec`)."""
    if hub_id not in standin_models.KNOWN:
        raise KilibError(f"no config kept for {hub_id}: use one of {', '.join(sorted(standin_models.KNOWN))}")
    return shape_of(standin_models.spec(hub_id), hub_id)


# ---------------------------------------------------------------------------------------
# Rates
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rate:
    value: float
    unit: str
    source: str


def _bench_flops() -> Rate:
    """The committed H100 QLoRA bench as an effective FLOP rate: tokens/s x FLOPs per token of a
    frozen-base LoRA step (forward 2N, backward through the activations 2N)."""
    path = repo_root() / "results" / "bench" / "qlora_sft_cuda.json"
    data = json.loads(path.read_text())
    s = data["shape"]
    shape = Shape("bench", s["layers"], s["hidden"], s["ffn"], s["heads"], s["heads"], s["vocab"])
    tokens = data["runs"]["kilib"]["tokens_per_second"]
    return Rate(
        tokens * 4 * shape.parameters,
        "FLOP/s",
        f"{path.relative_to(repo_root())}: {tokens:,.0f} tokens/s of a {shape.parameters / 1e9:.2f}B-parameter "
        f"QLoRA step on {data['hardware']['gpu']}, at 4N FLOPs per token",
    )


@functools.cache
def rates() -> dict[str, Rate]:
    """The three rates of the time model, each with its source."""
    return {
        "flops": _bench_flops(),
        # A 7B batch-1 step on ~50 tokens is launch-bound: 0.1-0.25 s (32 blocks), kernels of the
        # 4-bit dequantisation, LoRA and autograd per block, forward and backward.
        "train_block_s": Rate(0.15 / 32, "s per block per step", "assumed: 0.15 s for a 32-block batch-1 step"),
        # 4-bit decoding: 35-60 ms per token for a 7B model, flat up to batch 32-64.
        "decode_block_s": Rate(0.045 / 32, "s per block per token", "assumed: 45 ms per token of a 32-block model"),
    }


# ---------------------------------------------------------------------------------------
# A stage's work and its estimate
# ---------------------------------------------------------------------------------------
KINDS = ("lora-train", "full-train", "module-train", "generate", "score", "sensitivity", "svd")


@dataclass(frozen=True)
class Work:
    """One stage of a notebook at the paper's counts.

    ``kind``: ``lora-train`` (4-bit base, LoRA), ``full-train`` (every weight, 16-bit),
    ``module-train`` (4-bit base, ``trained`` added parameters such as CALM's bridges or a
    memory module, ``backward_fraction`` of the blocks in the backward pass, and in the forward
    pass too after the first of ``reused_over_epochs`` epochs where the blocks below are reused), ``generate``,
    ``score`` (one forward, ``logits_kept`` positions per row), ``sensitivity`` (one sample,
    forward and backward, hooks' float32 g^T x of the largest matrix), ``svd`` (host-free,
    ``units`` matrices). ``tokens`` is a row's length (the prompt's, for ``generate``)."""

    notebook: str
    stage: str
    model: str
    kind: str
    batch: int
    tokens: int
    units: float  # how many units the paper's full counts take
    unit: str  # step, request, answer, sample, matrix
    new_tokens: int = 0
    rank: int = 16
    lora_embeddings: bool = False
    checkpointing: bool = False
    upcast: bool = True  # prepare_model_for_kbit_training's float32 norms/embeddings and residual stream
    trained: int = 0  # module-train: the added parameters
    backward_fraction: float = 1.0
    # module-train: the blocks below the module run once per row over this many epochs and are reused
    # after (kilib.memory.model.MemoryLM.reusing_lower_blocks); 0: every step runs them
    reused_over_epochs: float = 0
    module: str = ""  # module-train: the module, "memory" (notebook 04) or "calm" (notebook 03)
    logits_kept: int = 0  # score: 0 = every position
    also_loaded: tuple[str, ...] = ()  # other models held at the same time (CALM's m_A), 16-bit
    quantization: str = "4bit"
    derivation: str = ""  # how ``units`` follows from the paper's counts

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise KilibError(f"unknown stage kind {self.kind!r}: use one of {', '.join(KINDS)}")


@dataclass
class Estimate:
    """A stage's estimated peak GPU memory (GiB, by part) and time (seconds per unit, hours in all)."""

    parts_gib: dict[str, float]
    allocated_gib: float
    reserved_gib: float
    unit_seconds: float
    hours: float
    bound: str  # what sets the unit time: flops, launches or bandwidth
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def weight_bytes(shape: Shape, quantization: str = "4bit", upcast: bool = False) -> float:
    """Bytes of a model's weights on the GPU: 4-bit linears (:data:`NF4_BYTES` a value) and
    16-bit (or upcast float32) embeddings and head; ``none``: every weight in bf16."""
    if quantization == "none":
        return shape.parameters * BF16
    rest = (shape.embedding + shape.head) * (FP32 if upcast else BF16)
    return shape.linear * NF4_BYTES + rest


def activation_bytes(shape: Shape, tokens: int, checkpointing: bool, dtype_bytes: int = BF16) -> float:
    """Bytes kept for the backward pass over ``tokens`` tokens (rows x length) through every block."""
    per_block = ACTIVATION_FACTORS["hidden"] * shape.hidden + ACTIVATION_FACTORS["ffn"] * shape.ffn
    if checkpointing:  # one hidden vector per block, and one block recomputed at a time
        return tokens * dtype_bytes * (shape.layers * shape.hidden + per_block)
    return tokens * dtype_bytes * shape.layers * per_block


def kv_cache_bytes(shape: Shape, rows: int, length: int, dtype_bytes: int = BF16) -> float:
    """Keys and values of every block for ``rows`` sequences of ``length`` tokens."""
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * dtype_bytes * rows * length


def fitting_batch(
    shape: Shape, tokens: int, new_tokens: int, *, also: float = 0.0, cap: int = 64, quantization: str = "4bit"
) -> int:
    """The batch ``batch_size="auto"`` (:func:`kilib.lm.inference.fit_batch_size`) takes on a card of
    :data:`TARGET_GIB`, by the same rule (:func:`~kilib.lm.inference.row_bytes`,
    :func:`~kilib.lm.inference.rows_that_fit`) over what the weights (and ``also`` bytes of other
    models) leave."""
    free = TARGET_GIB * GIB / RESERVED_OVER - OVERHEAD_BYTES - weight_bytes(shape, quantization) - also
    per_row = row_bytes(int(kv_cache_bytes(shape, 1, 1)), tokens + new_tokens, shape.vocab, BF16)
    return rows_that_fit(free, per_row, cap)


def estimate(work: Work, shape: Shape, others: dict[str, Shape] | None = None) -> Estimate:
    """The memory and time :class:`Estimate` of ``work`` on a model of ``shape``."""
    r = rates()
    others = others or {}
    parts: dict[str, float] = {}
    notes: list[str] = []
    upcast = work.kind == "lora-train" and work.upcast  # prepare_model_for_kbit_training's float32 copies
    parts["weights"] = weight_bytes(shape, work.quantization, upcast=upcast)
    for name in work.also_loaded:
        parts[f"weights of {name}"] = weight_bytes(others[name], "none")
    rows_tokens = work.batch * work.tokens
    act_dtype = FP32 if upcast else BF16
    if work.kind == "lora-train":
        parts["LoRA and AdamW"] = shape.lora_parameters(work.rank, work.lora_embeddings) * ADAMW_TRAINED_BYTES
        parts["activations"] = activation_bytes(shape, rows_tokens, work.checkpointing, act_dtype)
        parts["logits"] = 3 * rows_tokens * shape.vocab * FP32
        if upcast:
            notes.append("residual stream in float32 (prepare_model_for_kbit_training upcasts the embeddings)")
    elif work.kind == "full-train":
        parts["gradients and AdamW"] = shape.parameters * (BF16 + 2 * BF16)
        parts["activations"] = activation_bytes(shape, rows_tokens, work.checkpointing)
        parts["logits"] = 3 * rows_tokens * shape.vocab * FP32
    elif work.kind == "module-train":
        parts["module and AdamW"] = work.trained * ADAMW_TRAINED_BYTES
        kept = max(1, math.ceil(shape.layers * work.backward_fraction))
        part = Shape(shape.name, kept, shape.hidden, shape.ffn, shape.heads, shape.kv_heads, shape.vocab)
        parts["activations"] = activation_bytes(part, rows_tokens, work.checkpointing)
        parts["logits"] = 3 * rows_tokens * shape.vocab * FP32
    elif work.kind == "generate":
        parts["KV cache"] = kv_cache_bytes(shape, work.batch, work.tokens + work.new_tokens)
        # the prompt's forward: one block's activations and the last position's logits
        parts["prefill"] = rows_tokens * BF16 * (4 * shape.hidden + 2 * shape.ffn) + work.batch * shape.vocab * FP32
    elif work.kind == "score":
        kept = work.logits_kept or work.tokens
        parts["forward"] = rows_tokens * BF16 * (4 * shape.hidden + 2 * shape.ffn)
        parts["logits"] = 2 * work.batch * kept * shape.vocab * FP32
    elif work.kind == "sensitivity":
        parts["activations"] = activation_bytes(shape, work.tokens, work.checkpointing)
        parts["logits"] = 3 * work.tokens * shape.vocab * FP32
        parts["g^T x of one matrix"] = shape.hidden * shape.ffn * FP32 * 2
        notes.append("running totals on the host, one block group at a time")
    elif work.kind == "svd":
        parts["matrix and factors"] = shape.hidden * shape.ffn * FP32 * 3
    allocated = sum(parts.values()) + OVERHEAD_BYTES
    unit_seconds, bound = _unit_seconds(work, shape, r)
    return Estimate(
        parts_gib={k: round(v / GIB, 2) for k, v in parts.items()},
        allocated_gib=round(allocated / GIB, 2),
        reserved_gib=round(allocated * RESERVED_OVER / GIB, 2),
        unit_seconds=unit_seconds,
        hours=round(unit_seconds * work.units / 3600, 2),
        bound=bound,
        notes=notes,
    )


def _unit_seconds(work: Work, shape: Shape, r: dict[str, Rate]) -> tuple[float, str]:
    """Seconds per unit of ``work``: the larger of its FLOP time and its launch time."""
    flops, train_block, decode_block = r["flops"].value, r["train_block_s"].value, r["decode_block_s"].value
    n = shape.parameters
    tokens = work.batch * work.tokens
    if work.kind in ("lora-train", "module-train", "full-train", "sensitivity"):
        forward = 1.0  # the share of the blocks a step runs forward
        if work.kind == "module-train" and work.reused_over_epochs:  # the blocks below run in the first epoch only
            forward = work.backward_fraction + (1 - work.backward_fraction) / work.reused_over_epochs
        per_token = {"lora-train": 4, "module-train": 2 * forward + 2 * work.backward_fraction, "full-train": 6}.get(
            work.kind, 4
        )
        if work.checkpointing:
            per_token += 2
        rows = 1 if work.kind == "sensitivity" else work.batch
        flop_time = per_token * n * (work.tokens * rows) / flops
        launch = train_block * shape.layers * forward
        return _larger(flop_time, launch)
    if work.kind == "score":
        flop_time = 2 * n * tokens / flops
        return _larger(flop_time, decode_block * shape.layers)
    if work.kind == "generate":
        prefill = 2 * n * tokens / flops
        step = max(decode_block * shape.layers, 2 * n * work.batch / flops)
        per_request = (prefill + step * work.new_tokens) / work.batch
        return per_request, "launches" if step == decode_block * shape.layers else "flops"
    # svd: a rank-r randomized SVD of an hidden x ffn matrix, a few passes of matmuls
    return max(4 * 2 * shape.hidden * shape.ffn * (work.rank + 8) / flops, 5e-3), "launches"


def _larger(flop_time: float, launch_time: float) -> tuple[float, str]:
    return (flop_time, "flops") if flop_time >= launch_time else (launch_time, "launches")
