"""Optional data augmentation (off by default: the paper uses none).

Acts on a :data:`~training_tools.samplers.Sample` ``(image [1, *P], seg [1, *P], reg [C, *P])``
with an explicit ``numpy.random.Generator``, so a sample stays a function of its seed.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

import numpy as np

from .samplers import Sample

# Landmark channels (left, top, right, bottom, center) after a left-right flip: left <-> right.
LANDMARK_FLIP_X = (2, 1, 0, 3, 4)


@dataclass(frozen=True)
class Augmentation:
    """Intensity scale ``1 ± scale``, shift ``± shift``, Gaussian noise of std ``noise`` (image in
    [0, 1] units), and a left-right flip with probability ``flip_x`` (landmark channels swapped)."""

    scale: float = 0.1
    shift: float = 0.05
    noise: float = 0.02
    flip_x: float = 0.0

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Augmentation:
        known = {f.name for f in fields(cls)}
        if set(data) - known:
            raise ValueError(f"unknown augmentation fields: {', '.join(sorted(set(data) - known))}")
        return cls(**dict(data))

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        image, seg, reg = sample
        image = image * np.float32(1.0 + rng.uniform(-self.scale, self.scale))
        image += np.float32(rng.uniform(-self.shift, self.shift))
        if self.noise > 0:
            image += rng.normal(0.0, self.noise, image.shape).astype(np.float32)
        if rng.uniform() < self.flip_x:
            image, seg, reg = (np.ascontiguousarray(a[..., ::-1]) for a in (image, seg, reg))
            if reg.shape[0] == len(LANDMARK_FLIP_X):
                reg = reg[list(LANDMARK_FLIP_X)]
        return image.astype(np.float32, copy=False), seg, reg
