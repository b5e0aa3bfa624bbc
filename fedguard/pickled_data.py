"""What torch's weights-only loader may build of the plain data beside a state_dict, each piece checked first.

Training scripts save numpy arrays and scalars (``best_acc = np.float64(...)``)
and the ``argparse.Namespace`` of a run beside the weights; torch's
``weights_only`` unpickler refuses them unless allowed
(:data:`fedguard.pickle_scan.DATA_GLOBALS` names them). Allowing numpy's own
callables would hand numpy whatever the pickle says: an ``ndarray.__setstate__``
of an object dtype with fewer elements than its shape crashes numpy (a segfault
in numpy 2.4), a dtype's ``__setstate__`` can give a float dtype object fields,
and ``numpy.ndarray(shape)`` allocates whatever shape the pickle names.

So each name is bound to a stand-in that rebuilds only numeric data and checks
it before numpy sees it: a dtype must be a plain number type (bool, integer,
float, complex; no fields, no objects) and is rebuilt from its type string; an
array's bytes must be exactly its shape times its item size; a scalar's exactly
one item. ``numpy.ndarray`` itself is only a name that the array rebuild takes,
and ``bytes`` (protocol 2's way to write an empty array's data) gives only ``b""``.
numpy's dtype classes are taken as ``type(numpy.dtype(code))``, which numpy
before 1.25 has without a ``numpy.dtypes`` module to name them.
"""

from __future__ import annotations

import importlib
import math
from pickle import UnpicklingError
from typing import Any

import numpy as np

from fedguard.pickle_scan import DATA_GLOBALS, NUMBER_DTYPES


def _numeric(dtype: Any) -> np.dtype:
    """``dtype`` as the plain number type it names, rebuilt from its type string (or UnpicklingError)."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biufc" or dtype.hasobject or dtype.fields is not None \
            or dtype.subdtype is not None:  # fmt: skip
        raise UnpicklingError(f"numpy data of dtype {dtype!s:.40} is not plain numbers")
    return np.dtype(dtype.str)


def _dtype(spec: Any, align: bool = False, copy: bool = True) -> np.dtype:
    """``numpy.dtype(spec, align, copy)`` for a number type only, always a copy: the pickle's ``BUILD`` then sets its
    byte order, and on numpy's shared descriptor (``copy`` false) it would set it for the whole process."""
    if not isinstance(spec, str):
        raise UnpicklingError("a pickled numpy dtype names its type as a string")
    dtype = np.dtype(spec, bool(align), True)
    _numeric(dtype)
    return dtype


def _scalar(dtype: Any, data: Any = None) -> np.generic:
    """``numpy.core.multiarray.scalar``: one number from its bytes."""
    dtype = _numeric(dtype)
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise UnpicklingError(f"a pickled numpy {dtype} scalar holds {type(data).__name__} instead of {dtype.itemsize} bytes")
    return np.frombuffer(data, dtype=dtype)[0]


def _empty_bytes(*args: Any) -> bytes:
    """``bytes()``, which protocol 2 writes for an empty array's data; ``bytes(n)`` would allocate n bytes."""
    if args:
        raise UnpicklingError("a pickle that calls bytes() with arguments allocates what it does not hold")
    return b""


class _NDArray:
    """Stands for ``numpy.ndarray`` in a pickle: the array rebuild takes it; creating one is refused."""

    def __new__(cls, *args: Any, **kwargs: Any):
        raise UnpicklingError("a pickle that calls numpy.ndarray allocates an array it does not hold")


class PickledArray(np.ndarray):
    """The array ``numpy.core.multiarray._reconstruct`` starts and the pickle's ``BUILD`` fills, state checked."""

    def __new__(cls, *args: Any, **kwargs: Any):
        raise UnpicklingError("a pickle that creates arrays directly allocates memory it does not hold")

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5):
            raise UnpicklingError("a pickled numpy array's state is not numpy's (version, shape, dtype, order, bytes)")
        version, shape, dtype, fortran, data = state
        dtype = _numeric(dtype)
        if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)):
            raise UnpicklingError(f"a pickled numpy array's shape {shape!r:.40} is not a tuple of sizes")
        if not isinstance(data, bytes) or len(data) != math.prod(shape) * dtype.itemsize:
            raise UnpicklingError(f"a pickled numpy array of shape {shape} and dtype {dtype} holds "
                                  f"{len(data) if isinstance(data, bytes) else type(data).__name__} bytes, not "
                                  f"{math.prod(shape) * dtype.itemsize}")  # fmt: skip
        super().__setstate__((version, shape, dtype, bool(fortran), data))


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> PickledArray:
    """``numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b"b")``, the empty array a pickle then fills."""
    if subtype is not _NDArray or shape != (0,):
        raise UnpicklingError("a pickled numpy array starts as numpy.ndarray of shape (0,)")
    return np.ndarray.__new__(PickledArray, (0,), np.uint8)


#: What each name a pickle may call stands for; of the other names in DATA_GLOBALS, numpy's dtype classes (whose
#: instances a dtype's BUILD fills) are taken by their type codes and argparse.Namespace is itself.
_STAND_INS = {"_reconstruct": _reconstruct, "scalar": _scalar, "ndarray": _NDArray, "dtype": _dtype,
              "bytes": _empty_bytes}


def safe_globals() -> list[tuple[Any, str]]:
    """:data:`~fedguard.pickle_scan.DATA_GLOBALS` as ``torch.serialization.safe_globals`` takes them, each name
    bound to its checked stand-in (numpy 1's ``numpy.core`` is numpy 2's ``numpy._core``), and
    :class:`PickledArray`, whose state the pickle's ``BUILD`` sets."""
    allowed: list[tuple[Any, str]] = [(PickledArray, f"{__name__}.PickledArray")]
    for module, name in sorted(DATA_GLOBALS):
        if name in _STAND_INS:
            allowed.append((_STAND_INS[name], f"{module}.{name}"))
            continue
        if module == "numpy.dtypes":
            value = type(np.dtype(NUMBER_DTYPES[name.removesuffix("DType")]))
        else:  # argparse.Namespace
            value = getattr(importlib.import_module(module), name)
        allowed.append((value, f"{module}.{name}"))
    return allowed
