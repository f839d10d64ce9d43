"""Several thick-slice scans of one subject (one session, any slice directions) fused into one volume.

1. Each scan is enhanced on its own by the model (:func:`diffiqt.inference.enhance.enhance`), which gives a
   ``voxel_mm`` volume on that scan's own isotropic grid.
2. The common grid is the first scan's model grid (its field of view and axis directions).
3. Optionally (``register``), each other enhanced volume is rigidly registered to the first one
   (SimpleITK, Mattes mutual information, 6 parameters): this absorbs a head movement between scans of a
   few degrees and millimetres. Scans are otherwise taken to be in one scanner world frame.
4. Each volume is resampled (cubic) onto the common grid; where it does not cover the grid it does not
   count. Scans have arbitrary MRI units, so each is mapped onto the first by the gain and offset that
   fit it best (least squares) inside the first scan's head, both blurred to the coarsest slice spacing
   first (:func:`intensity_match`).
5. The volumes are fused in the Fourier domain (``method="fourier"``, the default): each scan resolves
   frequencies along its slice direction only up to the Nyquist frequency of its slice spacing,
   1 / (2 · spacing), and every frequency in-plane. Each scan's spectrum is weighted by a soft low-pass
   along its own slice direction (a Butterworth of order 4 at that Nyquist frequency); the weights are
   normalised over the scans at every frequency, so that a frequency that all scans resolve is
   averaged (less noise), one that only some resolve is taken from those, and one that none resolves is
   averaged again. ``method="mean"`` is the voxel-wise mean of the matched volumes instead.
6. The uncertainty map is the per-voxel standard deviation across the matched single-scan volumes
   (where the scans disagree), with the mean sampling variance added when each has several samples.

docs/benchmarks.md ("Multi-scan fusion") says how these choices were measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage

from diffiqt.errors import ConfigError, InputError
from diffiqt.imaging.io import Volume
from diffiqt.imaging.resample import resample, to_sitk
from diffiqt.inference.enhance import EnhanceOptions, enhance, slice_axis
from diffiqt.models.loading import Model
from diffiqt.preprocess import affine_fit
from diffiqt.preprocess import foreground
from diffiqt.simulation import FWHM_TO_SIGMA

METHODS = ("fourier", "mean")
BUTTERWORTH_ORDER = 4  # soft enough not to ring, steep enough to drop what a scan does not resolve
MIN_OVERLAP = 0.5  # share of the first scan's head that every other scan must cover


@dataclass
class FusionOptions:
    method: str = "fourier"
    register: bool = True


@dataclass
class FusionResult:
    mean: Volume  # on the first scan's model grid
    std: Volume  # the uncertainty map on the same grid
    info: dict = field(default_factory=dict)


@dataclass
class ScanEstimate:
    """One scan's enhancement on its own model grid, and the scan it came from (for its slice geometry)."""

    scan: Volume
    mean: Volume
    std: Volume | None = None


def slice_geometry(scan: Volume) -> tuple[np.ndarray, float]:
    """(unit world direction of the scan's slice axis, slice spacing in mm)."""
    axis = slice_axis(scan)
    column = scan.affine[:3, axis]
    spacing = float(np.linalg.norm(column))
    return column / spacing, spacing


def check_scans(scans: Sequence[Volume]) -> None:
    """Refuse, before any enhancement, a set of scans that cannot be fused: too few, or not overlapping."""
    if len(scans) < 2:
        raise InputError(f"fusion needs at least 2 scans of one subject (got {len(scans)})")
    lower0, upper0 = scans[0].world_bounds()
    for index, scan in enumerate(scans[1:], start=2):
        lower, upper = scan.world_bounds()
        common = np.clip(np.minimum(upper, upper0) - np.maximum(lower, lower0), 0, None)
        share = float(np.prod(common) / np.prod(upper0 - lower0))
        if share < MIN_OVERLAP:
            raise InputError(
                f"scan {index} covers {100 * share:.0f}% of scan 1's field of view in world "
                f"coordinates (at least {100 * MIN_OVERLAP:.0f}% needed): not scans of one session?"
            )


def register_rigid(fixed: Volume, moving: Volume, seed: int = 0) -> np.ndarray:
    """4x4 world transform mapping points of ``fixed`` to where ``moving`` shows them (rigid, 6 parameters).

    Mattes mutual information on a 2% random sample of voxels, two levels (4 mm, then 2 mm), so that a
    whole head registers in seconds; the start is the identity (one session: the heads are near).
    """
    try:
        import SimpleITK as sitk
    except ImportError:
        raise ConfigError("registration needs SimpleITK: pip install 'diffiqt[bench]', or give --no-register") from None
    fixed_image, moving_image = to_sitk(fixed), to_sitk(moving)
    transform = sitk.Euler3DTransform()
    transform.SetCenter([float(c) for c in fixed.voxel_to_world((np.array(fixed.shape) - 1) / 2)])
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.02, seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-3, numberOfIterations=150, relaxationFactor=0.6
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2])
    method.SetSmoothingSigmasPerLevel([2.0, 1.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(transform, inPlace=True)
    method.Execute(fixed_image, moving_image)
    rotation = np.array(transform.GetMatrix()).reshape(3, 3)
    centre, shift = np.array(transform.GetCenter()), np.array(transform.GetTranslation())
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = rotation, centre + shift - rotation @ centre
    return matrix


def onto_grid(
    volume: Volume, affine: np.ndarray, shape: tuple[int, int, int], world: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(``volume`` sampled cubically on the grid, bool: where the grid lies inside ``volume``'s field of
    view); ``world`` (4x4, from :func:`register_rigid`) moves each grid point first."""
    placed = volume if world is None else Volume(volume.data, np.linalg.inv(world) @ volume.affine)
    values = resample(placed, affine, shape).data
    ones = Volume(np.ones(volume.shape, np.float32), placed.affine)
    # Linear sampling of ones with zeros beyond the edges: > 0.5 inside the field of view (half a voxel out).
    target_to_source = np.linalg.inv(ones.affine) @ affine
    inside = (
        ndimage.affine_transform(
            ones.data,
            target_to_source[:3, :3],
            offset=target_to_source[:3, 3],
            output_shape=shape,
            order=1,
            mode="constant",
            cval=0.0,
        )
        > 0.5
    )
    return values, inside


def fourier_weights(
    shape: tuple[int, int, int], affine: np.ndarray, geometry: Sequence[tuple[np.ndarray, float]]
) -> list[np.ndarray]:
    """Per-scan weights over the rfftn frequencies of the grid (``affine``), normalised to sum to 1."""
    frequencies = np.meshgrid(
        np.fft.fftfreq(shape[0]), np.fft.fftfreq(shape[1]), np.fft.rfftfreq(shape[2]), indexing="ij", sparse=True
    )  # cycles per voxel
    to_world = np.linalg.inv(affine[:3, :3]).T  # a wave f·voxel has the world wave vector M^-T f (cycles/mm)
    weights = []
    for direction, spacing in geometry:
        along = np.abs(sum(float(c) * f for c, f in zip(to_world @ direction, frequencies)))  # cycles/mm
        nyquist = 1.0 / (2.0 * spacing)
        weights.append(1.0 / (1.0 + (along / nyquist) ** (2 * BUTTERWORTH_ORDER)))
    total = sum(weights)
    return [w / total for w in weights]


def intensity_match(values: np.ndarray, reference: np.ndarray, mask: np.ndarray, sigma) -> tuple[float, float]:
    """Gain and offset mapping ``values`` onto ``reference`` (least squares inside ``mask``), fitted on both
    blurred by a Gaussian of ``sigma`` voxels (per axis; the coarsest slice spacing as FWHM): there both
    scans show the same detail, whereas fitted at full resolution the fit would shrink the gain by what
    one resolves and the other does not (regression dilution: 10% on a test volume)."""
    return affine_fit(ndimage.gaussian_filter(values, sigma), ndimage.gaussian_filter(reference, sigma), mask)


def covered_mean(values: Sequence[np.ndarray], inside: Sequence[np.ndarray]) -> np.ndarray:
    """Voxel-wise mean of the volumes that cover each voxel (the first covers them all)."""
    total = np.sum([np.where(m, v, 0.0) for v, m in zip(values, inside)], axis=0)
    return total / np.sum([m.astype(np.float32) for m in inside], axis=0)


def fuse_volumes(
    values: Sequence[np.ndarray],
    inside: Sequence[np.ndarray],
    affine: np.ndarray,
    geometry: Sequence[tuple[np.ndarray, float]],
    method: str,
) -> np.ndarray:
    """Fuse matched volumes on one grid; the first covers the whole grid, the others where ``inside``."""
    mean = covered_mean(values, inside)
    if method == "mean":
        return mean.astype(np.float32)
    if method != "fourier":
        raise ConfigError(f"unknown fusion method {method!r}; choose from {', '.join(METHODS)}")
    # A scan contributes nothing beyond its field of view: there it is replaced by the others' mean,
    # so that its spectrum carries no edge of its own.
    filled = [np.where(m, v, mean) for v, m in zip(values, inside)]
    weights = fourier_weights(mean.shape, affine, geometry)
    spectrum = sum(w * np.fft.rfftn(v) for w, v in zip(weights, filled))
    return np.fft.irfftn(spectrum, s=mean.shape, axes=(0, 1, 2)).astype(np.float32)


def fuse(estimates: Sequence[ScanEstimate], options: FusionOptions | None = None) -> FusionResult:
    """Fuse single-scan enhancements (the first is the reference grid and intensity); see the module docstring."""
    options = options or FusionOptions()
    if options.method not in METHODS:
        raise ConfigError(f"unknown fusion method {options.method!r}; choose from {', '.join(METHODS)}")
    reference = estimates[0].mean
    affine, shape = reference.affine, reference.shape
    head = ndimage.binary_opening(foreground(reference.data), iterations=1)
    geometry = [slice_geometry(e.scan) for e in estimates]
    blur = max(spacing for _, spacing in geometry) * FWHM_TO_SIGMA / reference.voxel_size
    values, inside, variances, transforms, intensity = [], [], [], [], []
    for index, estimate in enumerate(estimates):
        world = register_rigid(reference, estimate.mean, seed=index) if options.register and index else None
        value, covered = onto_grid(estimate.mean, affine, shape, world)
        if index and (covered & head).sum() < MIN_OVERLAP * head.sum():
            raise InputError(
                f"scan {index + 1} covers less than {100 * MIN_OVERLAP:.0f}% of scan 1's head"
                + (" after registration" if world is not None else "")
            )
        gain, offset = intensity_match(value, reference.data, head & covered, blur) if index else (1.0, 0.0)
        values.append(gain * value + offset)
        inside.append(covered)
        if estimate.std is not None:
            variances.append((gain * onto_grid(estimate.std, affine, shape, world)[0]) ** 2)
        transforms.append(None if world is None else world.tolist())
        intensity.append([gain, offset])
    fused = fuse_volumes(values, inside, affine, geometry, options.method)
    mean = covered_mean(values, inside)
    spread = covered_mean([(v - mean) ** 2 for v in values], inside)
    sampling = sum(variances) / len(variances) if len(variances) == len(estimates) else 0.0
    std = np.sqrt(spread + sampling).astype(np.float32)
    info = {
        "method": options.method,
        "register": options.register,
        "scans": len(estimates),
        "world_transforms": transforms,
        "intensity_gain_offset": intensity,
        "slice_directions": [g[0].tolist() for g in geometry],
        "slice_spacings_mm": [g[1] for g in geometry],
    }
    return FusionResult(reference.with_data(fused), reference.with_data(std), info)


def enhance_and_fuse(
    scans: Sequence[Volume],
    model: Model,
    options: EnhanceOptions | None = None,
    fusion: FusionOptions | None = None,
    on_scan: Callable[[int], Callable[[int], None] | None] | None = None,
) -> FusionResult:
    """Enhance each scan with ``model`` and fuse them; ``on_scan(i)`` gives scan i's step callback."""
    check_scans(scans)
    options = options or EnhanceOptions()
    estimates = []
    for index, scan in enumerate(scans):
        result = enhance(scan, model, options, on_scan(index) if on_scan is not None else None)
        estimates.append(ScanEstimate(scan, result.mean, result.std))
    fused = fuse(estimates, fusion)
    fused.info["voxel_mm"] = model.voxel_mm
    return fused
