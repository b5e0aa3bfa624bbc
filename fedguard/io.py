"""Files in and out safely: .npz read without pickle; outputs written atomically, owner-only, never over an input."""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Iterable

import numpy as np

from fedguard.errors import InputError


def check_output_path(output: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Validate an output path before any work is done.

    Raises :class:`InputError` when the folder is missing, the path is a
    directory, or it names one of the ``inputs`` (which would be overwritten).
    """
    path = Path(output)
    if path.is_dir():
        raise InputError(f"output {path} is a directory; name a file inside it, e.g. {path / 'report.json'}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"output folder {parent} does not exist; create it first (mkdir -p {parent})")
    resolved = path.resolve()
    for item in inputs:
        if item is not None and Path(item).resolve() == resolved:
            raise InputError(f"output {path} is also an input and would be overwritten; choose another --output")
    return path


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file and a rename, mode 0600."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_npz(path: str | os.PathLike, fix: str) -> dict[str, np.ndarray]:
    """All named arrays of an ``.npz`` archive, read without ever unpickling.

    Raises :class:`InputError` (one line, ending in ``fix``, the advice on how
    to save the file right) when the path is missing or a directory, is not a
    zip archive, is corrupt or truncated, or holds object arrays.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist; {fix}")
    if path.is_dir():
        raise InputError(f"{path} is a directory, not an .npz archive; {fix}")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"PK\x03\x04":
        raise InputError(f"{path} is not an .npz (zip) archive; {fix}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise InputError(f"{path} holds object arrays that would need pickle; {fix} from plain numeric arrays") from None
        raise InputError(f"{path} is a corrupt .npz archive ({str(exc)[:120]}); {fix}") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"{path} is a corrupt or truncated .npz archive ({type(exc).__name__}); {fix}") from None
