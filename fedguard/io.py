"""Files in and out safely: .npz read without pickle; outputs written atomically, owner-only, never over an input."""

from __future__ import annotations

import math
import os
import re
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator

import numpy as np

from fedguard.errors import InputError


#: How each report fedguard writes begins, format by format: inspect's and audit's text verdict lines, the
#: disaggregation summary, the JSON reports, SARIF, and the HTML pages (their generator tag).
_REPORT_STARTS = re.compile(
    r"(CLEAN|SUSPICIOUS|MALICIOUS)  .*(  |\n  )\(sha256 [0-9a-f]{12}…, "  # on the next line beside a long path
    r"|(PASS|WARN|BLOCK)  leakage (none|low|medium|high|not measured)"
    r"|fedguard disaggregate: \d+ rounds x d=\d+, "
    r'|\{\n  "schema_version": "[0-9.]+",\n  "tool": \{\n    "name": "fedguard",'
    r'|\{\n  "\$schema": "https://docs\.oasis-open\.org/sarif/[^"]*",\n  "version": "2\.1\.0",\n  "runs": \[\n    \{\n      "tool": \{\n        "driver": \{\n          "name": "fedguard",'
    r'|<!DOCTYPE html>\s*<html lang="en">\s*<head>\s*<meta charset="utf-8">\s*(<meta name="viewport"[^>]*>\s*)?(<meta http-equiv="Content-Security-Policy"[^>]*>\s*)?<meta name="generator" content="fedguard '
)


def read_head(path: str | os.PathLike, size: int) -> bytes:
    """The first ``size`` bytes of ``path``; empty when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return handle.read(size)
    except OSError:
        return b""


def is_fedguard_report(path: str | os.PathLike) -> bool:
    """True when ``path`` starts the way a report fedguard wrote does, in any format (or is empty: nothing to lose)."""
    raw = read_head(path, 4096)
    if not raw:
        try:
            return os.path.getsize(path) == 0  # not a file it cannot read
        except OSError:
            return False
    return b"\0" not in raw and bool(_REPORT_STARTS.match(raw.decode("utf-8", "ignore")))


def check_name_length(path: Path, option: str, fix: str = "choose a shorter name") -> None:
    """InputError when ``path``'s file name is longer than its folder's file system takes (it had read as a folder that
    takes no new files, a link that loops, or a path too long)."""
    try:
        longest = os.pathconf(path.parent, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no folder yet (said later), or no such query (Windows): the
        return  # write says what goes wrong
    # bytes on Linux; macOS's file systems count UTF-16 units (a name of 100 CJK characters is 300 bytes, and fits)
    size = len(path.name.encode("utf-16-le")) // 2 if sys.platform == "darwin" else len(os.fsencode(path.name))
    if size > longest:
        shown = path.name if len(path.name) <= 60 else f"{path.name[:24]}...{path.name[-24:]}"
        unit = "characters" if sys.platform == "darwin" else "bytes"
        raise InputError(f"{option} {shown}: a file name of {size} {unit}, over the {longest} this file system takes; {fix}")


def check_output_path(
    output: str | os.PathLike,
    inputs: Iterable[str | os.PathLike | None] = (),
    option: str = "--output",
    *,
    force: bool = False,
    replaceable: Callable[[Path], bool] | None = is_fedguard_report,
    example: str = "report.json",
) -> Path:
    """Validate an output path before any work is done.

    Raises :class:`InputError` when the folder is missing or takes no new
    files, the file is write-protected, the path is ``-``, a directory or
    another file that is not a regular one (a
    device such as ``/dev/stdout``, a pipe), it names one of the ``inputs``
    (which would be overwritten), or it lies inside an input folder (a data
    set it would add a file to). ``option`` names the command-line option in
    the message; ``example`` is the file name a directory's message suggests.
    A symbolic link is checked, and later written, as its target.
    An existing file is replaced only when ``replaceable`` says fedguard wrote
    it (by default: one of its reports) or with ``force``; the user's other
    files are never lost to an output.
    """
    path = Path(output)
    if str(output) == "-":
        raise InputError(f"{option} - is not a file name; name a file (without {option}, reports print on stdout)")
    check_name_length(path, option)
    try:
        resolved = path.resolve()
    except (RuntimeError, OSError):  # a symbolic link that loops
        raise InputError(f"{option} {path} is a symbolic link that loops; remove it or choose another {option}") from None
    if path.is_dir():
        raise InputError(f"{option} {path} is a directory; name a file inside it, e.g. {path / example}")
    if path.exists() and not path.is_file():
        raise InputError(f"{option} {path} is not a regular file; name a file (without {option}, reports print on stdout)")
    parent = resolved.parent if path.is_symlink() else path.parent  # a link's target's folder; else as typed
    if not parent.is_dir():
        above = next((p for p in (parent, *parent.parents) if p.exists() or p.is_symlink()), None)
        if above is not None and not above.is_dir():  # mkdir -p would fail on it: a file where a folder should be
            raise InputError(f"{option} {path}: {above} is a file, not a folder; choose another {option}")
        from fedguard.reports.base import shell_words  # a name with a line break quoted so that the command makes it

        raise InputError(f"{option} folder {parent} does not exist; create it first (mkdir -p {shell_words([str(parent)])})")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{option} folder {parent} is not writable; choose another {option} or fix the folder's permissions")
    try:  # what access() cannot tell: a file system that takes no files (/proc), a read-only mount, a full disk
        fd, probe = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"{option} folder {parent} takes no new files ({exc.strerror or type(exc).__name__}); "
                         f"choose another {option}") from None  # fmt: skip
    # read-only (no write bit: root may write anyway, so access() alone passes it) or immutable (chattr +i): kept
    if path.is_file() and (not os.access(path, os.W_OK) or not path.stat().st_mode & 0o222):
        raise InputError(f"{option} {path} is write-protected; choose another {option}, or make it writable to replace it")
    for item in inputs:
        if item is None:
            continue
        source = Path(item).resolve()
        if source == resolved or (source.is_file() and path.is_file() and os.path.samefile(source, resolved)):  # a hard link
            raise InputError(f"{option} {path} is also an input and would be overwritten; choose another {option}")
        if source.is_dir() and source in resolved.parents:
            raise InputError(f"{option} {path} lies inside the input folder {item}, which it would add a file to; choose another {option}")
    if path.is_file() and not force and (replaceable is None or not replaceable(path)):
        what = "exists" if replaceable is None else "exists and is not a file fedguard wrote"
        raise InputError(f"{option} {path} {what}; choose another name, or pass --force to replace it")
    return path


def _temp_prefix(path: Path) -> str:
    """The name of a file being written to ``path`` starts with a dot and ``path``'s first 32 characters: the whole
    name, a random part and ``.tmp`` had run past the file system's limit for a name ``path`` itself kept within."""
    return f".{path.name[:32]}."


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file and a rename, mode 0600.

    A symbolic link is written through: its target gets the data, the link stays.
    """
    path = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise InputError(f"cannot write {path} ({exc.strerror or type(exc).__name__}); choose another output path") from None
        raise
    return path


def missing(label: str, path: str | os.PathLike, fix: str = "check the path") -> InputError:
    """The error for ``path`` (named ``label``) that leads to nothing: a symbolic link that loops or has lost its target
    said as such (it had read as a name that does not exist, or as an unknown built-in data set)."""
    if os.path.islink(path):
        return InputError(f"{label} is a symbolic link that leads to no file (a loop or a missing target); pass the "
                          "file itself")
    return InputError(f"{label} does not exist; {fix}")


def read_npz(path: str | os.PathLike, fix: str) -> dict[str, np.ndarray]:
    """All named arrays of an ``.npz`` archive, read without ever unpickling.

    Raises :class:`InputError` (one line, ending in ``fix``, the advice on how
    to save the file right) when the path is a directory, is not a zip
    archive, is corrupt or truncated, or holds object arrays; one that says to
    check the path when it does not exist.
    """
    path = Path(path)
    if not path.exists():  # a typo: how to save the file right would be the wrong advice
        raise missing(str(path), path)
    if path.is_dir():
        raise InputError(f"{path} is a directory, not an .npz archive; {fix}")
    if not path.is_file():  # a pipe would block the read below, a device stream without end
        raise InputError(f"{path} is not a regular file (a pipe, device or socket); give an .npz archive on disk")
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise InputError(f"cannot read {path} ({exc.strerror or type(exc).__name__}); check the file's permissions") from None
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):  # the second: an empty archive (np.savez of nothing)
        raise InputError(f"{path} is not an .npz (zip) archive; {fix}")
    try:
        _check_declared_sizes(path, fix)
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except ValueError as exc:
        if "max_header_size" in str(exc):  # numpy's limit on an array header, whose message also names allow_pickle
            raise InputError(f"{path} has an array header larger than numpy reads safely; {fix}") from None
        if "pickle" in str(exc).lower():
            raise InputError(f"{path} holds object arrays that would need pickle; {fix} from plain numeric arrays") from None
        raise InputError(f"{path} is a corrupt .npz archive ({str(exc)[:120]}); {fix}") from None
    except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise InputError(f"{path} is a corrupt or truncated .npz archive ({type(exc).__name__}); {fix}") from None


def physical_memory() -> int | None:
    """Bytes of memory this machine has (None where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _check_declared_sizes(path: Path, fix: str) -> None:
    """Refuse an ``.npy`` member whose header declares more bytes than the member holds, and an archive whose
    arrays together declare more than this machine's memory.

    numpy allocates what the header declares before it reads: a few bytes that
    claim a shape of 10¹¹ would ask for hundreds of GiB. A compressed member
    holds what it declares, but 14 MB of zeros can unpack to 14 GB: refused at
    once instead of after a minute of swapping and an allocation that fails.
    """
    total = 0
    for info, member, shape, dtype in npy_members(path):
        held = info.file_size - member.tell()
        declared = math.prod(shape) * dtype.itemsize
        if not dtype.hasobject and declared > held:
            raise InputError(
                f"{path}: {info.filename} declares shape {tuple(shape)} ({declared} bytes) but holds {max(held, 0)} bytes; "
                f"the file is corrupt or forged, {fix}"
            )
        total += declared
    refuse_beyond_memory(path, total, "unpacks to", "arrays")


#: The compressions ``torch.save`` and numpy write: stored and deflate. zipfile unpacks bzip2 and LZMA members
#: without a bound on each read, so a few KB of them fill the memory before a check can look at what they hold.
ARCHIVE_COMPRESSIONS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)


def refuse_unusual_compression(archive: zipfile.ZipFile, path: str | os.PathLike, fix: str) -> None:
    """InputError naming the first member of ``archive`` compressed other than :data:`ARCHIVE_COMPRESSIONS`."""
    for info in archive.infolist():
        if info.compress_type not in ARCHIVE_COMPRESSIONS:
            method = zipfile.compressor_names.get(info.compress_type, f"method {info.compress_type}")
            raise InputError(f"{path}: {info.filename} is compressed with {method}, which neither torch.save nor numpy "
                             f"writes; {fix}")  # fmt: skip


def npy_members(path: str | os.PathLike) -> Iterator[tuple[zipfile.ZipInfo, IO[bytes], tuple[int, ...], np.dtype]]:
    """Each ``.npy`` member of an ``.npz`` archive: its zip entry, the open member just past its header (the array's
    bytes, or for an object array its pickle, come next), and the shape and dtype the header declares.

    A header numpy cannot parse, or whose shape is not sizes (``(True, 8, 8)``, negative), is a ValueError:
    numpy's parser lets a tokenizer's error through for an unclosed bracket, and reads ``True`` as a size.
    """
    with zipfile.ZipFile(path) as archive:
        refuse_unusual_compression(archive, path, "save it with np.savez or np.savez_compressed")
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with archive.open(info) as member:
                try:
                    version = np.lib.format.read_magic(member)
                    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read_header(member)
                except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error):
                    raise
                except Exception as exc:  # tokenize.TokenError, SyntaxError and the like from the header's text
                    raise ValueError(f"{info.filename} has an array header numpy cannot parse ({type(exc).__name__})") from None
                if not all(type(size) is int and size >= 0 for size in shape):
                    raise ValueError(f"{info.filename} declares the shape {shape!r:.60}, which is not a tuple of sizes")
                yield info, member, shape, dtype


def refuse_beyond_memory(path: Path, total: int, verb: str, what: str) -> None:
    """InputError when ``path`` ``verb`` ``total`` bytes of ``what``, more than this machine's memory, before anything
    is allocated for them."""
    memory = physical_memory()
    if memory is not None and total > memory:
        raise InputError(f"{path} {verb} {total / 2**30:.1f} GiB of {what}, more than this machine's memory "
                         f"({memory / 2**30:.1f} GiB); check the file, or use a machine with more memory")  # fmt: skip
