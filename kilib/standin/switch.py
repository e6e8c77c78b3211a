"""The stand-in switch: while it is on, every Hub model and dataset the paper profile names resolves to
its local stand-in (random weights of the real architecture; synthetic data in the real format).

The switch is the environment variable ``KILIB_STANDINS`` (``small`` or ``real``), so that worker
processes a study spawns inherit it; ``make reproduce PROFILE=standin`` turns it on through
:func:`kilib.notebook.start` (``small`` on a CPU, ``real`` on a GPU). kilib's loaders ask
:func:`model_folder` and :func:`dataset_path` before going to the Hub; everything else, cache keys
included, then sees a local folder whose name is the hash of what built it.
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

from kilib.runtime import KilibError, cache_root, cuda_available

VARIABLE = "KILIB_STANDINS"
SCALES = ("small", "real")
DATA_VERSION = "1"


def scale() -> str:
    """``small`` or ``real`` while stand-ins are on, else ``""``."""
    value = os.environ.get(VARIABLE, "").strip().lower()
    if value and value not in SCALES:
        raise KilibError(f"{VARIABLE}={value!r} is not a stand-in scale: set it to small or real, or unset it")
    return value


def default_scale() -> str:
    """The scale a stand-in run takes here: the real shapes on a GPU, scaled-down ones on a CPU."""
    return "real" if cuda_available() else "small"


def activate(which: str | None = None) -> str:
    """Turn stand-ins on for this process and the ones it starts; returns the scale."""
    which = which or default_scale()
    if which not in SCALES:
        raise KilibError(f"unknown stand-in scale {which!r}: use small or real")
    os.environ[VARIABLE] = which
    return which


@contextlib.contextmanager
def standins(which: str | None = None):
    """Stand-ins on inside the block, as they were after it."""
    saved = os.environ.get(VARIABLE)
    activate(which)
    try:
        yield scale()
    finally:
        if saved is None:
            os.environ.pop(VARIABLE, None)
        else:
            os.environ[VARIABLE] = saved


def model_folder(name: str) -> Path | None:
    """The stand-in folder for the Hub id ``name`` while stand-ins are on (built on first use);
    ``None`` when they are off. An id kilib keeps no architecture for is a one-line error, since a
    stand-in run must never reach the Hub."""
    which = scale()
    if not which or Path(str(name)).expanduser().exists():
        return None
    from kilib.standin import models  # builds with transformers: imported when stand-ins are on

    if str(name) not in models.KNOWN:
        raise KilibError(
            f"{name} has no stand-in (stand-ins are on: {VARIABLE}={which}): use one of "
            f"{', '.join(models.KNOWN)}, or a local model folder"
        )
    folder = models.standin_folder(str(name), which)
    _RESOLVED[str(name)] = folder.name
    return folder


_RESOLVED: dict[str, str] = {}  # Hub id -> stand-in folder name, as resolved in this process


@functools.cache
def _data(which: str, root: str) -> dict[str, Path]:
    from kilib.standin.data import write_paper_data  # generates text: imported when stand-ins are on

    return write_paper_data(Path(root) / "standin-data" / f"{which}-v{DATA_VERSION}", scale=which)


# The Hub datasets the paper profile reads, and the stand-in folder each resolves to.
DATASETS = {
    "openai/gsm8k": "gsm8k",
    "cais/mmlu": "mmlu",
    "Muennighoff/natural-instructions": "sni",
    "copenlu/fever_gold_evidence": "fever_claims",
    "fever-pages": "fever_pages",
    "wikipedia-2023": "articles",
}


def dataset_path(name: str) -> str:
    """The local stand-in copy of the dataset ``name`` (a key of :data:`DATASETS`) while stand-ins
    are on; ``name`` itself when they are off."""
    which = scale()
    if not which or name not in DATASETS:
        return name
    paths = _data(which, str(cache_root()))
    key = DATASETS[name]
    if key not in paths:
        raise KilibError(f"the stand-in data has no {key} for {name}: clear {cache_root() / 'standin-data'}")
    return str(paths[key])


def describe() -> dict:
    """What run.json records of a stand-in run: the scale and the stand-in each Hub id resolved to."""
    which = scale()
    if not which:
        return {}
    return {
        "scale": which,
        "weights": "random: stand-ins of the real architectures, not the papers' models",
        "data": "synthetic, format-true copies of the paper datasets, not the real data",
        "models": dict(sorted(_RESOLVED.items())),
    }
