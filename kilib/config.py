"""Presets: one frozen dataclass per study, one instance per profile.

Mirrors peft's ``method_comparison`` TrainConfig and nanoGPT's configurator: the tiny,
smoke and paper values of a study live in one place, and an override that names an unknown
key, or gives a value of the wrong type, is an error rather than a silent no-op.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from kilib.runtime import KilibError

T = TypeVar("T")


def select_preset(presets: Mapping[str, T], profile: str, overrides: Mapping[str, Any] | None = None) -> T:
    """Return the preset for ``profile`` with ``overrides`` applied and type-checked.

    ``presets`` maps each of :data:`kilib.runtime.PROFILES` to a frozen dataclass instance.
    """
    if profile not in presets:
        raise KilibError(f"no preset for profile {profile!r}: choose one of {', '.join(sorted(presets))}")
    return apply_overrides(presets[profile], overrides or {})


def apply_overrides(preset: T, overrides: Mapping[str, Any]) -> T:
    """``dataclasses.replace`` that rejects unknown keys and values of the wrong type."""
    fields = {f.name: f for f in dataclasses.fields(preset)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise KilibError(
            f"unknown override key(s) {', '.join(unknown)} for {type(preset).__name__}: "
            f"valid keys are {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(type(preset))
    checked = {}
    for key, value in overrides.items():
        checked[key] = _coerce(key, value, hints[key])
    return dataclasses.replace(preset, **checked)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against a simple type hint; ints widen to floats and lists to tuples."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(hint):
            try:
                return _coerce(key, value, option)
            except KilibError as e:
                errors.append(e)
        raise errors[-1]
    if hint is type(None):
        if value is None:
            return None
    elif hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif hint in (str, bool) and isinstance(value, hint):
        return value
    elif origin is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(hint)
        item = args[0] if args else Any
        return tuple(v if item is Any else _coerce(key, v, item) for v in value)
    elif hint is Any:
        return value
    raise KilibError(f"override {key}={value!r} has the wrong type: expected {_type_name(hint)}")


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
