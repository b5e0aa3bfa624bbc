"""Type tests the library's argument checks share: Python's and numpy's numbers, never a bool."""

from __future__ import annotations

from typing import Any

import numpy as np


def is_whole(value: Any) -> bool:
    """True for an int or a numpy integer; False for a bool, a float or anything else."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """True for an int, a float or a numpy number; False for a bool or anything else."""
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
