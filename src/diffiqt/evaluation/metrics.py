"""Image-quality and segmentation metrics for enhanced volumes, under three documented protocols.

* ``paper`` — as the DiffusionIQT code computes them: the central 192³ region
  (cropped, or zero-padded where the volume is smaller), each volume min-max
  scaled to [0, 1] on its own, 3D PSNR (data range 1) and 3D MS-SSIM with the
  standard settings (pytorch-msssim: 5 scales, Gaussian window 11, sigma 1.5).
  The prediction is first clipped at 0, as ``strict`` clips it: a magnitude image
  has no negative values, and without the clip one undershoot voxel (cubic
  ringing, or zero-mean noise in the background of a simulated scan) becomes the
  minimum that the min-max scaling maps to 0, which lifts the whole background
  (cubic interpolation of a skull-stripped x8 scan lost 5 dB to it).
* ``strict`` — both volumes on the *target's* fixed intensity range (0 to its
  99.5th percentile inside the mask), PSNR inside the brain mask only, SSIM and
  MS-SSIM on the mask's bounding box. MS-SSIM needs every side > 160 voxels with
  window 11 (pytorch-msssim checks 4 downsamplings whatever the scales), so it
  uses window 7 when the box is > 96 voxels and is reported as None below that.
* ``fit`` (keys ``fit_psnr``, ``fit_ssim``) — MRI intensity units are arbitrary,
  so a prediction that is right up to a global gain and offset should not be
  penalised for it. One affine map per prediction, a·pred + b, is fitted to the
  target by least squares over the mask voxels (:func:`diffiqt.preprocess.affine_fit`); the mapped
  prediction is then scored exactly as ``strict`` scores (same fixed target
  range, clipped at 0, PSNR in the mask, SSIM on the mask's bounding box, both
  volumes zero outside the mask, where the map was not fitted; no MS-SSIM). It removes a gain and offset, nothing else: contrast between
  tissues, blur and noise still count. Since the fit can only lower the masked
  MSE, ``fit_psnr`` >= ``psnr`` whenever prediction and target have no negative
  voxel in the mask (strict's clipping of negatives is then a no-op). SSIM is
  not a squared error, so ``fit_ssim`` carries no such guarantee. Noise in the
  prediction pulls the fitted gain below 1 (regression dilution: 0.93 for noise
  of sd 10 on the MNI T1), which is how least squares trades a little contrast
  for a little noise; a noisy prediction gains a few tenths of a dB from it.

Segmentation agreement: CSF/GM/WM labels of prediction and target by the same
3-class Gaussian mixture (:mod:`diffiqt.anatomy.tissues`) inside the target's brain
mask; Dice per class and mean IoU. LPIPS needs pretrained 2D network weights,
which are never downloaded: it is None unless the ``lpips`` package and its
backbone weights are already on the machine.

pytorch-msssim and scikit-learn (the tissue mixture) are imported by the functions
that use them, so that :func:`psnr` (training's validation) needs neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from diffiqt.imaging.resample import mask_extent
from diffiqt.preprocess import affine_fit

if TYPE_CHECKING:
    from sklearn.mixture import GaussianMixture

PAPER_REGION = 192
TISSUE_LABELS = ("csf", "gm", "wm")


def psnr(pred: np.ndarray, target: np.ndarray, data_range: float, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB: 10·log10(range² / MSE), over ``mask`` if given."""
    diff = pred.astype(np.float64) - target.astype(np.float64)
    mse = float(np.mean(diff[mask] ** 2 if mask is not None else diff**2))
    return float("inf") if mse == 0 else float(10 * np.log10(data_range**2 / mse))


def _as_tensor(volume: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]


def ssim3d(pred: np.ndarray, target: np.ndarray, data_range: float, win_size: int = 7) -> float:
    """Mean 3D SSIM (Gaussian window ``win_size``, sigma 1.5)."""
    from pytorch_msssim import ssim

    return float(ssim(_as_tensor(pred), _as_tensor(target), data_range=data_range, win_size=win_size))


def ms_ssim3d(pred: np.ndarray, target: np.ndarray, data_range: float) -> float | None:
    """3D MS-SSIM (5 scales): window 11 if every side > 160, window 7 if > 96, else None (too small)."""
    side = min(pred.shape)
    win = 11 if side > 160 else 7 if side > 96 else None
    if win is None:
        return None
    from pytorch_msssim import ms_ssim

    return float(ms_ssim(_as_tensor(pred), _as_tensor(target), data_range=data_range, win_size=win))


def central_region(volume: np.ndarray, size: int = PAPER_REGION) -> np.ndarray:
    """The central ``size``³ region: cropped where larger, zero-padded (centred) where smaller."""
    out = np.zeros((size,) * 3, dtype=np.float32)
    src, dst = [], []
    for n in volume.shape:
        if n >= size:
            start = (n - size) // 2
            src.append(slice(start, start + size))
            dst.append(slice(0, size))
        else:
            start = (size - n) // 2
            src.append(slice(0, n))
            dst.append(slice(start, start + n))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def min_max(volume: np.ndarray) -> np.ndarray:
    lo, hi = float(volume.min()), float(volume.max())
    return (volume - lo) / (hi - lo) if hi > lo else np.zeros_like(volume)


def bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice]:
    lo, hi = mask_extent(mask)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))  # type: ignore[return-value]


def tissue_labels(
    volume: np.ndarray, mask: np.ndarray, start: GaussianMixture | None = None
) -> tuple[np.ndarray, GaussianMixture]:
    """Hard CSF=1/GM=2/WM=3 labels (0 outside ``mask``) from the 3-class mixture, and the fitted mixture
    (EM starts from the mixture ``start`` if given; see :func:`diffiqt.anatomy.tissues.tissue_mixture`)."""
    from diffiqt.anatomy.tissues import tissue_mixture

    # Fitted to convergence, so that EM started from a volume's own mixture stays where it is.
    maps, mixture = tissue_mixture(volume, mask, seed=0, start=start, tol=1e-7)
    stacked = np.stack([maps[name] for name in TISSUE_LABELS])
    return np.where(mask, stacked.argmax(axis=0) + 1, 0).astype(np.uint8), mixture


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def segmentation_agreement(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Dice per tissue class and mean IoU of the mixture-model segmentations.

    Each volume is segmented on its own, but EM on the prediction starts from the target's fitted
    mixture: from the generic start, EM on a prediction with weaker grey/white contrast can settle with
    two components on one peak, and the segmentation then has no white matter at all (seen on a
    bench prediction), which would score the mixture's failure rather than the image.
    """
    target_labels, target_mixture = tissue_labels(target, mask)
    pred_labels, _ = tissue_labels(pred, mask, start=target_mixture)
    scores = {}
    ious = []
    for value, name in enumerate(TISSUE_LABELS, start=1):
        p, t = pred_labels == value, target_labels == value
        scores[f"dice_{name}"] = dice(p, t)
        ious.append(iou(p, t))
    scores["seg_miou"] = float(np.mean(ious))
    return scores


def paper_protocol(pred: np.ndarray, target: np.ndarray) -> dict[str, float | None]:
    p, t = min_max(central_region(np.maximum(pred, 0))), min_max(central_region(target))
    return {"paper_psnr": psnr(p, t, 1.0), "paper_ms_ssim": ms_ssim3d(p, t, 1.0), "paper_lpips": lpips_slices(p, t)}


def on_target_range(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both volumes divided by the target's 99.5th percentile in the mask; the prediction clipped at 0."""
    data_range = float(np.percentile(target[mask], 99.5))
    return np.clip(pred / data_range, 0, None), target / data_range


def strict_protocol(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> dict[str, float | None]:
    p, t = on_target_range(pred, target, mask)
    box = bounding_box(mask)
    return {
        "psnr": psnr(p, t, 1.0, mask),
        "ssim": ssim3d(p[box], t[box], 1.0),
        "ms_ssim": ms_ssim3d(p[box], t[box], 1.0),
    }


def fit_protocol(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> dict[str, float | None]:
    gain, offset = affine_fit(pred, target, mask)
    # float64, so that an exact affine copy of the target maps back to it within rounding (PSNR ~inf).
    p, t = on_target_range(gain * pred.astype(np.float64) + offset, target, mask)
    box = bounding_box(mask)
    # The map is fitted inside the mask and means nothing outside it (its offset would light up the
    # background of the box), so SSIM compares the two volumes inside the mask, zero elsewhere.
    p, t = np.where(mask, p, 0.0), np.where(mask, t, 0.0)
    return {"fit_psnr": psnr(p, t, 1.0, mask), "fit_ssim": ssim3d(p[box], t[box], 1.0)}


def evaluate(
    pred: np.ndarray, target: np.ndarray, mask: np.ndarray, *, segmentation: bool = True
) -> dict[str, float | None]:
    """The strict, fit and paper protocols, and tissue segmentation agreement, for one volume pair on one grid."""
    if pred.shape != target.shape or mask.shape != target.shape:
        raise ValueError(f"shapes differ: pred {pred.shape}, target {target.shape}, mask {mask.shape}")
    values: dict[str, float | None] = {
        **strict_protocol(pred, target, mask),
        **fit_protocol(pred, target, mask),
        **paper_protocol(pred, target),
    }
    if segmentation:
        values.update(segmentation_agreement(pred, target, mask))
    return values


def lpips_slices(pred: np.ndarray, target: np.ndarray) -> float | None:
    """Slice-wise LPIPS if its package and pretrained weights are already installed, else None.

    Nothing is downloaded: the import or the weight loading fails offline and the
    metric is then reported as not available.
    """
    try:
        import lpips  # noqa: F401  (optional; pulls torchvision weights that are not available offline)
    except ImportError:
        return None
    try:
        model = lpips.LPIPS(net="alex", verbose=False, pretrained=True)
    except Exception:  # noqa: BLE001 - any failure to find weights offline means "not available"
        return None
    middle = [pred.shape[2] // 2 + d for d in (-20, 0, 20)]
    with torch.inference_mode():
        values = [
            float(
                model(
                    torch.from_numpy(pred[:, :, k])[None, None].repeat(1, 3, 1, 1) * 2 - 1,
                    torch.from_numpy(target[:, :, k])[None, None].repeat(1, 3, 1, 1) * 2 - 1,
                )
            )
            for k in middle
        ]
    return float(np.mean(values))
