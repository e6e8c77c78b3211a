"""CALM's key-value arithmetic on the generated world (docs/methods.md, "## 03 CALM
composition", docs/tiny-world.md): the key-value table's tasks, as methods of
:class:`kilib.tiny.world.World` through :class:`WorldKV`, and the evaluator of their expressions."""

from __future__ import annotations

import copy
import itertools
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

from kilib.runtime import KilibError
from kilib.tiny.world_series import _rng
from kilib.tiny.world_tasks import _check_n, _check_split, _dataset

if TYPE_CHECKING:
    import datasets


def evaluate_arithmetic(expression: str) -> int:
    """Value of a space-separated expression of integers joined by ``+``, ``-`` and ``x``.

    Standard precedence: ``x`` binds tighter than ``+`` and ``-``, which associate left to right
    (``10 + 22 x 24`` is 538), as CALM's key-value arithmetic (docs/methods.md §3) reads."""
    tokens = expression.split()
    if len(tokens) % 2 == 0 or not tokens:
        raise KilibError(f"malformed expression {expression!r}: expected 'number op number ...'")
    try:
        total, sign, product = 0, 1, int(tokens[0])
        for op, tok in zip(tokens[1::2], tokens[2::2]):
            value = int(tok)
            if op == "x":
                product *= value
            elif op in ("+", "-"):
                total += sign * product
                sign, product = (1 if op == "+" else -1), value
            else:
                raise ValueError(op)
    except ValueError:
        raise KilibError(f"malformed expression {expression!r}: use integers and the operators + - x") from None
    return total + sign * product


class WorldKV:
    """The key-value tasks, mixed into :class:`kilib.tiny.world.World`, whose ``seed``, ``size``,
    ``_kv_table`` (key -> value) and ``_kv_train`` (the train keys) they read."""

    def with_kv_keys(self, names: Sequence[str]):
        """A copy of this :class:`~kilib.tiny.world.World` with its KV keys renamed: the i-th key in
        sorted order becomes ``names[i]``, keeping its value and its split (CALM's keys are single
        tokens of a model's vocabulary, which the generator cannot know)."""
        old = sorted(self._kv_table)
        names = list(names)
        if len(names) != len(old) or len(set(names)) != len(names):
            raise KilibError(f"need {len(old)} distinct key names, got {len(names)} ({len(set(names))} distinct)")
        if any(not n or " " in n for n in names):
            raise KilibError("a key name must be one non-empty word without spaces")
        rename = dict(zip(old, names))
        world = copy.copy(self)
        world._kv_table = {rename[k]: v for k, v in self._kv_table.items()}
        world._kv_train = frozenset(rename[k] for k in self._kv_train)
        return world

    def kv_keys(self, split: str) -> dict[str, int]:
        """The keys of ``split`` and their values, sorted by key. ``train`` holds
        ``calm_train_fraction`` of the keys (CALM trains the composition on 20% of them)."""
        _check_split(split)
        want = split == "train"
        return {k: v for k, v in sorted(self._kv_table.items()) if (k in self._kv_train) == want}

    def _expressions(self, n: int, rng: random.Random, pool: Sequence[str], what: str) -> list[list[str]]:
        """n distinct expressions over ``pool`` (with repetition), term counts drawn uniformly
        among the counts that still have unused expressions."""
        lo, hi = self.size.kv_min_terms, self.size.kv_max_terms
        caps = {t: len(pool) ** t * 3 ** (t - 1) for t in range(lo, hi + 1)}
        _check_n(n, sum(caps.values()), what)
        ops = ("+", "-", "x")
        enumerated: dict[int, list[tuple[str, ...]]] = {}
        for t, cap in caps.items():
            if cap <= 5000:  # small spaces: enumerate and shuffle, so no rejection loop can stall
                space = [
                    tuple(x for pair in itertools.zip_longest(terms, opseq) for x in pair if x is not None)
                    for terms in itertools.product(pool, repeat=t)
                    for opseq in itertools.product(ops, repeat=t - 1)
                ]
                rng.shuffle(space)
                enumerated[t] = space
        used = {t: 0 for t in caps}
        seen: set[tuple[str, ...]] = set()
        out: list[list[str]] = []
        while len(out) < n:
            t = rng.choice([t for t in caps if used[t] < caps[t]])
            if t in enumerated:
                expr = enumerated[t][used[t]]
            else:
                expr = (rng.choice(pool),)
                for _ in range(t - 1):
                    expr += (rng.choice(ops), rng.choice(pool))
                if expr in seen:
                    continue
            seen.add(expr)
            used[t] += 1
            out.append(list(expr))
        return out

    def _substitute(self, tokens: list[str]) -> str:
        return " ".join(str(self._kv_table[t]) if i % 2 == 0 else t for i, t in enumerate(tokens))

    def kv_substitution(self, n: int, seed: int) -> datasets.Dataset:
        """CALM's augmenting-model task (docs/methods.md §3): ``"abq + tor x mi"`` -> ``"10 + 22 x 24"``,
        over all keys. Keys appear bare, without CALM's angle brackets: a bracketed key would
        spend a token on each bracket and teach nothing."""
        rng = _rng(self.seed, "kv_substitution", seed)
        exprs = self._expressions(n, rng, sorted(self._kv_table), "kv_substitution")
        return _dataset(
            {"prompt": [" ".join(e) for e in exprs], "target": [self._substitute(e) for e in exprs]},
            {"prompt": "string", "target": "string"},
        )

    def numeric_arithmetic(self, n: int, seed: int) -> datasets.Dataset:
        """CALM's anchor task: ``"10 + 22 x 24"`` -> ``"538"`` (x before + and -), numbers in
        1..kv_value_max."""
        rng = _rng(self.seed, "numeric_arithmetic", seed)
        pool = [str(v) for v in range(1, self.size.kv_value_max + 1)]
        exprs = self._expressions(n, rng, pool, "numeric_arithmetic")
        prompts = [" ".join(e) for e in exprs]
        return _dataset(
            {"prompt": prompts, "target": [str(evaluate_arithmetic(p)) for p in prompts]},
            {"prompt": "string", "target": "string"},
        )

    def kv_arithmetic(self, n: int, seed: int, split: str) -> datasets.Dataset:
        """CALM's composition task: ``"abq + tor x mi"`` -> the value (x before + and -), every
        key of an expression drawn from ``split`` (train: 20% of the keys; eval: the rest)."""
        _check_split(split)
        rng = _rng(self.seed, "kv_arithmetic", split, seed)
        exprs = self._expressions(n, rng, sorted(self.kv_keys(split)), f"kv_arithmetic({split})")
        return _dataset(
            {
                "prompt": [" ".join(e) for e in exprs],
                "target": [str(evaluate_arithmetic(self._substitute(e))) for e in exprs],
            },
            {"prompt": "string", "target": "string"},
        )
