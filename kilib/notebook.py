"""What every study notebook does first: the profile, the preset, the inputs and the results folder.

    config, inputs, run = start("03_calm_composition", PROFILE, presets.PRESETS,
                                presets.notebook_overrides(...), study.study_inputs)

The preset names the models and data it uses (the generated world and zoo, or the Hub), so
``study_inputs`` takes the preset alone and nothing after this call looks at the profile's name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from kilib.config import select_preset
from kilib.results import Run
from kilib.runtime import KilibError, resolve_profile, set_threads
from kilib.standin import switch

Config = TypeVar("Config")
Inputs = TypeVar("Inputs")


def start(
    notebook: str,
    profile: str,
    presets: Mapping[str, Config],
    overrides: Mapping[str, Any],
    study_inputs: Callable[[Config], Inputs],
) -> tuple[Config, Inputs, Run]:
    """Resolve ``profile`` (``auto`` included), apply the notebook's ``overrides`` to its preset,
    use every usable core, build the study's inputs and open ``results/<profile>/<notebook>/``.

    The ``standin`` profile turns stand-ins on (:mod:`kilib.standin.switch`) before anything loads,
    and says so first, so that no number it makes can pass for a paper number.

    Returns ``(config, inputs, run)``; the run's seed is the preset's first (``config.seeds``)."""
    profile = resolve_profile(profile)
    config = select_preset(presets, profile, overrides)
    if profile == "paper" and switch.scale():
        raise KilibError(
            f"{switch.VARIABLE} is set, so the paper profile would run on stand-ins: unset it, or run PROFILE=standin"
        )
    if profile == "standin":
        scale = switch.activate()
        print(
            f"STAND-IN RUN ({scale} scale): the paper profile's code on random-weight stand-ins of its models and "
            "synthetic copies of its data. No number below is a paper number."
        )
    set_threads()
    inputs = study_inputs(config)
    run = Run(notebook, profile, config=config, seed=config.seeds[0])
    return config, inputs, run
