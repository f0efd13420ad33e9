"""Model bundles: save/load round trip, and every broken bundle refused with a one-line BundleError
before any model runs."""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from KidneyTumorSegLib.bundle import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    BundleError,
    ModelBundle,
    load_bundle,
    save_bundle,
    sha256_of,
)
from KidneyTumorSegLib.networks.registry import ROLES
from training_tools.untrained import make_untrained_bundle

torch.set_num_threads(1)

ROLES_USED = ("stage1", "KT", "K1", "T2D-ax-dice")
EXECUTED: list[str] = []


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_untrained_bundle(tmp_path_factory.mktemp("bundle") / "original", base_channels=2, roles=ROLES_USED)


@pytest.fixture
def bundle_copy(original: Path, tmp_path: Path) -> Path:
    """A fresh copy of the bundle to break."""
    return Path(shutil.copytree(original, tmp_path / "bundle"))


def _edit_manifest(path: Path, change: Callable[[dict], object]) -> None:
    manifest = json.loads((path / MANIFEST_NAME).read_text(encoding="utf-8"))
    change(manifest)
    (path / MANIFEST_NAME).write_text(json.dumps(manifest), encoding="utf-8")


def _model(manifest: dict, role: str) -> dict:
    return next(m for m in manifest["models"] if m["role"] == role)


def _refused(path: Path, match: str) -> str:
    with pytest.raises(BundleError, match=match) as error:
        load_bundle(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    return message


# ---------------------------------------------------------------- round trip


def test_save_and_load_round_trip(original: Path, tmp_path: Path) -> None:
    bundle = load_bundle(original)
    assert isinstance(bundle, ModelBundle) and bundle.roles == ROLES_USED
    manifest = json.loads((original / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert manifest["format_version"] == FORMAT_VERSION and manifest["demo"] is True
    for model in manifest["models"]:
        assert model["sha256"] == sha256_of(original / model["weights"])
        assert tuple(model["patch_size"]) == ROLES[model["role"]].patch_size
        assert model["params"]["base_channels"] == 2
    saved = save_bundle(tmp_path / "again", {r: (bundle.networks[r], e.architecture, e.params) for r, e in bundle.entries.items()},
                        {"name": "again", "demo": False})
    again = load_bundle(saved)
    assert again.roles == ROLES_USED and not again.is_demo and again.manifest["name"] == "again"
    for role in ROLES_USED:
        for (key, a), (_, b) in zip(bundle.networks[role].state_dict().items(), again.networks[role].state_dict().items()):
            assert torch.equal(a, b), f"{role}.{key}"
        assert not again.networks[role].training
    x = torch.rand(1, 1, 16, 64, 64)
    with torch.no_grad():
        assert torch.equal(bundle.networks["KT"](x)[0], again.networks["KT"](x)[0])


def test_saving_over_a_bundle_needs_overwrite(original: Path) -> None:
    bundle = load_bundle(original, roles=("stage1", "KT"))
    networks = {r: (bundle.networks[r], e.architecture, e.params) for r, e in bundle.entries.items()}
    with pytest.raises(FileExistsError):
        save_bundle(original, networks, {"name": "x"})


def test_roles_limit_what_is_loaded_and_missing_roles_are_listed(original: Path) -> None:
    bundle = load_bundle(original, roles=("K1",))
    assert bundle.roles == ("stage1", "KT", "K1")  # the required two always come
    assert bundle.missing_roles() == tuple(r for r in ROLES if r not in ("stage1", "KT", "K1"))
    assert "K2" in bundle.missing_roles() and "T-vnet" in bundle.missing_roles()


def test_intensity_window_comes_from_the_manifest(bundle_copy: Path) -> None:
    _edit_manifest(bundle_copy, lambda m: m.update(intensity={"hu_min": -100, "hu_max": 400}))
    window = load_bundle(bundle_copy, roles=()).intensity
    assert (window.hu_min, window.hu_max) == (-100.0, 400.0)


# ---------------------------------------------------------------- refused bundles


def test_missing_folder(tmp_path: Path) -> None:
    _refused(tmp_path / "nowhere", "model bundle folder not found")


def test_empty_folder(tmp_path: Path) -> None:
    _refused(tmp_path, "not a model bundle")


def test_malformed_json(bundle_copy: Path) -> None:
    (bundle_copy / MANIFEST_NAME).write_text('{"format_version": 1, "models": [', encoding="utf-8")
    _refused(bundle_copy, "malformed manifest")


def test_garbage_manifest(bundle_copy: Path) -> None:
    (bundle_copy / MANIFEST_NAME).write_bytes(bytes(range(256)) * 4)
    _refused(bundle_copy, "malformed manifest")


def test_manifest_not_an_object(bundle_copy: Path) -> None:
    (bundle_copy / MANIFEST_NAME).write_text("[1, 2, 3]", encoding="utf-8")
    _refused(bundle_copy, "expected a JSON object")


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_unknown_format_version(bundle_copy: Path, version: object) -> None:
    _edit_manifest(bundle_copy, lambda m: m.update(format_version=version))
    _refused(bundle_copy, "unsupported bundle format version")


def test_no_models(bundle_copy: Path) -> None:
    _edit_manifest(bundle_copy, lambda m: m.update(models=[]))
    _refused(bundle_copy, "lists no models")


@pytest.mark.parametrize("role", ["stage1", "KT"])
def test_missing_required_role(bundle_copy: Path, role: str) -> None:
    _edit_manifest(bundle_copy, lambda m: m["models"].remove(_model(m, role)))
    _refused(bundle_copy, f"no '{role}' model")


def test_unknown_role(bundle_copy: Path) -> None:
    _edit_manifest(bundle_copy, lambda m: _model(m, "K1").update(role="K3"))
    _refused(bundle_copy, "unknown model role 'K3'")


def test_role_listed_twice(bundle_copy: Path) -> None:
    _edit_manifest(bundle_copy, lambda m: m["models"].append(dict(_model(m, "K1"))))
    _refused(bundle_copy, "listed twice")


def test_malformed_model_entry(bundle_copy: Path) -> None:
    _edit_manifest(bundle_copy, lambda m: _model(m, "K1").pop("sha256"))
    _refused(bundle_copy, "malformed model entry")


def test_weights_outside_the_bundle(bundle_copy: Path) -> None:
    _edit_manifest(bundle_copy, lambda m: _model(m, "K1").update(weights="../K1.pt"))
    _refused(bundle_copy, "must be a file inside the bundle")


def test_missing_weights(bundle_copy: Path) -> None:
    (bundle_copy / "K1.pt").unlink()
    _refused(bundle_copy, "weights of K1 not found")


def test_sha256_mismatch(bundle_copy: Path) -> None:
    weights = bundle_copy / "KT.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # flip one bit
    weights.write_bytes(bytes(data))
    _refused(bundle_copy, "SHA-256 does not match")


def test_weights_that_do_not_fit_the_declared_architecture(bundle_copy: Path) -> None:
    _edit_manifest(bundle_copy, lambda m: _model(m, "KT")["params"].update(base_channels=4))
    message = _refused(bundle_copy, "weights do not fit the declared vnet of KT")
    assert "size mismatch" in message


def test_unknown_architecture(bundle_copy: Path) -> None:
    _edit_manifest(bundle_copy, lambda m: _model(m, "K1").update(architecture="resnet"))
    _refused(bundle_copy, "cannot build K1")


def test_a_2d_network_in_a_3d_role(bundle_copy: Path) -> None:
    def swap(manifest: dict) -> None:
        two_d = _model(manifest, "T2D-ax-dice")
        _model(manifest, "K1").update(architecture="unet2d", params=two_d["params"], patch_size=[256, 256],
                                      weights=two_d["weights"], sha256=two_d["sha256"])
    _edit_manifest(bundle_copy, swap)
    _refused(bundle_copy, "K1 needs a 3D network, got unet2d")


@pytest.mark.parametrize("patch", [[30, 128, 128], [32, 128], [0, 128, 128]])
def test_patch_size_the_network_cannot_take(bundle_copy: Path, patch: list[int]) -> None:
    _edit_manifest(bundle_copy, lambda m: _model(m, "KT").update(patch_size=patch))
    _refused(bundle_copy, "patch size .* of KT must be 3 positive multiples of 16")


def test_stage1_without_landmark_channels(bundle_copy: Path) -> None:
    kt_params = {"levels": 5, "regression_channels": 1, "branch_level": "bottom", "base_channels": 2}
    network = ROLES["KT"].build(2)
    torch.save(network.state_dict(), bundle_copy / "stage1.pt")

    def one_channel(manifest: dict) -> None:
        _model(manifest, "stage1").update(params=kt_params, sha256=sha256_of(bundle_copy / "stage1.pt"))
    _edit_manifest(bundle_copy, one_channel)
    _refused(bundle_copy, "stage1 must have 5 landmark channels")


def _mark_executed() -> str:
    EXECUTED.append("ran")
    return "payload"


class _Payload:
    """Unpickling this runs :func:`_mark_executed`: what a malicious weights file would do."""

    def __reduce__(self):
        return (_mark_executed, ())


def test_a_pickle_with_code_is_refused_without_running_it(bundle_copy: Path) -> None:
    weights = bundle_copy / "K1.pt"
    state = torch.load(weights, weights_only=True)
    state["payload"] = _Payload()
    torch.save(state, weights)
    _edit_manifest(bundle_copy, lambda m: _model(m, "K1").update(sha256=sha256_of(weights)))  # a consistent manifest
    message = _refused(bundle_copy, "refused to load the weights of K1: not a plain state_dict")
    assert "_mark_executed" in message and "never run pickled code" in message
    assert "weights_only" not in message and "\x1b" not in message  # no advice to load it unsafely
    assert EXECUTED == []


def test_a_weights_file_that_is_not_a_torch_file(bundle_copy: Path) -> None:
    weights = bundle_copy / "K1.pt"
    weights.write_bytes(b"these are not weights\n" * 10)
    _edit_manifest(bundle_copy, lambda m: _model(m, "K1").update(sha256=sha256_of(weights)))
    message = _refused(bundle_copy, "K1")
    assert "\x1b" not in message and "weights_only" not in message


def test_a_truncated_weights_file(bundle_copy: Path) -> None:
    weights = bundle_copy / "K1.pt"
    weights.write_bytes(weights.read_bytes()[:500])
    _edit_manifest(bundle_copy, lambda m: _model(m, "K1").update(sha256=sha256_of(weights)))
    _refused(bundle_copy, "weights of K1")


@pytest.mark.parametrize("key, value, match", [
    ("spacing_zyx", [1.0, 1.0, 1.0], "spacing"),
    ("axcodes", ["R", "A", "S"], "orientation"),
])
def test_a_bundle_for_another_frame(bundle_copy: Path, key: str, value: list, match: str) -> None:
    _edit_manifest(bundle_copy, lambda m: m.update({key: value}))
    _refused(bundle_copy, match)
