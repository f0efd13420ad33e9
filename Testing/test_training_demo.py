"""Pieces of the demo-bundle command: orientation of the masks, scheduling, the train command line."""
from __future__ import annotations

import nibabel as nib
import numpy as np

from KidneyTumorSegLib.networks.registry import ROLES
from training_tools.cache import working_arrays
from training_tools.configs import load_config
from training_tools.demo_bundle import DEMO_DESCRIPTION, default_jobs, expected_cost, train_command
from training_tools.phantoms import labels_on_ipl_axes


def test_masks_turned_to_ipl_give_the_same_working_frame_as_the_file(real_kits_crops, tmp_path):
    mask = min(real_kits_crops.values(), key=lambda m: np.prod(m.shape))
    ras = mask.as_reoriented(nib.orientations.ornt_transform(nib.orientations.io_orientation(mask.affine),
                                                             nib.orientations.axcodes2ornt(("R", "A", "S"))))
    path = tmp_path / "case_00000.nii.gz"
    nib.save(ras, str(path))
    turned = labels_on_ipl_axes(nib.load(str(path)))
    labels, affine, spacing = turned.labels, turned.affine, turned.spacing
    assert nib.aff2axcodes(affine) == ("I", "P", "L")
    assert spacing == tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    original = np.asarray(ras.dataobj, dtype=np.uint8)
    fake_ct = original.astype(np.float32) * 100.0
    turned_ct = labels.astype(np.float32) * 100.0
    from_file = working_arrays(fake_ct, original, ras.affine)
    from_ipl = working_arrays(turned_ct, labels, affine)
    np.testing.assert_array_equal(from_file[1], from_ipl[1])
    np.testing.assert_allclose(from_file[0], from_ipl[0], atol=1e-6)


def test_dearest_models_start_first_and_jobs_follow_the_device():
    order = sorted(ROLES, key=lambda r: -expected_cost(r, "demo-cpu"))
    kt = load_config("KT", "demo-cpu")
    assert expected_cost("KT", "demo-cpu") == kt.iterations * kt.batch_size * 32 * 128 * 128 * kt.base_channels
    assert order[0] == "KT"  # the most iterations on the largest patches
    assert order.index("K1") < order.index("T2D-ax-dice")
    assert default_jobs("cuda") == 12 and default_jobs("cpu") >= 1


def test_train_command_resumes_with_a_budget(tmp_path):
    command = train_command("K1", "demo-gpu", tmp_path / "cache", tmp_path / "runs" / "K1", "cuda", 1, 200.4)
    assert command[1:4] == ["-m", "training_tools.cli", "train"]
    assert "--resume" in command and command[command.index("--time-budget-s") + 1] == "200"
    assert command[command.index("--fold") + 1] == "all"


def test_demo_description_says_it_is_not_clinical():
    assert "NOT A CLINICAL MODEL" in DEMO_DESCRIPTION and "phantom" in DEMO_DESCRIPTION


def test_training_some_roles_needs_a_bundle_to_carry_the_others(tmp_path):
    import pytest

    from training_tools.demo_bundle import DemoOptions, demo_bundle

    masks = tmp_path / "masks"
    masks.mkdir()
    for i in range(3):
        (masks / f"case_0000{i}.nii.gz").write_bytes(b"")
    options = DemoOptions(masks=masks, work=tmp_path / "w", out=tmp_path / "b", device="cpu", eval_cases=1, roles=("KT",))
    with pytest.raises(ValueError, match="needs --init-bundle"):
        demo_bundle(options)
    with pytest.raises(ValueError, match="unknown roles Kidney"):
        demo_bundle(DemoOptions(masks=masks, work=tmp_path / "w", out=tmp_path / "b", device="cpu", eval_cases=1,
                                roles=("Kidney",)))


def test_variants_and_init_weights_in_the_command_lines(tmp_path):
    from training_tools.phantom_cache import variant_name

    assert variant_name(tmp_path / "case_00012.nii.gz", 0) == "case_00012"
    assert variant_name(tmp_path / "case_00012" / "segmentation.nii.gz", 2) == "case_00012_v2"
    command = train_command("KT", "demo-cpu", tmp_path, tmp_path / "KT", "cpu", 1, None, tmp_path / "bundle")
    assert command[command.index("--init-weights") + 1] == str(tmp_path / "bundle" / "KT.pt")
