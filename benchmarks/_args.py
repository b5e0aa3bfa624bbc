"""What the benchmark scripts' command lines share: argument types, the parser, one-line errors.

Torch is imported only when a device is parsed: the speed scripts set how OpenMP threads wait before torch loads.
"""

from __future__ import annotations

import argparse
import contextlib
import math


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default in its help, except where there is none (None) or it is a flag."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def new_parser(doc: str, quick: str) -> argparse.ArgumentParser:
    """A parser described by ``doc``'s first line; ``quick`` (the settings of a quick run) is its epilog."""
    return argparse.ArgumentParser(description=doc.splitlines()[0], epilog=quick, formatter_class=_Formatter)


def _checked(convert, ok, what: str):
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


positive_int = _checked(int, lambda v: v >= 1, "a whole number >= 1")
non_negative_int = _checked(int, lambda v: v >= 0, "a whole number >= 0")
positive_float = _checked(float, lambda v: 0 < v < math.inf, "a number > 0")
non_negative_float = _checked(float, lambda v: 0 <= v < math.inf, "a number >= 0")


def one_of(*valid: str):
    """A name out of ``valid``."""
    return _checked(str, lambda v: v in valid, f"one of {', '.join(valid)}")


def listed(item):
    """A comma-separated list of ``item`` (spaces around the commas allowed): ``"dlg, ig"``."""

    def parse(text: str) -> list:
        return [item(part.strip()) for part in text.split(",")]

    return parse


def torch_device(text: str):
    """A torch device this machine has: ``cpu``, ``cuda`` or ``cuda:N``."""
    import torch

    try:
        dev = torch.device(text)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: torch finds no CUDA device on this machine")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


@contextlib.contextmanager
def one_line_errors(parser: argparse.ArgumentParser):
    """fedguard's :class:`~fedguard.errors.InputError` as the parser's own error: one line, exit 2."""
    from fedguard.errors import InputError

    try:
        yield
    except InputError as exc:
        parser.error(str(exc))
