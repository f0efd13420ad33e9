"""Networks and the role registry: shapes, branch levels, divisors, widths, (de)serialisation."""
from __future__ import annotations

import io
import json
import pickle

import pytest
import torch

from KidneyTumorSegLib.networks import (
    ROLES,
    RoleSpec,
    UNet2D,
    UNet3D,
    VNet,
    build_network,
    required_divisor,
)

torch.manual_seed(0)

# role: (task, architecture, levels, branch_level, regression channels, lr, patch, axis, loss, x)
EXPECTED_ROLES = {
    "stage1": ("foreground", "vnet", 5, "bottom", 5, 1e-4, (16, 64, 64), None, "dice", 4),
    "KT": ("foreground", "vnet", 5, "bottom", 1, 1e-4, (32, 128, 128), None, "dice", 1),
    "K1": ("kidney", "vnet", 5, "bottom", 1, 1e-4, (32, 128, 128), None, "dice", 1),
    "K2": ("kidney", "vnet", 5, "second_last", 1, 1e-4, (32, 128, 128), None, "dice", 1),
    "T-vnet": ("tumor", "vnet", 5, "bottom", 1, 1e-3, (32, 64, 64), None, "dice", 1),
    "T-unet": ("tumor", "unet3d", 4, None, 1, 1e-3, (32, 64, 64), None, "dice", 1),
    "T2D-ax-dice": ("tumor", "unet2d", 5, None, 1, 1e-3, (256, 256), "axial", "dice", 1),
    "T2D-co-dice": ("tumor", "unet2d", 5, None, 1, 1e-3, (256, 256), "coronal", "dice", 1),
    "T2D-sa-dice": ("tumor", "unet2d", 5, None, 1, 1e-3, (256, 256), "sagittal", "dice", 1),
    "T2D-ax-bce": ("tumor", "unet2d", 5, None, 1, 1e-3, (256, 256), "axial", "bce", 1),
    "T2D-co-bce": ("tumor", "unet2d", 5, None, 1, 1e-3, (256, 256), "coronal", "bce", 1),
    "T2D-sa-bce": ("tumor", "unet2d", 5, None, 1, 1e-3, (256, 256), "sagittal", "bce", 1),
}
SMALL_INPUT = {"vnet": (16, 32, 16), "unet3d": (8, 16, 24), "unet2d": (16, 48)}


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_registry_holds_the_twelve_spec_roles() -> None:
    assert list(ROLES) == list(EXPECTED_ROLES)
    for role, (task, arch, levels, branch, reg, lr, patch, axis, loss, factor) in \
            EXPECTED_ROLES.items():
        spec = ROLES[role]
        assert (spec.task, spec.architecture, spec.learning_rate, spec.patch_size, spec.axis,
                spec.loss, spec.downsample_factor) == (task, arch, lr, patch, axis, loss, factor)
        assert spec.arch_params["levels"] == levels
        assert spec.arch_params["regression_channels"] == reg
        assert spec.arch_params.get("branch_level") == branch


@pytest.mark.parametrize("role", list(EXPECTED_ROLES))
def test_every_role_builds_and_maps_shapes(role: str) -> None:
    spec = ROLES[role]
    net = spec.build(base_channels=2).eval()
    spatial = SMALL_INPUT[spec.architecture]
    with torch.no_grad():
        seg, reg = net(torch.rand(2, 1, *spatial))
    assert seg.shape == (2, 1, *spatial)
    assert reg.shape == (2, spec.arch_params["regression_channels"], *spatial)


def test_role_spec_is_json_and_rebuilds_the_same_network() -> None:
    for spec in ROLES.values():
        params = json.loads(json.dumps(spec.network_params(base_channels=3)))
        assert params["base_channels"] == 3
        assert json.loads(json.dumps(spec.to_dict()))["role"] == spec.role
        a = build_network(spec.architecture, params)
        assert n_params(a) == n_params(spec.build(base_channels=3))


def test_role_spec_is_immutable_and_validated() -> None:
    spec = ROLES["K2"]
    with pytest.raises(TypeError):
        spec.arch_params["branch_level"] = "bottom"  # type: ignore[index]
    with pytest.raises(AttributeError):
        spec.learning_rate = 1.0  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert hash(pickle.loads(pickle.dumps(spec))) == hash(spec)
    assert json.loads(json.dumps(spec.arch_params)) == dict(spec.arch_params)
    with pytest.raises(ValueError, match="divisible"):
        RoleSpec("x", "tumor", "vnet", {"levels": 5}, "dice", 1e-3, (24, 64, 64))
    with pytest.raises(ValueError):
        RoleSpec("x", "tumor", "unet2d", {}, "dice", 1e-3, (256, 256))  # 2D needs an axis


@pytest.mark.parametrize("branch_level", ["bottom", "second_last"])
@pytest.mark.parametrize("regression_channels", [5, 1])
def test_vnet_branch_levels_and_regression_channels(branch_level: str,
                                                    regression_channels: int) -> None:
    net = VNet(base_channels=2, regression_channels=regression_channels,
               branch_level=branch_level).eval()
    with torch.no_grad():
        seg, reg = net(torch.rand(1, 1, 16, 16, 32))
    assert seg.shape == (1, 1, 16, 16, 32)
    assert reg.shape == (1, regression_channels, 16, 16, 32)
    with torch.no_grad():  # heads are linear: logits and regression follow a shifted bias
        net.seg_head.bias.fill_(-100.0)
        net.reg_head.bias.fill_(-100.0)
        seg, reg = net(torch.rand(1, 1, 16, 16, 32))
    assert seg.max() < 0 and reg.max() < 0


def _regression_changes_when_first_decoder_stage_changes(branch_level: str) -> bool:
    net = VNet(base_channels=2, branch_level=branch_level).eval()
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        before = net(x)[1].clone()
        for p in net.seg_decoder.stages[0].parameters():
            p.add_(0.5)
        after = net(x)[1]
    return not torch.equal(before, after)


def test_second_last_branch_shares_the_first_decoder_stage() -> None:
    assert _regression_changes_when_first_decoder_stage_changes("second_last")
    assert not _regression_changes_when_first_decoder_stage_changes("bottom")
    shared = VNet(base_channels=4, branch_level="second_last")
    separate = VNet(base_channels=4, branch_level="bottom")
    assert len(shared.reg_decoder.stages) == 3 and len(separate.reg_decoder.stages) == 4
    assert n_params(shared) < n_params(separate)


def test_regression_head_is_optional() -> None:
    for net in (VNet(base_channels=2, regression_channels=0),
                UNet3D(base_channels=2, regression_channels=0)):
        seg, reg = net(torch.rand(1, 1, 16, 16, 16))
        assert seg.shape == (1, 1, 16, 16, 16) and reg is None


def test_unets_forward_contract() -> None:
    seg, reg = UNet3D(base_channels=2)(torch.rand(2, 1, 8, 16, 24))
    assert seg.shape == reg.shape == (2, 1, 8, 16, 24)
    seg, reg = UNet2D(base_channels=2, levels=3)(torch.rand(3, 1, 12, 20))
    assert seg.shape == reg.shape == (3, 1, 12, 20)


def test_required_divisor_matches_what_the_networks_accept() -> None:
    assert required_divisor("vnet", {}) == 16
    assert required_divisor("vnet", {"levels": 4}) == 8
    assert required_divisor("unet3d", {}) == 8
    assert required_divisor("unet2d", {}) == 16
    assert required_divisor("unet2d", {"levels": 3}) == 4
    with pytest.raises(ValueError, match="divisible by 16"):
        VNet(base_channels=2)(torch.rand(1, 1, 16, 16, 24))
    with pytest.raises(ValueError, match="divisible by 8"):
        UNet3D(base_channels=2)(torch.rand(1, 1, 12, 16, 16))
    with pytest.raises(ValueError, match="divisible by 16"):
        UNet2D(base_channels=2)(torch.rand(1, 1, 8, 16))


def test_parameter_count_grows_with_width() -> None:
    for arch in ("vnet", "unet3d", "unet2d"):
        counts = [n_params(build_network(arch, {"base_channels": c})) for c in (4, 8, 16)]
        assert counts[0] < counts[1] < counts[2]
        assert counts[2] > 3 * counts[1]  # conv weights grow ~ width squared


def test_unknown_architecture_or_parameter_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        build_network("resnet", {})
    with pytest.raises(TypeError):
        build_network("vnet", {"depth": 3})
    with pytest.raises(ValueError, match="branch_level"):
        build_network("vnet", {"branch_level": "top"})


def test_state_dict_round_trip_gives_identical_outputs() -> None:
    spec = ROLES["K2"]
    net = spec.build(base_channels=2).eval()
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    params = json.loads(json.dumps(spec.network_params(base_channels=2)))
    clone = build_network(spec.architecture, params)
    clone.load_state_dict(torch.load(buffer, weights_only=True))
    clone.eval()
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        for a, b in zip(net(x), clone(x)):
            assert torch.equal(a, b)


def test_group_norm_makes_outputs_batch_independent_and_one_voxel_bottom_trains() -> None:
    net = VNet(base_channels=2, regression_channels=5).eval()
    x = torch.rand(2, 1, 16, 32, 32)
    with torch.no_grad():
        together = net(x)[0]
        alone = net(x[:1])[0]
    torch.testing.assert_close(together[:1], alone)
    net.train()  # stage-1 patch depth 16 -> one slice at the bottom level
    seg, reg = net(x)
    (seg.mean() + reg.mean()).backward()
    assert all(p.grad is not None for p in net.parameters())
