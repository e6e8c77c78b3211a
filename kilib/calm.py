"""CALM (Bansal et al., "LLM Augmented LLMs", ICLR 2024): composing a frozen anchor model with
a frozen augmenting model through cross-attention (methods.md §3), for notebook 03.

* :func:`layer_plan`: every 4th block of the augmenting model m_A (n = N_A / 4 of them), paired
  in order with n anchor blocks spread uniformly over the anchor m_B.
* :class:`Bridge`: per pair, a linear projection D_A -> D_B of m_A's block output, then
  multi-head cross-attention (as many heads as the anchor has) with queries from the anchor's
  block output and keys and values from the projected m_A states; the result is added to the
  anchor's hidden state, which feeds the next anchor block. With ``zero_init`` the value
  projection starts at zero, so the composed model equals the anchor at step 0.
* :class:`ComposedLM`: both models read the same token ids. Anchor position t sees m_A positions
  <= t (a **causal** cross-attention mask, plus the padding mask): during decoding m_A has seen
  every token so far, and teacher-forced training must see no more. The two models keep
  **separate** KV caches, so cached generation equals recomputing both models on the whole
  sequence (tested). The authors' code passes no mask (training sees future tokens) and shares
  one cache between the models; a public port runs m_A on a separate prompt (the paper's weaker
  "m_A as encoder" ablation). kilib does neither.

Hooks on the blocks carry the states across; they never catch an exception, and handle blocks
that return a tensor (transformers 5) or a tuple.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kilib.runtime import KilibError


# ---------------------------------------------------------------------------------------
# The architecture
# ---------------------------------------------------------------------------------------
def layer_plan(n_augment: int, n_anchor: int, every: int = 4) -> list[tuple[int, int]]:
    """(m_A block, anchor block) pairs, 0-indexed: m_A blocks every-th, ending on a multiple of
    ``every`` (blocks 4, 8, ... in the paper's 1-indexed count, n = N_A // every), and anchor
    blocks round(j N_B / n) for j = 1..n, so the last pair feeds the anchor's last block."""
    if every < 1:
        raise KilibError(f"every must be >= 1 (the paper takes every 4th m_A block), got {every}")
    n = n_augment // every
    if n < 1:
        raise KilibError(f"the augmenting model has {n_augment} blocks, fewer than every={every}: lower every "
                         f"(at most {n_augment}) so at least one block is composed")
    if n > n_anchor:
        raise KilibError(f"{n} m_A blocks would need as many of the anchor's {n_anchor}: raise every to at least "
                         f"{math.ceil(n_augment / n_anchor)}")
    return [((j + 1) * every - 1, round((j + 1) * n_anchor / n) - 1) for j in range(n)]


def _bridge_class():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Bridge(nn.Module):
        """Projection D_A -> D_B, then cross-attention from anchor queries to projected m_A states."""

        def __init__(self, d_augment: int, d_anchor: int, heads: int, zero_init: bool = True):
            super().__init__()
            if d_anchor % heads:
                raise KilibError(f"the anchor's width {d_anchor} is not divisible by its {heads} heads")
            self.heads = heads
            self.proj = nn.Linear(d_augment, d_anchor)
            self.q = nn.Linear(d_anchor, d_anchor, bias=False)
            self.k = nn.Linear(d_anchor, d_anchor, bias=False)
            self.v = nn.Linear(d_anchor, d_anchor, bias=False)
            if zero_init:
                nn.init.zeros_(self.v.weight)  # every head's values are zero: the output is exactly zero

        def forward(self, hidden, states, mask):
            """``hidden`` [B, t, D_B]: the anchor's block output for the last t positions of a
            sequence of T; ``states`` [B, T, D_A]: m_A's block output at every position so far;
            ``mask`` [B, T]: 1 for tokens, 0 for padding. Returns the update [B, t, D_B]."""
            b, t, d = hidden.shape
            total = states.shape[1]
            dtype = self.q.weight.dtype
            projected = self.proj(states.to(dtype))

            def split(x):
                return x.view(b, x.shape[1], self.heads, d // self.heads).transpose(1, 2)

            q, k, v = split(self.q(hidden.to(dtype))), split(self.k(projected)), split(self.v(projected))
            keys = torch.arange(total, device=hidden.device)
            queries = keys[total - t:]
            tokens = mask.to(torch.bool)
            allowed = (keys[None, :] <= queries[:, None])[None] & tokens[:, None, :]  # [B, t, T]
            real = tokens[:, total - t:]  # padding queries see everything, then give zero
            allowed = allowed | ~real[..., None]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])
            return out.transpose(1, 2).reshape(b, t, d) * real[..., None].to(out.dtype)

    return Bridge


def Bridge(d_augment: int, d_anchor: int, heads: int, zero_init: bool = True):
    """One composition layer (see :func:`_bridge_class`); built lazily so importing kilib needs no torch."""
    return _bridge_class()(d_augment, d_anchor, heads, zero_init)


def bridge_parameters(d_augment: int, d_anchor: int, n: int) -> dict[str, int]:
    """The added parameter count, exactly (projection with bias; q, k, v without), beside the
    paper's estimate n (D_A D_B + 3 D_B^2)."""
    return {"exact": n * (d_augment * d_anchor + d_anchor + 3 * d_anchor * d_anchor),
            "paper_formula": n * (d_augment * d_anchor + 3 * d_anchor * d_anchor)}


def _width(model) -> int:
    config = model.config
    return int(getattr(config, "hidden_size"))


def _heads(model) -> int:
    return int(getattr(model.config, "num_attention_heads"))


def _cache_keyword(module) -> str:
    params = inspect.signature(module.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    raise KilibError(f"{type(module).__name__}.forward takes no KV cache argument: use a Llama or GPT-NeoX model")


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output


def _with_hidden(output, hidden):
    return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden


def _composed_class():
    import torch
    import torch.nn as nn

    from kilib.models import decoder_layers

    class ComposedLM(nn.Module):
        """The anchor with m_A composed in. ``forward`` and ``generate`` take the anchor's
        arguments; only the bridges train. ``anchor`` called on its own is the anchor alone."""

        def __init__(self, anchor, augment, every: int = 4, zero_init: bool = True, seed: int = 0):
            super().__init__()
            for model in (anchor, augment):
                for p in model.parameters():
                    p.requires_grad = False
            self.anchor = anchor
            object.__setattr__(self, "augment", augment)  # not a submodule: its weights stay out of the state dict
            anchor_blocks, augment_blocks = decoder_layers(anchor), decoder_layers(augment)
            self.plan = layer_plan(len(augment_blocks), len(anchor_blocks), every)
            self.every = every
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                bridges = [Bridge(_width(augment), _width(anchor), _heads(anchor), zero_init) for _ in self.plan]
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

        # -- the anchor's interface ------------------------------------------------------
        @property
        def config(self):
            return self.anchor.config

        @property
        def generation_config(self):
            return self.anchor.generation_config

        @property
        def device(self):
            return self.anchor.device

        def forward(self, *args, **kwargs):
            self._enabled = True
            try:
                return self.anchor(*args, **kwargs)
            finally:
                self._enabled = False

        def generate(self, *args, **kwargs):
            self._enabled = True
            try:
                return self.anchor.generate(*args, **kwargs)
            finally:
                self._enabled = False
                self._states, self._augment_cache, self._mask = [], None, None

        def remove(self) -> None:
            """Detach the hooks: the anchor and m_A are themselves again."""
            for h in self._handles:
                h.remove()
            self._handles = []

        @property
        def added_parameters(self) -> int:
            return sum(p.numel() for p in self.bridges.parameters())

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
            if fresh:
                from transformers import DynamicCache

                self._states = [None] * len(self.plan)
                self._augment_cache = DynamicCache() if use_cache else None
                self._seen = 0
            elif self._augment_cache is None:
                raise KilibError("the anchor continues from a cache that CALM did not start: call ComposedLM.generate, "
                                 "not the anchor's own")
            total = self._seen + input_ids.shape[1]
            mask = kwargs.get("attention_mask")
            if mask is None:
                mask = torch.ones(input_ids.shape[0], total, dtype=torch.long, device=input_ids.device)
            if mask.dim() != 2 or mask.shape[1] != total:
                raise KilibError(f"CALM needs a 2-D attention mask over all {total} positions so far; got shape "
                                 f"{tuple(mask.shape)}")
            augment_kwargs = {"input_ids": input_ids, "attention_mask": mask, "use_cache": use_cache}
            if kwargs.get("position_ids") is not None:
                augment_kwargs["position_ids"] = kwargs["position_ids"]
            if use_cache:
                augment_kwargs[self._augment_cache_kw] = self._augment_cache
            with torch.no_grad():
                self._augment_base(**augment_kwargs)
            self._seen, self._mask = total, mask
            return None

        def _capture(self, j: int):
            def hook(module, args, output):
                if self._enabled:
                    new = _hidden(output).detach()
                    old = self._states[j]
                    self._states[j] = new if old is None else torch.cat([old, new], dim=1)
                return None

            return hook

        def _inject(self, j: int):
            def hook(module, args, output):
                if not self._enabled:
                    return None
                hidden = _hidden(output)
                states = self._states[j]
                if states is None or states.shape[0] != hidden.shape[0] or states.shape[1] < hidden.shape[1]:
                    raise KilibError("m_A's states do not line up with the anchor's positions: call ComposedLM, "
                                     "not its anchor, with the same input_ids for both")
                update = self.bridges[j](hidden, states, self._mask)
                return _with_hidden(output, hidden + update.to(hidden.dtype))

            return hook

    return ComposedLM


def compose(anchor, augment, anchor_tokenizer, augment_tokenizer, every: int = 4, zero_init: bool = True,
            seed: int = 0, names: tuple[str, str] = ("the anchor", "the augmenting model")):
    """The composed model; both models must read the same token ids (their tokenizers are
    compared first) and are frozen."""
    from kilib.models import check_same_tokenizer

    check_same_tokenizer(anchor_tokenizer, augment_tokenizer, names)
    return _composed_class()(anchor, augment, every=every, zero_init=zero_init, seed=seed)


def save_bridges(composed, folder: str | Path) -> Path:
    """The bridges' weights (safetensors) and the layer plan, the only trained part."""
    from safetensors.torch import save_file

    from kilib.results import atomic_path, write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "bridges.safetensors") as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in composed.bridges.state_dict().items()}, str(tmp))
    write_json(folder / "plan.json", {"plan": composed.plan, "every": composed.every,
                                      "added_parameters": composed.added_parameters})
    return folder


def load_bridges(composed, folder: str | Path) -> None:
    from safetensors.torch import load_file

    from kilib.results import read_json

    folder = Path(folder)
    saved = read_json(folder / "plan.json")
    if [tuple(p) for p in saved["plan"]] != [tuple(p) for p in composed.plan]:
        raise KilibError(f"{folder} holds bridges for blocks {saved['plan']}, not {composed.plan}: compose the "
                         "same two models with the same every")
    state = load_file(str(folder / "bridges.safetensors"))
    device = next(composed.bridges.parameters()).device
    composed.bridges.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=True)
