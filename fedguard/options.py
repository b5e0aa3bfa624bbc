"""What the commands share: click types for seeds and finite number ranges, and the paths of the user's inputs."""

from __future__ import annotations

import math
import os
from pathlib import Path

import click

from fedguard.checks import MAX_SEED

#: Seeds numpy's and torch's generators both take.
SEED = click.IntRange(0, MAX_SEED)


class FiniteFloatRange(click.FloatRange):
    """:class:`click.FloatRange` that also refuses ``nan`` and ``inf`` (which compare false to every bound)."""

    name = "finite float range"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def input_paths(*files: str | os.PathLike | None, data: str | None = None, arch: str | None = None) -> list[Path]:
    """Every file or folder a command reads, which no output may overwrite or write into.

    ``files`` are input files as given (None skipped); ``data`` is a ``--data``
    spec (its file or folder when it names one) and ``arch`` an ``--arch``
    (the module file of a ``module:callable``; a bad ``--arch`` raises
    :class:`~fedguard.errors.InputError` here, before any work).
    """
    from fedguard.architectures import arch_source
    from fedguard.data import data_source

    paths = [Path(f) for f in files if f is not None]
    paths.append(data_source(data))
    if arch is not None:
        paths.append(arch_source(arch))
    return [p for p in paths if p is not None]
