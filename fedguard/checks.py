"""Type tests the library's argument checks share: Python's and numpy's numbers, never a bool."""

from __future__ import annotations

from typing import Any

import numpy as np


#: The largest seed fedguard takes; numpy's and torch's generators both take every seed from 0 to it.
MAX_SEED = 2**32 - 1


def is_whole(value: Any) -> bool:
    """True for an int or a numpy integer; False for a bool, a float or anything else."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """True for an int, a float or a numpy number; False for a bool or anything else."""
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


def is_seed(value: Any) -> bool:
    """True for a whole number from 0 to :data:`MAX_SEED`."""
    return is_whole(value) and 0 <= value <= MAX_SEED
