"""Safe model loading (fedguard.loading) and the FG001 code-importing-pickle check.

Every accepted format must round-trip to the same named tensors; every pickle
that would run code must be refused *without* running it (each payload below is
shown to be live in a subprocess first, so "no file was created" means something).
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import pickle
import re
import shlex
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from torch import nn

from fedguard.architectures import ARCHITECTURES
from fedguard.errors import InputError
from fedguard.inspect import inspect_model
from fedguard.loading import CODE_IMPORT_RULE, load_model_file
from fedguard.pickle_scan import scan_file
from fedguard.types import Severity, Verdict

from .helpers import tiny_state_dict
from .payloads import ExecPayload, PopenPayload, SystemPayload, short_unicode


# --------------------------------------------------------------------------- models


def bn_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Conv/BN/conv/BN/linear: 16 arrays including BN buffers (more than 10, to test arr_10 ordering)."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 6, 3), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Flatten(), nn.Linear(6 * 4 * 4, 3),
    )
    model.train()
    model(torch.rand(5, 1, 8, 8))  # give the BN buffers non-default values
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(got, expected, ordered: bool = True) -> None:
    """Same names (in the same order unless ``ordered`` is False), dtypes, shapes and values."""
    assert (list(got) if ordered else sorted(got)) == (list(expected) if ordered else sorted(expected))
    for name, value in expected.items():
        assert got[name].dtype == value.dtype, name
        assert got[name].shape == value.shape, name
        assert torch.equal(got[name], value), name


# --------------------------------------------------------------------------- round trips


def _save_zip(sd, path):
    torch.save(sd, path)


def _save_legacy(sd, path):
    torch.save(sd, path, _use_new_zipfile_serialization=False)


def _save_safetensors(sd, path):
    from safetensors.torch import save_file

    save_file(sd, str(path))


def _save_npz(sd, path):
    np.savez(path, **{k: v.numpy() for k, v in sd.items()})


@pytest.mark.parametrize(
    "suffix, save",
    [(".pt", _save_zip), (".pth", _save_legacy), (".safetensors", _save_safetensors), (".npz", _save_npz)],
    ids=["torch-zip", "torch-legacy", "safetensors", "npz"],
)
def test_formats_round_trip(tmp_path, suffix, save):
    sd = tiny_state_dict()
    path = tmp_path / f"model{suffix}"
    save(sd, path)
    loaded = load_model_file(path)
    assert not loaded.findings and not loaded.refused
    assert loaded.named
    assert loaded.size_bytes == path.stat().st_size
    assert_same(loaded.tensors, sd, ordered=suffix != ".safetensors")  # safetensors stores no order


def _sparse(sd):
    return {k: v.to_sparse() for k, v in sd.items()}


def _quantized(sd):
    return {k: torch.quantize_per_tensor(v, 0.01, 0, torch.qint8) for k, v in sd.items()}


@pytest.mark.parametrize(
    "convert, tolerance",
    [(_sparse, 0.0), (_quantized, 0.006), (lambda sd: {k: v.to(torch.float8_e4m3fn) for k, v in sd.items()}, 0.07)],
    ids=["sparse", "quantized", "float8"],
)
def test_other_tensor_kinds_load_as_dense_floats(tmp_path, convert, tolerance):
    """Sparse, quantised and 8-bit float tensors are weights too: loaded as dense floats, not taken for code (FG001)."""
    sd = tiny_state_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's notes on quantised tensors
        torch.save(convert(sd), tmp_path / "model.pt")
    loaded = load_model_file(tmp_path / "model.pt")
    assert not loaded.findings
    for k, v in sd.items():
        got = loaded.tensors[k]
        assert got.layout == torch.strided and got.dtype == torch.float32 and got.shape == v.shape
        assert (got - v).abs().max() <= tolerance * max(1.0, float(v.abs().max()))


def test_wide_unsigned_and_long_double_arrays(tmp_path):
    torch.save({"w": torch.arange(6).reshape(2, 3).to(torch.uint16)}, tmp_path / "u16.pt")
    assert load_model_file(tmp_path / "u16.pt").tensors["w"].tolist() == [[0, 1, 2], [3, 4, 5]]
    np.savez(tmp_path / "ld.npz", w=np.ones((2, 2), dtype=np.longdouble))
    assert load_model_file(tmp_path / "ld.npz").tensors["w"].dtype == torch.float64


def test_an_npz_member_of_text_is_refused_as_not_numbers(tmp_path):
    np.savez(tmp_path / "text.npz", w=np.ones((2, 2)), names=np.array(["a", "b"]))
    with pytest.raises(InputError, match=r"key 'names' is an array of <U1, not numbers; save numeric weights only"):
        load_model_file(tmp_path / "text.npz")


def test_tensors_saved_with_requires_grad_load_as_plain_values(tmp_path):
    torch.save({"w": torch.ones(2, 2, requires_grad=True) * 2}, tmp_path / "update.pt")
    w = load_model_file(tmp_path / "update.pt").tensors["w"]
    assert not w.requires_grad and w.tolist() == [[2.0, 2.0], [2.0, 2.0]]


def test_flower_list_with_a_gap_keeps_the_numeric_order(tmp_path):
    np.savez(tmp_path / "gap.npz", arr_0=np.ones((3, 2)), arr_2=np.ones(3), arr_10=np.ones((4, 3)))
    shapes = [tuple(v.shape) for v in load_model_file(tmp_path / "gap.npz").tensors.values()]
    assert shapes == [(3, 2), (3,), (4, 3)]


def _rewrite_zip(src: Path, dst: Path, compression: int = zipfile.ZIP_STORED, cut: str | None = None,
                 pickle_edit: Callable[[bytes], bytes] | None = None) -> None:
    """``src``'s members into ``dst`` with ``compression``, the member ending in ``cut`` cut to 10 bytes and
    ``data.pkl`` passed through ``pickle_edit`` (CRCs kept valid)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression=compression) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if cut and info.filename.endswith(cut):
                data = data[:10]
            if pickle_edit is not None and info.filename.endswith("data.pkl"):
                data = pickle_edit(data)
            zout.writestr(info.filename, data)


def test_deflated_checkpoint_loads_and_truncated_storage_is_refused(tmp_path):
    sd = tiny_state_dict()
    torch.save(sd, tmp_path / "model.pt")
    _rewrite_zip(tmp_path / "model.pt", tmp_path / "deflated.pt", zipfile.ZIP_DEFLATED)
    assert_same(load_model_file(tmp_path / "deflated.pt").tensors, sd)
    _rewrite_zip(tmp_path / "model.pt", tmp_path / "short.pt", cut="data/0")
    with pytest.raises(InputError, match="claim .* bytes of storage but the file holds"):
        load_model_file(tmp_path / "short.pt")


def test_legacy_file_is_not_a_zip(tmp_path):
    path = tmp_path / "legacy.pth"
    _save_legacy(tiny_state_dict(), path)
    assert not zipfile.is_zipfile(path)
    assert load_model_file(path).file_format == "torch"


@pytest.mark.parametrize("key", ["state_dict", "model", "model_state_dict"])
def test_checkpoint_wrappers(tmp_path, key):
    sd = tiny_state_dict()
    path = tmp_path / "ckpt.pt"
    torch.save({key: sd, "epoch": 7, "best_acc": 0.91, "step": torch.tensor(12)}, path)
    assert_same(load_model_file(path).tensors, sd)


class _ForgedArray:
    """Pickles as numpy pickles an array (``_reconstruct``, then ``BUILD``) but with the state given."""

    def __init__(self, state):
        self.state = state

    def __reduce__(self):
        rebuild, args, _state = np.zeros(1).__reduce__()
        return rebuild, args, self.state


def _dtype_with_object_field() -> np.dtype:
    """A float64 dtype as a dtype's ``__setstate__`` can leave it: with a field of Python objects."""
    dtype = np.dtype("f8", False, True)
    dtype.__setstate__((3, "<", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 63))
    assert dtype.hasobject
    return dtype


def test_numpy_arrays_of_every_number_type_and_layout_load_as_saved(tmp_path):
    sd = tiny_state_dict()
    extras = {"f": np.asfortranarray(np.arange(6.0).reshape(2, 3)), "be": np.array([1.5, -2], dtype=">f4"),
              "flags": np.array([True, False]), "u8": np.arange(3, dtype=np.uint8), "c": np.array([1 + 2j]),
              "zero_d": np.array(4.0), "half": np.float16(0.5), "truth": np.bool_(True),
              "long": np.array([1.5], dtype=np.longdouble), "empty": np.zeros((0, 3))}  # fmt: skip
    torch.save({"model": sd, "extras": extras}, tmp_path / "ckpt.pt")
    assert_same(load_model_file(tmp_path / "ckpt.pt").tensors, sd)
    from fedguard.loading import _load_torch

    raw = _load_torch(tmp_path / "ckpt.pt", mmap=False)
    for key, value in extras.items():
        got = raw["extras"][key]
        assert type(got) is type(value) and got.dtype.kind == value.dtype.kind and np.array_equal(got, value), key
    assert raw["extras"]["f"].flags.f_contiguous


@pytest.mark.parametrize("state, reason", [
    ((1, (1000,), np.dtype("O"), False, []), "dtype object is not plain numbers"),  # numpy 2.4 segfaults on it
    ((1, (2,), _dtype_with_object_field(), False, b"\x00" * 16), "is not plain numbers"),  # pointers from the file
    ((1, (2, 2), np.dtype("f4"), False, b"\x00" * 8), "holds 8 bytes, not 16"),
    ((1, (2,), np.dtype("f4"), False, [1.0, 2.0]), "holds list bytes"),
    ((1, (-1,), np.dtype("f4"), False, b""), "shape (-1,) is not a tuple of sizes"),
    ((1, (2,), np.dtype("f4"), False), "state is not numpy's (version, shape, dtype, order, bytes)"),
], ids=["object-array-short-list", "object-field", "short-bytes", "list-data", "negative-shape", "short-state"])
def test_forged_numpy_arrays_are_refused_before_numpy_reads_them(tmp_path, state, reason):
    """numpy's ``_reconstruct`` and ``ndarray.__setstate__`` trust the pickle: an object array with fewer items than
    its shape crashed the process (SIGSEGV), a float dtype given an object field reads pointers from the file. Each
    state is checked before numpy sees it; run in a child process, so that a regression crashes it, not the tests."""
    path = tmp_path / "forged.pt"
    torch.save({"0.weight": torch.ones(2, 2), "extra": _ForgedArray(state)}, path)
    res = subprocess.run([sys.executable, "-m", "fedguard", "inspect", str(path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert reason in res.stderr and res.stderr.count("\n") == 1


@pytest.mark.parametrize("allocate, message", [
    ((np.ndarray, ((1 << 28,),)), "calls numpy.ndarray allocates an array it does not hold"),  # 2 GiB, uninitialised
    ((bytes, (1 << 30,)), "calls bytes\\(\\) with arguments allocates what it does not hold"),  # 1 GiB of zeros
], ids=["numpy.ndarray", "bytes"])
def test_a_pickle_that_allocates_memory_directly_is_refused(tmp_path, allocate, message):
    class Allocate:
        def __reduce__(self):
            return allocate

    torch.save({"0.weight": torch.ones(2, 2), "extra": Allocate()}, tmp_path / "alloc.pt")
    with pytest.raises(InputError, match=message):
        load_model_file(tmp_path / "alloc.pt")


@pytest.mark.parametrize("index, reason", [(10**6, "size is inconsistent with indices"), (-5, "negative index -5")])
def test_sparse_tensors_with_indices_outside_their_shape_are_refused(tmp_path, index, reason):
    """Unchecked, ``to_dense`` wrote the value outside the tensor (SIGSEGV, or heap corruption and a clean verdict)."""
    forged = torch.sparse_coo_tensor(torch.tensor([[index], [1]]), torch.tensor([7.0]), (4, 3), check_invariants=False)
    torch.save({"0.weight": forged, "0.bias": torch.ones(4)}, tmp_path / "sparse.pt")
    with pytest.raises(InputError, match=reason):
        load_model_file(tmp_path / "sparse.pt")


def test_containers_nested_past_the_limit_are_refused_and_shadowed_dict_methods_ignored(tmp_path):
    from collections import OrderedDict

    from fedguard.loading import MAX_NESTING

    sd = tiny_state_dict()
    deep: dict = {"0.weight": torch.ones(2, 2)}
    for _ in range(2000):  # past Python's recursion limit: this had been an internal error (exit 3)
        deep = {"inner": deep}
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20000)  # for pickle to write it
    try:
        torch.save({"model": sd, "deep": deep}, tmp_path / "deep.pt")
    finally:
        sys.setrecursionlimit(limit)
    with pytest.raises(InputError, match=f"nests containers more than {MAX_NESTING} deep"):
        load_model_file(tmp_path / "deep.pt")
    class Shadowed:  # an OrderedDict whose BUILD sets attributes over its methods, as torch sets _metadata
        def __reduce__(self):
            return OrderedDict, (), {"items": 1, "values": None, "keys": None, "get": None}, None, iter(sd.items())

    torch.save(Shadowed(), tmp_path / "shadowed.pt")  # items = 1 had been an internal error (exit 3)
    assert_same(load_model_file(tmp_path / "shadowed.pt").tensors, sd)


def test_checkpoints_with_numpy_values_and_run_arguments_load(tmp_path):
    """Training scripts save numpy scalars (``best_acc``), numpy arrays and the run's ``argparse.Namespace`` beside the
    state_dict, or the state_dict as numpy arrays: plain data, read as such (they had been FG001, critical, or
    refused). A numpy object array naming a function is still FG001."""
    import argparse

    sd = tiny_state_dict()
    extras = {"best_acc": np.float64(0.91), "step": np.int64(3), "seen": np.arange(4), "args": argparse.Namespace(lr=0.1)}
    torch.save({"model": sd, **extras}, tmp_path / "ckpt.pt")
    assert_same(load_model_file(tmp_path / "ckpt.pt").tensors, sd)
    torch.save({k: v.numpy() for k, v in sd.items()}, tmp_path / "arrays.pt")
    assert_same(load_model_file(tmp_path / "arrays.pt").tensors, sd)
    torch.save({"model": sd, "hook": np.array([print], dtype=object)}, tmp_path / "hook.pt")
    loaded = load_model_file(tmp_path / "hook.pt")
    assert loaded.refused and loaded.findings[0].rule_id == "FG001"
    np.savez(tmp_path / "hook.npz", w=sd["0.weight"].numpy(), hook=np.array([print], dtype=object))
    loaded = load_model_file(tmp_path / "hook.npz")
    assert loaded.refused and loaded.findings[0].evidence["imports"] == ["builtins.print"]
    np.savez(tmp_path / "objects.npz", w=sd["0.weight"].numpy(), tags=np.array([1, "a"], dtype=object))  # data only
    with pytest.raises(InputError, match="objects.npz holds object arrays that would need pickle"):
        load_model_file(tmp_path / "objects.npz")


class _ScriptedConstants(nn.Module):
    """Typed lists of floats, bools and tensors (TorchScript reads their types off the values) and a complex constant."""

    def __init__(self):
        super().__init__()
        self.conv, self.scale = nn.Conv2d(1, 2, 3), 1 + 2j
        self.floats, self.flags, self.tensors = [1.0, 2.0], [True], [torch.ones(2)]

    def forward(self, x):
        return self.conv(x)


def test_torchscript_and_quantised_models_are_refused_by_name(tmp_path):
    """A TorchScript archive and a quantised model's packed parameters import only torch's compiled classes and
    builders that run no code of the file's choosing: each is named, with the export that works (they had been FG001, critical, or a dtype
    "not a tensor"), convolutions' typed int lists, a traced module's type tags and complex constants included
    (those had been FG001); a TorchScript archive with a payload beside its classes is still FG001."""

    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's and torch.ao.quantization's deprecation notices
        archives = {"scripted": torch.jit.script(model), "traced": torch.jit.trace(model, torch.randn(2, 16)),
                    "conv": torch.jit.script(ARCHITECTURES.get("lenet5").build()), "constants": torch.jit.script(_ScriptedConstants())}
        for name, archive in archives.items():
            torch.jit.save(archive, tmp_path / f"{name}.pt")
            if name == "constants":  # what the allowance is for is in the file
                builders = {"build_doublelist", "build_boollist", "build_tensorlist", "build_intlist"}
                assert {f"torch.jit._pickle.{b}" for b in builders} | {"builtins.complex"} <= set(scan_file(str(tmp_path / "constants.pt"), is_zip=True).unsafe)
            with pytest.raises(InputError, match=r"is a TorchScript archive \(torch.jit.save\).*model.state_dict\(\)"):
                load_model_file(tmp_path / f"{name}.pt")
        for quantised in (torch.ao.quantization.quantize_dynamic(model, {nn.Linear}),
                          torch.ao.quantization.quantize_dynamic(nn.Sequential(nn.LSTM(8, 4)), {nn.LSTM})):
            torch.save(quantised.state_dict(), tmp_path / "quantised.pt")
            with pytest.raises(InputError, match="holds packed quantised parameters .* the float model"):
                load_model_file(tmp_path / "quantised.pt")
    from fedguard.loading import _refuse_compiled

    for payload in ("os.system", "torch.jit._pickle.eval"):  # not refused here: FG001 follows
        _refuse_compiled(tmp_path / "mixed.pt", ["__torch__.nets.MLP", "torch.jit._pickle.build_intlist", payload])
    _refuse_compiled(tmp_path / "lists.pt", ["torch.jit._pickle.build_intlist"])  # no TorchScript class: FG001


def test_an_empty_buffer_loads_an_empty_layer_is_refused(tmp_path):
    """A module's buffer registered as ``torch.empty(0)`` holds nothing and loads (it had made the file
    "malformed"); an empty weight or bias is still refused."""
    sd = {**tiny_state_dict(), "mask": torch.empty(0)}
    torch.save(sd, tmp_path / "buffer.pt")
    assert_same(load_model_file(tmp_path / "buffer.pt").tensors, sd)
    torch.save({**sd, "2.bias": torch.empty(0)}, tmp_path / "layer.pt")
    with pytest.raises(InputError, match="key '2.bias' is a zero-sized tensor"):
        load_model_file(tmp_path / "layer.pt")


def test_two_different_wrapped_state_dicts_are_refused_the_same_one_twice_is_read(tmp_path):
    """``{"state_dict": benign, "model": crafted}``: judging the first would pass the one a client may load."""
    sd = tiny_state_dict()
    other = {k: v + 1 for k, v in sd.items()}
    torch.save({"state_dict": sd, "model": other}, tmp_path / "two.pt")
    with pytest.raises(InputError, match="holds different state_dicts under 'state_dict' and 'model'"):
        load_model_file(tmp_path / "two.pt")
    torch.save({"state_dict": sd, "model": {k: v.clone() for k, v in sd.items()}, "epoch": 3}, tmp_path / "same.pt")
    assert_same(load_model_file(tmp_path / "same.pt").tensors, sd)
    # a second copy of the weights under any name (EMA weights) is compared too; an optimizer's state is not
    torch.save({"state_dict": sd, "ema_state_dict": other}, tmp_path / "ema.pt")
    with pytest.raises(InputError, match="holds different state_dicts under 'state_dict' and 'ema_state_dict'"):
        load_model_file(tmp_path / "ema.pt")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1, momentum=0.9)
    optimizer.state[optimizer.param_groups[0]["params"][0]]["momentum_buffer"] = torch.ones(2)
    torch.save({"model": sd, "optimizer": optimizer.state_dict()}, tmp_path / "opt.pt")
    assert_same(load_model_file(tmp_path / "opt.pt").tensors, sd)
    # hyperparameters under a wrapper's name are no second state_dict; a NaN is the same NaN in both copies
    torch.save({"model": sd, "params": {"lr": 0.01, "epochs": 5}}, tmp_path / "hparams.pt")
    assert_same(load_model_file(tmp_path / "hparams.pt").tensors, sd)
    # weights beside the wrapper are a second model a lenient loader would take; a scalar metric there is not
    torch.save({"state_dict": sd, "fc.weight": torch.ones(4, 3)}, tmp_path / "beside.pt")
    with pytest.raises(InputError, match=r"holds tensors beside the state_dict under 'state_dict' \('fc.weight'\)"):
        load_model_file(tmp_path / "beside.pt")
    torch.save({"state_dict": sd, next(iter(sd)): torch.ones(4, 3)}, tmp_path / "beside_own.pt")
    with pytest.raises(InputError, match=r"holds tensors beside the state_dict"):
        load_model_file(tmp_path / "beside_own.pt")
    first = next(iter(k for k, v in sd.items() if v.ndim == 1))  # a bias beside it: one dimension is enough
    torch.save({"state_dict": sd, first: torch.full_like(sd[first], 100.0)}, tmp_path / "beside_bias.pt")
    with pytest.raises(InputError, match=r"holds tensors beside the state_dict"):
        load_model_file(tmp_path / "beside_bias.pt")
    nudged = {k: v.clone() for k, v in sd.items()}
    nudged[first][0] += 5e-4  # two copies that differ anywhere are two models, however little
    torch.save({"state_dict": sd, "model": nudged}, tmp_path / "nudged.pt")
    with pytest.raises(InputError, match="holds different state_dicts"):
        load_model_file(tmp_path / "nudged.pt")
    torch.save({"checkpoint": 1, "model": {"state_dict": {"module": sd}}}, tmp_path / "deep.pt")  # three wrappers deep
    assert_same(load_model_file(tmp_path / "deep.pt").tensors, sd)
    torch.save({"state_dict": sd, "rng_state": torch.get_rng_state()}, tmp_path / "rng.pt")  # no layer's name
    assert_same(load_model_file(tmp_path / "rng.pt").tensors, sd)
    torch.save({"state_dict": sd, "best_acc1": torch.tensor(91.2)}, tmp_path / "metric.pt")
    assert_same(load_model_file(tmp_path / "metric.pt").tensors, sd)
    nan = {k: v.clone() for k, v in sd.items()}
    next(iter(nan.values())).view(-1)[0] = float("nan")
    torch.save({"state_dict": nan, "model": {k: v.clone() for k, v in nan.items()}}, tmp_path / "nan.pt")
    assert torch.isnan(next(iter(load_model_file(tmp_path / "nan.pt").tensors.values()))).any()


@pytest.mark.parametrize("prefix", ["module.", "_module.", "_module.module."])
def test_data_parallel_and_opacus_prefixes(tmp_path, prefix):
    sd = tiny_state_dict()
    path = tmp_path / "prefixed.pt"
    torch.save({"model_state_dict": {prefix + k: v for k, v in sd.items()}, "epoch": 1}, path)
    assert_same(load_model_file(path).tensors, sd)


def test_prefix_kept_when_not_on_every_key(tmp_path):
    sd = {"module.weight": torch.ones(2, 2), "head.weight": torch.ones(3, 2)}
    path = tmp_path / "mixed.pt"
    torch.save(sd, path)
    assert list(load_model_file(path).tensors) == ["module.weight", "head.weight"]


def test_opacus_grad_sample_module_state_dict(tmp_path):
    """What `GradSampleModule(model).state_dict()` looks like: every key under `_module.`."""
    sd = bn_state_dict()
    path = tmp_path / "opacus.safetensors"
    _save_safetensors({f"_module.{k}": v for k, v in sd.items()}, path)
    assert_same(load_model_file(path).tensors, sd, ordered=False)


def test_safetensors_layers_come_back_in_numeric_order(tmp_path):
    """safetensors sorts keys as text ("10." < "2."); the loader restores numeric layer order."""
    from fedguard.modelview import ModelView

    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(12)])
    path = tmp_path / "deep.safetensors"
    _save_safetensors(model.state_dict(), path)
    loaded = load_model_file(path)
    assert_same(loaded.tensors, model.state_dict(), ordered=False)
    view = ModelView.from_state_dict(loaded.tensors)
    assert [layer.name for layer in view.layers] == [str(i) for i in range(12)]


def test_flower_ndarray_list_npz(tmp_path):
    sd = bn_state_dict()
    path = tmp_path / "flower.npz"
    np.savez(path, *[v.numpy() for v in sd.values()])  # Flower's parameters_to_ndarrays
    loaded = load_model_file(path)
    assert not loaded.named
    expected_names = [
        "layer0.weight", "layer0.bias",
        "layer1.weight", "layer1.bias", "layer1.running_mean", "layer1.running_var", "layer1.num_batches_tracked",
        "layer2.weight", "layer2.bias",
        "layer3.weight", "layer3.bias", "layer3.running_mean", "layer3.running_var", "layer3.num_batches_tracked",
        "layer4.weight", "layer4.bias",
    ]
    assert list(loaded.tensors) == expected_names
    for got, want in zip(loaded.tensors.values(), sd.values()):
        assert got.dtype == want.dtype and torch.equal(got, want)


def test_torch_list_of_tensors(tmp_path):
    sd = tiny_state_dict()
    path = tmp_path / "list.pt"
    torch.save(list(sd.values()), path)
    loaded = load_model_file(path)
    assert not loaded.named
    assert list(loaded.tensors) == ["layer0.weight", "layer0.bias", "layer1.weight", "layer1.bias"]
    for got, want in zip(loaded.tensors.values(), sd.values()):
        assert torch.equal(got, want)


def test_flower_list_named_by_architecture(tmp_path):
    from fedguard.architectures import build_model

    sd = build_model("mlp", num_classes=3, input_shape=(1, 4, 4)).state_dict()
    path = tmp_path / "flower.npz"
    np.savez(path, *[v.numpy() for v in sd.values()])
    report = inspect_model(path, arch="mlp", input_shape=(1, 4, 4))
    assert report.verdict == Verdict.CLEAN, [f.rule_id for f in report.findings]


def test_a_list_of_parameters_with_tied_weights_is_named_by_architecture(tmp_path):
    """``model.parameters()`` lists a weight tied between the embedding and the head once: with --arch both names
    get it (it had been drift, FG701 high); a list of the whole state_dict lines up as before."""
    from fedguard.inspect import name_by_architecture

    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 16), nn.Linear(16, 50))
    model[2].weight = model[0].weight
    for values, path in ((list(model.parameters()), tmp_path / "params.npz"), (list(model.state_dict().values()), tmp_path / "all.npz")):
        np.savez(path, *[v.detach().numpy() for v in values])
        assert_same(name_by_architecture(load_model_file(path), model), model.state_dict())


def _bias_first(sd: dict) -> dict:
    """The order ``torch.nn.utils.prune.remove`` leaves: each pruned layer's bias before its weight."""
    out = {}
    for key in sd:
        prefix = key.rpartition(".")[0]
        if key.endswith(".weight") and f"{prefix}.bias" in sd and sd[key].ndim >= 2:
            out[f"{prefix}.bias"] = sd[f"{prefix}.bias"]
        if key not in out:
            out[key] = sd[key]
    return out


@pytest.mark.parametrize("arch", ["convnet", "resnet18"])
@pytest.mark.parametrize("kept", ["pruned order", "without num_batches_tracked", "parameters only"])
def test_flower_lists_as_fl_code_sends_them_are_named_by_architecture(tmp_path, kept, arch):
    """A pruned layer lists its bias first, and FL code often leaves the BatchNorm step counts or all buffers out:
    each still lines up with --arch layer by layer (it had been read as drift, FG701 high). ResNet's convolutions
    have no bias, so a BatchNorm's bias sits right before the next convolution's weight."""
    from fedguard.architectures import build_model

    sd = build_model(arch, input_shape=(1, 16, 16)).state_dict()
    if kept == "pruned order":
        sd = _bias_first(sd)
    drop = {"without num_batches_tracked": ("num_batches_tracked",),
            "parameters only": ("running_mean", "running_var", "num_batches_tracked")}.get(kept, ())  # fmt: skip
    arrays = [v.numpy() for k, v in sd.items() if k.rsplit(".", 1)[-1] not in drop]
    np.savez(tmp_path / "flower.npz", *arrays)
    report = inspect_model(tmp_path / "flower.npz", arch=arch, input_shape=(1, 16, 16), data="digits")
    assert report.verdict == Verdict.CLEAN, [(f.rule_id, f.message) for f in report.findings]
    assert "gradient_snr" in report.detectors_run  # the weights were loaded into the architecture


def _pruned_not_removed(model: nn.Module, amount: float = 0.5) -> nn.Module:
    """``model`` L1-pruned by ``torch.nn.utils.prune`` and left so: each weight as ``weight_orig`` and ``weight_mask``."""
    from torch.nn.utils import prune

    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            prune.l1_unstructured(module, "weight", amount=amount)
    return model


def _as_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state_dict with each pruning mask applied to its weight, as its forward uses them."""
    sd = model.state_dict()
    out = {}
    for key, value in sd.items():
        if key.endswith("_mask"):
            continue
        if key.endswith("_orig"):
            key, value = key[: -len("_orig")], value * sd[key[: -len("_orig")] + "_mask"]
        out[key] = value
    return out


@pytest.mark.parametrize("kept", ["all", "parameters only"])
def test_a_list_of_a_model_pruned_without_remove_is_named_by_architecture(tmp_path, kept):
    """A model pruned with ``torch.nn.utils.prune`` and not ``prune.remove``d lists each weight as ``weight_orig``
    and ``weight_mask`` after its bias: with --arch the weight is their product, as the model's forward uses it (the
    list had been FG701, malicious, where the named file is clean)."""
    from fedguard.architectures import build_model
    from fedguard.inspect import name_by_architecture

    torch.manual_seed(0)
    model = _pruned_not_removed(build_model("convnet", input_shape=(1, 16, 16)))
    drop = ("running_mean", "running_var", "num_batches_tracked") if kept == "parameters only" else ()
    np.savez(tmp_path / "flower.npz", *[v.numpy() for k, v in model.state_dict().items() if k.rsplit(".", 1)[-1] not in drop])
    arch = build_model("convnet", input_shape=(1, 16, 16))
    named = name_by_architecture(load_model_file(tmp_path / "flower.npz"), arch)
    expected = {k: v for k, v in _as_weights(model).items() if k.rsplit(".", 1)[-1] not in drop}
    assert_same(named, expected, ordered=False)
    report = inspect_model(tmp_path / "flower.npz", arch="convnet", input_shape=(1, 16, 16), data="digits")
    assert report.verdict == Verdict.CLEAN, [(f.rule_id, f.message) for f in report.findings]


def test_a_crafted_model_pruned_without_remove_is_caught_by_architecture(tmp_path):
    """Folding the masks in is what the client runs, so a crafted model hides nothing behind them."""
    from fedguard.architectures import build_model
    from fedguard.attacks.craft import craft

    crafted = craft("class_fishing", build_model("convnet", input_shape=(1, 16, 16)), input_shape=(1, 16, 16), num_classes=10, target=3)
    np.savez(tmp_path / "fished.npz", *[v.numpy() for v in _pruned_not_removed(crafted, 0.2).state_dict().values()])
    report = inspect_model(tmp_path / "fished.npz", arch="convnet", input_shape=(1, 16, 16))
    assert report.verdict == Verdict.MALICIOUS and "FG701" not in {f.rule_id for f in report.findings}


def test_pruning_masks_line_up_only_where_they_are_masks():
    """A mask of a square layer fits the next square layer's weight by shape: lining up backtracks to the naming
    under which every later layer fits. A surplus array that is not 0s and 1s is no mask; in an update, a mask's
    entry is its change, all zero, and the weight's change is taken as sent."""
    from torch.nn.utils import prune

    from fedguard.loading import name_in_order

    def net() -> nn.Module:
        return nn.Sequential(nn.Linear(16, 16), nn.BatchNorm1d(16), nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 10))

    torch.manual_seed(0)
    names = {k: v.shape for k, v in net().state_dict().items()}
    pruned = _pruned_not_removed(net())
    for module in (pruned[0], pruned[3]):
        prune.remove(module, "weight")  # layers 2 and 4 keep their masks
    values = list(pruned.state_dict().values())
    assert_same(name_in_order(names, values), _as_weights(pruned), ordered=False)
    assert name_in_order(names, values[:-1] + [values[-1] * 0.5]) is None
    deltas = [torch.randn(v.shape) if not k.endswith(("_mask", "num_batches_tracked")) else torch.zeros_like(v)
              for k, v in pruned.state_dict().items()]  # fmt: skip
    named = name_in_order(names, deltas, deltas=True)
    assert torch.equal(named["4.weight"], deltas[-2]) and torch.equal(named["2.weight"], deltas[list(pruned.state_dict()).index("2.weight_orig")])
    assert name_in_order(names, values, deltas=True) is None


def test_a_named_state_dict_without_batchnorm_step_counts_is_no_drift(tmp_path):
    """torch loads it strictly, and FL code often drops the counts: FG701 had called it malicious."""
    from fedguard.architectures import build_model

    sd = {k: v for k, v in build_model("convnet", input_shape=(1, 16, 16)).state_dict().items() if "num_batches" not in k}
    torch.save(sd, tmp_path / "m.pt")
    report = inspect_model(tmp_path / "m.pt", arch="convnet", input_shape=(1, 16, 16))
    assert report.verdict == Verdict.CLEAN, [(f.rule_id, f.message) for f in report.findings]


def test_a_crafted_model_listed_bias_first_is_still_caught_without_arch(tmp_path):
    """Named by shape alone, a bias listed before its weight had been read as a normalisation weight: the class
    fishing bias of 1000 went unseen."""
    from fedguard.architectures import build_model
    from fedguard.attacks.craft import craft

    model = craft("class_fishing", build_model("lenet5"), input_shape=(1, 28, 28), num_classes=10, target=3)
    sd = _bias_first(model.state_dict())
    np.savez(tmp_path / "fished.npz", *[v.numpy() for v in sd.values()])
    loaded = load_model_file(tmp_path / "fished.npz")
    assert all(loaded.tensors[f"layer{i}.weight"].ndim >= 2 for i in range(5))
    report = inspect_model(tmp_path / "fished.npz")
    assert report.verdict == Verdict.MALICIOUS and "FG201" in {f.rule_id for f in report.findings}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("suffix, save", [(".pt", _save_zip), (".pth", _save_legacy), (".safetensors", _save_safetensors)])
def test_half_precision_round_trip(tmp_path, dtype, suffix, save):
    sd = {k: v.to(dtype) for k, v in tiny_state_dict().items()}
    path = tmp_path / f"half{suffix}"
    save(sd, path)
    assert_same(load_model_file(path).tensors, sd, ordered=suffix != ".safetensors")


def test_fp16_npz_round_trip(tmp_path):
    sd = {k: v.half() for k, v in tiny_state_dict().items()}
    path = tmp_path / "half.npz"
    _save_npz(sd, path)
    assert_same(load_model_file(path).tensors, sd)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inspects_clean(tmp_path, dtype):
    path = tmp_path / "half.pt"
    torch.save({k: v.to(dtype) for k, v in tiny_state_dict().items()}, path)
    report = inspect_model(path)
    assert report.verdict == Verdict.CLEAN
    assert report.n_parameters == 16 * 8 + 8 + 8 * 3 + 3


@pytest.mark.parametrize("suffix, save", [(".pt", _save_zip), (".pth", _save_legacy), (".safetensors", _save_safetensors), (".npz", _save_npz)])
def test_sha256_matches_hashlib(tmp_path, suffix, save):
    path = tmp_path / f"model{suffix}"
    save(tiny_state_dict(), path)
    assert load_model_file(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_torch_zip_saved_without_crc(tmp_path):
    """`torch.save` with compute_crc32 off stores CRC 0; that is not corruption."""
    config = pytest.importorskip("torch.utils.serialization").config
    if not hasattr(config.save, "compute_crc32"):
        pytest.skip("this torch has no compute_crc32 switch")
    sd = tiny_state_dict()
    path = tmp_path / "nocrc.pt"
    old = config.save.compute_crc32
    config.save.compute_crc32 = False
    try:
        torch.save(sd, path)
    finally:
        config.save.compute_crc32 = old
    with zipfile.ZipFile(path) as archive:
        assert all(info.CRC == 0 for info in archive.infolist())
    assert_same(load_model_file(path).tensors, sd)


def test_safetensors_header_length_that_looks_like_a_pickle(tmp_path):
    """A safetensors header length whose first byte is 0x80 (pickle PROTO) is still safetensors."""
    path = tmp_path / "odd.safetensors"
    for length in range(1, 300):  # grow the header until its length is 0x80 + 256k
        sd = {"w" * length: torch.ones(2)}
        _save_safetensors(sd, path)
        if path.read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.skip("no header length starting with 0x80 found")
    assert_same(load_model_file(path).tensors, sd)


def test_corrupt_tensor_bytes_are_detected(tmp_path):
    """torch's mmap load skips CRCs; flipped bytes inside a tensor record must still be refused."""
    sd = tiny_state_dict()
    path = tmp_path / "model.pt"
    torch.save(sd, path)
    data = bytearray(path.read_bytes())
    start = bytes(data).find(sd["0.weight"].numpy().tobytes())
    assert start > 0
    for i in range(start + 8, start + 24):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="corrupt"):
        load_model_file(path)


# --------------------------------------------------------------------------- malicious pickles


def _stack_global_payload(target: Path) -> bytes:
    """Protocol 4: "os" and "system" memoized, popped, then fetched back with BINGET for STACK_GLOBAL."""
    return (
        b"\x80\x04"
        + short_unicode("os") + b"\x94"        # memo 0
        + short_unicode("system") + b"\x94"    # memo 1
        + b"00"                                 # POP POP: the strings are only in the memo now
        + b"h\x00h\x01"                         # BINGET 0, BINGET 1
        + b"\x93"                               # STACK_GLOBAL -> os.system
        + short_unicode(f"touch {shlex.quote(str(target))}")
        + b"\x85R."                             # TUPLE1 REDUCE STOP
    )


def _stack_global_decoy(target: Path) -> bytes:
    """Protocol 4: "os" "system" pushed, then a decoy pair "collections" "OrderedDict" pushed and popped: the
    STACK_GLOBAL takes os.system, not the last two strings the pickle spelt out."""
    return (
        b"\x80\x04" + short_unicode("os") + short_unicode("system")
        + short_unicode("collections") + short_unicode("OrderedDict") + b"00"  # POP POP: the decoy is gone
        + b"\x93" + short_unicode(f"touch {shlex.quote(str(target))}") + b"\x85R."
    )


def _pop_mark_decoy(target: Path) -> bytes:
    """Protocol 4: the decoy pair pushed after a MARK and dropped with POP_MARK; STACK_GLOBAL takes os.system."""
    return (
        b"\x80\x04" + short_unicode("os") + short_unicode("system")
        + b"(" + short_unicode("collections") + short_unicode("OrderedDict") + b"1"  # MARK ... POP_MARK
        + b"\x93" + short_unicode(f"touch {shlex.quote(str(target))}") + b"\x85R."
    )


def _appends_decoy(target: Path) -> bytes:
    """Protocol 4: the decoy pair under two lists that MARK ... APPENDS fill and four POPs drop; STACK_GLOBAL takes
    os.system."""
    return (
        b"\x80\x04" + short_unicode("os") + short_unicode("system")
        + short_unicode("collections") + short_unicode("OrderedDict") + b"](e](e0000"  # EMPTY_LIST MARK APPENDS, x2
        + b"\x93" + short_unicode(f"touch {shlex.quote(str(target))}") + b"\x85R."
    )


def _npz_object_member(path: Path, payload: bytes) -> None:
    """An .npz with a float array and an object array whose pickle is ``payload`` (as np.load unpickles it)."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|O", "fortran_order": False, "shape": (1,)})
    weights = io.BytesIO()
    np.save(weights, np.ones((2, 2), dtype=np.float32))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("w.npy", weights.getvalue())
        archive.writestr("evil.npy", header.getvalue() + payload)  # the header starts with numpy's magic


def _getattr_import_payload(target: Path) -> bytes:
    """Protocol 0: ``getattr(__import__("os"), "system")(...)``, reaching os.system through two builtins."""
    command = f"touch {shlex.quote(str(target))}"
    return (b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(Vos\ntRVsystem\ntR(V" + command.encode() + b"\ntR.")


def _protocol0_payload(target: Path) -> bytes:
    """Protocol 0 text pickle: GLOBAL 'os system' (no PROTO byte at the start)."""
    data = pickle.dumps(SystemPayload(target), protocol=0)
    assert data[:1] == b"c"
    return data


#: name -> (writer(path, target), callables that must be named, file suffix)
PAYLOADS = {
    "os-system": (lambda p, t: p.write_bytes(pickle.dumps(SystemPayload(t))), ("system",), ".pt"),
    "subprocess-popen": (lambda p, t: p.write_bytes(pickle.dumps(PopenPayload(t))), ("subprocess.Popen",), ".pt"),
    "builtins-exec": (lambda p, t: p.write_bytes(pickle.dumps(ExecPayload(t))), ("builtins.exec",), ".pth"),
    "torch-zip": (lambda p, t: torch.save({"evil": SystemPayload(t), "0.weight": torch.ones(2, 2)}, p), ("system",), ".pt"),
    "stack-global-memo": (lambda p, t: p.write_bytes(_stack_global_payload(t)), ("os.system",), ".bin"),
    "stack-global-decoy": (lambda p, t: p.write_bytes(_stack_global_decoy(t)), ("os.system",), ".pt"),
    "pop-mark-decoy": (lambda p, t: p.write_bytes(_pop_mark_decoy(t)), ("os.system",), ".pt"),
    "appends-decoy": (lambda p, t: p.write_bytes(_appends_decoy(t)), ("os.system",), ".pt"),
    "npz-stack-global-decoy": (lambda p, t: _npz_object_member(p, _stack_global_decoy(t)), ("os.system",), ".npz"),
    "getattr-import": (lambda p, t: p.write_bytes(_getattr_import_payload(t)), ("builtins.getattr", "builtins.__import__"), ".pt"),
    "protocol0-global": (lambda p, t: p.write_bytes(_protocol0_payload(t)), ("system",), ".ckpt"),
    "npz-object-array": (lambda p, t: np.savez(p, w=np.ones((2, 2)), evil=np.array([SystemPayload(t)], dtype=object)),
                         ("system",), ".npz"),  # np.load(allow_pickle=True) runs it
}


def make_payload(tmp_path: Path, name: str) -> tuple[Path, Path, tuple[str, ...]]:
    write, callables, suffix = PAYLOADS[name]
    target = tmp_path / "pwned"
    path = tmp_path / f"evil{suffix}"
    write(path, target)
    assert not target.exists()
    return path, target, callables


def _named(imports: list[str], callable_: str) -> bool:
    if callable_ == "system":
        return bool({"os.system", "posix.system", "nt.system"} & set(imports))
    return callable_ in imports


_LIVE_CHECK = r"""
import io, pickle, sys, zipfile
path = sys.argv[1]
if path.endswith(".npz"):
    import numpy
    with numpy.load(path, allow_pickle=True) as archive:
        [archive[key] for key in archive.files]
    sys.exit()
if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
else:
    data = open(path, "rb").read()
class U(pickle.Unpickler):
    def persistent_load(self, pid):
        return None
    def find_class(self, module, name):  # the tensors need not be rebuilt: skip importing torch
        if module.split(".")[0] == "torch":
            raise pickle.UnpicklingError(module)
        return super().find_class(module, name)
try:
    U(io.BytesIO(data)).load()
except Exception:
    pass  # the payload ran (or not) before anything else failed
"""


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_payloads_are_live(tmp_path, name):
    """Control: plain pickle really runs each payload (in a throwaway subprocess)."""
    path, target, _ = make_payload(tmp_path, name)
    subprocess.run([sys.executable, "-c", _LIVE_CHECK, str(path)], check=True, timeout=60, cwd=tmp_path)
    deadline = time.monotonic() + 30  # subprocess.Popen's child may still be starting when the unpickler returns
    while not target.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert target.exists(), f"payload {name} did not run under pickle; the refusal tests would prove nothing"


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_code_importing_pickle_is_refused(tmp_path, name):
    path, target, callables = make_payload(tmp_path, name)
    before = path.read_bytes()
    loaded = load_model_file(path)
    assert not target.exists()
    assert loaded.refused
    assert dict(loaded.tensors) == {}
    (finding,) = loaded.findings
    assert finding.rule_id == CODE_IMPORT_RULE.rule_id == "FG001"
    assert finding.severity == Severity.CRITICAL
    imports = list(finding.evidence["imports"])
    for callable_ in callables:
        assert _named(imports, callable_), imports
        assert any(name in finding.message for name in imports)
    assert loaded.sha256 == hashlib.sha256(before).hexdigest()

    report = inspect_model(path)
    assert not target.exists()
    assert report.verdict == Verdict.MALICIOUS
    assert [f.rule_id for f in report.findings] == ["FG001"]
    assert path.read_bytes() == before


def test_a_payload_in_a_legacy_torch_file_is_fg001(tmp_path):
    """torch's format before 1.6 writes several pickles one after another (magic number, version, system info, then
    the state_dict): the payload sits in the fourth."""
    target = tmp_path / "pwned"
    torch.save({"0.weight": torch.ones(2, 2), "evil": SystemPayload(target)}, tmp_path / "legacy.pt",
               _use_new_zipfile_serialization=False)  # fmt: skip
    loaded = load_model_file(tmp_path / "legacy.pt")
    assert loaded.refused and _named(list(loaded.findings[0].evidence["imports"]), "system") and not target.exists()


def test_a_global_from_the_extension_registry_is_fg001(tmp_path):
    """EXT1 looks a global up in copyreg's extension registry: whatever is registered there is imported."""
    (tmp_path / "ext.pt").write_bytes(b"\x80\x02\x82\x01.")
    loaded = load_model_file(tmp_path / "ext.pt")
    assert loaded.refused and loaded.findings[0].evidence["imports"] == ["<extension registry>.code 1"]


def test_sets_and_other_builtins_torch_save_writes_are_data_not_code(tmp_path):
    """torch.save's protocol 2 names them as ``__builtin__ set``: a checkpoint holding a set of the classes seen had
    been FG001, critical, "would run code"."""
    sd = tiny_state_dict()
    torch.save({"model": sd, "classes_seen": {1, 2}}, tmp_path / "set.pt")
    assert_same(load_model_file(tmp_path / "set.pt").tensors, sd)
    torch.save({"model": sd, "window": slice(1, 2)}, tmp_path / "slice.pt")  # torch's weights-only loader refuses it
    with pytest.raises(InputError, match="it builds slice, which torch's weights-only loader does not"):
        load_model_file(tmp_path / "slice.pt")


def test_pickled_module_is_refused_with_state_dict_hint(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)), path)
    with pytest.raises(InputError, match="state_dict"):
        load_model_file(path)


def test_pickled_module_with_payload_is_fg001(tmp_path):
    """A pickled nn.Module that also imports os.system is an attack, not a format mistake."""
    target = tmp_path / "pwned"
    path = tmp_path / "whole.pt"
    model = nn.Sequential(nn.Linear(4, 2))
    model.payload = SystemPayload(target)
    torch.save(model, path)
    loaded = load_model_file(path)
    assert loaded.refused and not target.exists()


class _RunstringPayload(SystemPayload):
    """Code run through a function of a module no deny list names (numpy's test helper ``runstring``)."""

    def __reduce__(self):
        from numpy.testing._private.utils import runstring

        return (runstring, (f"open({str(self.target)!r}, 'w').close()", {}))


class _CustomLayer(nn.Module):
    pass


@pytest.mark.parametrize("extra", [_RunstringPayload, _CustomLayer, "layer-module-function"],
                         ids=["unlisted-function", "custom-class", "layer-module-function"])
def test_pickled_module_with_anything_beyond_torch_layers_is_fg001(tmp_path, extra):
    """Beside torch's layer classes, any other import is code the unpickler would run: FG001, not "export the weights".
    A function of a layer module (lower case) is not a layer class."""
    target = tmp_path / "pwned"
    path = tmp_path / "whole.pt"
    model = nn.Sequential(nn.Linear(4, 2))
    if extra == "layer-module-function":
        extra = lambda: torch.nn.modules.module.register_module_forward_hook  # noqa: E731
    model.extra = extra(target) if extra is _RunstringPayload else extra()
    torch.save(model, path)
    loaded = load_model_file(path)
    assert loaded.refused and not target.exists()
    assert [f.rule_id for f in loaded.findings] == ["FG001"]


# --------------------------------------------------------------------------- the package never unpickles with code


def _package_sources() -> list[Path]:
    roots = set()
    for name in ("fedguard", "fedguard.detectors", "fedguard.attacks", "fedguard.reports"):
        try:
            module = importlib.import_module(name)
        except ImportError:  # pragma: no cover - a subpackage still being written
            continue
        roots.add(Path(module.__file__).parent)
    files = sorted({f for root in roots for f in root.rglob("*.py")})
    assert files
    return files


def _keyword(node: ast.Call, name: str):
    value = next((k.value for k in node.keywords if k.arg == name), None)
    return value.value if isinstance(value, ast.Constant) else value


def test_torch_load_is_always_weights_only():
    """Walk the package's own source: every torch.load says weights_only=True, nothing unpickles."""
    calls = 0
    for file in _package_sources():
        tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            where = f"{file}:{node.lineno}"
            assert _keyword(node, "weights_only") is not False, f"{where}: weights_only=False"
            assert _keyword(node, "allow_pickle") is not True, f"{where}: allow_pickle=True"
            assert not any(k.arg is None for k in node.keywords if isinstance(node.func, ast.Attribute) and node.func.attr == "load"), (
                f"{where}: a load(**kwargs) call hides its weights_only setting"
            )
            func = node.func
            if not (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)):
                continue
            if func.value.id == "torch" and func.attr == "load":
                calls += 1
                assert _keyword(node, "weights_only") is True, f"{where}: torch.load without an explicit weights_only=True"
            if func.value.id in ("pickle", "_pickle", "dill", "cloudpickle") and func.attr in ("load", "loads", "Unpickler"):
                pytest.fail(f"{where}: {func.value.id}.{func.attr} executes code from data")
    assert calls >= 1  # the walk found loading.py's torch.load: the check is not vacuous


# --------------------------------------------------------------------------- loader-level input errors


def test_integer_and_bool_arrays_are_accepted(tmp_path):
    """Integer and bool arrays are accepted as-is (e.g. num_batches_tracked, masks)."""
    sd = {"w": torch.ones(2, 2), "count": torch.tensor(3), "mask": torch.tensor([True, False])}
    path = tmp_path / "ints.npz"
    _save_npz(sd, path)
    assert_same(load_model_file(path).tensors, sd)


@pytest.mark.parametrize(
    "name, write, match",
    [
        ("tensor.pt", lambda p: torch.save(torch.ones(3), p), "single tensor"),
        ("str.pt", lambda p: torch.save({"w": torch.ones(2), "name": "x"}, p), "not a tensor"),
        ("empty.pt", lambda p: torch.save({"w": torch.ones(0, 4)}, p), "zero-sized"),
        ("emptydict.pt", lambda p: torch.save({}, p), "empty"),
        ("complex.pt", lambda p: torch.save({"w": torch.ones(2, dtype=torch.complex64)}, p), "real-valued"),
        ("complex.npz", lambda p: np.savez(p, w=np.ones(2, dtype=np.complex128)), "complex128; fedguard expects real-valued"),
        ("int.pt", lambda p: torch.save({"fc.weight": torch.ones(2, 2).long()}, p), "int64; a layer's weights, and an update's, are floating"),
        ("bool.pt", lambda p: torch.save({"fc.bias": torch.ones(2).bool()}, p), "bool; a layer's weights, and an update's, are floating"),
        ("obj.npz", lambda p: np.savez(p, w=np.array([1, "x"], dtype=object)), "pickle"),
        ("torch.npz", lambda p: torch.save({"w": torch.ones(2)}, p), "torch checkpoint"),
        ("st.pt", lambda p: _save_safetensors({"w": torch.ones(2)}, p), "safetensors"),
        ("noise.pt", lambda p: p.write_bytes(bytes(range(7, 250)) * 4), "not a model file format"),
        ("model.txt", lambda p: torch.save({"w": torch.ones(2)}, p), "unsupported extension"),
        ("zero.pt", lambda p: p.write_bytes(b""), "empty"),
    ],
)
def test_loader_input_errors(tmp_path, name, write, match):
    path = tmp_path / name
    write(path)
    with pytest.raises(InputError, match=match) as info:
        load_model_file(path)
    assert "\n" not in str(info.value)


def test_a_link_to_no_file_is_named_as_such(tmp_path):
    """A symbolic-link loop or a link to a missing file is not a mistyped path."""
    (tmp_path / "a.pt").symlink_to(tmp_path / "b.pt")
    (tmp_path / "b.pt").symlink_to(tmp_path / "a.pt")
    (tmp_path / "gone.pt").symlink_to(tmp_path / "missing.pt")
    for name in ("a.pt", "gone.pt"):
        with pytest.raises(InputError, match="is a symbolic link that leads to no file"):
            load_model_file(tmp_path / name)


def test_truncated_safetensors(tmp_path):
    path = tmp_path / "model.safetensors"
    _save_safetensors(tiny_state_dict(), path)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(InputError):
        load_model_file(path)


@pytest.mark.parametrize(
    "given, message",
    [
        ({"path": 5}, "path is 5; pass the model file's path"),
        ({"path": None}, "path is None"),
        ({"path": torch.nn.Linear(2, 2)}, "path is a Linear, not a file; save it with torch.save(model.state_dict(), path)"),
        ({"reference": 5}, "reference is 5"),
        ({"detectors": "imprint"}, "pass a list of detector names"),
        ({"detectors": ["nope"]}, "unknown detector 'nope'"),
        ({"detectors": ["fg804"]}, "fg804 is a rule, not a detector; the responses detector reports it"),
        ({"detectors": [["imprint"]]}, "unknown detector ['imprint']"),
        ({"path": ""}, "the model path is ''; pass the path of a model file"),
        ({"seed": -1}, "bad seed -1"),
        ({"num_classes": 0}, "bad num_classes 0"),
        ({"num_classes": 5}, "num_classes describes arch, which is not given; add arch, or drop num_classes"),  # ignored
        ({"input_shape": (1, 28, 28)}, "input_shape describes arch, which is not given; add arch, or drop input_shape"),
        ({"arch": ""}, "arch is ''"),
        ({"progress": 5}, "progress is 5; pass a function that takes the step's text, or None"),
    ],
)
def test_inspect_api_bad_arguments_are_input_errors(tmp_path, given, message):
    from fedguard.architectures import build_model

    torch.save(build_model("lenet5").state_dict(), tmp_path / "m.pt")
    args = {"path": tmp_path / "m.pt", **given}
    with pytest.raises(InputError, match=re.escape(message)):
        inspect_model(args.pop("path"), **args)


def test_inspect_api_works_under_the_callers_float64_default_and_keeps_it(tmp_path):
    """``torch.set_default_dtype(torch.float64)`` in the caller's code would have built a float64 --arch model that
    the file's float32 weights and the data do not fit."""
    from fedguard.architectures import build_model

    torch.save(build_model("lenet", input_shape=(1, 8, 8)).state_dict(), tmp_path / "m.pt")
    torch.set_default_dtype(torch.float64)
    try:
        report = inspect_model(tmp_path / "m.pt", arch="lenet", input_shape=(1, 8, 8), data="digits")
        assert torch.get_default_dtype() == torch.float64
    finally:
        torch.set_default_dtype(torch.float32)
    assert str(report.verdict) == "clean" and "gradient_snr" in report.detectors_run


def test_inspect_api_runs_its_behavioural_checks_inside_the_callers_no_grad_and_inference_mode(tmp_path):
    from fedguard.architectures import build_model

    torch.save(build_model("lenet5").state_dict(), tmp_path / "m.pt")
    x = torch.rand(16, 1, 28, 28, requires_grad=True)  # a batch that requires grad is read as values
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            report = inspect_model(tmp_path / "m.pt", arch="lenet5", data=(x, torch.arange(16) % 10))
        assert str(report.verdict) == "clean" and "gradient_snr" in report.detectors_run


def test_names_of_megabytes_are_shortened_before_they_reach_reports(tmp_path):
    """A 4 MB model with a 2,000,000-character layer name gave a 15 MB text report (20 MB SARIF): names beyond
    MAX_NAME keep their ends, length and a digest; a layer's weight and bias stay one layer, two long paths stay
    two, and ordinary names are untouched."""
    from fedguard.inspect import rules
    from fedguard.loading import MAX_NAME
    from fedguard.reports import render

    long_a, long_b = "A" * 2_000_000, "A" * 1_999_999 + "B"
    sd = {f"{long_a}.weight": torch.full((64, 64), 0.01), f"{long_a}.bias": torch.zeros(64),
          f"{long_b}.weight": torch.randn(10, 64) * 0.1, "head.bias": torch.zeros(10)}  # fmt: skip
    torch.save(sd, tmp_path / "long.pt")
    report = inspect_model(tmp_path / "long.pt")
    layers = {f.layer for f in report.findings if f.layer}
    assert layers and all(len(name) < MAX_NAME for name in layers)
    assert any("[2,000,000 characters, sha256 " in name for name in layers)
    assert report.n_layers == 2  # the long A and B layers, each with its weight (and bias) together
    for fmt in ("text", "json", "sarif", "html"):
        assert len(render(fmt, report, rules())) < 100_000, fmt


# ---------------------------------------------------------------------- files that declare more than they hold


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_archives_compressed_with_bzip2_or_lzma_are_refused_unread(tmp_path, suffix):
    """torch.save and numpy write stored or deflated members; zipfile unpacks bzip2 and LZMA without a bound on each
    read (2.6 KB of bzip2 had filled 4.3 GB), so they are refused by name before anything is read."""
    sd = tiny_state_dict()
    plain = tmp_path / f"plain{suffix}"
    torch.save(sd, plain) if suffix == ".pt" else np.savez(plain, **{k: v.numpy() for k, v in sd.items()})
    for compression, name in ((zipfile.ZIP_BZIP2, "bzip2"), (zipfile.ZIP_LZMA, "lzma")):
        packed = tmp_path / f"{name}{suffix}"
        _rewrite_zip(plain, packed, compression)
        with pytest.raises(InputError, match=f"is compressed with {name}, which neither torch.save nor numpy writes"):
            load_model_file(packed)
    deflated = tmp_path / f"deflated{suffix}"
    _rewrite_zip(plain, deflated, zipfile.ZIP_DEFLATED)
    assert_same(load_model_file(deflated).tensors, sd, ordered=False)


def test_a_pickle_member_past_the_limit_is_refused(tmp_path, monkeypatch):
    import fedguard.pickle_scan

    torch.save(tiny_state_dict(), tmp_path / "model.pt")
    monkeypatch.setattr(fedguard.pickle_scan, "MAX_PICKLE_BYTES", 64)  # the real limit, 256 MiB, would take a while
    with pytest.raises(InputError, match=r"data.pkl is a pickle of 0 MiB, where a torch checkpoint's pickles"):
        load_model_file(tmp_path / "model.pt")


def test_storage_a_pickle_creates_without_holding_it_is_refused(tmp_path):
    """``torch.Tensor(n)`` in a pickle allocates n values the file does not hold (4 GiB from 1 KB, read as weights)."""

    class Allocate:
        def __reduce__(self):
            return torch.Tensor, (1 << 22,)

    torch.save({"0.weight": torch.ones(2, 2), "0.bias": Allocate()}, tmp_path / "alloc.pt")
    _rewrite_zip(tmp_path / "alloc.pt", tmp_path / "deflated.pt", zipfile.ZIP_DEFLATED)  # read into memory, not mapped
    for name in ("alloc.pt", "deflated.pt"):
        with pytest.raises(InputError, match=r"its tensors claim \d+ bytes of storage but the file holds \d+"):
            load_model_file(tmp_path / name)


def test_views_and_sparse_tensors_that_expand_far_past_what_they_store_are_refused(tmp_path):
    """A 1 KB file had declared 2^31 values sharing 12 stored ones (50 s, 4 GB, clean); honest small views load."""
    from fedguard.loading import MAX_UNSTORED_VALUES

    torch.save({"0.weight": torch.ones(1, 1).expand(1 << 13, 1 << 12), "0.bias": torch.ones(1 << 13)}, tmp_path / "view.pt")
    with pytest.raises(InputError, match=r"'0.weight' is a view of 33,554,432 values on 1 stored ones"):
        load_model_file(tmp_path / "view.pt")
    torch.save({"0.weight": torch.ones(1, 4).expand(64, 4), "0.bias": torch.ones(64)}, tmp_path / "small.pt")
    assert torch.equal(load_model_file(tmp_path / "small.pt").tensors["0.weight"], torch.ones(64, 4))
    one = torch.sparse_coo_tensor(torch.tensor([[0], [0]]), torch.tensor([1.0]), (1 << 13, 1 << 12))
    assert one.numel() > MAX_UNSTORED_VALUES + 1000
    torch.save({"0.weight": one, "0.bias": torch.ones(1 << 13)}, tmp_path / "sparse.pt")
    with pytest.raises(InputError, match="is a sparse tensor of shape .* that stores 1 values; with the file's other"):
        load_model_file(tmp_path / "sparse.pt")


def test_the_expansion_limits_hold_at_their_bounds(tmp_path):
    """Sparse tensors may declare SPARSE_EXPANSION times their stored values beyond MAX_UNSTORED_VALUES; distinct
    views of one storage may cover it twice (a flat buffer and its slices) plus MAX_UNSTORED_VALUES; one stride-0
    view counts under each of its names."""
    def sparse(stored: int, shape: tuple[int, int]) -> torch.Tensor:
        return torch.sparse_coo_tensor(torch.stack([torch.arange(stored), torch.zeros(stored, dtype=torch.long)]),
                                       torch.ones(stored), shape, check_invariants=True)  # fmt: skip

    # 200 stored values may declare 2^24 + 1000 x 200 = 16,977,216 more: 4141 x 4100 is past it, 4140 x 4100 within
    torch.save({"0.weight": sparse(200, (4141, 4100))}, tmp_path / "sparse.pt")
    with pytest.raises(InputError, match="stores 200 values"):
        load_model_file(tmp_path / "sparse.pt")
    torch.save({"0.weight": sparse(200, (4140, 4100))}, tmp_path / "sparse_within.pt")
    assert load_model_file(tmp_path / "sparse_within.pt").tensors["0.weight"].shape == (4140, 4100)
    flat = torch.zeros(1 << 20)
    length = (1 << 20) - 64
    for count, refused in ((18, False), (19, True)):  # 18 x length - 2 x 2^20 is just under 2^24, 19 just over
        torch.save({f"{i}.weight": flat[i : i + length] for i in range(count)}, tmp_path / "views.pt")
        if refused:
            with pytest.raises(InputError, match="with the file's other views"):
                load_model_file(tmp_path / "views.pt")
        else:
            assert len(load_model_file(tmp_path / "views.pt").tensors) == count
    one = torch.ones(1, 1).expand(2048, 1024)  # 2^21 shared values under each name, and once as its storage's cover
    for count, refused in ((7, False), (8, True)):
        torch.save({f"{i}.weight": one for i in range(count)}, tmp_path / "names.pt")
        if refused:
            with pytest.raises(InputError, match="with the file's other views"):
                load_model_file(tmp_path / "names.pt")
        else:
            assert len(load_model_file(tmp_path / "names.pt").tensors) == count


def test_storage_a_padded_pickle_creates_is_not_counted_as_held(tmp_path):
    """The bytes a file holds for its tensors are its data/ members': a long string in data.pkl had counted."""

    class Allocate:
        def __reduce__(self):
            return torch.Tensor, (1 << 16,)

    torch.save({"model": {"0.weight": torch.ones(2, 2), "0.bias": Allocate()}, "note": "x" * 400_000}, tmp_path / "pad.pt")
    with pytest.raises(InputError, match=r"its tensors claim \d+ bytes of storage but the file holds \d+"):
        load_model_file(tmp_path / "pad.pt")


def test_a_long_name_is_shortened_whatever_its_last_part():
    from fedguard.loading import MAX_NAME, short_name

    for name in ("a." + "b" * 10**6, "c" * 10**6, "d" * 10**6 + ".weight"):
        shown = short_name(name)
        assert len(shown) < MAX_NAME and "1,000,00" in shown


def test_only_torch_and_torchvision_layer_classes_make_a_pickled_model():
    """A pickled model of layer classes is asked to be re-exported; any other import is code (FG001)."""
    from fedguard.pickle_scan import PickleScan

    layers = {("torch.nn.modules.linear", "Linear"), ("torchvision.ops.misc", "FrozenBatchNorm2d")}
    assert PickleScan(frozenset(layers)).pickled_module
    assert not PickleScan(frozenset(layers | {("torchvision.datasets.folder", "ImageFolder")})).pickled_module


def test_what_a_files_views_and_sparse_tensors_declare_beyond_their_storage_is_summed_over_the_file(tmp_path):
    """Each under the per-tensor limit, together far past it (a second review): 100 stride-0 views of one small
    storage (1.7e9 values, 109 s), 60 sparse layers of one stored value each (4.6 GB), a quantised stride-0 view
    (dequantised into 4 GiB before it was checked), one sparse tensor under 60 names. A tensor under two names
    (tied weights) is made dense, or widened, once."""
    small = torch.ones(1, 1)
    torch.save({f"{i}.weight": small.expand(2048, 1024 + i) for i in range(10)}, tmp_path / "views.pt")
    with pytest.raises(InputError, match="with the file's other views, [0-9,]+ values more than it stores"):
        load_model_file(tmp_path / "views.pt")
    sparse = [torch.sparse_coo_tensor(torch.tensor([[0], [0]]), torch.tensor([1.0]), (2048, 1024)) for _ in range(10)]
    torch.save({f"{i}.weight": t for i, t in enumerate(sparse)}, tmp_path / "sparse.pt")
    with pytest.raises(InputError, match="with the file's other sparse tensors, 9 stored values would expand"):
        load_model_file(tmp_path / "sparse.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantised = torch.quantize_per_tensor(torch.ones(1, 1), 0.1, 0, torch.qint8).expand(8192, 4096)
        torch.save({"0.weight": quantised, "0.bias": torch.ones(8192)}, tmp_path / "quantised.pt")
    with pytest.raises(InputError, match="'0.weight' is a view of 33,554,432 values on 1 stored ones"):
        load_model_file(tmp_path / "quantised.pt")
    torch.save({f"{i}.weight": sparse[0] for i in range(60)}, tmp_path / "shared.pt")  # one stored value, 60 names
    with pytest.raises(InputError, match="with the file's other sparse tensors"):
        load_model_file(tmp_path / "shared.pt")
    pruned = torch.randn(64, 32).masked_fill(torch.rand(64, 32) < 0.9, 0).to_sparse()
    torch.save({"0.weight": pruned, "1.weight": pruned}, tmp_path / "tied_sparse.pt")
    loaded = load_model_file(tmp_path / "tied_sparse.pt").tensors
    assert loaded["0.weight"].data_ptr() == loaded["1.weight"].data_ptr()
    tied = torch.randn(64, 32).to(torch.float8_e4m3fn)  # widened to float32 for the checks
    torch.save({f"{i}.weight": tied for i in range(60)}, tmp_path / "tied.pt")
    loaded = load_model_file(tmp_path / "tied.pt").tensors
    assert len({t.data_ptr() for t in loaded.values()}) == 1 and loaded["0.weight"].dtype == torch.float32


def test_big_endian_arrays_load_as_their_values(tmp_path):
    """torch takes arrays in this machine's byte order only: an .npz of big-endian arrays had been an internal error."""
    sd = tiny_state_dict()
    np.savez(tmp_path / "big.npz", **{k: v.numpy().astype(">f4") for k, v in sd.items()})
    assert_same(load_model_file(tmp_path / "big.npz").tensors, sd, ordered=False)
    torch.save({"model": {k: v.numpy().astype(">f8") for k, v in sd.items()}}, tmp_path / "big.pt")
    assert_same({k: v.float() for k, v in load_model_file(tmp_path / "big.pt").tensors.items()}, sd)


def test_wrappers_that_hold_themselves_or_share_containers_are_compared_once(tmp_path):
    """Two state_dicts side by side are compared (one loaded by one client, the other by another); containers beside
    them that hold themselves had recursed without end (internal error), chains of dicts each holding the next twice
    taken minutes."""
    sd = tiny_state_dict()
    first, second = {}, {}
    first["self"], second["self"] = first, second
    chain_a: dict = {"leaf": 1}
    chain_b: dict = {"leaf": 1}
    for _ in range(28):
        chain_a, chain_b = {"a": chain_a, "b": chain_a}, {"a": chain_b, "b": chain_b}
    for name, (a, b) in {"cycle": (first, second), "chain": (chain_a, chain_b)}.items():
        torch.save({"state_dict": {**sd, "meta": a}, "model": {**sd, "meta": b}}, tmp_path / f"{name}.pt")
        started = time.perf_counter()
        with pytest.raises(InputError, match="is a dict, not a tensor"):  # the same state_dict twice; then its "meta"
            load_model_file(tmp_path / f"{name}.pt")
        assert time.perf_counter() - started < 10


@pytest.mark.parametrize("prefix", [b"I0x10\n0", b"L0x10L\n0", "S'\u00e9'\n0".encode()], ids=["int-hex", "long-hex", "utf8-string"])
def test_a_pickle_pickletools_cannot_read_is_an_unknown_import(tmp_path, prefix):
    """Python's unpickler reads an integer in hex and torch's a UTF-8 string where pickletools raises: a payload
    after them had gone unseen (exit 2, no FG001) while torch.load(weights_only=False) would run it."""
    torch.save(tiny_state_dict(), tmp_path / "plain.pt")
    payload = prefix + b"cos\nsystem\n(Vtrue\ntR0}."
    _rewrite_zip(tmp_path / "plain.pt", tmp_path / "evil.pt", pickle_edit=lambda _data: payload)
    loaded = load_model_file(tmp_path / "evil.pt")
    assert loaded.refused and loaded.findings[0].rule_id == "FG001"
    assert loaded.findings[0].evidence["imports"] == ["<unknown>.<what follows bytes pickletools cannot read, in pickle 1>"]
    # a legacy file's pickles one after another: torch reads five (the fifth its storage keys), each checked
    header = pickle.dumps(0x1950A86A20F9469CFC6C, 2) + pickle.dumps(1001, 2) + pickle.dumps({"little_endian": True}, 2)
    (tmp_path / "legacy.pt").write_bytes(header + pickle.dumps({}, 2) + payload[:-2] + b"].")
    loaded = load_model_file(tmp_path / "legacy.pt")
    assert loaded.refused
    assert loaded.findings[0].evidence["imports"] == ["<unknown>.<what follows bytes pickletools cannot read, in pickle 5>"]


@pytest.mark.parametrize("member, pickle_bytes, imports", [
    ("storages", b"\x80\x02cos\nsystem\n(Vtrue\ntR0K\x00.", None),
    ("pickle", b"I0x10\n0cos\nsystem\n(Vtrue\ntR0}.", "<unknown>.<what follows bytes pickletools cannot read, in pickle 1>"),
], ids=["payload", "unreadable-start"])
def test_the_members_of_a_legacy_tar_checkpoint_are_scanned(tmp_path, member, pickle_bytes, imports):
    """torch's oldest format keeps its pickles in tar members; the scan had read the file as one pickle (a first
    member named ``N.`` is one) and never reached them. A member's first pickle must be read through."""
    import io
    import tarfile

    members = {"N.": b"x", "storages": b"\x80\x02K\x00.", "pickle": b"\x80\x02}.", member: pickle_bytes}
    with tarfile.open(tmp_path / "old.pt", "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    loaded = load_model_file(tmp_path / "old.pt")
    found = set(loaded.findings[0].evidence["imports"]) if loaded.refused else set()
    assert {imports} == found if imports else {"os.system", "posix.system"} & found


@pytest.mark.parametrize("error, reason", [
    (RuntimeError("[enforce fail at inline_container.cc:340] . file in archive is not in a subdirectory archive/: ../x"),
     "file in archive is not in a subdirectory archive/"),
    (RuntimeError("[enforce fail at inline_container.cc:340] "), "torch's archive reader refused the archive's layout"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0"), "a tensor larger than this machine's memory"),
    (ValueError("_rebuild_qtensor: per_channel axis 99 out of range for size (4, 3)"),
     "_rebuild_qtensor: per_channel axis 99 out of range for size (4, 3)"),
    (pickle.UnpicklingError("Weights only load failed. ... WeightsUnpickler error: Unsupported global: GLOBAL "
                            "torch.UntypedStorage was not an allowed global by default."),
     "it builds torch.UntypedStorage, which torch's weights-only loader does not"),
])
def test_torch_errors_are_said_in_words_not_source_locations(error, reason):
    from fedguard.loading import _torch_reason

    assert _torch_reason(error) == reason


def test_an_npz_header_past_numpys_limit_is_named_as_such(tmp_path):
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }".ljust(20000) + "\n"
    member = np.lib.format.MAGIC_PREFIX + b"\x02\x00" + len(header).to_bytes(4, "little") + header.encode() + b"\0" * 4
    with zipfile.ZipFile(tmp_path / "header.npz", "w") as archive:
        archive.writestr("w.npy", member)
    with pytest.raises(InputError, match="has an array header larger than numpy reads safely"):
        load_model_file(tmp_path / "header.npz")


@pytest.mark.parametrize("shape, reason", [
    ("(2, 8, 8", "has an array header numpy cannot parse"),  # numpy's parser let tokenize.TokenError through: exit 3
    ("(True, 8, 8)", "declares the shape (True, 8, 8), which is not a tuple of sizes"),  # numpy read True as a size
])
def test_an_npz_header_numpy_cannot_parse_is_a_corrupt_archive_for_models_and_data(tmp_path, shape, reason):
    from fedguard.data import load_data

    header = "{'descr': '<f4', 'fortran_order': False, 'shape': %s, }" % shape
    header = header.ljust(117) + "\n"
    with zipfile.ZipFile(tmp_path / "bad.npz", "w") as archive:
        archive.writestr("x.npy", np.lib.format.MAGIC_PREFIX + b"\x01\x00" + len(header).to_bytes(2, "little")
                         + header.encode() + bytes(2 * 64 * 4))  # fmt: skip
        archive.writestr("y.npy", b"")
    with pytest.raises(InputError, match=re.escape(f"bad.npz is a corrupt .npz archive (x.npy {reason}")):
        load_model_file(tmp_path / "bad.npz")
    with pytest.raises(InputError, match=re.escape(f"bad.npz is a corrupt .npz archive (x.npy {reason}")):
        load_data(str(tmp_path / "bad.npz"))


@pytest.mark.parametrize("name", ["getattr", "setattr", "delattr", "eval", "exec", "compile", "__import__", "open",
                                  "globals", "vars", "breakpoint", "input"])
def test_no_builtin_that_reaches_code_or_files_is_on_the_allow_list(name):
    from fedguard.pickle_scan import is_safe_global

    assert not is_safe_global("builtins", name) and not is_safe_global("__builtin__", name)


def test_shared_and_self_referencing_containers_are_read_once(tmp_path):
    """A pickle refers to a container again through its memo: 30 lists that each hold the next twice are 2^30 paths
    in a file of a few KB, and a list may hold itself. Each container is read once: the state_dict beside them loads
    at once."""
    sd = tiny_state_dict()
    laughs: list = [torch.ones(1)]
    for _ in range(30):
        laughs = [laughs, laughs]
    loop: list = []
    loop.append(loop)
    torch.save({"model": sd, "laughs": laughs, "loop": loop}, tmp_path / "shared.pt")
    assert (tmp_path / "shared.pt").stat().st_size < 20_000
    started = time.perf_counter()
    assert_same(load_model_file(tmp_path / "shared.pt").tensors, sd)
    assert time.perf_counter() - started < 10


def test_in_an_update_list_only_a_zero_change_is_read_as_a_pruning_mask():
    """A pruned layer's mask does not change (its update is zeros); a second non-zero weight-shaped change is not a
    mask, and dropping it would leave part of the upload unread: the list does not line up."""
    from fedguard.loading import name_in_order

    names = {"fc.weight": torch.Size([3, 4]), "fc.bias": torch.Size([3])}
    weight, bias = torch.randn(3, 4), torch.randn(3)
    assert name_in_order(names, [weight, torch.zeros(3, 4), bias], deltas=True) is not None
    assert name_in_order(names, [weight, torch.randn(3, 4), bias], deltas=True) is None


def test_tensors_sharing_memory_keep_their_own_values(tmp_path):
    """The dense cache had keyed a quantised tensor by its view, without its scale (a second scale's weights read
    as the first's), and by the address of temporaries freed in between (big-endian uint16 arrays 0..5 read as
    zeros). A flat buffer saved before its parameters' slices covers its storage twice, honestly, in any order."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ints = torch.quantize_per_tensor(torch.full((8, 8), 0.5), 0.01, 0, torch.qint8)
        small, large = (torch._make_per_tensor_quantized_tensor(ints.int_repr(), scale, 0) for scale in (0.01, 100.0))
        torch.save({"0.weight": small, "1.weight": large}, tmp_path / "apart.pt")
    # the second tensor's storage key "1" made the first's, "0": one storage
    _rewrite_zip(tmp_path / "apart.pt", tmp_path / "scales.pt",
                 pickle_edit=lambda data: data.replace(b"X\x01\x00\x00\x001", b"X\x01\x00\x00\x000", 1))
    loaded = load_model_file(tmp_path / "scales.pt").tensors
    assert float(loaded["0.weight"][0, 0]) == pytest.approx(0.5) and float(loaded["1.weight"][0, 0]) == pytest.approx(5000)
    np.savez(tmp_path / "counts.npz", **{f"c{i}": np.array([i], dtype=">u2") for i in range(6)})
    assert [int(t) for t in load_model_file(tmp_path / "counts.npz").tensors.values()] == list(range(6))
    flat = torch.randn(64 * 1024)
    slices = {f"{i}.weight": flat[i * 1024:(i + 1) * 1024].view(32, 32) for i in range(64)}
    for name, entries in (("first", {"flat": flat, **slices}), ("last", {**slices, "flat": flat})):
        torch.save(entries, tmp_path / f"{name}.pt")
        assert len(load_model_file(tmp_path / f"{name}.pt").tensors) == 65


def test_a_pickle_that_only_looks_like_a_tar_is_scanned_as_pickles(tmp_path):
    """torch reads a file as a tar when tarfile opens it, and as pickles otherwise: the bytes "ustar" where a tar
    header has them had sent the scan down the tar path, which failed, and the file was called corrupt (exit 2)
    instead of FG001."""
    padding = bytearray(b"a" * 300)
    padding[257 - 7:257 - 7 + 5] = b"ustar"  # after PROTO (2 bytes) and BINUNICODE's opcode and length (5)
    data = b"\x80\x02X" + len(padding).to_bytes(4, "little") + bytes(padding) + b"0cposix\nsystem\nX\x04\x00\x00\x00true\x85R."
    assert data[257:262] == b"ustar"
    (tmp_path / "decoy.pt").write_bytes(data)
    loaded = load_model_file(tmp_path / "decoy.pt")
    assert loaded.refused and loaded.findings[0].evidence["imports"] == ["posix.system"]


def test_a_frame_that_runs_past_its_pickles_stop_is_an_unknown_import(tmp_path):
    """Python's unpickler skips what is left of a frame after STOP; pickletools reads on, so a frame tail that opens
    a bytes opcode swallowed the real next pickle (os.system) from the scan."""
    evil = b"\x80\x02cposix\nsystem\nX\x04\x00\x00\x00true\x85R."
    first = b"\x80\x04\x95" + (7).to_bytes(8, "little") + b"N.B" + len(evil).to_bytes(4, "little")
    (tmp_path / "framed.pt").write_bytes(first + evil + b".")
    # one byte left in the frame: UNICODE reads to the end of a line, through the next pickle's os.system
    real = b"\x80\x04\x8c\x05posix\x8c\x06system\x93\x8c\x04true\x85R0N\x8c\x01\n0N."
    (tmp_path / "one_byte.pt").write_bytes(b"\x80\x04\x95" + (3).to_bytes(8, "little") + b"N.V" + real)
    for name in ("framed.pt", "one_byte.pt"):
        loaded = load_model_file(tmp_path / name)
        assert loaded.refused
        assert loaded.findings[0].evidence["imports"] == ["<unknown>.<bytes after a STOP inside its frame, which Python's unpickler skips>"]


def test_a_tar_archive_holding_a_model_file_is_refused_as_an_archive_not_as_code(tmp_path):
    """A .tar (pax format, as GNU tar writes by default now) holding a .pt: its members were scanned as torch's legacy
    pickles and the garbled first one read as an import (FG001, critical: "would execute code"). torch's legacy
    reader unpickles only its own members, storages, tensors and pickle; a tar with none of them is an archive to
    extract."""
    import tarfile

    torch.save(tiny_state_dict(), tmp_path / "model.pt")
    for fmt in (tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT):  # a ustar one had been "random or corrupt bytes?"
        with tarfile.open(tmp_path / "sent.tar", "w", format=fmt) as archive:
            archive.add(tmp_path / "model.pt", arcname="model.pt")
        with pytest.raises(InputError, match=r"sent.tar is a tar archive holding model.pt, not a torch checkpoint; "
                                             r"extract the model file from it \(tar xf\) and pass that"):
            load_model_file(tmp_path / "sent.tar")


def test_a_legacy_tar_member_that_is_a_hard_link_to_a_payload_is_code(tmp_path):
    """torch's legacy reader extracts ``storages`` through a hard link to another member and unpickles it (an
    independent review ran os.system that way); the scan had skipped links, and the file was called corrupt."""
    import io
    import tarfile

    payload = b"\x80\x02cposix\nsystem\nX\x04\x00\x00\x00true\x85R."
    with tarfile.open(tmp_path / "linked.tar", "w", format=tarfile.USTAR_FORMAT) as archive:
        info = tarfile.TarInfo("x")
        info.size = len(payload)
        archive.addfile(info, io.BytesIO(payload))
        link = tarfile.TarInfo("storages")
        link.type, link.linkname = tarfile.LNKTYPE, "x"
        archive.addfile(link)
    loaded = load_model_file(tmp_path / "linked.tar")
    assert loaded.refused and "posix.system" in loaded.findings[0].evidence["imports"]
    with tarfile.open(tmp_path / "outside.tar", "w", format=tarfile.USTAR_FORMAT) as archive:  # torch would open it
        link = tarfile.TarInfo("storages")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
        info = tarfile.TarInfo("pickle")
        info.size = 4
        archive.addfile(info, io.BytesIO(b"\x80\x02}."))
    with pytest.raises(InputError, match="its storages member is a link to '/etc/passwd', outside the archive"):
        load_model_file(tmp_path / "outside.tar")


def test_a_rounds_npz_passed_as_a_model_is_refused(tmp_path):
    """disaggregate's rounds file had read as a model (FG003 suspicious; as --reference, FG702 malicious: "missing:
    aggregates, counts, window"), a verdict on a wrong input."""
    from fedguard.attacks.federation import save_rounds, simulate_federation

    save_rounds(tmp_path / "rounds.npz", simulate_federation(users=4, rounds=12, dim=8, window=4, seed=0))
    np.savez(tmp_path / "observed.npz", aggregates=np.ones((12, 8)), counts=np.ones((4, 3), np.int64), window=4)
    for name in ("rounds.npz", "observed.npz"):
        with pytest.raises(InputError, match=r"aggregates, counts, .*window, the rounds of sums `fedguard disaggregate` "
                                             r"reads, not model weights; pass it to fedguard disaggregate"):
            load_model_file(tmp_path / name)
    np.savez(tmp_path / "layers.npz", aggregates=np.ones((4, 3)), counts=np.ones(4), window=np.ones(2), head=np.ones(2))
    assert set(load_model_file(tmp_path / "layers.npz").tensors) == {"aggregates", "counts", "window", "head"}


def test_a_data_npz_passed_as_a_model_is_refused(tmp_path):
    """x and y, images and integer labels, had read as a model of two layers (clean; as --reference, FG702 high: the
    model's layers "missing: x, y")."""
    np.savez(tmp_path / "digits.npz", x=np.random.rand(20, 1, 8, 8).astype(np.float32), y=np.arange(20) % 10)
    with pytest.raises(InputError, match=r"holds arrays x and y \(20 examples and their integer labels\), the layout "
                                         r"of a --data file, not model weights; pass it with --data"):
        load_model_file(tmp_path / "digits.npz")
    np.savez(tmp_path / "layer.npz", x=np.ones((4, 3), np.float32), y=np.zeros(4, np.float32))  # a layer's weight, bias
    assert set(load_model_file(tmp_path / "layer.npz").tensors) == {"x", "y"}
    np.savez(tmp_path / "int8.npz", x=np.ones((4, 3), np.int8), y=np.zeros(4, np.int32))  # a quantised layer, not data
    assert set(load_model_file(tmp_path / "int8.npz").tensors) == {"x", "y"}
    np.savez(tmp_path / "scalar.npz", x=np.float32(1), y=np.array([3]))  # a 0-d x had been an internal error (len)
    assert isinstance(load_model_file(tmp_path / "scalar.npz").tensors, dict)
