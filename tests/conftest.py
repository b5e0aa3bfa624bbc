"""Fixtures shared by the test modules."""

from __future__ import annotations

import os

# numpy's and scipy's BLAS read these when first imported (and the CLI tests' subprocesses inherit them): the small
# solves here run faster on one thread, and far faster on a busy machine (a time-limited search had taken 2.0-6.7 s
# under load against 1.1 s on one thread)
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny models run faster on one thread, and far faster on a busy machine (no OpenMP spinning): one collapsed
    layer's test took 12.2 s on two threads and 0.39 s on one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh folder, the working directory for the test."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits as fedguard loads them: float ``[1797, 1, 8, 8]`` in [0, 1] and int64 labels."""
    from fedguard.data import load_data

    return load_data("digits")
