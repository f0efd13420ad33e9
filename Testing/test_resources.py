"""Resources (issue 6): GPU out-of-memory falls back to smaller batches, then the CPU; a volume
too large for the memory gets a message with the figures."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from KidneyTumorSegLib.bundle import load_bundle
from KidneyTumorSegLib.cascade import Cascade, InferenceOptions
from KidneyTumorSegLib.validation import check_memory
from training_tools.untrained import make_untrained_bundle


@pytest.fixture(scope="module")
def cascade(tmp_path_factory) -> Cascade:
    path = make_untrained_bundle(tmp_path_factory.mktemp("bundle") / "b", base_channels=2, roles=("stage1", "KT"))
    return Cascade(load_bundle(path), InferenceOptions(device="cpu", batch_size=4))


def test_out_of_gpu_memory_halves_the_batch_then_moves_to_the_cpu(cascade: Cascade, caplog) -> None:
    cascade.device = torch.device("cuda")  # pretend; the fake run never touches a GPU
    calls = []

    def run(batch_size: int, device: torch.device) -> np.ndarray:
        calls.append((batch_size, device.type))
        if device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return np.ones(3)

    with caplog.at_level(logging.WARNING):
        result = cascade._with_memory_fallback("KT", run, 4)
    assert calls == [(4, "cuda"), (2, "cuda"), (1, "cuda"), (1, "cpu")]
    assert result.tolist() == [1, 1, 1] and cascade.device.type == "cpu"
    assert "retrying with batch size 2" in caplog.text and "continuing on the CPU" in caplog.text


def test_out_of_memory_on_the_cpu_is_not_swallowed(cascade: Cascade) -> None:
    cascade.device = torch.device("cpu")

    def run(batch_size: int, device: torch.device) -> np.ndarray:
        raise torch.cuda.OutOfMemoryError("out of memory")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        cascade._with_memory_fallback("KT", run, 2)


def test_a_volume_too_large_is_refused_with_the_figures() -> None:
    with pytest.raises(MemoryError, match=r"needs about 2\.0 GB, 1\.0 GB are free"):
        check_memory((256, 512, 1024), available=2**30)
    check_memory((256, 512, 1024), available=2**34)  # fits: no error
