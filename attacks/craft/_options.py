"""Crafter options: each crafter's own keyword arguments and their defaults, read off its signature, and the checks
that refuse a value it cannot take before anything is built."""

from __future__ import annotations

import collections.abc
import inspect
import math
import types
import typing
from typing import Any, Literal, Mapping

from fedguard import checks
from fedguard.attacks.craft._base import CRAFTERS, Crafter
from fedguard.checks import is_number, is_whole
from fedguard.errors import InputError, did_you_mean

#: Arguments every crafter takes; the rest of its signature are its options.
_COMMON = frozenset({"model", "input_shape", "num_classes", "data", "seed"})

#: Bounds of numeric crafter options, by name (a name means the same quantity in every crafter): counts at
#: least 1, noise and a Fourier mode at least 0, scales and spreads above 0, a quantile and trap weights'
#: positive-to-negative ratio inside (0, 1) (at 1 or more the rows are balanced or positive, an honest layer's: the
#: trap is gone).
_AT_LEAST_ONE = frozenset({"num_bins", "width", "factor", "batch_size", "num_clients", "max_examples", "num_neurons", "kernel_size"})
_AT_LEAST_ZERO = frozenset({"noise", "mode"})
_ABOVE_ZERO = frozenset({"gain", "sigma", "std", "scale", "conv_scale", "fc_scale"})
_INSIDE_UNIT = frozenset({"quantile", "scale_factor"})


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` is of the annotated type ``hint`` (unions, ``Literal``, ``Sequence[int]`` and scalars)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is Literal:
        return value in args
    if origin in (collections.abc.Sequence, list, tuple):
        return isinstance(value, (list, tuple)) and all(_fits(v, args[0]) for v in value) if args else isinstance(value, (list, tuple))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return is_whole(value)
    if hint is float:
        return is_number(value)
    if hint is str:
        return isinstance(value, str)
    return True


def _type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if origin in (collections.abc.Sequence, list, tuple):  # "a list of integers" (it had read "a list of an integer")
        return "a list of " + {int: "integers", float: "numbers", str: "strings", bool: "True or False values"}.get(
            args[0] if args else None, "values")
    return {type(None): "None", bool: "True or False", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


#: The crafters that read the server's public ``data`` (to calibrate bins, quantiles, a feature); the others craft
#: the same model with or without it.
READS_DATA = frozenset({"feature_fishing", "imprint", "loki"})


#: Options a crafter reads only beside another option's value: (crafter, option) -> (whether the options given,
#: with the defaults, leave it unread; what it needs). Given where it is unread it would change nothing (the crafted
#: file was byte for byte the default's), and a red team would believe it tested a variant it did not.
_READ_ONLY_WITH = {
    ("imprint", "mode"): (lambda o: o["linfunc"] != "fourier", "applies to linfunc=fourier only (the DCT mode); add "
                                                               "--set linfunc=fourier"),
    ("trap_weights", "num_neurons"): (lambda o: o["mode"] != "block", "sizes the block mode=block inserts; add --set "
                                                                      "mode=block"),
    ("trap_weights", "pass_through_convs"): (lambda o: o["mode"] == "block", "applies to mode=first_fc only (the block "
                                                                             "goes in front of the convolutions); drop "
                                                                             "--set mode=block"),
    ("feature_fishing", "quantile"): (lambda o: o["feature_val"] is not None, "places the boundary only when "
                                                                               "feature_val is not given; drop --set "
                                                                               "feature_val"),
    ("oversized_fc", "factor"): (lambda o: o["width"] is not None, "sizes the layer only when width is not given; drop "
                                                                   "--set width"),
    ("oversized_fc", "batch_size"): (lambda o: o["width"] is not None, "sizes the layer only when width is not given; "
                                                                       "drop --set width"),
}


#: Options a crafter reads only off the server's public data: (crafter, option) -> (whether the value given leaves
#: it unread without data; what it does with the data). Without ``--data`` the crafted file is the default's.
_READ_ONLY_ON_DATA = {
    ("feature_fishing", "quantile"): (lambda v: True, "is taken of the feature's values on the public data"),
    ("feature_fishing", "max_examples"): (lambda v: True, "caps the public examples read"),
    ("imprint", "fit"): (lambda v: v == "quantile", "places the bins at the public data's quantiles (without data, "
                                                   "at a normal fit's, Laplace for linfunc=fourier)"),
}


def crafter_options(name: str) -> dict[str, Any]:
    """The options of crafter ``name`` (beyond the arguments every crafter takes) with their defaults."""
    params = inspect.signature(get_crafter(name)).parameters
    return {k: p.default for k, p in params.items() if k not in _COMMON}


def get_crafter(name: Any) -> Crafter:
    if not isinstance(name, str) or name not in CRAFTERS:
        raise InputError(f"unknown crafter {name!r}{did_you_mean(name, CRAFTERS.names())}; valid: {', '.join(CRAFTERS.names())}")
    return CRAFTERS.get(name)


def check_options(name: str, options: Mapping[str, Any], with_data: bool | None = None) -> None:
    """Raise :class:`~fedguard.errors.InputError` naming the first of ``options`` that crafter ``name`` cannot
    take: not one of its options, wrong type, not one of its choices, not finite, or out of bounds (``_AT_LEAST_ONE``
    ...), or one the other options given (or, with ``with_data`` False, the lack of public data) leave unread."""
    hints = typing.get_type_hints(get_crafter(name))
    valid = crafter_options(name)
    for key, value in options.items():
        if key not in valid:
            raise InputError(f"{name} has no option {key!r}; its options: {', '.join(valid) or 'none'}")
        hint = hints.get(key, Any)
        if not _fits(value, hint):
            raise InputError(f"{name} option {key}={value!r} is not {_type_name(hint)}; its default: "
                             f"{key}={valid[key]!r}")
        if not is_number(value):
            continue
        if isinstance(value, int) and abs(value) > 2**53:  # past float's exact integers (1e400 overflows math.isfinite)
            raise InputError(f"{name} option {key}={checks.shown(value)} is too large; use a value below 2**53")
        bounds = [
            (math.isfinite(value), "a finite number"),
            (key not in _AT_LEAST_ONE or value >= 1, "at least 1"),
            (key not in _AT_LEAST_ZERO or value >= 0, "at least 0"),
            (key not in _ABOVE_ZERO or value > 0, "above 0"),
            (key not in _INSIDE_UNIT or 0 < value < 1, "strictly between 0 and 1"),
        ]
        for ok, need in bounds:
            if not ok:
                raise InputError(f"{name} option {key}={value!r} must be {need}; its default: {key}={valid[key]!r}")
    chosen = {**valid, **options}
    for key in options:
        unread, why = _READ_ONLY_WITH.get((name, key), (lambda o: False, ""))
        if unread(chosen):
            raise InputError(f"{name} option {key} {why}, or drop --set {key}={checks.shown(options[key])}")
        unread, what = _READ_ONLY_ON_DATA.get((name, key), (lambda v: False, ""))
        if with_data is False and unread(options[key]):
            given = f"{key}={checks.shown(options[key])}"
            raise InputError(f"{name} option {given} {what}; add --data (the server's public inputs), or drop --set {given}")
