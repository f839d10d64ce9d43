"""The intensity normalisation that training and enhancement share, and a gain-and-offset fit.

A network sees every volume divided by one number, the low-field scan's robust intensity
(:func:`lf_scale`: the 99th percentile inside its :func:`foreground`), which the LF alone determines,
so enhancement computes it as the training pairs did (:mod:`diffiqt.training.pairs`) and inverts it at
output (:func:`denormalise`). :func:`affine_fit` maps one intensity scale onto another by least squares:
the ``fit`` metrics protocol and multi-scan fusion's intensity matching use it.
"""

from __future__ import annotations

import numpy as np

from diffiqt.errors import ConfigError

FOREGROUND_FRACTION = 0.1  # of the robust maximum: the head/background threshold of the LF
SCALE_PERCENTILE = 99.0  # of the LF foreground: the intensity mapped to 1


def foreground(lf: np.ndarray) -> np.ndarray:
    """Head voxels of an LF volume: above 10% of its 99.5th percentile (bool, same shape)."""
    return lf > FOREGROUND_FRACTION * np.percentile(lf, 99.5)


def lf_scale(lf: np.ndarray) -> float:
    """The 99th percentile of the LF inside its :func:`foreground`: computable at inference from the LF alone."""
    head = lf[foreground(lf)]
    if head.size == 0:
        raise ConfigError("the low-field volume has no foreground (is it empty?)")
    return float(np.percentile(head, SCALE_PERCENTILE))


def normalise(x, scale: float):
    """Divide by ``scale``: background stays 0 (what convolutions pad with), the LF's bright tissue ~1.

    Works on numpy arrays and tensors of any shape. Both the HF target and the
    LF condition are divided by the LF's :func:`lf_scale`.
    """
    return x / scale


def denormalise(x, scale: float):
    """Inverse of :func:`normalise`."""
    return x * scale


def affine_fit(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Gain and offset (a, b) minimising the sum over ``mask`` of (a·pred + b - target)²."""
    x, y = pred[mask].astype(np.float64), target[mask].astype(np.float64)
    xc = x - x.mean()  # centred, so that a large common offset does not cost precision
    spread = float(xc @ xc)
    # A constant prediction fits any gain equally well; a = 0 then leaves the mean of the target.
    gain = float(xc @ (y - y.mean())) / spread if spread > 0 else 0.0
    return gain, float(y.mean() - gain * x.mean())
