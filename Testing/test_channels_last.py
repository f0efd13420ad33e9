"""Channels-last memory (issue 7 optimisation) gives the values of the default layout: per
network within float rounding, and the same labels for the shipped demo bundle on a phantom of
a real KiTS19 mask."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from KidneyTumorSegLib.boxes import Box
from KidneyTumorSegLib.bundle import default_bundle_path, load_bundle
from KidneyTumorSegLib.cascade import Cascade, InferenceOptions
from KidneyTumorSegLib.imageio import Image
from KidneyTumorSegLib.inference import make_predictor
from KidneyTumorSegLib.metrics import kits_dice
from KidneyTumorSegLib.networks import UNet2D, UNet3D, VNet
from training_tools.phantoms import make_phantom

torch.set_num_threads(1)
MASK = Path(__file__).resolve().parent / "Data" / "kits19" / "case_00015.nii.gz"  # 46 slices of 3 mm


@pytest.fixture
def one_thread():
    """One torch thread for the test (an earlier test may have set more): the same summation order every run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("network", "shape"), [
    (lambda: VNet(base_channels=4, regression_channels=1), (2, 1, 16, 32, 32)),
    (lambda: UNet3D(base_channels=4), (2, 1, 16, 32, 32)),
    (lambda: UNet2D(base_channels=4), (3, 1, 64, 48)),
], ids=["VNet", "UNet3D", "UNet2D"])
def test_channels_last_gives_the_default_layouts_values(network: Callable[[], torch.nn.Module], shape: tuple[int, ...],
                                                        one_thread: None) -> None:
    torch.manual_seed(0)  # weights and input from the test's own seed, not from what ran before it
    net = network()
    x = torch.rand(shape)
    plain = make_predictor(net, "cpu", output="seg+reg")(x)
    fast = make_predictor(net, "cpu", output="seg+reg", channels_last=True)(x)
    weight = next(p for p in net.parameters() if p.ndim == len(shape) and p.shape[1] > 1)  # layouts differ
    wanted = torch.channels_last_3d if len(shape) == 5 else torch.channels_last
    assert weight.is_contiguous(memory_format=wanted) and not weight.is_contiguous()
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)
    make_predictor(net, "cpu")(x)  # the default layout again: the weights are converted back
    assert weight.is_contiguous()


def test_demo_bundle_labels_agree_in_both_layouts() -> None:
    mask = nib.load(str(MASK))
    labels = np.asarray(mask.dataobj, dtype=np.uint8)
    ct = make_phantom(labels, tuple(float(s) for s in mask.header.get_zooms()[:3]), np.random.default_rng(0))
    image = Image(ct, mask.affine)
    bundle = load_bundle(default_bundle_path())
    results = []
    for channels_last in (False, True):
        cascade = Cascade(bundle, InferenceOptions(device="cpu", channels_last=channels_last))
        case = cascade.prepare(image)
        results.append(cascade.segment(image, Box.full(case.frame.shape), case=case).labels)
    plain, fast = results
    assert (plain > 0).sum() > 1000  # the kidneys were found: the comparison means something
    assert np.mean(plain != fast) < 1e-4
    dice = kits_dice(fast, plain)
    assert dice["kidney_dice"] > 0.999 and (dice["tumor_dice"] > 0.99 or not (plain == 2).any())


def test_compile_wraps_each_network_once_per_cascade(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from training_tools.untrained import make_untrained_bundle

    compiled: list[torch.nn.Module] = []

    def recording_compile(module: torch.nn.Module) -> torch.nn.Module:  # the real compiler takes minutes here
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", recording_compile)
    bundle = load_bundle(make_untrained_bundle(tmp_path / "b", base_channels=2, roles=("stage1", "KT", "T-vnet", "T2D-ax-dice")))
    image = Image(np.random.default_rng(0).normal(0, 300, size=(40, 40, 12)).astype(np.float32),
                  np.diag([0.78162497, 0.78162497, 3.0, 1.0]))
    cascade = Cascade(bundle, InferenceOptions(device="cpu", compile=True))
    for _ in range(2):
        case = cascade.prepare(image)
        cascade.segment(image, Box.full(case.frame.shape), case=case)
    ran = set(cascade.timings) & set(bundle.networks)
    assert ran and len(compiled) == len(ran)
    assert {id(m) for m in compiled} == {id(bundle.networks[role]) for role in ran}
