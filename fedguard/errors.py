"""The exception the CLI turns into a one-line message and exit code 2, and the one a SIGTERM raises.

Messages are written in the command line's terms (``--batch-size 8 is larger
than --data``). A public function wrapped in :func:`keyword_names` names,
when called from Python, each flag that is one of its keyword arguments as
that argument instead (``batch_size 8 is larger than data``); the CLI marks
its own calls with :data:`COMMAND_LINE`. :func:`first_line` and
:func:`out_of_memory` read any other exception for such a line.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import inspect
import re
import signal
import threading
from typing import Callable, Mapping, TypeVar

F = TypeVar("F", bound=Callable)

#: Inside a ``fedguard`` command, the command as typed (``("fedguard", "audit", "--model", ...)``): messages keep
#: the flags the user typed, and reports record it. Empty outside one.
COMMAND_LINE: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("fedguard_command_line", default=())

#: True inside a call to a function wrapped in :func:`keyword_names`: the outermost one names the arguments.
_RENAMING: contextvars.ContextVar[bool] = contextvars.ContextVar("fedguard_renaming", default=False)

_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*")


_LINE_BREAK = re.compile(r"\s*[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]\s*")


class InputError(Exception):
    """Bad input from the user: the message names the problem and the fix, on one line."""

    def __init__(self, message: str):
        super().__init__(one_line(message))


def one_line(message: str) -> str:
    """``message`` on one line: a line break, and the spaces around it, read as one space; other runs of spaces are
    kept, as they may be a file's name ("my  model.pt" had been named "my model.pt", a file that does not exist)."""
    return _LINE_BREAK.sub(" ", message).strip()


def first_of(names) -> str:
    """The first of ``names`` quoted, and how many more there are: a message's way to name a long list."""
    return repr(names[0]) + (f" (and {len(names) - 1} more)" if len(names) > 1 else "")


def kind_of(value: object) -> str:
    """``value``'s type with its article, for a message naming what was passed: ``a list``, ``an int``."""
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def did_you_mean(name: object, choices) -> str:
    """`` (did you mean 'lenet'?)`` when ``name`` is a near miss of one of ``choices`` (a typo, another case), else
    ``""``: for the messages that list the valid names."""
    import difflib

    if not isinstance(name, str) or not name.strip():
        return ""
    lowered = {str(c).lower(): str(c) for c in choices}
    close = difflib.get_close_matches(name.strip().lower(), list(lowered), n=1, cutoff=0.75)
    return f" (did you mean {lowered[close[0]]!r}?)" if close else ""


def keyword_names(fn: F | None = None, *, aliases: Mapping[str, str] | None = None) -> F | Callable[[F], F]:
    """Decorate a public function so that, called from Python, its :class:`InputError` names keyword arguments.

    A flag ``--local-lr`` in the message becomes ``local_lr`` where ``fn``
    takes that argument; ``aliases`` maps flags whose argument is spelt
    otherwise (``{"--detector": "detectors"}``). Other flags, and every message
    inside a ``fedguard`` command, stay as they are; so do those of a wrapped
    function called by another (``audit`` reading its ``data`` through
    ``load_data(spec)``): the outermost call names its own arguments. The
    exception itself is re-raised, its type and traceback kept. A returned
    report's ``notes`` and ``skipped`` reasons ("raise --time-budget") are
    renamed the same way.
    """

    def decorate(func: F) -> F:
        names = {f"--{p.replace('_', '-')}": p for p in inspect.signature(func).parameters}
        names.update(aliases or {})

        def rename(match: re.Match) -> str:
            return names.get(match.group(0), match.group(0))

        @functools.wraps(func)
        def call(*args, **kwargs):
            if COMMAND_LINE.get() or _RENAMING.get():
                return func(*args, **kwargs)
            token = _RENAMING.set(True)
            try:
                return _renamed_report(func(*args, **kwargs), lambda text: _FLAG.sub(rename, text))
            except InputError as exc:
                if exc.args and isinstance(exc.args[0], str):
                    exc.args = (_FLAG.sub(rename, exc.args[0]), *exc.args[1:])
                raise
            finally:
                _RENAMING.reset(token)

        return call  # type: ignore[return-value]

    return decorate(fn) if fn is not None else decorate


def _renamed_report(result, rename: Callable[[str], str]):
    """``result`` with the flags in its ``notes`` and ``skipped`` reasons renamed (a frozen dataclass report); any
    other result as it is."""
    if not dataclasses.is_dataclass(result) or isinstance(result, type):
        return result
    changes = {}
    if isinstance(notes := getattr(result, "notes", None), tuple):
        changes["notes"] = tuple(rename(n) if isinstance(n, str) else n for n in notes)
    if isinstance(skipped := getattr(result, "skipped", None), Mapping):
        changes["skipped"] = {k: rename(v) if isinstance(v, str) else v for k, v in skipped.items()}
    return dataclasses.replace(result, **changes) if changes else result


@contextlib.contextmanager
def interrupts_held():
    """Hold Ctrl-C back (in the main thread, where the system allows) while torch and fedguard's modules load: a
    KeyboardInterrupt inside torch's start-up could abort the process. A Ctrl-C pressed meanwhile arrives as the block
    ends, as a KeyboardInterrupt the command ends on (exit 130)."""
    hold = hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread()
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if hold else None
    try:
        yield
    finally:
        if hold:  # the mask as it was: a caller that had blocked SIGINT keeps it blocked
            signal.pthread_sigmask(signal.SIG_SETMASK, before)
    signal.getsignal(signal.SIGINT)  # a call, so that Python raises a held Ctrl-C here


class Terminated(BaseException):
    """Raised by the SIGTERM handler of the console script: a BaseException that is not a SystemExit, so that the
    guards around a model's own code (which catch its ``sys.exit()``) let it through, and every cleanup runs."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (at most 200 characters), for one-line errors; how much a failed
    allocation asked for."""
    wanted = re.search(r"tried to allocate (\d+) bytes", str(exc))
    if wanted:
        return f"{type(exc).__name__}: it asks for {int(wanted.group(1)) / 2**30:,.1f} GiB of memory"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation that failed (CPU or GPU), not some other runtime error."""
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "can't allocate memory" in text or "out of memory" in text
