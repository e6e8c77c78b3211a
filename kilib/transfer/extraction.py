"""The extraction job's memory bounds (docs/methods.md, "## 02 Parametric knowledge transfer",
memory): the teacher's full sensitivities are kept for one group of student blocks at a time, and
the student is read for its shapes only.

* :func:`student_skeleton`: the student built on the meta device from its config, which names
  and shapes its parameters without loading a weight.
* :func:`matrix_groups`: the student's matrices in groups of ``group_blocks`` blocks.
* :func:`cut_factors`: per group, the sensitivity of the teacher matrices the group is cut from
  (:func:`kilib.transfer.method.sensitivity`), each way of cutting them and their rank-r factors
  (:func:`kilib.transfer.method.extract`, :func:`kilib.transfer.method.lora_factors`), before
  the next group's sensitivities are allocated. The factors equal those of one pass over every
  matrix, exactly.
* :class:`LiveBytes`: the bytes of running sums alive at once, the bound :func:`cut_factors` keeps.

For the paper's 13B teacher, the matrices of all 32 student blocks would hold 42 GB of float32
running sums; a group of 4 blocks holds 5.1 GB (plus 0.7 GB in the groups with the embeddings or
the output head), for one pass over the seed samples per group.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from kilib.lm.models import load_config, logical_shape
from kilib.runtime import KilibError
from kilib.transfer.method import extract, lora_factors, sensitivity, teacher_name


def student_skeleton(path: str):
    """The student model built from its config on the meta device: its parameters' names and
    logical shapes, with no weight read or allocated (a 7B student in 4-bit would take 4 GB of
    GPU memory for nothing but its shapes)."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(load_config(path))


def matrix_groups(student, group_blocks: int, prefix: str = "model.layers.") -> list[list[str]]:
    """The student's 2-D parameters in its parameter order, cut into runs of ``group_blocks``
    blocks; a matrix outside the blocks (embeddings, output head) joins the run it stands in.
    Concatenated, the groups are the student's matrices in :func:`kilib.transfer.method.extract`'s
    order, so that a random window drawn group by group is the one drawn in one call."""
    if group_blocks < 1:
        raise KilibError(f"sensitivity_group_blocks must be >= 1, got {group_blocks}")
    groups: list[list[str]] = []
    last = None  # the run of the last block matrix seen
    for name, p in student.named_parameters():
        if len(logical_shape(p)) != 2:
            continue
        run = int(name[len(prefix) :].split(".", 1)[0]) // group_blocks if name.startswith(prefix) else None
        if not groups or (run is not None and last is not None and run != last):
            groups.append([])
        last = run if run is not None else last
        groups[-1].append(name)
    return groups


class LiveBytes:
    """A meter for :func:`kilib.transfer.method.sensitivity`'s ``on_totals``: the bytes of the
    running sums handed to it that are still alive (``now``) and the most alive at once (``peak``).
    A tensor counts until it is freed, by whatever still held it."""

    def __init__(self):
        self.now = 0
        self.peak = 0

    def __call__(self, totals: Mapping[str, Any]) -> None:
        for t in totals.values():
            size = t.numel() * t.element_size()
            self.now += size
            weakref.finalize(t, self._freed, size)
        self.peak = max(self.peak, self.now)

    def _freed(self, size: int) -> None:
        self.now -= size


def cut_factors(
    teacher,
    student,
    samples: Sequence[Mapping[str, Any]],
    selected: Sequence[int],
    methods: Iterable[str],
    rank: int,
    group_blocks: int,
    on_totals: Callable | None = None,
    on_scores: Callable | None = None,
    prefix: str = "model.layers.",
    checkpointing: bool = False,
) -> dict[str, dict[str, tuple[Any, Any]]]:
    """``{how: {student name: (B, A)}}``: every student matrix cut from the teacher by each way in
    ``methods`` (random windows seeded with 0), kept as its rank-``rank`` factors on the CPU.

    The teacher's sensitivities are computed :func:`matrix_groups` group by group, one pass over
    ``samples`` each, and dropped once the group's matrices are cut, so that no more than one
    group's running sums exist at a time (``on_totals`` sees each group's as it is allocated).
    ``on_scores(scores)`` sees each group's sensitivities before they are dropped; ``checkpointing``
    is :func:`kilib.transfer.method.sensitivity`'s."""
    methods = list(methods)
    factors = lora_factors(student, rank)
    draws = {how: torch.Generator().manual_seed(0) for how in methods}
    out: dict[str, dict[str, tuple[Any, Any]]] = {how: {} for how in methods}
    measure = functools.partial(sensitivity, teacher, samples, on_totals=on_totals, checkpointing=checkpointing)
    for names in matrix_groups(student, group_blocks, prefix):
        _cut_group(measure, teacher, student, selected, names, factors, draws, out, on_scores, prefix)
    return out


def _cut_group(measure, teacher, student, selected, names, factors, draws, out, on_scores, prefix) -> None:
    """One group of :func:`cut_factors`, its sensitivities from ``measure(names=...)``; they are
    freed when this returns."""
    scores = measure(names=sorted({teacher_name(n, selected, prefix) for n in names}))
    if on_scores is not None:
        on_scores(scores)
    for how, found in out.items():
        found.update(
            extract(
                teacher,
                student,
                scores,
                selected,
                how=how,
                prefix=prefix,
                names=names,
                generator=draws[how],
                each=lambda name, cut: tuple(t.cpu() for t in factors(name, cut)),
            )
        )
