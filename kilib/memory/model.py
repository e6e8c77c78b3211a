"""The lab note's memory module and where it sits (docs/methods.md, "## 04 Memory modules on FEVER").

* :class:`MemoryModule`: ``up = Linear(d, 128)``, GELU, ``down = Linear(128, d)``, ``LayerNorm(d)``,
  times a learned scalar ``gate`` (1.0 at the start, as in the note).
* :class:`MemoryLM`: a frozen base model with the module added to the residual stream after one
  block at 70-80% depth (:func:`memory_layer`): ``h <- h + mem(h)``. Only the module trains.
  The hook never catches an exception, and takes blocks that return a tensor (transformers 5)
  or a tuple. The author's public hook (``fxnnxc/DocGuidanceLLM``, ``hook_lm.py``) wraps its
  body in ``try/except: print(e)`` and returns the block's output unchanged on any error, and
  replaces the hidden state instead of adding to it (its ``+ hidden`` is commented out). Any
  error in it (a block that returns a tensor makes ``output[1:]`` a slice of the batch, for
  one) leaves the model without memory and says so only in a printed line. Every Pythia row of
  the note is the same with and without memory; which error did that is not known.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from kilib.lm.models import WrappedLM, block_hidden, decoder_layers, with_block_hidden
from kilib.lm.training import enable_gradient_checkpointing
from kilib.results import atomic_path, read_json, write_json
from kilib.runtime import KilibError

__all__ = [
    "MEMORY_DIM",
    "DEPTH",
    "memory_layer",
    "MemoryModule",
    "MemoryLM",
    "attach_memory",
    "save_memory",
    "load_memory",
]

MEMORY_DIM = 128  # hook_memory_dim in the note
DEPTH = 0.75  # "memory module location = 70~80% location of transformer blocks"


def memory_layer(n_blocks: int, depth: float = DEPTH) -> int:
    """The 0-indexed block after whose output the memory is added: after block
    ``floor(depth * n_blocks)`` counting from 1 (after block 24 of Llama-2 7B's 32, 9 of
    Pythia-160m's 12), and after the first block of a model with fewer than ``1 / depth``. That
    is 70-80% of the blocks for 12 blocks and more; 4 of 6 (Pythia-70m, the tiny llama-m) is 67%,
    1 of 2 (the tiny neox-xs and neox-s) 50%."""
    if n_blocks < 1:
        raise KilibError(f"a model with {n_blocks} blocks has nowhere to put a memory")
    if not 0.0 < depth <= 1.0:
        raise KilibError(f"depth must lie in (0, 1], the fraction of blocks before the memory; got {depth}")
    return max(1, math.floor(depth * n_blocks)) - 1


class MemoryModule(nn.Module):
    """``LayerNorm(down(GELU(up(h)))) * gate``: what the memory adds to the hidden state h.
    The note's ``layer_init`` is not shown, so the linear layers keep PyTorch's default
    initialisation."""

    def __init__(self, d_model: int, d_memory: int = MEMORY_DIM, gate: float = 1.0):
        super().__init__()
        self.up = nn.Linear(d_model, d_memory)
        self.act = nn.GELU()
        self.down = nn.Linear(d_memory, d_model)
        self.ln = nn.LayerNorm(d_model)
        self.gate = nn.Parameter(torch.tensor([float(gate)]))

    def forward(self, hidden):
        return self.ln(self.down(self.act(self.up(hidden)))) * self.gate  # mem(h) = LN(W_down GELU(W_up h)) * g


class MemoryLM(WrappedLM):
    """A frozen base model with a memory module after block ``layer``. ``forward`` and
    ``generate`` take the base model's arguments. The hook stays on the base's block until
    :meth:`remove`, so the base called directly also goes through the memory."""

    wrapped = "base"

    def __init__(self, base, memory, layer: int):
        super().__init__()
        for p in base.parameters():
            p.requires_grad = False
        blocks = decoder_layers(base)
        if not 0 <= layer < len(blocks):
            raise KilibError(f"block {layer} does not exist: the model has blocks 0 to {len(blocks) - 1}")
        self.base = base
        device = next(p.device for p in base.parameters())
        self.memory = memory.to(device=device, dtype=torch.float32)
        self.layer = layer
        self._handle = blocks[layer].register_forward_hook(self._add_memory)

    def remove(self) -> None:
        """Detach the hook: the base model is itself again."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None) -> None:
        """Checkpoint the base's blocks, non-reentrant
        (:func:`kilib.lm.training.enable_gradient_checkpointing`). The memory's hook keeps no
        state, so where a block's recompute runs its hooks again (transformers versions that
        checkpoint a block's call rather than its forward) it adds the same update: the
        gradients equal those without checkpointing either way (tested)."""
        enable_gradient_checkpointing(self.base, gradient_checkpointing_kwargs)

    def _add_memory(self, module, args, output):
        hidden = block_hidden(output)
        update = self.memory(hidden.to(torch.float32)).to(hidden.dtype)
        return with_block_hidden(output, hidden + update)  # h <- h + mem(h), after block `layer`


def attach_memory(base, d_memory: int = MEMORY_DIM, depth: float = DEPTH, gate: float = 1.0, seed: int = 0):
    """``base`` with a fresh memory module (seeded) after the block at ``depth``; the base is frozen."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        memory = MemoryModule(int(base.config.hidden_size), d_memory, gate)
    return MemoryLM(base, memory, memory_layer(len(decoder_layers(base)), depth))


def save_memory(model, folder: str | Path) -> Path:
    """The memory module's weights (safetensors) and where it sits: the only trained part."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "memory.safetensors") as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in model.memory.state_dict().items()}, str(tmp))
    write_json(
        folder / "memory.json",
        {"layer": model.layer, "d_model": model.memory.up.in_features, "d_memory": model.memory.up.out_features},
    )
    return folder


def load_memory(base, folder: str | Path):
    """``base`` with the memory saved in ``folder`` attached where it was trained."""
    folder = Path(folder)
    if not (folder / "memory.json").exists():
        raise KilibError(f"{folder} holds no memory module (memory.json): train one with notebook 04 first")
    saved = read_json(folder / "memory.json")
    if int(base.config.hidden_size) != saved["d_model"]:
        raise KilibError(
            f"{folder} holds a memory for hidden size {saved['d_model']}, not {base.config.hidden_size}: "
            "load it onto the model it was trained on"
        )
    model = MemoryLM(base, MemoryModule(saved["d_model"], saved["d_memory"]), saved["layer"])
    state = load_file(str(folder / "memory.safetensors"))
    model.memory.load_state_dict({k: v.to(model.memory.gate.device) for k, v in state.items()}, strict=True)
    return model
