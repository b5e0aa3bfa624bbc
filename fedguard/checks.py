"""The library's argument checks: Python's and numpy's numbers (never a bool), and the one-line errors that
name the argument and the values it takes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import math

import numpy as np

from fedguard.errors import InputError, kind_of


#: The largest seed fedguard takes; numpy's and torch's generators both take every seed from 0 to it.
MAX_SEED = 2**32 - 1


def utf8_path(text: str, what: str) -> str:
    """``text``, a path, unless its name is not UTF-8 (bytes Python keeps as lone surrogates), which no report
    can write and torch and safetensors cannot open."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown_name = text.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")
        raise InputError(f"the name of {what} {shown_name} is not UTF-8; rename it (or copy it to a UTF-8 name)") from None
    return text


def file_path(path: Any, what: str) -> Path:
    """``path`` (a str or an os.PathLike) as a :class:`~pathlib.Path`; InputError naming ``what`` otherwise."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise InputError(f"{what} is {kind_of(path) if not isinstance(path, str) else 'an empty name'}; pass a file path")
    return Path(path)


def is_whole(value: Any) -> bool:
    """True for an int or a numpy integer; False for a bool, a float or anything else."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_count(value: Any) -> bool:
    """True for a whole number of 1 or more given as anything with ``__index__`` (an int, a numpy integer, a 0-d
    integer tensor) but a bool."""
    return hasattr(value, "__index__") and not isinstance(value, bool) and int(value) >= 1


def is_number(value: Any) -> bool:
    """True for an int, a float or a numpy integer or float; False for a bool, a complex number or anything else."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def shown(value: Any) -> str:
    """``repr(value)`` for a message, short: a whole number of more than 15 digits in scientific notation, anything
    else cut at 40 characters."""
    if is_whole(value) and abs(value) >= 10**15:
        digits = len(str(abs(int(value))))
        return f"{'-' if value < 0 else ''}{str(abs(int(value)))[0]}e+{digits - 1} (a {digits}-digit number)"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def whole(value: Any, name: str, minimum: int = 1, maximum: int | None = None, *, error: type[Exception] = InputError) -> int:
    """``value`` as an int in ``[minimum, maximum]``; otherwise ``error`` naming the argument ``name``."""
    if not is_whole(value) or value < minimum or (maximum is not None and value > maximum):
        bound = f"from {minimum} to {maximum}" if maximum is not None else f"of at least {minimum}"
        raise error(f"bad {name} {shown(value)}; give a whole number {bound}")
    return int(value)


def flag(value: Any, name: str) -> bool:
    """``value`` when it is True or False; otherwise InputError naming ``name`` (a string such as "no" had read as
    True)."""
    if not isinstance(value, bool):
        raise InputError(f"{name} is {shown(value)}; pass True or False")
    return value


def seed(value: Any, name: str = "--seed") -> int:
    """``value`` as a seed (:func:`whole` from 0 to :data:`MAX_SEED`)."""
    return whole(value, name, 0, MAX_SEED)


def finite(value: Any, name: str, *, positive: bool, error: type[Exception] = InputError) -> float:
    """``value`` as a finite float above 0 (``positive``) or at least 0; otherwise ``error`` naming ``name``."""
    if not is_number(value) or not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise error(f"bad {name} {shown(value)}; give a finite number {'above 0' if positive else 'of at least 0'}")
    return float(value)


def class_labels(labels: Any, logits: Any) -> Any:
    """``labels`` (a tensor of class indices) when each names one of the classes of ``logits`` (cross-entropy's
    input, ``[N, C, ...]``: classes along dimension 1); otherwise an InputError (cross-entropy's own error,
    "Target 10 is out of bounds", would be read as the model's fault)."""
    if not hasattr(logits, "dim") or logits.dim() < 2:  # a tuple, one logit per example: cross-entropy says what is wrong
        return labels
    outputs = logits.shape[1]
    top = int(labels.max())
    if top >= outputs:
        raise InputError(f"labels reach {top} but the model has {outputs} outputs; pass labels from 0 to {outputs - 1}, "
                         "or the model they were made for")  # fmt: skip
    return labels
