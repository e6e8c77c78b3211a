"""Gradient checkpointing: the same gradients as without it wherever kilib turns it on (a bare
model, LoRA, the memory model, CALM's composition), and a one-line error where it cannot."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn as nn
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from kilib.calm.model import ComposedLM
from kilib.lm.models import WrappedLM, attach_lora, decoder_layers
from kilib.lm.training import checkpointing_on, enable_gradient_checkpointing
from kilib.memory.model import attach_memory
from kilib.runtime import KilibError

CONFIG = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)


def tiny_llama(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**CONFIG)).eval()


class HooksInsideLayer(LlamaDecoderLayer):
    """A Llama block checkpointed as transformers versions whose ``GradientCheckpointingLayer``
    intercepted ``__call__`` did: the checkpoint covers the call, hooks included, so the backward
    pass runs the block's forward hooks again when it recomputes the block."""

    def __call__(self, *args, **kwargs):
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return self._gradient_checkpointing_func(functools.partial(self._plain_call, **kwargs), *args)
        return super().__call__(*args, **kwargs)

    def _plain_call(self, *args, **kwargs):
        self.gradient_checkpointing = False  # the forward runs as is: the checkpoint is this call's
        try:
            return nn.Module.__call__(self, *args, **kwargs)
        finally:
            self.gradient_checkpointing = True


class Unsupported(WrappedLM):
    """A kilib wrapper that defines no gradient checkpointing."""

    wrapped = "base"

    def __init__(self, base):
        super().__init__()
        self.base = base


def batch():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, CONFIG["vocab_size"], (2, 12), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    labels = ids.clone()
    labels[:, :4] = -100  # a prompt without loss (the encoder ablation reads it)
    labels[mask == 0] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "use_cache": False}


def gradients(model) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad(set_to_none=True)
    model(**batch()).loss.backward()
    model.eval()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g.abs().sum() > 0 for g in grads.values())
    return grads


def block_runs(model) -> tuple[list[int], object]:
    """Counts the runs of the first block's attention, which a recompute repeats."""
    runs: list[int] = []
    handle = decoder_layers(model)[0].self_attn.register_forward_hook(lambda *args: runs.append(1))
    return runs, handle


def assert_same(got, expected):
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)


def composed(rotary: bool, encoder: bool, hooks_inside: bool) -> ComposedLM:
    anchor = tiny_llama(0)
    if hooks_inside:
        for layer in decoder_layers(anchor):
            layer.__class__ = HooksInsideLayer
    return ComposedLM(anchor, tiny_llama(1), every=1, zero_init=False, rotary=rotary, encoder=encoder)


@pytest.mark.parametrize("hooks_inside", [False, True], ids=["hooks-outside", "hooks-inside"])
@pytest.mark.parametrize("rotary, encoder", [(False, False), (True, False), (False, True)])
def test_calm_gradients_are_the_same_with_checkpointing(rotary, encoder, hooks_inside):
    model = composed(rotary, encoder, hooks_inside)
    expected = gradients(model)
    runs, handle = block_runs(model.anchor)
    model.gradient_checkpointing_enable()
    assert checkpointing_on(model)
    got = gradients(model)
    handle.remove()
    assert len(runs) == 2  # the block ran again in the backward pass: checkpointing is on
    assert_same(got, expected)
    assert not model._enabled  # the composition's hooks are off again after the step
    assert model.anchor.training is False


def test_calm_without_the_hook_state_restored_fails_or_gets_other_gradients():
    """The control: where the recompute runs the block's hooks, checkpointing turned on in the
    anchor alone recomputes the blocks without the bridges' updates (torch's check of the
    recompute then stops the backward pass; without that check the gradients would differ)."""
    model = composed(False, False, hooks_inside=True)
    expected = gradients(model)
    model.anchor.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    try:
        got = gradients(model)
    except torch.utils.checkpoint.CheckpointError:
        return  # torch noticed the recompute differs
    assert any(not torch.equal(got[n], expected[n]) for n in expected)


@pytest.mark.parametrize("hooks_inside", [False, True], ids=["hooks-outside", "hooks-inside"])
def test_memory_gradients_are_the_same_with_checkpointing(hooks_inside):
    base = tiny_llama(0)
    if hooks_inside:
        for layer in decoder_layers(base):
            layer.__class__ = HooksInsideLayer
    model = attach_memory(base)
    expected = gradients(model)
    runs, handle = block_runs(base)
    model.gradient_checkpointing_enable()
    got = gradients(model)
    handle.remove()
    assert checkpointing_on(model) and len(runs) == 2
    assert_same(got, expected)


def test_lora_gradients_are_the_same_with_checkpointing():
    model = attach_lora(tiny_llama(0), r=4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # B starts at zero, which would leave A without gradients
                p.normal_(std=0.05, generator=torch.Generator().manual_seed(len(name)))
    expected = gradients(model)
    runs, handle = block_runs(model)
    enable_gradient_checkpointing(model)
    got = gradients(model)
    handle.remove()
    assert checkpointing_on(model) and len(runs) == 2
    assert_same(got, expected)


def test_checkpointing_that_cannot_come_on_is_a_one_line_error():
    with pytest.raises(KilibError, match="set gradient_checkpointing=False") as error:
        enable_gradient_checkpointing(Unsupported(tiny_llama(0)))
    assert "\n" not in str(error.value) and "Unsupported" in str(error.value)
    refusing = tiny_llama(0)
    refusing.supports_gradient_checkpointing = False
    with pytest.raises(KilibError, match="does not support gradient checkpointing.*gradient_checkpointing=False"):
        enable_gradient_checkpointing(refusing)
    with pytest.raises(KilibError, match="use_reentrant"):
        attach_memory(tiny_llama(0)).gradient_checkpointing_enable({"use_reentrant": True})
