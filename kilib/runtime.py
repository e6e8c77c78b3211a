"""Runtime: profiles, the one error type, seeds, devices and project paths.

Nothing here runs at import time: a notebook calls :func:`set_seed` and
:func:`resolve_profile` itself (seeds are explicit, never an import side effect). torch and
NumPy are imported inside the functions that use them: ``kilib.cli`` imports this module at
start and must stay fast.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

PROFILES = ("paper", "standin", "tiny", "smoke")
"""The profiles. ``auto`` resolves to paper or tiny. ``standin`` is the paper profile's code with its
counts cut, on random-weight stand-ins of the paper's models and synthetic copies of its data
(:mod:`kilib.standin`): real shapes on a GPU, scaled-down ones on a CPU. Notebook 00 (the tiny
world) has no paper or standin profile."""


class KilibError(RuntimeError):
    """A user-facing error: one line that says what is wrong and names the fix.

    The notebook runner prints it without a traceback and exits non-zero.
    """


def resolve_profile(name: str) -> str:
    """Map a profile name (``auto`` included) to one of :data:`PROFILES`.

    ``auto`` is ``paper`` where a CUDA GPU is present and ``tiny`` elsewhere.
    """
    name = str(name).strip().lower()
    if name == "auto":
        return "paper" if cuda_available() else "tiny"
    if name not in PROFILES:
        raise KilibError(
            f"unknown profile {name!r}: choose one of auto, {', '.join(PROFILES)} (e.g. make reproduce PROFILE=tiny)"
        )
    if name == "paper":
        require_cuda("the paper profile")
    return name


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def synchronize() -> None:
    """Wait for the GPU's queued work (a timer's start and end), where there is a GPU."""
    if cuda_available():
        import torch

        torch.cuda.synchronize()


def require_cuda(what: str) -> None:
    """Fail with a clear message where ``what`` needs a CUDA GPU and none is present."""
    if not cuda_available():
        raise KilibError(
            f"{what} needs a CUDA GPU and none was found: run PROFILE=tiny on this machine "
            "(CPU, minutes), or run on a machine with an NVIDIA GPU"
        )


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA). Call it from the notebook."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def repo_root() -> Path:
    """The project checkout (the folder holding ``kilib/``)."""
    return Path(__file__).resolve().parent.parent


def results_root() -> Path:
    """Where results go: ``$KILIB_RESULTS_DIR`` or ``<repo>/results``."""
    return Path(os.environ.get("KILIB_RESULTS_DIR") or repo_root() / "results")


def cache_root() -> Path:
    """Where expensive, hash-keyed artefacts go: ``$KILIB_CACHE_DIR`` or ``<repo>/.cache``."""
    return Path(os.environ.get("KILIB_CACHE_DIR") or repo_root() / ".cache")


def hub_offline() -> bool:
    """Whether the Hugging Face Hub must not be contacted (``HF_HUB_OFFLINE``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def usable_cores() -> int:
    """The cores this process may run on (CPU affinity and container limits), not the host's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def set_threads(n: int | None = None) -> int:
    """Use ``n`` (default: every usable core) CPU threads for torch; returns the count set."""
    import torch  # runtime stays light (module docstring)

    n = n or usable_cores()
    torch.set_num_threads(n)
    return n
