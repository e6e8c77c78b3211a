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

import contextlib
import hashlib
import math
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from kilib.lm.models import WrappedLM, block_hidden, decoder_layers, decoder_layers_slot, with_block_hidden
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
    :meth:`remove`, so the base called directly also goes through the memory.

    Inside :meth:`reusing_lower_blocks`, a training forward runs the frozen blocks up to
    ``layer`` once per distinct row and keeps their output: every later epoch starts from it and
    runs only the memory and the blocks above (docs/methods.md, "## 04 Memory modules on FEVER")."""

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
        self._lower: dict[bytes, torch.Tensor] | None = None  # row -> the output of blocks 0..layer
        self._store = torch.device("cpu")

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
        return with_block_hidden(output, self._with_memory(block_hidden(output)))

    def _with_memory(self, hidden):
        update = self.memory(hidden.to(torch.float32)).to(hidden.dtype)
        return hidden + update  # h <- h + mem(h), after block `layer`

    # -- the frozen blocks below the memory, run once per row --------------------------------
    @contextlib.contextmanager
    def reusing_lower_blocks(self, device: str | torch.device | None = None):
        """For the span of the ``with``, each training forward (the module in training mode)
        takes the output of blocks 0..``layer`` of a row it has seen before from a store instead
        of running those blocks again: they are frozen and see the same row every epoch, so a
        step runs only the memory and the blocks above it. The gradients are those of the full
        forward (tested); 25 epochs with the memory at 75% depth take about 2.4 times fewer
        FLOPs. The store holds a row's hidden states (tokens x hidden, in the compute dtype) on
        ``device`` (default the CPU: 5 MB per 512-token row of a 13B model), keyed by the row's
        token ids and mask; it is dropped when the span ends. Refused for a base with dropout,
        whose blocks would not give a row the same output twice."""
        dropping = [m for m in self.base.modules() if isinstance(m, nn.Dropout) and m.p > 0]
        dropping += [k for k in ("attention_dropout", "hidden_dropout") if getattr(self.config, k, 0) or 0]
        if dropping:
            raise KilibError(
                "this base model has dropout, so its frozen blocks give a row different outputs each epoch: "
                "train without reusing_lower_blocks, or set its dropout to 0"
            )
        self._lower, self._store = {}, torch.device(device or "cpu")
        try:
            yield self
        finally:
            self._lower = None

    def forward(self, *args, **kwargs):
        if self._lower is None or not self.training or args or "input_ids" not in kwargs:
            return self.base(*args, **kwargs)
        ids, mask = kwargs.pop("input_ids"), kwargs.get("attention_mask")
        hidden = self._with_memory(self._lower_outputs(ids, mask))
        owner, name = decoder_layers_slot(self.base)
        blocks = getattr(owner, name)
        setattr(owner, name, nn.ModuleList(list(blocks)[self.layer + 1 :]))  # the blocks above the memory
        try:
            return self.base(inputs_embeds=hidden, **kwargs)
        finally:
            setattr(owner, name, blocks)

    def _lower_outputs(self, ids, mask):
        """The output of blocks 0..``layer`` for each row of ``ids``: from the store, or computed
        (without gradient, for the rows not yet stored) and stored."""
        rows = (mask if mask is not None else torch.ones_like(ids)).cpu().numpy()
        keys = [_row_key(i, m) for i, m in zip(ids.cpu().numpy(), rows)]
        missing = [k for k in dict.fromkeys(keys) if k not in self._lower]
        if missing:
            first = [keys.index(k) for k in missing]
            computed = self._run_lower(ids[first], None if mask is None else mask[first])
            for k, h in zip(missing, computed):
                self._lower[k] = h.to(self._store, copy=True)
        return torch.stack([self._lower[k] for k in keys]).to(ids.device, non_blocking=True)

    def _run_lower(self, ids, mask):
        block = decoder_layers(self.base)[self.layer]
        caught = {}

        def catch(module, args, output):  # runs before the memory's hook: block `layer`'s own output
            caught["hidden"] = block_hidden(output)
            raise _LowerDone

        handle = block.register_forward_hook(catch, prepend=True)
        try:
            with torch.no_grad():
                self.base(input_ids=ids, attention_mask=mask, use_cache=False)
        except _LowerDone:
            pass
        finally:
            handle.remove()
        return caught["hidden"]


class _LowerDone(Exception):
    """Stops a forward once the blocks below the memory have run."""


def _row_key(ids, mask) -> bytes:
    """A row's key in the store: a hash of its token ids and attention mask (numpy arrays)."""
    return hashlib.blake2b(ids.tobytes() + mask.tobytes(), digest_size=16).digest()


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
