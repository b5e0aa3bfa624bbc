"""The ``fedguard`` console script and ``python -m fedguard``."""

import codecs
import errno
import os
import signal
import sys

#: How long, in spins, a waiting OpenMP thread of torch's (GNU OpenMP, in its Linux wheels) spins before it sleeps.
#: libgomp's default, 300,000, is made for a machine to itself: beside other busy processes (training on the same
#: CPU) the threads spin for the cores those need, and fedguard's many small operations crawl. On the 2-core
#: machine with two busy processes beside it (benchmarks/, docs/benchmarks.md): inspecting a ResNet-50-sized file
#: 9.5 s by default, 2.45 s at 1,000; in an audit's 10 s per attack, DLG 1 L-BFGS step and Inverting Gradients 8
#: iterations by default, 11 and 515 at 1,000 (with one thread, 9 and 460). On the idle machine the same within
#: the runs' spread (DLG 28-29 and 30-32 steps, Inverting Gradients 906-928 and 891-934 iterations). The thread count,
#: and so every number the attacks compute, stays as it was.
GOMP_SPIN_COUNT = "1000"


def yielding_openmp() -> None:
    """Set :data:`GOMP_SPIN_COUNT` for torch's OpenMP threads, before torch is imported, unless the environment
    already says how OpenMP threads wait. The speed benchmarks call it too, so that they time fedguard as the
    command runs (without it a busy machine had made analytic_speed's ratios 570x instead of 3x)."""
    if "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = GOMP_SPIN_COUNT


#: ASCII for the characters fedguard's output uses that a legacy encoding lacks; others, which come from file and
#: layer names, are written as their escapes (``\u6a21``): a look-alike or ``?`` had named another file in the
#: commands the output suggests (``fedguard inspect '?? u.pt'``).
ASCII_FALLBACK = {"─": "-", "│": "|", "≥": ">=", "≤": "<=", "−": "-", "–": "-", "—": "-", "…": "...", "·": "-",
                  "×": "x", "→": "->", "≈": "~", "±": "+/-", "∞": "inf", "‖": "||", "≠": "!=", "Σ": "sum", "∇": "grad"}


def _ascii_fallback(exc: UnicodeError) -> tuple[str, int]:
    """Error handler ``fedguard.ascii``: the characters ``exc`` could not encode as ASCII look-alikes."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    text = exc.object[exc.start : exc.end]
    plain = (ASCII_FALLBACK.get(c) or c.encode("ascii", "backslashreplace").decode() for c in text)
    return "".join(plain), exc.end


def _encodable_output() -> None:
    """Where stdout or stderr is not UTF-8 (Windows writes a redirected stdout in its ANSI code page, cp1252 in the
    West, with strict errors), the characters it lacks are written as ASCII look-alikes: the reports' rules (``─``)
    and ``≥`` had ended ``fedguard inspect m.pt > report.txt``, and a finished audit, with exit 3 and no report."""
    codecs.register_error("fedguard.ascii", _ascii_fallback)
    for stream in (sys.stdout, sys.stderr):
        encoding = codecs.lookup(getattr(stream, "encoding", None) or "utf-8").name
        if not encoding.startswith("utf") and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="fedguard.ascii")


def _terminated(signum, frame) -> None:
    """SIGTERM (``timeout``, systemd, docker stop) ends the command as an exception, so that what it was writing
    is removed as on Ctrl-C: the signal's default had left an 879 MB temporary file of a crafted model behind."""
    from fedguard.errors import Terminated

    raise Terminated(signum)


def run() -> None:
    """Load the command line and run it.

    Ctrl-C is held back while the command line loads, and while a command
    loads torch (:func:`fedguard.errors.interrupts_held`): a Ctrl-C pressed
    then exits 130 quietly once loading ends, like one pressed during the work.
    """
    yielding_openmp()
    _encodable_output()
    try:
        from fedguard.errors import interrupts_held

        with interrupts_held():
            from fedguard.cli import main
    except KeyboardInterrupt:
        sys.stderr.write("fedguard: interrupted\n")
        sys.exit(130)
    from fedguard.errors import Terminated

    signal.signal(signal.SIGTERM, _terminated)
    try:
        main()
    except Terminated as exc:
        sys.stderr.write("fedguard: terminated\n")
        sys.exit(128 + exc.signum)
    except OSError as exc:  # an output that failed outside the reports' own checks (--help or rules on a full disk)
        from fedguard.options import silence_stdout

        silence_stdout()
        from fedguard.reports.base import printable

        name = printable(str(exc.filename)) if exc.filename else ""
        at = f"{name}: " if name else ""
        if exc.errno == errno.ENAMETOOLONG:  # a path the system refuses to look up, input or output
            line = f"a path is too long for this file system ({name[:60]}...); give a shorter one"
        elif exc.errno in (errno.EACCES, errno.EPERM):  # a file read or written, an input as much as an output
            line = f"{at}permission denied; check its permissions (and its folder's) or choose another path"
        elif exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            line = f"{at}writing the output failed ({exc.strerror or exc}); free some space or write it elsewhere"
        else:
            line = f"{at}{exc.strerror or exc}; check the path, or write the output elsewhere"
        try:
            sys.stderr.write(f"fedguard: error: {line}\n")
            sys.stderr.flush()
        except OSError:
            pass
        sys.exit(2)
    finally:  # the command has said how it ended: a Ctrl-C during the exit would end the process by the signal
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # (exit 130, no word said, after a complete report)


if __name__ == "__main__":
    run()
