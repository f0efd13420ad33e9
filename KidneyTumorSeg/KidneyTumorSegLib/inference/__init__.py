"""Inference primitives: 3D sliding window, 2D slice-wise prediction, network predictors."""
from .cancellation import Cancelled
from .model_runner import make_predictor, pick_device, resolve_amp_dtype
from .slices2d import SLICE_AXES, predict_along_axis
from .sliding_window import gaussian_importance_map, patch_starts, sliding_window_predict

__all__ = [
    "Cancelled", "SLICE_AXES", "gaussian_importance_map", "make_predictor", "patch_starts",
    "pick_device", "predict_along_axis", "resolve_amp_dtype", "sliding_window_predict",
]
