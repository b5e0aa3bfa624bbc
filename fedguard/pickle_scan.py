"""Static scan of pickle streams: which callables would loading import?

A pickle can name any importable callable (``GLOBAL os system``) and call it
while loading. fedguard never unpickles with code execution enabled, but it
still reads every pickle stream of a file opcode by opcode, without running
it, to *report* what the file would import: a model file that reaches for
``os.system`` is evidence of an attack on the client, whatever it holds.

The scan follows ``GLOBAL``/``INST`` arguments and, for a protocol-4
``STACK_GLOBAL``, the unpickler's stack, to the two strings it pops.
References: the pickle opcode catalogue in CPython's ``pickletools``; the same
approach as picklescan and fickling.
"""

from __future__ import annotations

import copy
import io
import pickletools
import tarfile
import zipfile
from dataclasses import dataclass
from typing import BinaryIO

from fedguard.errors import InputError
from fedguard.io import npy_members

#: Globals a state_dict saved by torch or numpy legitimately imports.
SAFE_GLOBALS = frozenset(
    {
        ("collections", "OrderedDict"),
        ("torch._utils", "_rebuild_tensor"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_tensor_v3"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch._utils", "_rebuild_parameter_with_state"),
        ("torch._tensor", "_rebuild_from_type_v2"),
        ("torch._utils", "_rebuild_sparse_tensor"),
        ("torch._utils", "_rebuild_qtensor"),
        ("torch._utils", "_rebuild_meta_tensor_no_storage"),
        ("torch.serialization", "_get_layout"),
        ("torch", "Size"),
        ("torch", "device"),
        ("torch", "Tensor"),
        ("torch.nn.parameter", "Parameter"),
        ("torch", "UntypedStorage"),
        ("torch.storage", "UntypedStorage"),
        ("torch", "strided"),
        ("_codecs", "encode"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "slice"),
    }
)

#: numpy's number dtype classes as ``numpy.dtypes`` names them (``Float32DType``: ``Float32``), each with its type
#: code: the class is ``type(numpy.dtype(code))``, which numpy before 1.25 has without a module to name it.
NUMBER_DTYPES = {"Bool": "?", "Int8": "i1", "Int16": "i2", "Int32": "i4", "Int64": "i8", "UInt8": "u1", "UInt16": "u2",
                 "UInt32": "u4", "UInt64": "u8", "Float16": "f2", "Float32": "f4", "Float64": "f8", "LongDouble": "g",
                 "Complex64": "c8", "Complex128": "c16"}

#: Globals of plain data that training scripts save beside a state_dict and torch's ``weights_only`` loader refuses
#: unless allowed: numpy arrays, scalars (``best_acc = np.float64(...)``) and their numeric dtypes, and the
#: ``argparse.Namespace`` of a run's arguments. Each builds a value from the pickle's own data and runs nothing
#: else; the loader (:mod:`fedguard.loading`) allows exactly these (torch's serialization notes allow the same numpy
#: ones).
DATA_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("argparse", "Namespace"),
        ("builtins", "bytes"),  # protocol 2 writes an empty array's b"" as bytes()
        *(("numpy.dtypes", f"{kind}DType") for kind in NUMBER_DTYPES),
    }
)

_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE",
               "SHORT_BINSTRING", "BINSTRING", "STRING"}
_TORCH_SCALAR_TYPES = ("Storage", "Tensor")
_MARK = object()  # a MARK on the simulated unpickler's stack


@dataclass(frozen=True)
class PickleScan:
    """What the pickle streams of one file would import."""

    globals: frozenset[tuple[str, str]]

    @property
    def unsafe(self) -> list[str]:
        """Imports outside the state_dict allow-list, as ``module.name``."""
        return sorted(f"{m}.{n}" for m, n in self.globals if not is_safe_global(m, n))

    @property
    def pickled_module(self) -> bool:
        """True when the file is a whole pickled ``nn.Module`` of torch's (or torchvision's) own layer classes.

        Anything else beside them -- a custom class, a function from any other
        module -- is code the unpickler would import and may run, so the file
        counts as importing code (FG001), not as a module to re-export.
        """
        unsafe = [(m, n) for m, n in self.globals if not is_safe_global(m, n)]
        return any(m.startswith("torch.nn.modules.") for m, _ in unsafe) and all(_is_layer_class(m, n) for m, n in unsafe)


#: Modules whose classes make up a pickled model of standard layers.
_LAYER_MODULES = ("torch.nn.modules.", "torchvision.models.", "torchvision.ops.")


def _is_layer_class(module: str, name: str) -> bool:
    """A standard layer class (CamelCase, from :data:`_LAYER_MODULES`) or the ``set`` a module's state holds."""
    if (module, name) in (("__builtin__", "set"), ("builtins", "set")):
        return True
    return module.startswith(_LAYER_MODULES) and name[:1].isupper() and name.isidentifier()


def is_safe_global(module: str, name: str) -> bool:
    if module == "__builtin__":  # protocol 2 (torch.save's) names builtins as Python 2 did; the unpickler maps them
        module = "builtins"
    if (module, name) in SAFE_GLOBALS or (module, name) in DATA_GLOBALS:
        return True
    # Typed storages (torch.FloatStorage ...), dtypes, layouts and quantisation schemes (torch.float32,
    # torch.sparse_coo, torch.per_tensor_affine) are data.
    if module == "torch" and (name.endswith(_TORCH_SCALAR_TYPES) or name in _TORCH_DATA_NAMES):
        return True
    return False


_TORCH_DATA_NAMES = frozenset(
    {"float32", "float16", "bfloat16", "float64", "int8", "int16", "int32", "int64",
     "uint8", "uint16", "uint32", "uint64", "bool", "complex32", "complex64", "complex128",
     "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu",
     "half", "float", "double", "long", "int", "short", "qint8", "quint8", "qint32", "quint4x2",
     "sparse_coo", "sparse_csr", "sparse_csc", "sparse_bsr", "sparse_bsc",
     "per_tensor_affine", "per_channel_affine", "per_channel_affine_float_qparams",
     "per_tensor_symmetric", "per_channel_symmetric"}
)


#: The pickles a legacy (not zip) torch file starts with: magic number, protocol version, system info, the object,
#: its storages' keys; raw storage bytes follow them.
LEGACY_PICKLES = 5


def scan_pickle_stream(stream: BinaryIO, must_parse: int | None = None) -> set[tuple[str, str]]:
    """Collect (module, name) pairs from every pickle stored back to back in ``stream``.

    Stops at the end of the stream or at the first bytes that are not a valid
    pickle. Within the first ``must_parse`` pickles (None: all of the stream,
    as in a zip member that is one pickle), bytes ``pickletools`` cannot read
    count as an unknown import: Python's unpickler reads some it refuses
    (``I0x10``: an integer in hex) and would go on to run what follows. After
    them come a legacy file's raw storages, not pickles.
    """
    found: set[tuple[str, str]] = set()
    parsed = 0
    while stream.read(1):
        stream.seek(-1, io.SEEK_CUR)
        try:
            _scan_one(stream, found)
        except Exception:
            if must_parse is None or parsed < must_parse:
                found.add(("<unknown>", f"<what follows bytes pickletools cannot read, in pickle {parsed + 1}>"))
            break
        parsed += 1
    return found


def _scan_one(stream: BinaryIO, found: set[tuple[str, str]]) -> None:
    """Add the globals of one pickle to ``found`` as they are met (kept on errors).

    The unpickler's stack is followed opcode by opcode, with the effects ``pickletools`` lists for each (marks,
    the memo and ``DUP`` as ``pickle`` handles them), so the two strings a ``STACK_GLOBAL`` takes are the ones it
    pops, however many strings were pushed and popped before (a decoy pair pushed after the real one and popped
    had hidden ``os.system``). A ``STACK_GLOBAL`` whose operands are not strings the pickle spelt out, and an
    ``EXT`` code (a global named through the copyreg registry), are recorded as unknown imports.
    """
    stack: list[object] = []  # a str the pickle spelt out, _MARK, or None for any other value
    memo: dict[int, object] = {}

    def pop_to_mark() -> None:
        while stack and stack[-1] is not _MARK:
            stack.pop()
        if not stack:
            raise ValueError("pickle pops a mark it never pushed")
        stack.pop()

    def pop(count: int) -> None:
        if count > len(stack):
            raise ValueError("pickle pops more than it pushed")
        del stack[len(stack) - count:]

    frame_end = None
    for opcode, arg, pos in pickletools.genops(stream):
        name = opcode.name
        if name == "FRAME":
            frame_end = pos + 9 + int(arg)  # the opcode, its 8-byte length, the frame
        elif name == "STOP" and frame_end is not None and pos + 1 < frame_end:
            # Python's unpickler skips the rest of a frame after STOP, pickletools reads on: out of step from here
            found.add(("<unknown>", "<bytes after a STOP inside its frame, which Python's unpickler skips>"))
        if name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            found.add((module, attr))
        elif name == "STACK_GLOBAL":
            module, attr = (stack[-2], stack[-1]) if len(stack) >= 2 else (None, None)
            both = isinstance(module, str) and isinstance(attr, str)
            found.add((module, attr) if both else ("<unknown>", "<dynamic STACK_GLOBAL>"))
            pop(2)
            stack.append(None)
            continue
        elif name.startswith("EXT"):
            found.add(("<extension registry>", f"code {arg}"))
        if name in _STRING_OPS:
            stack.append(arg.decode("latin-1") if isinstance(arg, bytes) else str(arg))
        elif name == "MARK":
            stack.append(_MARK)
        elif name == "POP":  # pops the top, or the mark when nothing is above it
            pop(1)
        elif name == "DUP":
            stack.append(stack[-1] if stack else None)
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1] if stack else None
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(arg)] = stack[-1] if stack else None
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo.get(int(arg)))
        else:
            before = opcode.stack_before
            if pickletools.markobject in before:
                pop_to_mark()
                pop(before.index(pickletools.markobject))
            else:
                pop(len(before))
            stack.extend([None] * len(opcode.stack_after))


#: The largest pickle member a torch archive may hold. Its pickles name tensors and shapes (the tensors are stored
#: beside them): a few MiB for a model of a million tensors.
MAX_PICKLE_BYTES = 256 << 20


def scan_file(path: str, is_zip: bool) -> PickleScan:
    """Scan a torch zip archive's ``*.pkl`` members, a legacy tar archive's members, or a whole legacy pickle file.

    Raises InputError for a pickle member larger than :data:`MAX_PICKLE_BYTES` (a deflated one of 2 GiB fits in 2 MB).
    """
    found: set[tuple[str, str]] = set()
    if is_zip:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.filename.endswith(".pkl"):
                    if info.file_size > MAX_PICKLE_BYTES:
                        raise InputError(
                            f"{path}: {info.filename} is a pickle of {info.file_size / 2**20:,.0f} MiB, where a torch "
                            f"checkpoint's pickles name its tensors in a few MiB; re-export it"
                        )
                    found |= scan_pickle_stream(io.BytesIO(_read_member(archive, info)))
    else:
        try:  # torch reads a file as its oldest format, pickles in a tar archive's members, when tarfile opens it
            with tarfile.open(path, "r:") as archive:
                members = [m for m in archive if m.isfile() or m.islnk() or m.issym()]  # links read as their targets
                if not {"storages", "tensors", "pickle"} & {member.name for member in members}:  # torch unpickles those
                    held = ", ".join(member.name for member in members[:3]) + (", ..." if len(members) > 3 else "")
                    raise InputError(f"{path} is a tar archive{f' holding {held}' if members else ''}, not a torch "
                                     "checkpoint; extract the model file from it (tar xf) and pass that")
                for member in members:
                    try:
                        stream = archive.extractfile(member)
                    except KeyError:  # a link to a member the archive does not hold (or outside it): no pickle here
                        if member.name in ("storages", "tensors", "pickle"):  # torch would follow it on disk
                            raise InputError(f"{path}: its {member.name} member is a link to {member.linkname!r}, "
                                             "outside the archive; fedguard will not follow it: re-export the model") from None
                        continue
                    if stream is not None:
                        found |= scan_pickle_stream(stream, must_parse=1)
        except tarfile.TarError:  # and as a legacy file of pickles otherwise
            with open(path, "rb") as handle:
                found = scan_pickle_stream(handle, must_parse=LEGACY_PICKLES)
    return PickleScan(frozenset(found))


def scan_npz(path: str) -> PickleScan:
    """Scan the pickles of an ``.npz`` archive's object arrays (what ``np.load(allow_pickle=True)`` would unpickle:
    each such ``.npy`` member's bytes after its header)."""
    found: set[tuple[str, str]] = set()
    for _info, member, _shape, dtype in npy_members(path):
        if dtype.hasobject:
            found |= scan_pickle_stream(io.BytesIO(member.read()))
    return PickleScan(frozenset(found))


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """A member's bytes; CRC-checked unless stored as 0 (``torch.save`` with ``compute_crc32`` off)."""
    if info.CRC == 0:
        info = copy.copy(info)
        del info.CRC  # zipfile skips the check for a ZipInfo without a CRC
    with archive.open(info) as member:
        return member.read()
