"""The cascade on tiny synthetic CTs: tiny random V-Nets for the plumbing, and intensity-threshold
stand-in networks where the fused labels must come out exactly (SPEC §1 and §3)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from KidneyTumorSegLib.boxes import Box
from KidneyTumorSegLib.bundle import ModelBundle, load_bundle
from KidneyTumorSegLib.cascade import STAGE2_ORDER, TUMOR_2D_ROLES, TUMOR_3D_ROLES, Cascade, InferenceOptions
from KidneyTumorSegLib.geometry import labels_to_source
from KidneyTumorSegLib.imageio import Image
from KidneyTumorSegLib.inference import Cancelled
from KidneyTumorSegLib.settings import DEFAULT_SETTINGS, WORKING_SPACING_ZYX, MethodSettings
from KidneyTumorSegLib.stage1 import NoKidneyFound, stage2_crop
from KidneyTumorSegLib.support import support_in_box
from synthetic_cases import ConstantNet, ThresholdNet, image_in, normalized, phantom_ct, steered_bundle, working_affine

torch.set_num_threads(1)

SHAPE = (20, 64, 64)


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All twelve models at width 2 (kidney patches 16 x 64 x 64); stage 1 marks the whole volume
    and fixed landmarks."""
    return steered_bundle(tmp_path_factory.mktemp("cascade") / "bundle", tuple(STAGE2_ORDER) + ("stage1",),
                          {"stage1": 10.0}, heat=1.0, kidney_patch=(16, 64, 64))


@pytest.fixture(scope="module")
def bundle(bundle_path: Path) -> ModelBundle:
    return load_bundle(bundle_path)


def _options(members: tuple[str, ...] | None = None, settings: MethodSettings = DEFAULT_SETTINGS) -> InferenceOptions:
    return InferenceOptions(device="cpu", members=members, settings=settings)


def _with(bundle: ModelBundle, networks: dict[str, torch.nn.Module]) -> ModelBundle:
    """A copy of ``bundle`` with some networks replaced by role (the module fixture stays untouched)."""
    return dataclasses.replace(bundle, networks={**bundle.networks, **networks})


def _recording(cascade: Cascade) -> list[tuple[str, str, tuple[int, ...]]]:
    """Record every model run of ``cascade`` as (role, stage, input shape)."""
    calls: list[tuple[str, str, tuple[int, ...]]] = []
    run_3d, run_2d = cascade._run_3d, cascade._run_2d

    def record_3d(role, volume, output, report, stage, cancel, region=None):
        calls.append((role, stage, volume.shape))
        return run_3d(role, volume, output, report, stage, cancel, region)

    def record_2d(role, volume, report, cancel, region=None):
        calls.append((role, "stage2", volume.shape))
        return run_2d(role, volume, report, cancel, region)

    cascade._run_3d, cascade._run_2d = record_3d, record_2d
    return calls


def _settings(**groups: dict) -> MethodSettings:
    return dataclasses.replace(DEFAULT_SETTINGS, **{
        name: dataclasses.replace(getattr(DEFAULT_SETTINGS, name), **changes) for name, changes in groups.items()})


# ---------------------------------------------------------------- plumbing with random networks


@pytest.mark.parametrize("orientation", ["IPL", "RAS", "oblique"])
def test_labels_come_back_on_the_input_grid(bundle_path: Path, orientation: str) -> None:
    image = image_in(phantom_ct(SHAPE), orientation)
    two_models = load_bundle(bundle_path, roles=("stage1", "KT"))
    assert two_models.roles == ("stage1", "KT")
    result = Cascade(two_models, _options()).segment(image)
    assert result.labels.shape == image.array.shape and result.labels.dtype == np.uint8
    assert set(np.unique(result.labels)) <= {0, 1, 2}
    assert result.models == ("stage1", "KT")
    assert result.stage1 is not None and result.stage1.refined_box is None  # no kidney models: no refinement
    assert result.crop_box == result.stage1.crop_box
    outside = np.ones(result.labels_working.shape, bool)
    outside[result.crop_box.slices] = False
    assert not result.labels_working[outside].any()


ALWAYS_REFINE = {"refine_only_when_support_is_smaller": False}


def test_the_whole_twelve_model_ensemble_runs(bundle: ModelBundle) -> None:
    image = image_in(phantom_ct(SHAPE), "IPL")
    cascade = Cascade(bundle, _options(settings=_settings(stage1=ALWAYS_REFINE)))
    calls = _recording(cascade)
    result = cascade.segment(image)
    assert result.models == ("stage1", *STAGE2_ORDER) and len(result.models) == 12
    assert {role for role, _, _ in calls} == set(result.models)
    assert set(STAGE2_ORDER) <= set(result.timings)
    assert result.labels.shape == SHAPE and set(np.unique(result.labels)) <= {0, 1, 2}
    # Stage 1 saw the x4 grid of the working frame, the others the crop.
    assert calls[0] == ("stage1", "stage1", (5, 16, 16))
    assert all(shape == result.crop_box.size for _, stage, shape in calls if stage == "stage2")


def test_members_restrict_the_ensemble(bundle: ModelBundle) -> None:
    cascade = Cascade(bundle, _options(members=("T-vnet", "T2D-ax-dice")))
    assert cascade.members == ("KT", "T-vnet", "T2D-ax-dice")  # KT always runs
    calls = _recording(cascade)
    crop = Box((2, 10, 10), (17, 53, 53))
    result = cascade.segment(image_in(phantom_ct(SHAPE), "IPL"), crop=crop)
    assert [role for role, _, _ in calls] == ["stage1", "KT", "T-vnet", "T2D-ax-dice"]  # stage 1 for the support
    assert result.models == ("stage1", "KT", "T-vnet", "T2D-ax-dice")
    with pytest.raises(ValueError, match="unknown ensemble members: T9"):
        Cascade(bundle, _options(members=("T9",)))


@pytest.mark.parametrize("support", [True, False])
def test_a_given_crop_skips_stage_1(bundle: ModelBundle, support: bool) -> None:
    """A crop given by hand skips stage 1's boxes; only the support rule needs its segmentation head."""
    cascade = Cascade(bundle, _options(members=("KT",), settings=_settings(stage1={"support_components": support})))
    calls = _recording(cascade)
    crop = Box((3, 12, 20), (15, 50, 45))
    result = cascade.segment(image_in(phantom_ct(SHAPE), "IPL"), crop=crop)
    assert calls == [("stage1", "stage1", (5, 16, 16))] * support + [("KT", "stage2", crop.size)]
    assert result.stage1 is None and result.crop_box == crop and result.models == ("stage1",) * support + ("KT",)
    outside = np.ones(SHAPE, bool)
    outside[crop.slices] = False
    assert not result.labels_working[outside].any()


def test_cancel_raises_and_returns_nothing(bundle: ModelBundle) -> None:
    image = image_in(phantom_ct(SHAPE), "IPL")
    cascade = Cascade(bundle, _options(members=("KT",)))
    calls = _recording(cascade)
    with pytest.raises(Cancelled):
        cascade.segment(image, cancel=lambda: True)
    assert [role for role, _, _ in calls] == ["stage1"]
    polls = []

    def cancel_in_stage_2() -> bool:  # polls: stage 1's one patch, before stage 2, KT's first patch
        polls.append(1)
        return len(polls) > 2

    calls.clear()
    with pytest.raises(Cancelled):
        cascade.segment(image, cancel=cancel_in_stage_2)
    assert [role for role, _, _ in calls] == ["stage1", "KT"]


def test_no_kidney_found_through_the_cascade(bundle: ModelBundle) -> None:
    blind = _with(bundle, {"stage1": ThresholdNet(low=5.0, channels=5, heat=0.0)})
    with pytest.raises(NoKidneyFound, match="--box full"):
        Cascade(blind, _options(members=("KT",))).segment(image_in(phantom_ct(SHAPE), "IPL"))


# ---------------------------------------------------------------- stage 1 refinement in the cascade


def test_kidney_probabilities_of_the_refinement_are_reused_in_stage_2(bundle: ModelBundle) -> None:
    """In strict consensus (K changes labels) without the support rule, stage 2 reuses the
    refinement's K (with the support, the refinement runs K only near stage 1's kidneys)."""
    everywhere = _with(bundle, {"K1": ThresholdNet(low=-1.0), "K2": ThresholdNet(low=-1.0)})
    settings = _settings(stage1={"support_components": False}, fusion={"kt_only_label": 0})
    cascade = Cascade(everywhere, _options(members=("K1", "K2"), settings=settings))
    calls = _recording(cascade)
    result = cascade.segment(image_in(phantom_ct(SHAPE), "IPL"))
    assert result.stage1.refined_box is None  # the kidney fills the box: kept
    region = stage2_crop(result.stage1.chosen_box, SHAPE)
    assert result.crop_box == region
    assert [(role, stage) for role, stage, _ in calls] == [
        ("stage1", "stage1"), ("K1", "stage1"), ("K2", "stage1"), ("KT", "stage2")]
    assert everywhere.networks["K1"].calls == everywhere.networks["K2"].calls == 1


@pytest.mark.parametrize("strict", [False, True])
def test_stage_2_runs_the_kidney_models_only_where_they_change_a_label(bundle: ModelBundle, strict: bool) -> None:
    """Under the default, KT-only voxels are kidney whatever K says, so a given box runs no K model."""
    settings = _settings(fusion={"kt_only_label": 0}) if strict else DEFAULT_SETTINGS
    cascade = Cascade(bundle, _options(members=("K1", "K2"), settings=settings))
    calls = _recording(cascade)
    result = cascade.segment(image_in(phantom_ct(SHAPE), "IPL"), crop=Box((2, 10, 10), (17, 53, 53)))
    ran = ("stage1", "KT", "K1", "K2") if strict else ("stage1", "KT")
    assert tuple(role for role, _, _ in calls) == result.models == ran
    assert cascade.kidney_models_label is strict


def test_refinement_with_the_kt_model(bundle: ModelBundle) -> None:
    ct = phantom_ct(SHAPE, tumor=False)
    ct[ct == 150] = 110  # both kidneys at 0.62 ...
    ct[5:15, 16:48, 40:56] = 150  # ... but the left one at 0.7: stage 1 sees two, KT one
    stage1 = ThresholdNet(low=normalized(90), channels=5, heat=0.0)
    kt = ThresholdNet(low=normalized(130))
    cascade = Cascade(_with(bundle, {"stage1": stage1, "KT": kt, "K1": ThresholdNet(low=-1.0)}),
                      _options(members=("K1",), settings=_settings(stage1={"refine_with": "KT", **ALWAYS_REFINE})))
    calls = _recording(cascade)
    result = cascade.segment(image_in(ct, "IPL"))
    left = Box((5, 16, 40), (14, 47, 55))
    assert result.stage1.segmentation_box == Box((4, 16, 8), (15, 47, 55))
    assert result.stage1.refined_box == left
    assert result.crop_box == stage2_crop(left, SHAPE)
    assert [(role, stage) for role, stage, _ in calls][:2] == [("stage1", "stage1"), ("KT", "stage1")]
    assert ("K1", "stage1") not in [(role, stage) for role, stage, _ in calls]
    disabled = Cascade(_with(bundle, {"stage1": stage1, "KT": kt}),
                       _options(members=("KT",), settings=_settings(stage1={"refine_with": "KT", "refine_enabled": False})))
    assert disabled.segment(image_in(ct, "IPL")).stage1.refined_box is None


# ---------------------------------------------------------------- stage 1's support (support.py)

def _ct_with_a_lookalike() -> np.ndarray:
    """Two 150 HU kidneys on whole ×4 blocks (so stage 1's block means see them exactly) and a
    130 HU block far from both (slices 1-3): KT and K (over 120 HU) see it, stage 1 (over 140 HU)
    does not."""
    ct = np.full(SHAPE, -1000, np.int16)
    ct[:, 2:62, 2:62] = 0
    ct[4:16, 16:48, 8:24] = 150
    ct[4:16, 16:48, 40:56] = 150
    ct[1:4, 4:12, 24:40] = 130
    return ct


def _lookalike_networks() -> dict[str, torch.nn.Module]:
    n = normalized
    return {"stage1": ThresholdNet(n(140), channels=5, heat=0.0), "KT": ThresholdNet(n(120)),
            "K1": ThresholdNet(n(120)), "K2": ThresholdNet(n(120))}


@pytest.mark.parametrize("support", [True, False])
def test_components_stage_1_does_not_see_are_dropped(bundle: ModelBundle, support: bool) -> None:
    ct = _ct_with_a_lookalike()
    cascade = Cascade(_with(bundle, _lookalike_networks()),
                      _options(members=("K1", "K2"), settings=_settings(stage1={"support_components": support})))
    result = cascade.segment(image_in(ct, "IPL"))
    kidneys = ct == 150
    assert np.all(result.labels_working[kidneys] == 1)
    lookalike = result.labels_working[1:4, 4:12, 24:40]
    assert np.all(lookalike == 0) if support else np.all(lookalike == 1)  # off: the paper keeps every KT voxel
    assert not result.labels_working[~kidneys & (ct != 130)].any()


@pytest.mark.parametrize("outside", ["drop", "trim"])
def test_a_kidney_merged_with_a_larger_lookalike_keeps_its_part_beside_stage_1s_kidney(bundle: ModelBundle,
                                                                                        outside: str) -> None:
    """A short scan's failure: KT's kidney merges with a larger look-alike stage 1 does not see, so
    the component lies mostly outside the support. "drop" loses the kidney with it; "trim" keeps
    the kidney and the look-alike's voxels within one ×4 block of it."""
    ct = np.full(SHAPE, -1000, np.int16)
    ct[:, 2:62, 2:62] = 0
    ct[4:16, 16:48, 8:24] = 150  # the kidney, on whole ×4 blocks: 6144 voxels
    ct[4:16, 16:48, 24:60] = 130  # touching it: 13824 voxels, so 31 % of the component is supported
    stage1 = {"support_outside": outside, "support_trim_margin_blocks": 1}
    cascade = Cascade(_with(bundle, _lookalike_networks()), _options(members=("KT",), settings=_settings(stage1=stage1)))
    labels = cascade.segment(image_in(ct, "IPL")).labels_working
    expected = np.zeros(SHAPE, np.uint8)
    if outside == "trim":
        expected[4:16, 16:48, 8:28] = 1  # the kidney and one block (4 voxels) of the look-alike
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize("outside", ["drop", "trim"])
def test_the_refinement_runs_k_only_near_stage_1s_kidneys(bundle: ModelBundle, outside: str) -> None:
    """K runs on the patches holding stage 1's kidneys, and with the trim rule also one ×4 block
    around them: the region the rule may keep."""
    ct = _ct_with_a_lookalike()
    stage1 = {**ALWAYS_REFINE, "support_outside": outside, "support_trim_margin_blocks": 1}
    cascade = Cascade(_with(bundle, _lookalike_networks()), _options(members=("K1", "K2"), settings=_settings(stage1=stage1)))
    regions: list[tuple[str, np.ndarray | None]] = []
    run_3d = cascade._run_3d

    def record(role, volume, output, report, stage, cancel, region=None):
        if stage == "stage1" and role != "stage1":
            regions.append((role, region))
        return run_3d(role, volume, output, report, stage, cancel, region)

    cascade._run_3d = record
    result = cascade.segment(image_in(ct, "IPL"))
    assert [role for role, _ in regions] == ["K1", "K2"]
    expected = np.zeros(SHAPE, bool)
    expected[4:16, 16:48, 8:24] = expected[4:16, 16:48, 40:56] = True  # the kidneys stage 1 sees
    if outside == "trim":
        expected[0:20, 12:52, 4:28] = expected[0:20, 12:52, 36:60] = True  # ... grown by one ×4 block
    box = stage2_crop(result.stage1.chosen_box, SHAPE)
    for _, region in regions:
        np.testing.assert_array_equal(region, expected[box.slices])


@pytest.mark.parametrize("rule", ["authority", "support"])
def test_a_crop_given_by_hand_is_the_users_box(bundle: ModelBundle, rule: str) -> None:
    """The user's box rule: inside a box the user gives, the look-alike stage 1 does not see is
    kept (authority, the default); under "support" the support rule drops it as in stage 1's crop."""
    ct = _ct_with_a_lookalike()
    cascade = Cascade(_with(bundle, _lookalike_networks()),
                      _options(members=("KT",), settings=_settings(stage1={"user_box_rule": rule})))
    labels = cascade.segment(image_in(ct, "IPL"), crop=Box.full(SHAPE)).labels_working
    expected = (ct == 150) | ((ct == 130) & (rule == "authority"))
    np.testing.assert_array_equal(labels, expected.astype(np.uint8))


@pytest.mark.parametrize("rule", ["authority", "support"])
def test_the_users_box_keeps_a_real_kidney_stage_1_missed(bundle: ModelBundle, real_kits_crops, rule: str) -> None:
    """On a real KiTS19 mask (case_00015, 3 mm slices, on its own grid): stage 1 sees its larger
    kidney (150 HU) and misses the other (130 HU), which KT sees. A box of the user's holding both
    keeps the missed kidney under the user's box rule; the support rule would take it away."""
    image = real_kits_crops.get("case_00015")
    if image is None:
        pytest.skip("case_00015 is not among the real KiTS19 crops")
    components, _ = ndimage.label(np.asarray(image.dataobj) > 0)
    first, second = np.argsort(np.bincount(components.ravel())[1:])[::-1][:2] + 1
    seen, missed = components == first, components == second
    ct = np.where(seen, 150, np.where(missed, 130, 0)).astype(np.int16)
    cascade = Cascade(_with(bundle, _lookalike_networks()),
                      _options(members=("KT",), settings=_settings(stage1={"user_box_rule": rule})))
    case = cascade.prepare(Image(ct, image.affine))
    result = cascade.segment(case.image, crop=Box.full(case.frame.shape), case=case)
    support = support_in_box(case.support_down, Box.full(case.frame.shape), 4)
    stage1_saw = labels_to_source(support.astype(np.uint8), case.frame).astype(bool)
    assert stage1_saw[seen].mean() > 0.5 and not stage1_saw[missed].any()  # stage 1 really misses it
    inner = ndimage.binary_erosion(missed)  # away from the edge the resampling blurs
    assert (result.labels[ndimage.binary_erosion(seen)] > 0).mean() > 0.99
    if rule == "authority":
        assert (result.labels[inner] > 0).mean() > 0.99
    else:
        assert not result.labels[missed].any()


def test_a_blind_stage_1_gives_no_support_and_keeps_everything(bundle: ModelBundle, caplog: pytest.LogCaptureFixture) -> None:
    ct = _ct_with_a_lookalike()
    blind = {**_lookalike_networks(), "stage1": ThresholdNet(low=5.0, channels=5, heat=0.0)}
    cascade = Cascade(_with(bundle, blind), _options(members=("KT",)))
    labels = cascade.segment(image_in(ct, "IPL"), crop=Box.full(SHAPE)).labels_working
    np.testing.assert_array_equal(labels, ((ct == 150) | (ct == 130)).astype(np.uint8))
    assert "stage 1 marked no kidney" in caplog.text


# ---------------------------------------------------------------- fusion wiring (SPEC §3)

# Regions of one test CT ([y, x] squares over slices 4..15) with the HU each holds and the label
# each must get: by default, and in strict consensus mode.
REGIONS = {
    "kidney": (150, (8, 8), 12, 1, 1),  # KT and K
    "tumor by T-vnet": (250, (8, 24), 12, 2, 2),
    "tumor by T-unet": (270, (8, 40), 12, 2, 2),
    "tumor by 4 of 6 2D nets": (230, (24, 8), 12, 2, 2),  # mean 4/6 >= 0.5
    "2 of 6 2D nets": (210, (40, 40), 12, 1, 0),  # mean 2/6 < 0.5: KT only
    "KT only": (110, (24, 24), 12, 1, 0),
    "small tumor": (250, (40, 8), 5, 1, 1),  # 25 px per slice <= 64: becomes kidney
    "T without KT": (290, (40, 24), 12, 0, 0),
}


def _fusion_ct() -> np.ndarray:
    ct = np.full(SHAPE, -1000, np.int16)
    ct[:, 2:62, 2:62] = 0
    for hu, (y, x), size, _, _ in REGIONS.values():
        ct[4:16, y:y + size, x:x + size] = hu
    return ct


def _fusion_networks() -> dict[str, torch.nn.Module]:
    n = normalized
    nets = {"KT": ThresholdNet(n(100), n(280)), "K1": ThresholdNet(n(140), n(160)), "K2": ThresholdNet(n(140), n(160)),
            "T-vnet": ThresholdNet(n(240), n(260)), "T-unet": ThresholdNet(n(260), n(295))}
    for number, role in enumerate(TUMOR_2D_ROLES):  # four fire at 230 HU, two at 210 HU
        nets[role] = ThresholdNet(n(220), n(240)) if number < 4 else ThresholdNet(n(200), n(220))
    return nets


@pytest.mark.parametrize("strict", [False, True])
def test_fusion_of_the_ensemble(bundle: ModelBundle, strict: bool) -> None:
    fake = _with(bundle, _fusion_networks())
    settings = _settings(fusion={"kt_only_label": 0}) if strict else DEFAULT_SETTINGS
    result = Cascade(fake, _options(settings=settings)).segment(image_in(_fusion_ct(), "IPL"), crop=Box.full(SHAPE))
    assert result.labels.shape == SHAPE
    expected = np.zeros(SHAPE, np.uint8)
    for name, (_, (y, x), size, default_label, strict_label) in REGIONS.items():
        region = result.labels[4:16, y:y + size, x:x + size]
        label = strict_label if strict else default_label
        assert np.all(region == label), f"{name}: {np.unique(region)} instead of {label}"
        expected[4:16, y:y + size, x:x + size] = label
    np.testing.assert_array_equal(result.labels, expected)  # nothing anywhere else


def _tumor_split(votes_against: float, mean: float) -> float:
    """The documented uncertainty of a confident tumor-group split (w = 0.5)."""
    return 0.5 * votes_against + 0.5 * (1 - abs(2 * mean - 1))


# The uncertainty each region must get: by default, and in strict consensus (KT against K).
# Tumor groups: T-vnet, T-unet, the mean of the six 2D nets; every network outputs 0 or 1.
UNCERTAINTY = {
    "kidney": (0.0, 0.0),
    "tumor by T-vnet": (_tumor_split(2 / 3, 1 / 3),) * 2,
    "tumor by T-unet": (_tumor_split(2 / 3, 1 / 3),) * 2,
    "tumor by 4 of 6 2D nets": (_tumor_split(2 / 3, 2 / 9),) * 2,
    "2 of 6 2D nets": (_tumor_split(0, 1 / 9), 0.75),  # strict: KT says foreground, K background
    "KT only": (0.0, 0.75),
    "small tumor": (_tumor_split(1 / 3, 1 / 3), 0.75),  # the clean-up went against T-vnet
    "T without KT": (0.0, 0.0),  # the tumor groups are asked inside KT only
}


@pytest.mark.parametrize("strict", [False, True])
def test_uncertainty_of_the_ensemble(bundle: ModelBundle, strict: bool) -> None:
    fake = _with(bundle, _fusion_networks())
    settings = _settings(fusion={"kt_only_label": 0}) if strict else DEFAULT_SETTINGS
    result = Cascade(fake, _options(settings=settings)).segment(image_in(_fusion_ct(), "IPL"), crop=Box.full(SHAPE))
    assert result.uncertainty.shape == result.crop_box.size == SHAPE and result.uncertainty.dtype == np.float32
    expected = np.zeros(SHAPE, np.float32)
    for name, (_, (y, x), size, _, _) in REGIONS.items():
        expected[4:16, y:y + size, x:x + size] = UNCERTAINTY[name][strict]
    np.testing.assert_allclose(result.uncertainty, expected, atol=1e-3)
    disputed = np.count_nonzero(expected >= 0.45)
    labelled = np.count_nonzero(result.labels_working)
    assert result.review.score == pytest.approx(disputed / np.count_nonzero((expected >= 0.45) | (result.labels_working > 0)))
    assert result.review.disputed_ml == pytest.approx(disputed * np.prod(WORKING_SPACING_ZYX) / 1000)
    assert result.review.tumor_agreement == 0.0 and labelled > 0  # no tumor voxel has all three groups
    quiet = Cascade(fake, dataclasses.replace(_options(settings=settings), uncertainty=False))
    plain = quiet.segment(image_in(_fusion_ct(), "IPL"), crop=Box.full(SHAPE))
    assert plain.uncertainty is None and plain.review is None and "uncertainty" not in plain.timings
    np.testing.assert_array_equal(plain.labels, result.labels)


def test_the_uncertainty_hears_every_tumor_group_where_they_agree(bundle: ModelBundle) -> None:
    """Every tumor group must have run wherever KT said foreground: a group skipped there (say,
    because an earlier one already called the voxel tumor) would count as a vote against."""
    n = normalized
    agreeing = {"KT": ThresholdNet(n(100), n(280)), **{r: ThresholdNet(n(200), n(280)) for r in (*TUMOR_3D_ROLES, *TUMOR_2D_ROLES)}}
    ct = np.full(SHAPE, -1000, np.int16)
    ct[:, 2:62, 2:62] = 0
    ct[4:16, 8:20, 8:20] = 150  # kidney: no group says tumor
    ct[4:16, 30:42, 30:42] = 250  # tumor: every group says tumor
    result = Cascade(_with(bundle, agreeing), _options()).segment(image_in(ct, "IPL"), crop=Box.full(SHAPE))
    assert np.all(result.labels[4:16, 30:42, 30:42] == 2) and np.all(result.labels[4:16, 8:20, 8:20] == 1)
    np.testing.assert_allclose(result.uncertainty, 0.0, atol=1e-3)
    assert result.review.tumor_agreement == 1.0 and result.review.score == 0.0


def test_tumor_clean_up_threshold_is_the_setting(bundle: ModelBundle) -> None:
    fake = _with(bundle, _fusion_networks())
    settings = _settings(fusion={"min_tumor_component_pixels": 24})
    labels = Cascade(fake, _options(settings=settings)).segment(image_in(_fusion_ct(), "IPL"), crop=Box.full(SHAPE)).labels
    assert np.all(labels[4:16, 40:45, 8:13] == 2)  # 25 px > 24: kept


# ---------------------------------------------------------------- exact thresholds and the K mean

JUST_BELOW = 0.4999  # float16 rounds it to 0.5: a map stored in float16 would count it as 1
KT_EVERYWHERE = ThresholdNet(low=-1.0)


def _constant_run(bundle: ModelBundle, networks: dict[str, torch.nn.Module], strict: bool = False) -> np.ndarray:
    """Labels (working frame) of the whole phantom, stage 2 over the whole volume."""
    settings = _settings(fusion={"kt_only_label": 0}) if strict else DEFAULT_SETTINGS
    members = tuple(role for role in networks if role in STAGE2_ORDER)
    cascade = Cascade(_with(bundle, networks), _options(members=members, settings=settings))
    return cascade.segment(image_in(phantom_ct(SHAPE), "IPL"), crop=Box.full(SHAPE)).labels_working


@pytest.mark.parametrize("probability, counts", [(JUST_BELOW, False), (0.5, True)])
def test_every_threshold_counts_p_of_one_half_and_not_below(bundle: ModelBundle, probability: float, counts: bool) -> None:
    """p >= 0.5 (SPEC) is what runs, for KT, K (strict), a 3D tumor model, the 2D tumor mean and
    stage 1's support: no probability passes through float16 before its threshold."""
    p = ConstantNet(probability)
    assert _constant_run(bundle, {"KT": p}).max() == (1 if counts else 0)
    kidney = _constant_run(bundle, {"KT": KT_EVERYWHERE, "K1": p, "K2": p}, strict=True)
    assert np.all(kidney == (1 if counts else 0))
    for tumor_roles in (("T-vnet",), TUMOR_2D_ROLES):
        labels = _constant_run(bundle, {"KT": KT_EVERYWHERE, **{role: p for role in tumor_roles}})
        assert np.all(labels == (2 if counts else 1)), tumor_roles
    cascade = Cascade(_with(bundle, {"stage1": p, "KT": KT_EVERYWHERE}), _options(members=("KT",)))
    image = image_in(phantom_ct(SHAPE), "IPL")
    case = cascade.prepare(image)
    cascade.segment(image, crop=Box.full(SHAPE), case=case)
    assert case.support_down.all() if counts else not case.support_down.any()


@pytest.mark.parametrize("k1, k2, kidney", [(0.9, 0.05, False), (0.9, 0.2, True), (0.3, 0.75, True)])
def test_k_is_the_mean_of_k1_and_k2(bundle: ModelBundle, k1: float, k2: float, kidney: bool) -> None:
    """K1 and K2 disagree: the label follows their mean (0.475, 0.55, 0.525), not the larger or
    smaller of the two (strict consensus, where K decides between kidney and background)."""
    labels = _constant_run(bundle, {"KT": KT_EVERYWHERE, "K1": ConstantNet(k1), "K2": ConstantNet(k2)}, strict=True)
    assert np.all(labels == (1 if kidney else 0))


def test_working_affine_is_the_working_frame() -> None:
    from KidneyTumorSegLib.geometry import working_frame_for

    frame = working_frame_for(SHAPE, working_affine())
    assert frame.shape == SHAPE
    np.testing.assert_allclose(frame.affine, working_affine(), atol=1e-9)
