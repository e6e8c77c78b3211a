"""CALM's composition (Bansal et al., "LLM Augmented LLMs", ICLR 2024, §3.1): a frozen anchor
m_B and a frozen augmenting model m_A joined by cross-attention bridges, the only trained part
(docs/methods.md, "## 03 CALM composition").

* :func:`layer_plan`: every 4th block of m_A (n = N_A / 4 of them), paired in order with n anchor
  blocks spread uniformly over the anchor.
* :class:`Bridge`: per pair, f_proj (a linear projection D_A -> D_B of m_A's block output), then
  f_cross (multi-head cross-attention, as many heads as the anchor has, with an output projection
  as in the authors' ``torch.nn.MultiheadAttention``) with queries from the anchor's block output
  and keys and values from the projected m_A states. With ``zero_init`` the output projection
  starts at zero, so the composed model equals the anchor at step 0.
* :class:`ComposedLM`: adds each bridge's update to the anchor's hidden state, which feeds the
  next anchor block: h_B <- h_B + f_cross(f_proj(h_A), h_B). Both models read the same token ids.
  Anchor position t sees m_A positions <= t (a **causal** cross-attention mask, plus the padding
  mask): during decoding m_A has seen every token so far, and teacher-forced training must see no
  more. The two models keep **separate** KV caches, so cached generation equals recomputing both
  models on the whole sequence (tested). The authors' code passes no mask (training sees future
  tokens) and shares one cache between the models; a public port runs m_A on a separate prompt
  (the paper's weaker "m_A as encoder" ablation). kilib does neither, and offers that ablation
  explicitly (``encoder=True``: m_A reads the prompt once, every anchor position sees all of it).

Hooks on the blocks carry the states across; they never catch an exception, and handle blocks
that return a tensor (transformers 5) or a tuple.
"""

from __future__ import annotations

import functools
import inspect
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import DynamicCache

from kilib.lm.inference import kv_bytes_per_token, model_dtype
from kilib.lm.models import WrappedLM, block_hidden, check_same_tokenizer, decoder_layers, with_block_hidden
from kilib.lm.training import enable_gradient_checkpointing
from kilib.results import atomic_path, read_json, write_json
from kilib.runtime import KilibError


def layer_plan(n_augment: int, n_anchor: int, every: int = 4) -> list[tuple[int, int]]:
    """(m_A block, anchor block) pairs, 0-indexed: m_A blocks every-th, ending on a multiple of
    ``every`` (blocks 4, 8, ... in the paper's 1-indexed count, n = N_A // every), and anchor
    blocks round(j N_B / n) for j = 1..n, so the last pair feeds the anchor's last block."""
    if every < 1:
        raise KilibError(f"every must be >= 1 (the paper takes every 4th m_A block), got {every}")
    n = n_augment // every
    if n < 1:
        raise KilibError(
            f"the augmenting model has {n_augment} blocks, fewer than every={every}: lower every "
            f"(at most {n_augment}) so at least one block is composed"
        )
    if n > n_anchor:
        raise KilibError(
            f"{n} m_A blocks would need as many of the anchor's {n_anchor}: raise every to at least "
            f"{math.ceil(n_augment / n_anchor)}"
        )
    return [((j + 1) * every - 1, round((j + 1) * n_anchor / n) - 1) for j in range(n)]


def rotate(x, positions, base: float = 10000.0):
    """Rotary position embedding of ``x`` [B, H, T, d] at ``positions`` [B, T] (the halves
    convention): kilib's positional variant of the cross-attention, not the paper's."""
    half = x.shape[-1] // 2
    freqs = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = positions[:, None, :, None].float() * freqs  # [B, 1, T, half]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


class Bridge(nn.Module):
    """One composition layer: f_proj (D_A -> D_B), then f_cross, cross-attention from anchor
    queries to projected m_A states (CALM §3.1). Without the output projection W^O each head could
    write only its own slice of the anchor's residual stream."""

    def __init__(self, d_augment: int, d_anchor: int, heads: int, zero_init: bool = True, rotary: bool = False):
        super().__init__()
        if d_anchor % heads:
            raise KilibError(f"the anchor's width {d_anchor} is not divisible by its {heads} heads")
        if rotary and (d_anchor // heads) % 2:
            raise KilibError(f"rotary cross-attention needs an even head width, not {d_anchor // heads}")
        self.heads, self.rotary = heads, rotary
        self.proj = nn.Linear(d_augment, d_anchor)
        self.q = nn.Linear(d_anchor, d_anchor, bias=False)
        self.k = nn.Linear(d_anchor, d_anchor, bias=False)
        self.v = nn.Linear(d_anchor, d_anchor, bias=False)
        self.o = nn.Linear(d_anchor, d_anchor, bias=False)
        if zero_init:
            nn.init.zeros_(self.o.weight)  # W^O = 0: the update is zero, the composition is the anchor at step 0

    def forward(self, hidden, states, mask, encoded=None):
        """``hidden`` [B, t, D_B]: the anchor's block output for the last t positions of a
        sequence of T; ``states`` [B, T, D_A]: m_A's block output at every position so far;
        ``mask`` [B, T]: 1 for tokens, 0 for padding. Returns the update f_cross(f_proj(h_A), h_B)
        [B, t, D_B]. With ``encoded`` [B, S] (the "m_A as encoder" ablation), ``states``
        [B, S, D_A] are m_A's states over the prompt, which every query sees where ``encoded`` is 1."""
        b, t, d = hidden.shape
        total = states.shape[1]
        dtype = self.q.weight.dtype
        projected = self.proj(states.to(dtype))  # f_proj(h_A) = W_proj h_A + b_proj: D_A -> D_B

        def split(x):
            return x.view(b, x.shape[1], self.heads, d // self.heads).transpose(1, 2)

        # queries from the anchor's states, keys and values from m_A's projected states:
        # Q = h_B W^Q, K = f_proj(h_A) W^K, V = f_proj(h_A) W^V
        q, k, v = split(self.q(hidden.to(dtype))), split(self.k(projected)), split(self.v(projected))
        tokens = mask.to(torch.bool)
        real = tokens[:, tokens.shape[1] - t :]  # padding queries see everything, then give zero
        if encoded is not None:
            if self.rotary:
                raise KilibError("the m_A-as-encoder ablation runs on the paper's cross-attention: rotary=False")
            allowed = encoded.to(torch.bool)[:, None, :].expand(b, t, total)
        else:
            if self.rotary:  # positions count tokens, so left padding does not shift them
                positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
                q, k = rotate(q, positions[:, total - t :]), rotate(k, positions)
            keys = torch.arange(total, device=hidden.device)
            queries = keys[total - t :]
            # the causal mask over m_A's states: anchor position t sees m_A positions <= t, and no padding
            allowed = (keys[None, :] <= queries[:, None])[None] & tokens[:, None, :]  # [B, t, T]
        allowed = allowed | ~real[..., None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])  # softmax(Q K^T / sqrt(d)) V
        # f_cross = Concat(heads) W^O, zero at padding queries
        return self.o(out.transpose(1, 2).reshape(b, t, d)) * real[..., None].to(out.dtype)


def bridge_parameters(d_augment: int, d_anchor: int, n: int) -> dict[str, int]:
    """The added parameter count, exactly (projection with bias; q, k, v and the output
    projection without), beside the paper's estimate n (D_A D_B + 3 D_B^2)."""
    return {
        "exact": n * (d_augment * d_anchor + d_anchor + 4 * d_anchor * d_anchor),
        "paper_formula": n * (d_augment * d_anchor + 3 * d_anchor * d_anchor),
    }


def width(model) -> int:
    """The model's hidden width D (D_A for m_A, D_B for the anchor)."""
    return int(model.config.hidden_size)


def _heads(model) -> int:
    return int(model.config.num_attention_heads)


def _cache_keyword(module) -> str:
    params = inspect.signature(module.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    raise KilibError(f"{type(module).__name__}.forward takes no KV cache argument: use a Llama or GPT-NeoX model")


_FOREIGN_CACHE = (
    "the anchor continues from a cache that CALM did not start: call ComposedLM.generate, not the anchor's own"
)


class ComposedLM(WrappedLM):
    """The anchor with m_A composed in. ``forward`` and ``generate`` take the anchor's
    arguments; only the bridges train. ``anchor`` called on its own is the anchor alone."""

    wrapped = "anchor"

    def __init__(
        self,
        anchor,
        augment,
        every: int = 4,
        zero_init: bool = True,
        seed: int = 0,
        rotary: bool = False,
        encoder: bool = False,
    ):
        super().__init__()
        if encoder and rotary:
            raise KilibError("the m_A-as-encoder ablation runs on the paper's cross-attention: pass rotary=False")
        for model in (anchor, augment):
            for p in model.parameters():
                p.requires_grad = False
        self.anchor = anchor
        object.__setattr__(self, "augment", augment)  # not a submodule: its weights stay out of the state dict
        anchor_blocks, augment_blocks = decoder_layers(anchor), decoder_layers(augment)
        self.plan = layer_plan(len(augment_blocks), len(anchor_blocks), every)
        self.every, self.encoder = every, encoder
        self._encoded = None  # the encoder ablation: [B, S], 1 where m_A read a prompt token
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            bridges = [Bridge(width(augment), width(anchor), _heads(anchor), zero_init, rotary) for _ in self.plan]
        device = next(p.device for p in anchor.parameters())
        self.bridges = nn.ModuleList(bridges).to(device=device, dtype=torch.float32)
        self._enabled = False
        self._states: list[Any] = []
        self._mask = None
        self._seen = 0
        self._augment_cache = None
        self._augment_base = getattr(augment, "base_model", augment)
        self._augment_cache_kw = _cache_keyword(self._augment_base)
        self._anchor_cache_kw = _cache_keyword(anchor)
        self._handles = [anchor.register_forward_pre_hook(self._before_anchor, with_kwargs=True)]
        for j, (a, b) in enumerate(self.plan):
            self._handles.append(augment_blocks[a].register_forward_hook(self._capture(j)))
            self._handles.append(anchor_blocks[b].register_forward_hook(self._inject(j)))

    def forward(self, *args, **kwargs):
        self._enabled = True
        try:
            return super().forward(*args, **kwargs)
        finally:
            self._enabled = False

    def generate(self, *args, **kwargs):
        self._enabled = True
        try:
            return super().generate(*args, **kwargs)
        finally:
            self._enabled = False
            self._states, self._augment_cache, self._mask, self._encoded = [], None, None, None

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None) -> None:
        """Checkpoint the anchor's blocks, non-reentrant
        (:func:`kilib.lm.training.enable_gradient_checkpointing`), with the hooks' state of each
        forward pass restored whenever the backward pass recomputes a block. Transformers versions
        that checkpoint a block's call rather than its forward run the block's hooks again in the
        recompute, after ``forward`` has turned them off: the injection would add nothing there,
        and the bridges' gradients would come from a block that never ran. m_A runs without
        gradients and is not checkpointed."""
        enable_gradient_checkpointing(self.anchor, gradient_checkpointing_kwargs)
        wrapped = 0
        for module in self.anchor.modules():
            checkpoint = getattr(module, "_gradient_checkpointing_func", None)
            if getattr(module, "gradient_checkpointing", False) is True and callable(checkpoint):
                if getattr(checkpoint, "func", None) != self._checkpoint:
                    module._gradient_checkpointing_func = functools.partial(self._checkpoint, checkpoint)
                wrapped += 1
        if not wrapped:
            raise KilibError(
                "the anchor's blocks checkpoint through no _gradient_checkpointing_func, so CALM's hooks cannot be "
                "kept right in the recompute: set gradient_checkpointing=False in CALM's TrainConfig"
            )

    def _checkpoint(self, checkpoint, function, *args, **kwargs):
        """``checkpoint(function, *args, **kwargs)`` with ``function`` run under the hooks' state
        of this call, in the forward pass and again when the backward pass recomputes it."""
        state = self._hook_state()

        def run(*inner_args, **inner_kwargs):
            saved = self._hook_state()
            self._set_hook_state(state)
            try:
                return function(*inner_args, **inner_kwargs)
            finally:
                self._set_hook_state(saved)

        return checkpoint(run, *args, **kwargs)

    def _hook_state(self) -> tuple:
        return self._enabled, list(self._states), self._mask, self._encoded

    def _set_hook_state(self, state: tuple) -> None:
        self._enabled, states, self._mask, self._encoded = state
        self._states = list(states)

    def remove(self) -> None:
        """Detach the hooks: the anchor and m_A are themselves again."""
        for h in self._handles:
            h.remove()
        self._handles = []

    @property
    def added_parameters(self) -> int:
        return sum(p.numel() for p in self.bridges.parameters())

    def cache_bytes_per_token(self) -> int:
        """Bytes one token of one row keeps during generation (what
        :func:`kilib.lm.inference.fit_batch_size` sizes batches by): the anchor's KV cache, m_A's
        own, and m_A's block outputs that the bridges read, one per bridge."""
        augment_dtype = model_dtype(self.augment)
        states = len(self.plan) * width(self.augment) * torch.empty((), dtype=augment_dtype).element_size()
        anchor_kv = kv_bytes_per_token(self.anchor.config, model_dtype(self.anchor))
        return anchor_kv + kv_bytes_per_token(self.augment.config, augment_dtype) + states

    # -- hooks ----------------------------------------------------------------------
    def _before_anchor(self, module, args, kwargs):
        if not self._enabled:
            return None
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            raise KilibError("CALM composes two models on the same token ids: pass input_ids, not inputs_embeds")
        cache = kwargs.get(self._anchor_cache_kw)
        use_cache = bool(kwargs.get("use_cache")) and cache is not None
        fresh = cache is None or cache.get_seq_length() == 0
        if self.encoder:
            return self._encode(input_ids, kwargs, fresh)
        if fresh:
            self._states = [None] * len(self.plan)
            self._augment_cache = DynamicCache() if use_cache else None  # m_A's own cache, apart from the anchor's
            self._seen = 0
        elif self._augment_cache is None:
            raise KilibError(_FOREIGN_CACHE)
        total = self._seen + input_ids.shape[1]
        mask = kwargs.get("attention_mask")
        if mask is None:
            mask = torch.ones(input_ids.shape[0], total, dtype=torch.long, device=input_ids.device)
        if mask.dim() != 2 or mask.shape[1] != total:
            raise KilibError(
                f"CALM needs a 2-D attention mask over all {total} positions so far; got shape {tuple(mask.shape)}"
            )
        self._read(input_ids, mask, kwargs.get("position_ids"), use_cache)
        self._seen, self._mask = total, mask
        return None

    def _encode(self, input_ids, kwargs, fresh: bool):
        """The "m_A as encoder" ablation: m_A reads the prompt once, and every anchor position
        sees all of it. In a fresh call the prompt is every token, or, where ``labels`` are
        given (teacher-forced training), the tokens that carry no loss; cached decoding steps
        reuse m_A's states of the prompt."""
        mask = kwargs.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(input_ids)
        if not fresh:
            if self._encoded is None:
                raise KilibError(_FOREIGN_CACHE)
            self._mask = mask
            return None
        labels = kwargs.get("labels")
        encoded = mask.bool() & (labels == -100) if labels is not None else mask.bool()
        if not encoded.any(dim=1).all():
            raise KilibError(
                "m_A as encoder reads the prompt, the tokens whose label is -100, and a row has none: "
                "mask the prompt's labels (kilib.lm.training.sft_dataset does)"
            )
        self._states = [None] * len(self.plan)
        # m_A is causal: its states over the prompt do not see the answer
        self._read(input_ids, mask, kwargs.get("position_ids"))
        self._mask, self._encoded = mask, encoded
        return None

    def _read(self, input_ids, mask, position_ids=None, use_cache: bool = False) -> None:
        """Run m_A (no gradients) on the anchor's tokens; the capture hooks keep its states."""
        augment_kwargs = {"input_ids": input_ids, "attention_mask": mask, "use_cache": use_cache}
        if position_ids is not None:
            augment_kwargs["position_ids"] = position_ids
        if use_cache:
            augment_kwargs[self._augment_cache_kw] = self._augment_cache
        with torch.no_grad():
            self._augment_base(**augment_kwargs)

    def _capture(self, j: int):
        def hook(module, args, output):
            if self._enabled:
                new = block_hidden(output).detach()
                old = self._states[j]
                self._states[j] = new if old is None else torch.cat([old, new], dim=1)
            return None

        return hook

    def _inject(self, j: int):
        def hook(module, args, output):
            if not self._enabled:
                return None
            hidden = block_hidden(output)
            states = self._states[j]
            if (
                states is None
                or states.shape[0] != hidden.shape[0]
                or (not self.encoder and states.shape[1] < hidden.shape[1])
            ):
                raise KilibError(
                    "m_A's states do not line up with the anchor's positions: call ComposedLM, "
                    "not its anchor, with the same input_ids for both"
                )
            update = self.bridges[j](hidden, states, self._mask, self._encoded if self.encoder else None)
            # h_B <- h_B + f_cross(f_proj(h_A), h_B), CALM §3.1: the sum feeds the next anchor block
            return with_block_hidden(output, hidden + update.to(hidden.dtype))

        return hook


def compose(
    anchor,
    augment,
    anchor_tokenizer,
    augment_tokenizer,
    every: int = 4,
    zero_init: bool = True,
    seed: int = 0,
    names: tuple[str, str] = ("the anchor", "the augmenting model"),
    rotary: bool = False,
    encoder: bool = False,
) -> ComposedLM:
    """The composed model; both models must read the same token ids (their tokenizers are
    compared first) and are frozen. ``encoder``: the paper's "m_A as encoder" ablation (m_A reads
    the prompt only, and the anchor sees all of it from every position)."""
    check_same_tokenizer(anchor_tokenizer, augment_tokenizer, names)
    return ComposedLM(anchor, augment, every=every, zero_init=zero_init, seed=seed, rotary=rotary, encoder=encoder)


def save_bridges(composed: ComposedLM, folder: str | Path) -> Path:
    """The bridges' weights (safetensors) and the layer plan, the only trained part."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "bridges.safetensors") as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in composed.bridges.state_dict().items()}, str(tmp))
    write_json(
        folder / "plan.json",
        {"plan": composed.plan, "every": composed.every, "added_parameters": composed.added_parameters},
    )
    return folder


def load_bridges(composed: ComposedLM, folder: str | Path) -> None:
    """Load what :func:`save_bridges` wrote into ``composed``, which must have the same plan."""
    folder = Path(folder)
    saved = read_json(folder / "plan.json")
    if [tuple(p) for p in saved["plan"]] != [tuple(p) for p in composed.plan]:
        raise KilibError(
            f"{folder} holds bridges for blocks {saved['plan']}, not {composed.plan}: compose the "
            "same two models with the same every"
        )
    state = load_file(str(folder / "bridges.safetensors"))
    device = next(composed.bridges.parameters()).device
    composed.bridges.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=True)
