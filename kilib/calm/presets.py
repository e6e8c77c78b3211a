"""The CALM study's settings (notebook 03): :class:`CalmConfig` and its paper, tiny and smoke
presets in :data:`PRESETS` (docs/methods.md, "## 03 CALM composition"; the tiny profile's
departures from the paper in docs/deviations.md, the runs that settled them in docs/history.md)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from kilib.lm.training import TrainConfig
from kilib.runtime import KilibError

# The paper's ablations this notebook runs: CALM over the m_A that never learned the keys
# ("vanilla m_A") and over an m_A with random weights ("random m_A").
AUGMENTS = ("trained", "vanilla", "random")
# Each composition run: (which m_A, rotary positions in the cross-attention or not). The paper's
# cross-attention has no positions; "rotary" is kilib's addition (see the notebook).
RUNS = (("trained", False), ("vanilla", False), ("random", False))


@dataclass(frozen=True)
class Stage:
    """Training a model on its task before composition (full fine-tuning in full precision):
    the anchor on numeric arithmetic, m_A on substitution. 0 examples keeps the model as it is."""

    examples: int = 0
    train: TrainConfig = TrainConfig(
        epochs=1,
        batch_size=32,
        lr=1e-4,
        scheduler="cosine",
        warmup_ratio=0.05,
        save_every_epoch=False,
        progress=False,
        logging_steps=20,
    )


@dataclass(frozen=True)
class CalmConfig:
    """One profile of the CALM study (docs/methods.md, "## 03 CALM composition")."""

    anchor: str = "llama-m"  # zoo name (tiny, smoke) or Hub id / folder (paper)
    augment: str = "llama-s"
    # What the models and the world come from: "tiny" or "smoke" for the generated world and its
    # zoo, "" for Hub models. Enters no cache key: the models' folders (model_ref) do.
    zoo: str = "tiny"
    every: int = 4  # m_A blocks composed: every 4th (n = N_A / 4)
    zero_init: bool = True  # the composed model starts as the anchor
    # The key-value table and its expressions (the world generator's KV fields). With more keys
    # than values, values repeat: each value belongs to kv_keys / kv_value_max keys.
    kv_keys: int = 40
    kv_value_max: int = 60
    kv_terms: tuple[int, int] = (3, 6)
    # "vocabulary": each key is one token of the models' vocabulary, 2-6 letters, as the paper's
    # (PaLM2-XXS vocabulary entries); "aligned": such a token that also takes a digit's place
    # (where the tokenizer splits the space before a digit into a token of its own, it does so
    # before the key), so a KV expression's tokens line up with a one-digit numeric expression's;
    # "random": the world generator's random letter strings, one to six tokens each.
    keys: str = "vocabulary"
    train_fraction: float = 0.2  # CALM trains on KV arithmetic over 20% of the keys
    anchor_stage: Stage = Stage()
    augment_stage: Stage = Stage()
    train_examples: int = 2000  # KV arithmetic over the training keys
    control_examples: int = 0  # the copying control's training rows (0: no control)
    eval_examples: int = 300  # per task
    runs: tuple[tuple[str, bool], ...] = RUNS
    # the paper's "m_A as encoder" ablation: CALM (the paper's cross-attention) over the trained
    # m_A reading the prompt only, every anchor position seeing all of it
    encoder_ablation: bool = True
    lora_baseline: bool = True  # the paper's LoRA baseline: the anchor with as many LoRA parameters as the bridges
    quantization: str = "4bit"  # the anchor, and m_A unless augment_quantization says otherwise
    # m_A's loading ("4bit", "8bit", "none": the compute dtype; "" as quantization). The paper
    # profile's m_A is small and fine-tuned at a low rate, and NF4 adds rounding noise larger
    # than small updates (tools/nf4_rounding.py).
    augment_quantization: str = ""
    seeds: tuple[int, ...] = (0,)
    max_new_tokens: int = 24
    eval_batch_size: int | str = 64  # "auto": the largest batch the GPU's free memory holds
    # On a CPU the runs train side by side (kilib.jobs.side_by_side): ``workers`` processes at
    # once (0: one per core), each run on ``threads`` torch threads wherever it runs, so that
    # its numbers do not depend on the machine's core count. A GPU runs them one by one.
    workers: int = 0
    threads: int = 1
    train: TrainConfig = TrainConfig(
        epochs=3,
        batch_size=32,
        lr=1e-3,
        scheduler="cosine",
        warmup_ratio=0.05,
        save_every_epoch=False,
        progress=False,
        logging_steps=10,
    )


def quantization_of(config: CalmConfig, which: str) -> str:
    """How ``which`` ("anchor", or an m_A: "augment", "trained", "vanilla", "random") is loaded."""
    return config.quantization if which == "anchor" else config.augment_quantization or config.quantization


def augment_precision(config: CalmConfig) -> dict[str, str]:
    """The key field for an m_A loaded unlike the anchor; none where both load alike (the tiny keys)."""
    q = quantization_of(config, "augment")
    return {"augment_quantization": q} if q != config.quantization else {}


def notebook_overrides(anchor: str = "", augment: str = "", seeds: int = 0, workers: int = 0) -> dict[str, Any]:
    """Notebook 03's parameters (ANCHOR, AUGMENT, SEEDS, WORKERS) as preset overrides: "" and 0
    keep the profile's value."""
    if seeds < 0:
        raise KilibError(f"SEEDS must be >= 0 (0 keeps the profile's seeds), got {seeds}")
    if workers < 0:
        raise KilibError(f"WORKERS={workers}: use 0 for one run per CPU core, or n > 0 for n side by side")
    out = {"anchor": anchor, "augment": augment, "seeds": tuple(range(seeds)), "workers": workers}
    return {k: v for k, v in out.items() if v}


# The tiny table, and why (development runs: tools/calm_dev.py, results/tiny/calm_dev.jsonl; the
# whole account in docs/history.md, "## 03 CALM: how the tiny recipe was found").
# * Values 1..16 and expressions of two terms (+, -, x): 768 numeric expressions. PaLM2-XS knows
#   arithmetic; no zoo model does, and llama-m learns it slowly: on the world's own table (40 keys,
#   values 1..60, 2-3 terms), 2 epochs over 5,000 expressions left it at 2% held out and 3% of its
#   own training expressions; on values 1..16, 30 epochs over 618 expressions at 3e-3 reached 16%
#   held out and 45% of them (64 s).
# * The anchor's stage at 1e-3, not 3e-3 (round 2, chosen after the first tiny results, on the
#   anchor's own training expressions and the copying control, never on held-out keys): at 3e-3
#   the stage swelled the anchor's residual stream about eightfold (mean block-output norm about
#   330-430 against the zoo model's 40-50), the composition could not steer it, and the copying
#   control copied nothing. At 1e-3 the norm stays near the zoo model's, the anchor answers all of
#   its own training expressions, and the copying control copies held-out keys.
# * 64 keys sharing those 16 values (4 keys each), half of them training the composition: in a
#   copying control (CALM trained to substitute, asked on held-out keys), 13 training keys (the
#   paper's 20% of 64) left the composition memorising them (1-3% on held-out keys, with or
#   without positions) where 32 gave 67% with rotary positions. The paper's values are unique;
#   64 unique values would be beyond the tiny anchor.
# * Both cross-attentions: the paper's, without positions, learnt nothing in that control with
#   32 training keys (0%) where rotary positions on its queries and keys gave 67%, so the
#   notebook runs both.
# These were settled on the copying control and the anchor's stage, before any composition was
# trained on KV arithmetic.
# * Keys (round 3, after the second tiny results, on a split of the training keys: fitted on 24,
#   scored on the other 8, never on held-out keys): the paper's keys are single vocabulary
#   tokens; the world's random strings are one to six tokens here. A linear probe
#   (kilib.calm.probe.linear_probe) reads a key's value from m_A's states at the key's last token
#   for 19-24% of unseen keys with random strings, 60-67% with single tokens and 88% with single
#   tokens in a digit's place ("aligned": the expression's tokens line up with a one-digit numeric
#   expression's, as the anchor learnt arithmetic). With the composition of rounds 1-2 (every
#   2nd m_A block, 10 epochs) no key kind fitted more than 11% of its own training rows;
#   composing every m_A block for 30 epochs fitted 51% with aligned keys (34% with other single
#   tokens) and answered 13% over the other 8 keys, where the anchor alone answered 6%. lr 3e-3
#   fitted less (17%); 128 keys, no better. After the tiny run of this preset, whose
#   compositions fitted their own rows but not the held-out keys, weight decay on the bridges
#   (1.0, 0.1) did not help on the split either (9% and 7% over the 8 keys).
_TINY_STAGE = TrainConfig(
    epochs=30,
    batch_size=32,
    lr=3e-3,
    scheduler="cosine",
    warmup_ratio=0.05,
    weight_decay=0.01,
    save_every_epoch=False,
    progress=False,
    logging_steps=20,
)

PRESETS: dict[str, CalmConfig] = {
    "tiny": CalmConfig(
        anchor="llama-m",
        augment="llama-s",
        zoo="tiny",
        every=1,  # m_A (llama-s) has 4 blocks: every one is composed
        kv_keys=64,
        kv_value_max=16,
        kv_terms=(2, 2),
        keys="aligned",
        train_fraction=0.5,
        anchor_stage=Stage(618, dataclasses.replace(_TINY_STAGE, lr=1e-3)),
        augment_stage=Stage(3000, dataclasses.replace(_TINY_STAGE, epochs=4)),
        runs=(("trained", False), ("trained", True), ("vanilla", True), ("random", True)),
        train_examples=600,
        control_examples=400,
        eval_examples=150,
        max_new_tokens=12,
        train=TrainConfig(
            epochs=30,
            batch_size=16,
            lr=1e-3,
            scheduler="cosine",
            warmup_ratio=0.05,
            save_every_epoch=False,
            progress=False,
            logging_steps=10,
        ),
    ),
    # The tiny recipe, small enough for the tests: every step of the notebook, in minutes.
    "smoke": CalmConfig(
        anchor="llama-m",
        augment="llama-s",
        zoo="smoke",
        every=1,
        kv_keys=20,
        kv_value_max=10,
        kv_terms=(2, 2),
        keys="aligned",
        train_fraction=0.5,
        anchor_stage=Stage(200, dataclasses.replace(_TINY_STAGE, epochs=2, lr=5e-3, logging_steps=2)),
        augment_stage=Stage(200, dataclasses.replace(_TINY_STAGE, epochs=2, lr=5e-3, logging_steps=2)),
        runs=(("trained", False), ("trained", True), ("vanilla", True)),
        train_examples=75,
        control_examples=40,
        eval_examples=40,
        max_new_tokens=8,
        train=TrainConfig(
            epochs=6,
            batch_size=16,
            lr=1e-2,
            scheduler="cosine",
            save_every_epoch=False,
            progress=False,
            logging_steps=3,
        ),
    ),
    # TinyLlama (22 blocks, the Llama-2 tokenizer) into Llama-2 7B in 4-bit; m_A is first
    # fine-tuned on substitution in full precision, and loaded so (bf16 on a GPU, 2.2 GB), that
    # NF4's rounding noise does not bury its stage's small steps. The anchor is used as it is, as
    # PaLM2-XS was.
    "paper": CalmConfig(
        anchor="meta-llama/Llama-2-7b-hf",
        augment="TinyLlama/TinyLlama_v1.1",
        zoo="",
        every=4,
        augment_quantization="none",
        kv_keys=200,
        kv_value_max=1000,
        kv_terms=(3, 6),
        train_fraction=0.2,
        augment_stage=Stage(
            20000,
            TrainConfig(
                epochs=1,
                batch_size=16,
                lr=2e-5,
                scheduler="cosine",
                warmup_ratio=0.03,
                save_every_epoch=False,
                progress=False,
                logging_steps=20,
            ),
        ),
        runs=RUNS + (("trained", True),),
        train_examples=5000,
        eval_examples=500,
        max_new_tokens=40,
        eval_batch_size="auto",
        train=TrainConfig(
            epochs=1,
            batch_size=8,
            lr=1e-4,
            scheduler="cosine",
            warmup_ratio=0.03,
            save_every_epoch=False,
            progress=False,
            logging_steps=20,
        ),
    ),
}

# The paper's code with its counts cut, for random-weight stand-ins of its models (make reproduce
# PROFILE=standin; kilib.standin): every stage, run and ablation of the paper profile, at a few
# examples each, so that the real shapes run on a GPU in minutes and the scaled-down ones on a CPU.
PRESETS["standin"] = dataclasses.replace(
    PRESETS["paper"],
    kv_keys=20,
    kv_value_max=20,
    augment_stage=Stage(24, dataclasses.replace(PRESETS["paper"].augment_stage.train, batch_size=8, logging_steps=1)),
    train_examples=16,
    eval_examples=6,
    max_new_tokens=8,
    train=dataclasses.replace(PRESETS["paper"].train, batch_size=8, logging_steps=1),
)
