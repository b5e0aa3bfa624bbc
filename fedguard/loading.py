"""Loading a received model without ever executing code from it.

Accepted: torch ``.pt``/``.pth``/``.bin``/``.ckpt`` state_dicts (zip or legacy
format; also wrapped as ``{"state_dict": ...}``, ``{"model": ...}``,
``{"model_state_dict": ...}``, with ``module.``/``_module.`` prefixes),
``.safetensors``, and ``.npz`` (named arrays, or a Flower-style list of
ndarrays saved with ``np.savez(*arrays)``).

Torch files are first scanned opcode by opcode (:mod:`fedguard.pickle_scan`);
a file that would import code outside the state_dict allow-list is not loaded
at all and becomes a critical finding (FG001). Only then is it read with
``torch.load(weights_only=True)``, memory-mapped where the format allows so a
large model costs little more than its size.
"""

from __future__ import annotations

import hashlib
import os
import pickletools
import re
import struct
import tarfile
import warnings
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from fedguard import pickled_data
from fedguard.errors import InputError, kind_of
from fedguard.io import missing, read_npz, refuse_beyond_memory, refuse_unusual_compression
from fedguard.pickle_scan import scan_file, scan_npz
from fedguard.types import Confidence, Finding, Rule, Severity

TORCH, SAFETENSORS, NPZ = "torch", "safetensors", "npz"
EXTENSIONS = {
    ".pt": TORCH, ".pth": TORCH, ".bin": TORCH, ".ckpt": TORCH, ".tar": TORCH,
    ".safetensors": SAFETENSORS,
    ".npz": NPZ,
}
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "weights", "params")
PREFIXES = ("module.", "_module.")

CODE_IMPORT_RULE = Rule(
    rule_id="FG001",
    name="code-importing-pickle",
    summary="The model file would import and call code when unpickled.",
    help=(
        "A model file is data; a pickle that imports callables such as os.system or "
        "builtins.eval runs them on the client the moment it is loaded with "
        "torch.load with weights_only turned off. fedguard never loads it. Do not load this "
        "file anywhere; ask the server for a safetensors or weights-only state_dict."
    ),
    reference="Python pickle documentation (security warning); PyTorch torch.load weights_only",
    url="https://docs.python.org/3/library/pickle.html",
)


@dataclass(frozen=True)
class LoadedModel:
    """A model file read into named tensors, plus what loading itself found."""

    path: str
    sha256: str
    file_format: str
    size_bytes: int
    tensors: Mapping[str, torch.Tensor]
    findings: tuple[Finding, ...] = ()
    named: bool = True

    @property
    def refused(self) -> bool:
        """True when the file was not loaded because it would run code."""
        return any(f.rule_id == CODE_IMPORT_RULE.rule_id for f in self.findings)


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_model_file(path: str | os.PathLike) -> LoadedModel:
    """Read a model file safely.

    Raises
    ------
    InputError
        For anything that is not a readable state_dict: missing, empty, wrong
        extension, corrupt, a bare tensor, a pickled ``nn.Module``, non-tensor
        values, zero-sized tensors.
    """
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise InputError(f"the model path is {path!r}; pass the path of a model file ({_supported()})")
    path = Path(path)
    file_format = _check_file(path)
    size = path.stat().st_size
    # Hashing is a full read of the file; it overlaps the checks and the load (hashlib releases the GIL).
    with ThreadPoolExecutor(max_workers=1) as pool:
        digest = pool.submit(sha256_of, path)
        tensors, findings, named = _read(path, file_format)
        return LoadedModel(str(path), digest.result(), file_format, size, tensors, findings, named)


def _read(path: Path, file_format: str) -> tuple[dict[str, torch.Tensor], tuple[Finding, ...], bool]:
    """The file's tensors, loading findings and whether it named them (or why not, as InputError)."""
    sniffed = _sniff(path)
    if sniffed != file_format and not (file_format == TORCH and sniffed == "pickle"):
        raise InputError(
            f"{path} has a {path.suffix} extension but {_describe(sniffed)}; "
            f"rename it or re-export it as {_hint(file_format)}"
        )
    if file_format == TORCH:
        try:
            scan = scan_file(str(path), is_zip=sniffed == TORCH)
        except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError, ValueError) as exc:
            raise InputError(f"{path} is a corrupt torch checkpoint ({str(exc)[:120]}); re-download or re-export it") from None
        if scan.unsafe and not scan.pickled_module:
            _refuse_compiled(path, scan.unsafe)
            return {}, (_code_finding(scan.unsafe),), True
        if scan.pickled_module:
            raise InputError(
                f"{path} is a whole pickled nn.Module, which cannot be loaded without running code; "
                "export the weights instead: torch.save(model.state_dict(), 'model.pt')"
            )
        members = _zip_members(path) if sniffed == TORCH else []
        mapped = bool(members) and all(info.compress_type == zipfile.ZIP_STORED for info in members)  # torch can mmap it
        raw = _load_torch(path, mmap=mapped)
        _check_storage_sizes(path, raw, members)
    elif file_format == SAFETENSORS:
        raw = _load_safetensors(path)
    else:
        unsafe = _npz_imports(path)
        if unsafe:
            return {}, (_code_finding(unsafe),), True
        raw = _load_npz(path)
    tensors, named = to_state_dict(raw, path)
    return tensors, (), named


#: What a quantised model's packed parameters name in a pickle (``quantize_dynamic``, ``convert``).
_PACKED = "torch.ScriptObject"
_QUANTISED = (" holds packed quantised parameters (torch.ao.quantization), which load only through torch's own "
              "compiled classes; inspect the float model before quantising: torch.save(model.state_dict(), 'model.pt')")


#: What TorchScript's own pickler writes beside its ``__torch__`` classes (``torch/jit/_pickle.py``: typed lists
#: of a scripted module's int, float, bool or tensor attributes and shapes, a traced module's type tags; complex
#: constants), none of which runs code of the file's choosing.
_TORCHSCRIPT_OWN = frozenset(
    [f"torch.jit._pickle.{name}" for name in ("build_intlist", "build_tensorlist", "build_doublelist", "build_boollist",
                                              "build_tensor_from_id", "restore_type_tag")] + ["builtins.complex"]
)


def _refuse_compiled(path: Path, unsafe: list[str]) -> None:
    """InputError for the compiled forms torch writes, whose pickles import only torch's compiled classes and
    builders that run no code of the file's choosing: a TorchScript archive (``torch.jit.save``; ``__torch__``
    classes and :data:`_TORCHSCRIPT_OWN`) and a quantised model's packed parameters. Anything beside them stays
    FG001."""
    if unsafe and all(name == _PACKED for name in unsafe):
        raise InputError(f"{path}{_QUANTISED}")
    scripted = any(name.startswith("__torch__.") for name in unsafe)
    if scripted and all(name.startswith("__torch__.") or name == _PACKED or name in _TORCHSCRIPT_OWN for name in unsafe):
        raise InputError(
            f"{path} is a TorchScript archive (torch.jit.save): loading it runs its compiled program, which fedguard "
            "neither runs nor checks (do not load it from a server you do not trust); ask for the weights as a "
            "state_dict: torch.save(model.state_dict(), 'model.pt')"
        )


def _check_file(path: Path) -> str:
    if not path.exists():  # exists() follows a link: a loop or a missing target reads as no file, and is said so
        raise missing(str(path), path)
    if path.is_dir():
        raise InputError(f"{path} is a directory; pass a model file ({_supported()})")
    if not path.is_file():
        raise InputError(f"{path} is not a regular file (a pipe or a device); save the model to a file and pass that")
    file_format = EXTENSIONS.get(path.suffix.lower())
    if file_format is None:
        raise InputError(f"{path}: unsupported extension {path.suffix or '(none)'!r}; fedguard reads {_supported()}")
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty (0 bytes); re-download or re-export it")
    return file_format


def _supported() -> str:
    return ", ".join(EXTENSIONS)


def _sniff(path: Path) -> str:
    with open(path, "rb") as handle:
        head = handle.read(16)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        try:
            with zipfile.ZipFile(path) as archive:
                refuse_unusual_compression(archive, path, "re-export it")
                names = archive.namelist()
                if any(name.endswith("data.pkl") for name in names):
                    _verify_checksums(archive)
                    return TORCH
        # RuntimeError covers zipfile's error for an unsupported compression method too
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError):
            raise InputError(f"{path} is a corrupt or truncated zip archive; re-download or re-export it") from None
        if all(name.endswith(".npy") for name in names):  # np.savez with no arrays writes an empty archive
            return NPZ
        return "zip"
    # safetensors before pickle: an 8-byte header length can start with 0x80 or "(".
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if 0 < header_len < path.stat().st_size and head[8:9] == b"{":
            return SAFETENSORS
    if head[:1] == b"\x80" or head[:1] in (b"(", b"}", b"]") or _is_pickle(path):
        return "pickle"
    if tarfile.is_tarfile(path):  # torch's oldest format keeps its pickles in tar members: scanned as such
        return "pickle"
    return "unknown"


def _verify_checksums(archive: zipfile.ZipFile) -> None:
    """Read every member so that zipfile checks its CRC-32 (torch's mmap load does not).

    Members stored with CRC 0 are skipped: ``torch.save`` writes 0 when
    ``compute_crc32`` is off.
    """
    for info in archive.infolist():
        if info.CRC == 0:
            continue
        with archive.open(info) as member:
            while member.read(1 << 22):
                pass


def _is_pickle(path: Path) -> bool:
    """True when the file starts with one complete pickle (protocols 0 and 1 have no magic byte)."""
    try:
        with open(path, "rb") as handle:
            for _ in pickletools.genops(handle):
                pass
    except Exception:
        return False
    return True


def _describe(sniffed: str) -> str:
    return {
        TORCH: "its contents are a torch checkpoint",
        NPZ: "its contents are a numpy .npz archive",
        SAFETENSORS: "its contents are a safetensors file",
        "pickle": "its contents are a pickle (legacy torch checkpoint)",
        "zip": "its contents are a zip archive that is neither a torch checkpoint nor an .npz",
        "unknown": "its contents are not a model file format fedguard knows (random or corrupt bytes?)",
    }[sniffed]


def _hint(file_format: str) -> str:
    return {
        TORCH: "torch.save(model.state_dict(), 'model.pt')",
        SAFETENSORS: "safetensors.torch.save_file(model.state_dict(), 'model.safetensors')",
        NPZ: "np.savez('model.npz', **arrays)",
    }[file_format]


#: Longest tensor name (or pickled import) kept whole. Module paths of real networks stay under 120 characters
#: (torchvision's deepest, in its detection models, about 70); a file can hold names of megabytes, which had made a
#: 4 MB model give a 15 MB text report and 20 MB of SARIF.
MAX_NAME = 256


def short_name(name: str) -> str:
    """``name`` when at most :data:`MAX_NAME` characters, else its module path cut to its two ends with its length
    and a digest between them (one path, one short form, so a layer's weight and bias stay one layer; two paths, two
    forms), and its last part (``weight``, ``bias``) kept."""
    if len(name) <= MAX_NAME:
        return name
    path, dot, last = name.rpartition(".")
    if not dot or len(last) > 64:
        path, dot, last = name, "", ""
    digest = hashlib.sha256(path.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{path[:64]}…[{len(path):,} characters, sha256 {digest}]…{path[-32:]}{dot}{last}"


def _code_finding(unsafe: list[str]) -> Finding:
    unsafe = [short_name(name) for name in unsafe]
    shown = ", ".join(unsafe[:8]) + (f" and {len(unsafe) - 8} more" if len(unsafe) > 8 else "")
    return Finding(
        rule_id=CODE_IMPORT_RULE.rule_id,
        title="Model file would execute code when loaded",
        severity=Severity.CRITICAL,
        confidence=Confidence.HIGH,
        layer=None,
        message=(
            f"Unpickling this file imports {shown}. It was not loaded. Do not open it with an unrestricted "
            "torch.load, np.load(allow_pickle=True) or pickle anywhere; report the server and ask for "
            "a safetensors or weights-only state_dict. (If you saved this file yourself, as torch.save(model), "
            "save torch.save(model.state_dict(), path) instead.)"
        ),
        evidence={"imports": unsafe},
    )


def _zip_members(path: Path) -> list[zipfile.ZipInfo]:
    """The zip's members, read once for the memory-map decision and the storage-size check."""
    with zipfile.ZipFile(path) as archive:
        return archive.infolist()


def _load_torch(path: Path, mmap: bool) -> Any:
    try:
        # sparse tensors' indices checked against their shapes as they load: unchecked, an index out of range
        # writes outside the tensor when it is made dense
        with warnings.catch_warnings(), torch.serialization.safe_globals(pickled_data.safe_globals()), \
                torch.sparse.check_sparse_tensor_invariants(True):  # fmt: skip
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols and deprecated storages
            raw = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # torch raises UnpicklingError subclasses and more for odd files
        raise InputError(f"{path} could not be read as a torch state_dict ({_torch_reason(exc)}); re-export it with {_hint(TORCH)}") from None
    return _plain(raw, path)


#: How deep a checkpoint's containers may nest (a state_dict under a wrapper under a wrapper is three).
MAX_NESTING = 32


def _plain(raw: Any, path: Path) -> Any:
    """``raw`` with every dict a plain ``dict`` of its own entries, every list or tuple a list, every pickled
    array a plain ndarray.

    A pickle's ``BUILD`` may set attributes on an ``OrderedDict`` (torch sets ``_metadata``), among them ones that
    shadow its methods (``items = 1``): the entries are read past them. Containers nested deeper than
    :data:`MAX_NESTING` are refused (a pickle can nest thousands deep, past Python's recursion limit). A container
    the pickle refers to again (through its memo) is converted once and shared: 31 lists that each hold the next
    twice, 2^30 paths, take 31 steps, and a list that holds itself ends.
    """
    root = [raw]
    done: dict[int, Any] = {}
    pending: list[tuple[Any, Any, Any, int]] = [(root, 0, raw, 0)]  # container[key] = plain(value), at depth
    while pending:
        container, key, value, depth = pending.pop()
        if id(value) in done:
            container[key] = done[id(value)]
            continue
        if isinstance(value, (dict, list, tuple)):
            if depth >= MAX_NESTING:
                raise InputError(f"{path} nests containers more than {MAX_NESTING} deep, where a checkpoint nests a "
                                 f"few; re-export it with {_hint(TORCH)}")  # fmt: skip
            if isinstance(value, dict):
                plain: Any = dict(dict.items(value))
                pending.extend((plain, k, v, depth + 1) for k, v in plain.items())
            else:
                plain = list(list.__iter__(value) if isinstance(value, list) else tuple.__iter__(value))
                pending.extend((plain, i, v, depth + 1) for i, v in enumerate(plain))
            done[id(value)] = plain
        elif isinstance(value, pickled_data.PickledArray):
            plain = value.view(np.ndarray)
        else:
            plain = value
        container[key] = plain
    return root[0]


def _tensors_in(raw: Any):
    """Every tensor in a loaded checkpoint, through nested mappings, lists and tuples (each container once)."""
    seen: set[int] = set()
    pending = [raw]
    while pending:
        value = pending.pop()
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (Mapping, list, tuple)) and id(value) not in seen:
            seen.add(id(value))
            pending.extend(value.values() if isinstance(value, Mapping) else value)


def _check_storage_sizes(path: Path, raw: Any, members: list[zipfile.ZipInfo]) -> None:
    """Refuse a torch checkpoint whose tensors claim more bytes than the file holds: a zip's ``data/`` members, or a
    legacy file's size.

    Memory-mapped, torch does not compare a storage's size with its member's
    and reads a truncated member's tensor past its end, from the next one.
    And a pickle may create storage it does not hold (``torch.Tensor(2**30)``:
    4 GiB of uninitialised memory from a 1 KB file, then read as weights).
    """
    if members:
        held = sum(info.file_size for info in members if re.search(r"(^|/)data/[^/]+$", info.filename))
    else:
        held = path.stat().st_size
    claimed = {}
    for tensor in _tensors_in(raw):
        parts = [tensor] if tensor.layout == torch.strided else _sparse_parts(tensor)
        for part in parts:
            if not part.is_meta:
                storage = part.untyped_storage()
                claimed[storage.data_ptr()] = storage.nbytes()
    if sum(claimed.values()) > held:
        raise InputError(
            f"{path}: its tensors claim {sum(claimed.values())} bytes of storage but the file holds {held}; "
            "the file is truncated or forged, re-download or re-export it"
        )


def _sparse_parts(tensor: torch.Tensor) -> list[torch.Tensor]:
    """The dense tensors a sparse one is made of (its indices and values)."""
    if tensor.layout == torch.sparse_coo:
        return [tensor._indices(), tensor._values()]
    if tensor.layout in (torch.sparse_csr, torch.sparse_bsr):
        return [tensor.crow_indices(), tensor.col_indices(), tensor.values()]
    return [tensor.ccol_indices(), tensor.row_indices(), tensor.values()]


def _torch_reason(exc: Exception) -> str:
    """The first sentence of a ``torch.load`` error, the one that says what is wrong with the file."""
    text = str(exc).strip()
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1].strip()
        opcode = re.match(r"Unsupported operand (\d+)", text)
        if opcode:
            return f"pickle opcode {opcode.group(1)} is not one torch's weights-only loader reads: another pickle protocol, or corrupt"
        unsupported = re.match(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if unsupported:
            return f"it builds {unsupported.group(1)}, which torch's weights-only loader does not"
    if "legacy .tar format" in text:
        return "torch's legacy .tar format, which cannot be read without running code"
    if "[enforce fail at alloc_cpu" in text:
        return "a tensor larger than this machine's memory"
    text = re.sub(r"^\[enforce fail at [^\]]*\][\s.]*", "", text)  # where in torch's C++ it failed: no help to a user
    if not text:
        return "torch's archive reader refused the archive's layout"
    line = text.splitlines()[0]
    parts = re.split(r"(?<=[.:])\s", line, maxsplit=2)
    sentence = parts[0] if not re.fullmatch(r"[\w.]+:", parts[0]) or len(parts) == 1 else f"{parts[0]} {parts[1]}"
    sentence = sentence.rstrip(".:")
    return sentence if len(sentence) <= 160 else sentence[:157].rsplit(" ", 1)[0] + " ..."


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    refuse_beyond_memory(path, path.stat().st_size, "holds", "tensors")  # read whole into memory (a sparse file's mmap fails)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise InputError(f"{path} is a corrupt or truncated safetensors file ({str(exc)[:120]}); re-download or re-export it") from None
    # safetensors keeps no order (keys come back sorted as text: "10.weight" before "2.weight");
    # layer order matters to the detectors, so sort numbered layers by number.
    return {key: tensors[key] for key in sorted(tensors, key=_natural_key)}


def _natural_key(name: str) -> tuple:
    return tuple(int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", name)))


def _npz_imports(path: Path) -> list[str]:
    """What the archive's object arrays would import when unpickled (outside the data allow-list); a corrupt
    archive is left to :func:`_load_npz` to name."""
    try:
        return scan_npz(str(path)).unsafe
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error):
        return []


def _load_npz(path: Path) -> Any:
    arrays = read_npz(path, "re-export it with np.savez")
    x, y = arrays.get("x"), arrays.get("y")
    if (set(arrays) == {"x", "y"} and x.ndim >= 2 and (x.dtype.kind == "f" or x.dtype == np.uint8) and y.ndim == 1
            and y.dtype.kind in "iu" and len(x) == len(y)):  # images (floats, 8-bit pixels) and labels; int8 weights are no data
        raise InputError(f"{path} holds arrays x and y ({len(y)} examples and their integer labels), the "
                         "layout of a --data file, not model weights; pass it with --data")
    from fedguard.attacks.federation import ROUNDS_ARRAYS, ROUNDS_EXTRAS

    if ROUNDS_ARRAYS <= set(arrays) <= ROUNDS_ARRAYS | ROUNDS_EXTRAS:  # what disaggregate reads (and --save-rounds writes)
        raise InputError(f"{path} holds {', '.join(sorted(arrays))}, the rounds of sums `fedguard disaggregate` reads, not "
                         "model weights; pass it to fedguard disaggregate")  # fmt: skip
    if arrays and all(key.startswith("arr_") and key[4:].isdigit() for key in arrays):
        return [arrays[key] for key in sorted(arrays, key=lambda key: int(key[4:]))]
    return arrays


def to_state_dict(raw: Any, path: Path | str) -> tuple[dict[str, torch.Tensor], bool]:
    """``raw`` (what a model file held, or a mapping handed in from Python) as named tensors, and whether it named
    them: checkpoint wrappers unwrapped, ``module.`` prefixes stripped, numpy arrays turned into tensors, unnamed
    lists named in order. ``path`` names the source in the InputError for anything else."""
    if isinstance(raw, (torch.Tensor, np.ndarray)):
        raise InputError(f"{path} holds a single tensor, not named tensors; save a dict by parameter name instead "
                         "(a model's state_dict(), an update's {name: tensor})")  # fmt: skip
    if isinstance(raw, (list, tuple)):
        expansion = _Expansion(path)
        values = [_as_tensor(v, f"item {i}", path, expansion) for i, v in enumerate(raw)]
        if not values:
            raise InputError(f"{path} holds an empty list, no tensors; save the model's weights (or the update's tensors) in it")
        return name_unnamed(values), False
    if not isinstance(raw, Mapping):
        raise InputError(f"{path} holds {kind_of(raw)}, not a state_dict (a mapping of names to tensors); save model.state_dict()")
    raw = _unwrap(raw, path)
    if not raw:
        raise InputError(f"{path} holds an empty state_dict, no tensors; save the model's weights (or the update's tensors) in it")
    tensors = {}
    expansion = _Expansion(path)
    for key, value in raw.items():
        name = short_name(str(key))
        # an empty buffer (a mask registered as torch.empty(0)) holds nothing; an empty layer, list item or matrix
        # is malformed
        may_be_empty = str(name).rsplit(".", 1)[-1] not in ("weight", "bias")
        tensors[name] = _as_tensor(value, f"key {name!r}", path, expansion, may_be_empty)
        if name.rsplit(".", 1)[-1] in ("weight", "bias") and not tensors[name].is_floating_point():
            # the checks read only floating-point tensors: a model cast to integers had passed as clean, unread
            raise InputError(f"{path}: {name} has dtype {tensors[name].dtype}; a layer's weights, and an update's, "
                             "are floating point: save the float model or update (dequantize a quantized one)")  # fmt: skip
    return _strip_prefixes(tensors), True


def _unwrap(raw: Mapping, path: Path | str) -> Mapping:
    """The state_dict inside checkpoint wrappers (``{"state_dict": ...}``, up to three deep). Two different ones
    side by side (``{"state_dict": A, "model": B}``, or ``{"state_dict": A, "ema_state_dict": B}`` with B under
    A's names) are refused: a client may load either, and judging one would pass the other unseen. So are
    tensors beside the state_dict under a layer's name (``{"state_dict": A, "fc.weight": W}``, a dotted name or one
    of A's), which a client that loads the whole file leniently would take; scalars there (``best_acc1``, a step
    count) are metrics and other tensors (``rng_state``, a sample count per class) no layer's. An optimizer's
    state, under other names, is no second state_dict."""
    for _ in range(3):
        keys = [k for k in WRAPPER_KEYS if isinstance(raw.get(k), Mapping) and _holds_tensors(raw[k])]
        if not keys:
            return raw
        chosen = raw[keys[0]]
        beside = [str(k) for k, v in raw.items() if isinstance(v, (torch.Tensor, np.ndarray)) and v.ndim > 0
                  and (k in chosen or "." in str(k))]  # fmt: skip
        if beside:
            raise InputError(
                f"{path} holds tensors beside the state_dict under {keys[0]!r} ({', '.join(map(repr, beside[:3]))}"
                f"{', ...' if len(beside) > 3 else ''}); a client may load either, so fedguard will not pick one: save "
                "the state_dict alone"
            )
        twins = [k for k, v in raw.items() if k != keys[0] and isinstance(v, Mapping) and _holds_tensors(v)
                 and (k in keys or list(v) == list(chosen))]  # fmt: skip
        others = [k for k in twins if not _same_mapping(chosen, raw[k])]
        if others:
            raise InputError(
                f"{path} holds different state_dicts under {keys[0]!r} and {' and '.join(map(repr, others))}; a client "
                "may load either, so fedguard will not pick one: save each alone and inspect every one"
            )
        raw = raw[keys[0]]
    return raw


def _holds_tensors(mapping: Mapping, depth: int = 3) -> bool:
    """Whether a wrapper's value is a state_dict (tensors or arrays, maybe wrapped again), not, say, hyperparameters."""
    return any(
        isinstance(v, (torch.Tensor, np.ndarray)) or (depth > 0 and isinstance(v, Mapping) and _holds_tensors(v, depth - 1))
        for v in mapping.values()
    )


def _same_mapping(a: Mapping, b: Mapping) -> bool:
    """Whether two wrapped state_dicts hold the same names and values.

    Each pair of containers is compared once: a pickle's memo can share and nest them (two dicts that each hold
    themselves had recursed without end, two chains of 28 dicts each holding the next twice taken minutes).
    """
    pending: list[tuple[Any, Any]] = [(a, b)]
    compared: set[tuple[int, int]] = set()
    while pending:
        x, y = pending.pop()
        if x is y or (id(x), id(y)) in compared:
            continue
        compared.add((id(x), id(y)))
        if isinstance(x, Mapping) and isinstance(y, Mapping):
            if list(x) != list(y):
                return False
            pending.extend((x[key], y[key]) for key in x)
        elif isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
            if len(x) != len(y):
                return False
            pending.extend(zip(x, y))
        elif isinstance(x, (torch.Tensor, np.ndarray)) and isinstance(y, (torch.Tensor, np.ndarray)):
            x, y = (torch.as_tensor(_native(v) if isinstance(v, np.ndarray) else v) for v in (x, y))
            if x.shape != y.shape or x.dtype != y.dtype:
                return False
            if not (torch.equal(x, y) if not x.is_floating_point() else torch.allclose(x, y, rtol=0, atol=0, equal_nan=True)):
                return False
        else:
            try:
                if not bool(x == y):
                    return False
            except Exception:  # values that do not compare (a tensor against a list): not the same
                return False
    return True


def _strip_prefixes(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if all(key.startswith(prefix) for key in tensors):
                tensors = {key[len(prefix):]: value for key, value in tensors.items()}
                changed = True
    return tensors


#: Storage types fedguard's checks cannot compute with, read as the nearest type they can.
_WIDENED = {
    **{getattr(torch, name): torch.float32 for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu") if hasattr(torch, name)},
    **{getattr(torch, name): torch.int64 for name in ("uint16", "uint32", "uint64") if hasattr(torch, name)},
}
#: Values a file's sparse tensors, and its views whose entries share memory (stride 0), may have together beyond
#: what they store (sparse tensors also up to SPARSE_EXPANSION times their stored values): a 1 KB file had declared
#: a layer of 2^31 shared values, inspected for 50 s in 4 GB and called clean; a sparse one of 46,000 x 46,000
#: filled 8 GB; 60 sparse layers of 4096 x 4096, one stored value each, 4.6 GB.
MAX_UNSTORED_VALUES = 1 << 24
SPARSE_EXPANSION = 1000


@dataclass
class _Expansion:
    """What a file's tensors declare beyond what they store, summed over the file and name by name (each name is
    checked, and each costs the checks its values).

    A view counts what it has beyond its storage under every name it has (100 stride-0 views of one small storage
    under 100 names had each passed a per-tensor limit: 1.7e9 values, 109 s), and the distinct views of one
    storage what they cover beyond twice it (``covered``: a flat buffer and its parameters' slices, or a fused
    weight and its q/k/v, cover it twice, honestly). Each tensor, or identical view of a storage, is made dense
    once (``dense``): a sparse tensor under 60 names had been expanded 60 times. Keys are the file's own objects,
    alive while the file is read (a quantised tensor by itself: its scale is not in its view).
    """

    path: Path | str
    view_values: int = 0
    sparse_values: int = 0
    sparse_stored: int = 0
    covered: dict[int, int] = field(default_factory=dict)
    dense: dict[tuple, torch.Tensor] = field(default_factory=dict)

    @staticmethod
    def key(value: Any) -> tuple:
        """The same tensor: one view (storage, offset, shape, strides, dtype) of a plain tensor, else one object."""
        if isinstance(value, torch.Tensor) and value.layout == torch.strided and not value.is_quantized:
            return ("view", value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape),
                    value.stride(), value.dtype)  # fmt: skip
        return ("object", id(value))

    def sparse(self, value: torch.Tensor, where: str) -> None:
        stored = _sparse_parts(value)[-1].numel()
        self.sparse_values += max(0, value.numel() - stored)
        self.sparse_stored += stored
        if self.sparse_values > MAX_UNSTORED_VALUES + SPARSE_EXPANSION * self.sparse_stored:
            raise InputError(f"{self.path}: {where} is a sparse tensor of shape {tuple(value.shape)} that stores "
                             f"{stored:,} values; with the file's other sparse tensors, {self.sparse_stored:,} stored "
                             f"values would expand by {self.sparse_values:,}; save dense weights")  # fmt: skip

    def view(self, value: torch.Tensor, where: str, distinct: bool) -> None:
        storage = value.untyped_storage()
        stored = storage.nbytes() // value.element_size()
        self.view_values += max(0, value.numel() - stored)
        if distinct:
            before = self.covered.get(storage.data_ptr(), 0)
            self.covered[storage.data_ptr()] = before + value.numel()
            self.view_values += max(0, before + value.numel() - 2 * stored) - max(0, before - 2 * stored)
        if self.view_values > MAX_UNSTORED_VALUES:
            raise InputError(f"{self.path}: {where} is a view of {value.numel():,} values on {stored:,} stored ones "
                             f"(entries share memory); with the file's other views, {self.view_values:,} values more "
                             "than it stores; save real tensors (.contiguous())")  # fmt: skip


def _as_tensor(value: Any, where: str, path: Path, expansion: _Expansion, may_be_empty: bool = False) -> torch.Tensor:
    """``value`` as a dense, real tensor of a type the checks compute with (or why not, as InputError).
    ``expansion`` sums what the file's tensors declare beyond what they store."""
    source = value
    if isinstance(value, np.generic):  # a numpy scalar: the difference of two 0-d arrays (BatchNorm's batch counter)
        value = np.asarray(value)
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufc":  # complex: refused below as the torch tensor it becomes
            raise InputError(f"{path}: {where} is an array of {value.dtype}, not numbers; save numeric weights only")
        value = numpy_tensor(value)
    if not isinstance(value, torch.Tensor) and "_packed_params" in where:
        raise InputError(f"{path}{_QUANTISED}")
    if not isinstance(value, torch.Tensor):
        raise InputError(
            f"{path}: {where} is {kind_of(value)}, not a tensor; save model.state_dict() (names to tensors only)"
        )
    if value.is_meta:
        raise InputError(f"{path}: {where} is a meta tensor, a shape without values; save the model's real weights")
    if value.numel() == 0 and not (may_be_empty and value.ndim == 1):
        raise InputError(f"{path}: {where} is a zero-sized tensor (shape {tuple(value.shape)}); the file is malformed, re-export it")
    if value.is_complex():
        raise InputError(f"{path}: {where} has dtype {value.dtype}; fedguard expects real-valued weights")
    key = expansion.key(source)
    if value.layout != torch.strided:
        expansion.sparse(value, where)
    elif value is source:  # the file's own tensor (numpy's arrays are whole, each on its own memory)
        expansion.view(value, where, distinct=key not in expansion.dense)  # before a quantised view is dequantised
    if key in expansion.dense:
        return expansion.dense[key]
    if value.layout != torch.strided:
        value = value.to_dense()
    if value.is_quantized:
        value = value.dequantize()
    value = value.detach()  # a tensor saved with requires_grad (an unfinished p_new - p_old) is still just values
    expansion.dense[key] = value.to(_WIDENED[value.dtype]) if value.dtype in _WIDENED else value
    return expansion.dense[key]


def _native(array: np.ndarray) -> np.ndarray:
    """``array`` in this machine's byte order (torch takes no other; an .npz of big-endian arrays had crashed)."""
    return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))


def numpy_tensor(array: np.ndarray) -> torch.Tensor:
    """A numeric numpy ``array`` as a tensor, sharing its memory where torch can: long doubles, which torch has no
    type for, as float64 or complex128, and another byte order as this machine's (:func:`_native`)."""
    if array.dtype.kind in "fc" and array.dtype.itemsize > (8 if array.dtype.kind == "f" else 16):
        array = array.astype(np.float64 if array.dtype.kind == "f" else np.complex128)
    return torch.from_numpy(_native(array))


#: Buffers of normalisation layers that FL code often leaves out (all three, or only the step count): a client
#: keeps its own, so their absence is no change of architecture.
RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")


def is_running_stat(name: str) -> bool:
    """Whether the state_dict entry ``name`` is one of :data:`RUNNING_STATS`, which a file may leave out."""
    return name.rsplit(".", 1)[-1] in RUNNING_STATS


def name_in_order(names: Mapping[str, torch.Size], values: list[torch.Tensor], deltas: bool = False) -> dict[str, torch.Tensor] | None:
    """An unnamed list under the known ``names`` (name -> shape, in ``state_dict`` order) when it lines up layer by
    layer, else None.

    The list may hold every entry, or leave out the ``num_batches_tracked`` counts or all running statistics (as
    filters in FL code do); within a layer its entries may come in any order their shapes tell apart (a layer
    pruned with ``torch.nn.utils.prune`` lists its bias before its weight). A layer pruned that way and not
    ``prune.remove``d also lists a mask after its members (``weight_orig``, then ``weight_mask``, of 0s and 1s):
    the member is then ``orig * mask``, the weight its forward uses. In a list of ``deltas`` (an update) a mask's
    entry is its change, all zero, and the member is the change of ``orig`` as sent.
    """
    return line_up(names, values, deltas)[0]


def line_up(
    names: Mapping[str, torch.Size], values: list[torch.Tensor], deltas: bool = False
) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    """:func:`name_in_order`'s naming, or None and why not: the furthest item whose shape no entry of its layer
    has (nor a mask's), or the counts."""
    why = f"it holds {len(values)} arrays where the architecture has {len(names)} tensors"
    for dropped in ((), RUNNING_STATS[2:], RUNNING_STATS):
        kept = [n for n in names if n.rsplit(".", 1)[-1] not in dropped]
        if not 0 <= len(values) - len(kept) <= sum(len(names[n]) > 0 for n in kept):
            continue
        layers: dict[str, list[str]] = {}
        for name in kept:
            layers.setdefault(name.rpartition(".")[0], []).append(name)
        named, failed = _line_up_layers(list(layers.values()), names, values, deltas)
        if named is not None:
            return {n: named[n] for n in kept}, None
        why = failed or why
    return None, why


def _line_up_layers(
    layers: list[list[str]], names: Mapping[str, torch.Size], values: list[torch.Tensor], deltas: bool
) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    """``values`` named layer by layer, each layer taking its members and as many pruning masks as the list's
    surplus over the layers allows (fewest first, backtracking where a later layer does not fit), or None and why
    for the furthest item that fitted no layer."""
    after = [sum(len(m) for m in layers[i:]) for i in range(len(layers) + 1)]  # members from layer i on
    placed: list[tuple[int, int, dict[str, torch.Tensor]]] = []  # each placed layer's start, masks and naming
    exhausted: set[tuple[int, int]] = set()
    furthest: tuple[int, str | None] = (-1, None)
    layer, start, masks = 0, 0, 0
    while True:
        if layer == len(layers) and start == len(values):
            return {name: value for *_, block in placed for name, value in block.items()}, None
        if layer < len(layers) and (layer, start) not in exhausted and masks <= min(len(values) - start - after[layer], len(layers[layer])):
            block, failed = _fit_block(layers[layer], names, values, start, len(layers[layer]) + masks, deltas)
            if block is not None:
                placed.append((start, masks, block))
                layer, start, masks = layer + 1, start + len(layers[layer]) + masks, 0
                continue
            furthest = max(furthest, failed, key=lambda f: f[0])
            masks += 1
            continue
        exhausted.add((layer, start))
        if not placed:
            return None, furthest[1]
        start, masks, _ = placed.pop()
        layer, masks = layer - 1, masks + 1


def _fit_block(
    members: list[str], names: Mapping[str, torch.Size], values: list[torch.Tensor], start: int, size: int, deltas: bool
) -> tuple[dict[str, torch.Tensor] | None, tuple[int, str | None]]:
    """``values[start:start + size]`` as one layer's ``members`` by shape, each item past a free member's shape being
    the pruning mask of an earlier member of its shape (0s and 1s; all zero in ``deltas``), or None and the item
    that fitted nothing, with why."""
    free, named, masked = list(members), {}, set()
    for at in range(start, start + size):
        value = values[at]
        match = next((n for n in free if tuple(names[n]) == tuple(value.shape)), None)
        if match is not None:
            free.remove(match)
            named[match] = value
            continue
        orig = next((n for n in named if n not in masked and tuple(names[n]) == tuple(value.shape) and len(names[n])), None)
        if orig is None or not _is_mask(value, deltas):
            return None, (at, f"item {at} has shape {list(value.shape)} where the architecture has "
                              + " or ".join(f"{n} of shape {list(names[n])}" for n in free or members))  # fmt: skip
        masked.add(orig)
        if not deltas:
            named[orig] = named[orig] * value.to(named[orig].dtype)
    return named, (-1, None)


def _is_mask(value: torch.Tensor, deltas: bool) -> bool:
    """Whether ``value`` reads as a ``torch.nn.utils.prune`` mask: 0s and 1s, or all zero where it is a change."""
    if deltas:
        return not bool(value.any())
    return value.dtype == torch.bool or bool(((value == 0) | (value == 1)).all())


def name_unnamed(values: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Give a Flower-style list of arrays layer names by shape.

    A tensor of two or more dimensions starts a layer (``layerN.weight``); the
    1-D tensors after it that match its output size fill the layer's remaining
    slots: ``bias`` after a weight matrix, ``bias``, ``running_mean``,
    ``running_var`` after a 1-D (normalisation) weight; a 0-d tensor after those
    is ``num_batches_tracked``. A 1-D tensor just before a weight matrix of its
    output size is that layer's bias (a layer pruned with
    ``torch.nn.utils.prune`` lists its bias first). With ``--arch`` the real
    names are used instead (:func:`fedguard.inspect.name_by_architecture`).
    """
    named: dict[str, torch.Tensor] = {}
    layer, slots, size = -1, [], None
    for i, value in enumerate(values):
        if value.ndim == 0 and slots == ["num_batches_tracked"]:
            named[f"layer{layer}.{slots.pop(0)}"] = value
            continue
        if value.ndim == 1 and slots and slots[0] != "num_batches_tracked" and value.shape[0] == size:
            named[f"layer{layer}.{slots.pop(0)}"] = value
            continue
        following = values[i + 1] if i + 1 < len(values) else None
        if value.ndim == 1 and following is not None and following.ndim >= 2 and following.shape[0] == value.shape[0]:
            named[f"layer{layer + 1}.bias"] = value  # the next layer's, listed before its weight
            slots = []
            continue
        layer += 1
        named[f"layer{layer}.weight"] = value
        size = value.shape[0] if value.ndim else None
        if f"layer{layer}.bias" in named:
            slots = []
        else:
            slots = ["bias"] if value.ndim >= 2 else ["bias", "running_mean", "running_var", "num_batches_tracked"]
    return named  # in the list's order, which --arch names by (name_in_order)
