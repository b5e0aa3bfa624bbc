"""Objects whose pickles run code when loaded (``touch target``): what the loader must refuse, never run."""

from __future__ import annotations

import builtins
import os
import shlex
import subprocess


class SystemPayload:
    """Runs ``touch target`` through ``os.system``."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.target)}",))


class PopenPayload(SystemPayload):
    """Through ``subprocess.Popen``."""

    def __reduce__(self):
        return (subprocess.Popen, (["touch", self.target],))


class ExecPayload(SystemPayload):
    """Through the builtin ``exec``."""

    def __reduce__(self):
        return (builtins.exec, (f"open({self.target!r}, 'w').close()",))


def short_unicode(text: str) -> bytes:
    """``text`` as pickle's SHORT_BINUNICODE opcode."""
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw
