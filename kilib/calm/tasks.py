"""Table 1 of CALM, key-value arithmetic (docs/methods.md, "## 03 CALM composition"): the key-value
world and its keys, the tasks' prompts and scoring, and every task's rows.

m_A is trained on substitution, the anchor knows numeric arithmetic, and CALM is trained on KV
arithmetic over 20% of the keys and evaluated on the others.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Mapping
from typing import Any

from kilib.calm.presets import CalmConfig
from kilib.lm.training import render_prompt
from kilib.runtime import KilibError
from kilib.tiny.world import WORLD_SIZES, evaluate_arithmetic, generate_world

# Table 1's rows.
TASKS = ("substitution", "numeric", "kv")
# Beside them, where the anchor was trained on numeric arithmetic here: the anchor's own
# training expressions, which says how much of its arithmetic is a table it learnt.
SEEN = "numeric_seen"
# kilib's copying control (not in the paper): a composition trained to substitute over the
# training keys, asked to substitute over the held-out keys, which only m_A knows. It asks
# whether the composition can read m_A at all, apart from whether the anchor can compute.
CONTROL = "control"
# Two rows that say where a composition that misses KV arithmetic falls short (kilib's): the
# composition's own training rows (did it learn even the keys it trained on?), and the held-out
# KV expressions with the keys' values written in, asked as numeric arithmetic: for the anchor,
# the most a composition could reach if it read every value from m_A without error.
KV_SEEN = "kv_seen"
VALUES = "kv_values"
EXTRA_TASKS = (SEEN, CONTROL, KV_SEEN, VALUES)
# What a composition trained on KV arithmetic answers: Table 1 and the rows beside it.
COMPOSITION_TASKS = TASKS + (SEEN, KV_SEEN, VALUES)
TASK_NAMES = {
    "substitution": "KV substitution",
    "numeric": "numeric arithmetic",
    "kv": "KV arithmetic",
    SEEN: "numeric arithmetic (trained expressions)",
    CONTROL: "copying control (held-out keys)",
    KV_SEEN: "KV arithmetic (its training rows)",
    VALUES: "KV arithmetic, values written in (held-out keys)",
}
KEY_KINDS = ("vocabulary", "aligned", "random")


def task_prompt(task: str, expression: str) -> str:
    """``"Substitute: ab + cde ="`` for m_A's task, ``"10 + 22 ="`` (or over keys) otherwise:
    arithmetic is asked as the zoo's pretraining wrote it, in as few tokens as the anchor's
    training can spend."""
    return f"Substitute: {expression} =" if task == "substitution" else f"{expression} ="


def is_correct(prediction: str, target: str) -> bool:
    """Exact match after collapsing whitespace: a number, or a substituted expression."""
    return " ".join(str(prediction).split()) == " ".join(str(target).split())


def sft_rows(task: str, rows) -> list[dict]:
    """(prompt, answer) rows of ``task`` (the copying control is asked as substitution)."""
    return [
        {"prompt": task_prompt("substitution" if task == CONTROL else task, r["expression"]), "answer": r["target"]}
        for r in rows
    ]


def kv_world(
    config: CalmConfig, world_size: str = "tiny", seed: int = 0, keys: int | None = None, value_max: int | None = None
):
    """The world generator with this study's key-value fields (its other fields as
    ``world_size``'s): the same keys and expressions for every profile with the same settings."""
    lo, hi = config.kv_terms
    size = dataclasses.replace(
        WORLD_SIZES[world_size],
        n_kv_keys=keys or config.kv_keys,
        kv_value_max=value_max or config.kv_value_max,
        kv_min_terms=lo,
        kv_max_terms=hi,
        calm_train_fraction=config.train_fraction,
    )
    return generate_world(seed=seed, size=size)


def vocabulary_keys(
    tokenizer, n: int, seed: int = 0, lengths: tuple[int, int] = (2, 6), aligned: bool = False
) -> list[str]:
    """``n`` keys drawn (seeded) from the tokenizer's vocabulary: entries of 2-6 lowercase letters
    that stay one token wherever an expression puts them, first or later, in the KV arithmetic
    and the substitution prompt (checked on the rendered prompts, by the tokens' offsets). With
    ``aligned``, the key's token is the key alone and the expression has as many tokens as the
    same expression with the digit 7 for every key."""
    if not getattr(tokenizer, "is_fast", False):
        raise KilibError("vocabulary keys need a fast tokenizer (offsets): load the tokenizer with use_fast=True")
    lo, hi = lengths
    word = re.compile(f"[a-z]{{{lo},{hi}}}")
    candidates = sorted(
        {
            t
            for t in (tokenizer.decode([i]).strip() for i in sorted(tokenizer.get_vocab().values()))
            if word.fullmatch(t)
        }
    )

    def tokens(task: str, expression: str) -> tuple[str, list]:
        text = render_prompt(tokenizer, task_prompt(task, expression))
        return text, tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]

    digit = {task: len(tokens(task, "7 + 7")[1]) for task in ("kv", "substitution")}

    def one_token(key: str) -> bool:
        expression = f"{key} + {key}"
        for task in ("kv", "substitution"):
            text, offsets = tokens(task, expression)
            if aligned and len(offsets) != digit[task]:
                return False
            first = text.rindex(expression)
            for where in (first, first + len(key) + 3):
                covering = [(a, b) for a, b in offsets if a < where + len(key) and b > where]
                # one token: the key itself, or (not aligned) the key with the space before it
                if (
                    len(covering) != 1
                    or covering[0][1] != where + len(key)
                    or covering[0][0] < where - (0 if aligned else 1)
                ):
                    return False
        return True

    keys = [k for k in candidates if one_token(k)]
    if len(keys) < n:
        other = "'vocabulary' or 'random'" if aligned else "'random'"
        raise KilibError(
            f"the tokenizer has {len(keys)} {'aligned ' if aligned else ''}single-token keys of {lo}-{hi} "
            f"letters, fewer than kv_keys={n}: lower kv_keys or choose keys={other}"
        )
    return sorted(random.Random(f"calm-keys:{seed}").sample(keys, n))


def kv_table(config: CalmConfig, world_size: str = "tiny", tokenizer=None) -> tuple[Any, dict[str, int]]:
    """(the world that draws the keys and their expressions, key -> value). With at least as
    many values as keys, the world's own unique values; with more keys than values, the
    world's values 1..kv_keys folded onto 1..kv_value_max, so that each value has the same
    number of keys, and which keys share one is as random as the world's draw. With
    ``keys="vocabulary"`` or ``"aligned"`` (``tokenizer`` needed) the world's keys are renamed
    to single tokens of its vocabulary (:func:`vocabulary_keys`)."""
    if config.keys not in KEY_KINDS:
        raise KilibError(f"unknown keys {config.keys!r}: choose one of {', '.join(KEY_KINDS)}")
    world = kv_world(config, world_size, value_max=max(config.kv_keys, config.kv_value_max))
    if config.keys != "random":
        if tokenizer is None:
            raise KilibError(f"keys={config.keys!r} draws the keys from the models' vocabulary: pass their tokenizer")
        world = world.with_kv_keys(
            vocabulary_keys(tokenizer, config.kv_keys, seed=world.seed, aligned=config.keys == "aligned")
        )
    table = {**world.kv_keys("train"), **world.kv_keys("eval")}
    if config.kv_keys > config.kv_value_max:
        if config.kv_keys % config.kv_value_max:
            raise KilibError(
                f"{config.kv_keys} keys do not share {config.kv_value_max} values evenly: choose kv_keys "
                "a multiple of kv_value_max"
            )
        table = {k: (v - 1) % config.kv_value_max + 1 for k, v in table.items()}
    return world, dict(sorted(table.items()))


def substitute(expression: str, table: Mapping[str, int]) -> str:
    """``"ab + cd"`` -> ``"10 + 22"``: every key replaced by its value."""
    tokens = expression.split()
    return " ".join(str(table[t]) if i % 2 == 0 else t for i, t in enumerate(tokens))


def study_rows(config: CalmConfig, world_size: str = "tiny", tokenizer=None) -> tuple[dict, dict]:
    """Every task's rows ({"expression", "target"}) and the keys of each split (``tokenizer``: the
    models', which vocabulary keys are drawn from). Numeric arithmetic and substitution each draw
    their stage rows and evaluation rows as one set of distinct expressions, so the two never
    share one; KV arithmetic trains over the training keys and is evaluated over the others."""
    world, table = kv_table(config, world_size, tokenizer)
    # numeric arithmetic over 1..kv_value_max: the world of that many keys draws it
    numbers = world if config.kv_value_max >= config.kv_keys else kv_world(config, world_size, keys=config.kv_value_max)
    n_eval = config.eval_examples

    def rows_of(data, target) -> list[dict]:
        return [{"expression": r["prompt"], "target": target(r)} for r in data.to_list()]

    numeric = rows_of(numbers.numeric_arithmetic(config.anchor_stage.examples + n_eval, seed=0), lambda r: r["target"])
    substitution = rows_of(
        world.kv_substitution(config.augment_stage.examples + n_eval, seed=0), lambda r: substitute(r["prompt"], table)
    )

    def kv(n: int, split: str) -> list[dict]:
        return rows_of(
            world.kv_arithmetic(n, seed=0, split=split),
            lambda r: str(evaluate_arithmetic(substitute(r["prompt"], table))),
        )

    rows = {
        "numeric": {"stage": numeric[: config.anchor_stage.examples], "eval": numeric[config.anchor_stage.examples :]},
        "substitution": {
            "stage": substitution[: config.augment_stage.examples],
            "eval": substitution[config.augment_stage.examples :],
        },
        "kv": {"train": kv(config.train_examples, "train"), "eval": kv(n_eval, "eval")},
        SEEN: {"eval": numeric[: min(n_eval, config.anchor_stage.examples)]},
        CONTROL: _control_rows(world, table, config),
    }
    rows[KV_SEEN] = {"eval": rows["kv"]["train"][:n_eval]}
    rows[VALUES] = {
        "eval": [{"expression": substitute(r["expression"], table), "target": r["target"]} for r in rows["kv"]["eval"]]
    }
    keys = {split: {k: table[k] for k in world.kv_keys(split)} for split in ("train", "eval")}
    return rows, keys


def _control_rows(world, table: Mapping[str, int], config: CalmConfig) -> dict[str, list[dict]]:
    """Substitution over the training keys only (to train on) and over the held-out keys only
    (to ask), drawn apart from the stage's rows."""
    if config.control_examples == 0:
        return {"train": [], "eval": []}
    splits = {s: set(world.kv_keys(s)) for s in ("train", "eval")}
    wanted = {"train": config.control_examples, "eval": config.eval_examples}
    out: dict[str, list[dict]] = {"train": [], "eval": []}
    for r in world.kv_substitution(min(20 * sum(wanted.values()), _expression_count(config)), seed=1).to_list():
        for split, keys in splits.items():
            if len(out[split]) < wanted[split] and set(r["prompt"].split()[::2]) <= keys:
                out[split].append({"expression": r["prompt"], "target": substitute(r["prompt"], table)})
    short = [s for s in out if len(out[s]) < wanted[s]]
    if short:
        raise KilibError(
            f"too few substitution expressions over one split's keys for the copying control "
            f"({', '.join(short)}): lower control_examples or eval_examples"
        )
    return out


def _expression_count(config: CalmConfig) -> int:
    lo, hi = config.kv_terms
    return sum(config.kv_keys**t * 3 ** (t - 1) for t in range(lo, hi + 1))
