"""Does m_A hold the keys' values where the bridges read them? A linear probe from m_A's block
outputs at each key's last token to the key's value (kilib's diagnosis, not in the paper)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch

from kilib.calm.model import layer_plan
from kilib.calm.presets import CalmConfig, quantization_of
from kilib.calm.study import CalmInputs, prepared
from kilib.calm.tasks import task_prompt
from kilib.lm.models import block_hidden, decoder_layers, load_causal_lm, load_config, padding_side
from kilib.lm.training import render_prompt

PROBE_COLUMNS = ("m_A", "block", "training_keys", "held_out_keys", "held_out_occurrences", "chance")


def key_states(model, tokenizer, rows: Sequence[Mapping], blocks: Sequence[int], batch_size: int = 64):
    """The output of each of ``blocks`` (0-indexed, what a bridge reads) at each key's last token,
    in the KV arithmetic prompts of ``rows``: ``([tensor [occurrences, D] per block], [key per occurrence])``."""
    layers = decoder_layers(model)
    captured: dict[int, Any] = {}
    handles = [
        layers[b].register_forward_hook(lambda m, a, out, b=b: captured.__setitem__(b, block_hidden(out).detach()))
        for b in blocks
    ]
    features: list[list] = [[] for _ in blocks]
    keys: list[str] = []
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            texts = [render_prompt(tokenizer, task_prompt("kv", r["expression"])) for r in chunk]
            with padding_side(tokenizer, "right"):  # each prompt's tokens at the same positions as alone
                batch = tokenizer(texts, return_tensors="pt", padding=True, return_offsets_mapping=True)
            offsets = batch.pop("offset_mapping").tolist()
            with torch.no_grad():
                model(**batch.to(next(model.parameters()).device))
            for i, (r, text) in enumerate(zip(chunk, texts)):
                where = text.rindex(r["expression"])
                real = batch["attention_mask"][i].tolist()
                for j, term in enumerate(r["expression"].split()):
                    if j % 2 == 0:
                        last = max(
                            t for t, (a, b) in enumerate(offsets[i]) if real[t] and a < where + len(term) and b > where
                        )
                        for f, block in zip(features, blocks):
                            f.append(captured[block][i, last].float().cpu())
                        keys.append(term)
                    where += len(term) + 1
    finally:
        for h in handles:
            h.remove()
    return [torch.stack(f) for f in features], keys


def linear_probe(fit_x, fit_y, test_x, test_y, l2: float = 1e-3, steps: int = 300) -> dict[str, float]:
    """Softmax regression (L-BFGS, features standardised on the fitting set) from ``fit_x`` to the
    labels ``fit_y``; accuracy on both sets. Test items whose label never occurs in fitting are
    left out of the test accuracy (no linear read-out can name a class it never saw)."""
    mean, std = fit_x.mean(0), fit_x.std(0) + 1e-6
    fx, tx = (fit_x - mean) / std, (test_x - mean) / std
    classes = int(max(fit_y.max(), test_y.max())) + 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        probe = torch.nn.Linear(fx.shape[1], classes)
    opt = torch.optim.LBFGS(probe.parameters(), max_iter=steps)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(probe(fx), fit_y) + l2 * probe.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    seen = torch.isin(test_y, fit_y)
    with torch.no_grad():
        return {
            "fit": (probe(fx).argmax(-1) == fit_y).float().mean().item(),
            "test": (probe(tx[seen]).argmax(-1) == test_y[seen]).float().mean().item() if seen.any() else float("nan"),
            "test_items": int(seen.sum()),
        }


def composed_blocks(augment_model, anchor: str, every: int) -> list[int]:
    """The m_A blocks (0-indexed) that :func:`kilib.calm.model.layer_plan` composes into the anchor at ``anchor``."""
    return [a for a, _ in layer_plan(len(decoder_layers(augment_model)), load_config(anchor).num_hidden_layers, every)]


def value_probe(inputs: CalmInputs, config: CalmConfig, augment: str = "trained") -> list[dict]:
    """Does m_A hold the keys' values where the bridges read them? Per composed m_A block, a
    linear probe from its state at each key's last token to the key's value, fitted on the KV
    training rows (training keys) and scored on the evaluation rows (held-out keys): for the
    trained m_A, how much a bridge could read of keys it never trained on; for the vanilla one,
    the chance level of the same probe. Only held-out keys whose value some training key shares
    can be scored (``held_out_keys`` is None where none does); where no held-out key shares
    one, as with unique values, there are no rows (columns: :data:`PROBE_COLUMNS`)."""
    table = {**inputs.keys["train"], **inputs.keys["eval"]}
    if not set(inputs.keys["train"].values()) & set(inputs.keys["eval"].values()):
        return []  # unique values (the paper's table): nothing to score, and the fit over 1,000 classes is costly
    model, tokenizer = load_causal_lm(
        prepared(inputs, config, "augment" if augment == "trained" else augment),
        quantization=quantization_of(config, augment),
    )
    blocks = composed_blocks(model, inputs.anchor, config.every)
    (fit_x, fit_keys), (test_x, test_keys) = (
        key_states(model, tokenizer, inputs.rows["kv"][s], blocks) for s in ("train", "eval")
    )
    fit_y, test_y = (torch.tensor([table[k] for k in keys]) for keys in (fit_keys, test_keys))
    out = []
    for b, fx, tx in zip(blocks, fit_x, test_x):
        probe = linear_probe(fx, fit_y, tx, test_y)
        out.append(
            {
                "m_A": augment,
                "block": b,
                "training_keys": 100 * probe["fit"],
                "held_out_keys": 100 * probe["test"] if probe["test_items"] else None,
                "held_out_occurrences": probe["test_items"],
                "chance": 100 / len(set(table.values())),
            }
        )
    return out


def probe_table(inputs: CalmInputs, config: CalmConfig) -> pd.DataFrame:
    """:func:`value_probe` of the trained m_A, then of the vanilla one (its chance level)."""
    rows = value_probe(inputs, config, "trained") + value_probe(inputs, config, "vanilla")
    return pd.DataFrame(rows, columns=list(PROBE_COLUMNS))
