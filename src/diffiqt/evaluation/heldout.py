"""Enhance a simulated low-field scan of a held-out real brain and score it against cubic interpolation.

This is what ``diffiqt demo`` shows and what the model card's numbers come from. The case is a bundled
brain the shipped model never saw in training (Colin27, skull-stripped or whole head; see
docs/model-card.md), degraded by the x8 low-field simulator with a fixed seed. The baseline is the
model's own input: the thick-slice scan cubically interpolated onto the model grid. Both are scored on
the high-field truth with the metrics of :mod:`diffiqt.evaluation.metrics`, plus, for whole-head scans, the error
between brain and scalp (where a model trained on skull-stripped brains could invent structure).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from collections.abc import Callable

import numpy as np

from diffiqt.anatomy.brains import TissueMaps, crop_sample, load_sources
from diffiqt.errors import InputError
from diffiqt.imaging.io import Volume
from diffiqt.imaging.resample import mask_extent, resample, shared_extent, to_isotropic
from diffiqt.inference.enhance import EnhanceOptions, EnhanceResult, enhance
from diffiqt.models.loading import Model
from diffiqt.simulation import LowFieldParams, simulate_low_field

LF_FACTOR = 8  # the paper's slice-direction decimation


@dataclass
class HeldOutCase:
    """A real brain, its simulated thick-slice scan, and where to score them."""

    name: str
    hf: Volume
    lf: Volume  # thick slices on their own grid
    brain: np.ndarray  # bool on hf's grid: where the metrics are computed
    head: np.ndarray  # bool on hf's grid: the whole head (equal to ``brain`` for skull-stripped scans)
    simulation: dict


def _slab_box(mask: np.ndarray, axis: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """[lower, upper) of the central ``size``-voxel slab of ``mask``'s extent across ``axis``."""
    extent = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(3) if a != axis)))
    lower, upper = np.zeros(3, int), np.array(mask.shape)
    lower[axis] = max(0, (int(extent[0]) + int(extent[-1]) + 1 - size) // 2)
    upper[axis] = min(lower[axis] + size, mask.shape[axis])
    return lower, upper


def central_box(mask: np.ndarray, edge: int) -> tuple[np.ndarray, np.ndarray]:
    """[lower, upper) of an ``edge``³ cube centred on the mask's bounding box, inside the volume."""
    lower, upper = mask_extent(mask)
    centre = (lower + upper) // 2
    lower = np.clip(centre - edge // 2, 0, np.maximum(np.array(mask.shape) - edge, 0))
    return lower, np.minimum(lower + edge, mask.shape)


def held_out_case(
    name: str = "colin27-brain",
    *,
    seed: int = 0,
    axis: int = 2,
    slab_mm: float | None = None,
    region: int | None = None,
    slices_mm: tuple[float, float] | None = None,
    inplane_mm: float | None = None,
) -> HeldOutCase:
    """Brain ``name`` (a bundled name or a file with tissue maps beside it, see :func:`diffiqt.anatomy.brains.load_sources`)
    and its x8 scan along ``axis`` (or thick slices of ``slices_mm`` = (thickness, gap), e.g. (4, 1) for a
    clinical 5 mm spacing), at the brain's own in-plane voxel or a coarser ``inplane_mm``; optionally only the
    central ``slab_mm``-thick slab across the slice axis (a quicker demo) or the central ``region``³ cube
    (the CPU benchmark)."""
    sample = load_sources([name])[0]
    if sample.tissues is None:
        raise InputError(f"{name}: tissue maps are needed to know where the brain is (see docs/data.md)")
    if slab_mm:
        size = int(round(slab_mm / float(sample.t1.voxel_size[axis])))
        sample = crop_sample(sample, *_slab_box(sample.mask, axis, size))
    if region:
        sample = crop_sample(sample, *central_box(sample.mask, region))
    if slices_mm is None:
        params = LowFieldParams.for_factor(
            LF_FACTOR, float(sample.t1.voxel_size[axis]), axis=axis, inplane_mm=inplane_mm
        )
    else:
        params = LowFieldParams(thickness_mm=slices_mm[0], gap_mm=slices_mm[1], axis=axis, inplane_mm=inplane_mm)
    result = simulate_low_field(sample.t1, sample.tissues, params, np.random.default_rng(seed), upsample=False)
    assert sample.tissues is not None  # checked above; cropping keeps the maps
    brain = (
        np.sum([m.data for m in sample.tissues.as_dict().values()], axis=0) > 0.5
    )  # the maps cover the brain, with a skull too
    info = {**result.info, "source": name, "seed": seed, "slab_mm": slab_mm, "region": region}
    return HeldOutCase(name, sample.t1, result.lf, brain, sample.mask | brain, info)


@dataclass
class MultiScanCase:
    """One real brain and several thick-slice scans of it (one session), each with its own noise."""

    case: HeldOutCase  # the brain, its masks and the first scan (the reference of a fusion)
    scans: list[Volume]  # thick slices on their own grids, the first is ``case.lf``
    motion: dict  # scan index -> (degrees, mm) of the head movement simulated before that scan


def head_motion(degrees: float, mm: float, centre: np.ndarray) -> np.ndarray:
    """4x4 world transform of a head nodding by ``degrees`` (about the left-right axis through ``centre``)
    and moving ``mm`` forward: the usual movement between the scans of a session."""
    angle = np.deg2rad(degrees)
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    motion = np.eye(4)
    motion[:3, :3] = rotation
    motion[:3, 3] = centre - rotation @ centre + np.array([0.0, mm, 0.0])
    return motion


def moved(volume: Volume, motion: np.ndarray, order: int) -> Volume:
    """``volume``'s content moved by the world transform ``motion``, on the same grid."""
    return Volume(
        np.clip(
            resample(Volume(volume.data, motion @ volume.affine), volume.affine, volume.shape, order=order).data,
            0,
            None,
        ),
        volume.affine,
    )


def multi_scan_case(
    name: str = "colin27-brain",
    *,
    axes: tuple[int, ...] = (2, 1, 0),
    seed: int = 0,
    motion: dict[int, tuple[float, float]] | None = None,
) -> MultiScanCase:
    """Brain ``name`` scanned x8 along each of ``axes`` (seed ``seed + i`` for scan i: independent noise
    and SNR draws); the scans of ``motion`` (index -> (degrees, mm), see :func:`head_motion`) are of the
    head moved after the first scan, their affines unchanged, as a scanner would record them."""
    if not axes or any(a not in (0, 1, 2) for a in axes):
        raise InputError(f"axes must be slice axes 0, 1 or 2 (got {axes})")
    motion = dict(motion or {})
    if 0 in motion:
        raise InputError("the first scan is the reference: it cannot move")
    first = held_out_case(name, seed=seed, axis=axes[0])
    sample = load_sources([name])[0]
    scans = [first.lf]
    for index, axis in enumerate(axes[1:], start=1):
        t1, tissues = sample.t1, sample.tissues
        if tissues is None:  # held_out_case has refused such a brain already; this tells the type checker
            raise InputError(f"{name}: tissue maps are needed to simulate its scans")
        if index in motion:
            centre = t1.voxel_to_world((np.array(t1.shape) - 1) / 2)
            transform = head_motion(*motion[index], centre)
            t1 = moved(t1, transform, order=3)
            tissues = TissueMaps(*(moved(m, transform, order=1) for m in (tissues.gm, tissues.wm, tissues.csf)))
        params = LowFieldParams.for_factor(LF_FACTOR, float(t1.voxel_size[axis]), axis=axis)
        scans.append(simulate_low_field(t1, tissues, params, np.random.default_rng(seed + index), upsample=False).lf)
    return MultiScanCase(first, scans, motion)


def score(prediction: np.ndarray, case: HeldOutCase) -> dict[str, float | None]:
    """Metrics of a prediction on the model grid against the truth (both protocols, tissue agreement) and,
    for whole-head scans, the mean absolute error between brain and scalp in % of the brain's range."""
    from diffiqt.evaluation.metrics import evaluate

    common = shared_extent(prediction.shape, case.hf.shape)
    pred, truth, brain, head = (a[common] for a in (prediction, case.hf.data, case.brain, case.head))
    values = evaluate(pred, truth, brain)
    outside = head & ~brain
    if outside.any():
        scale = float(np.percentile(truth[brain], 99.5))
        values["outside_brain_mae_pct"] = 100 * float(np.abs(pred[outside] - truth[outside]).mean()) / scale
    return values


@dataclass
class HeldOutResult:
    interpolated: Volume  # the model's input: the scan, cubic, on the model grid
    enhanced: EnhanceResult
    seconds: float  # enhancement wall time
    scores: dict[str, dict[str, float | None]]  # "cubic" and "enhanced"


def run_held_out(
    case: HeldOutCase, model: Model, options: EnhanceOptions, on_step: Callable[[int], None] | None = None
) -> HeldOutResult:
    """Enhance the case's scan with ``model`` and score it and its cubic interpolation."""
    interpolated = to_isotropic(case.lf, model.voxel_mm)
    begin = time.perf_counter()
    enhanced = enhance(case.lf, model, options, on_step)
    seconds = time.perf_counter() - begin
    scores = {"cubic": score(interpolated.data, case), "enhanced": score(enhanced.mean.data, case)}
    if enhanced.std is not None:
        scores["enhanced"]["uncertainty_error_spearman"] = uncertainty_error_spearman(enhanced, case)
    return HeldOutResult(interpolated, enhanced, seconds, scores)


def uncertainty_error_spearman(enhanced: EnhanceResult, case: HeldOutCase, voxels: int = 200_000) -> float:
    """Spearman rank correlation, inside the brain, between the per-voxel standard deviation of the
    samples and the absolute error of their mean (a random subset of voxels, fixed seed, for speed)."""
    from scipy.stats import spearmanr

    if enhanced.std is None:
        raise ValueError("the uncertainty needs several samples (EnhanceOptions.samples > 1)")
    common = shared_extent(enhanced.mean.shape, case.hf.shape)
    mean, std, truth, brain = (a[common] for a in (enhanced.mean.data, enhanced.std.data, case.hf.data, case.brain))
    index = np.flatnonzero(brain)
    index = np.random.default_rng(0).choice(index, min(voxels, index.size), replace=False)
    error = np.abs(mean.ravel()[index] - truth.ravel()[index])
    return float(spearmanr(std.ravel()[index], error).statistic)
