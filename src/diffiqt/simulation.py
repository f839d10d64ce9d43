"""The low-field decimation simulator of Lin et al. 2023 (stochastic IQT), as used by DiffusionIQT.

Steps, on a high-field (HF) T1w volume x with GM/WM/CSF maps pG, pW, pC:

1. **Slice profile**: a Gaussian blur along the slice axis with FWHM equal to
   the slice thickness (sigma = FWHM / 2.3548), boundary mode 'nearest', on the
   image and on each tissue map.
2. **Decimation**: keep one slice every (thickness + gap) millimetres along
   the slice axis, starting at the first slice. When the spacing is a whole
   number of voxels this is plain slice keeping; otherwise the blurred volume is
   sampled linearly at the fractional positions. The LF affine places each kept
   slice at its true world position.
   Our addition, optional (``inplane_mm``): an in-plane voxel coarser than the HF
   one, as clinical scans have (1.2 to 1.5 mm). Each in-plane axis gets a Gaussian
   blur that widens the HF voxel's own to the new one (FWHM sqrt(new^2 - old^2),
   both read as FWHMs) and is decimated to it the same way, before the contrast
   change and the noise, so that SNRs are those of the coarser voxel.
3. **Contrast and noise**: with x~, pG~, pW~, pC~ blurred and decimated,
   muG (muW) the mean of x~ where pG~ > 0.9 (pW~ > 0.9), and (SNR_WM, SNR_GM)
   drawn per volume from the T1w bivariate normal prior (or given),
   sigma = muG / SNR_GM,  y = (pG~ + (SNR_WM*sigma/muW)*pW~ + pC~ + pR~)*x~,
   LF = y + sigma*N(0, 1).
   pR = clip(1 - pG - pW - pC, 0, 1) is our addition for whole-head images: it
   keeps non-brain tissue (scalp, skull, fat) at its HF scale instead of erasing
   it. In a skull-stripped image x~ is 0 wherever pR~ > 0 at full weight, so
   the formula is then exactly Lin et al.'s.

With these, the WM signal is about SNR_WM*sigma and the GM signal about
SNR_GM*sigma, so the requested SNRs are what one measures in the output.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from diffiqt.anatomy.brains import TissueMaps, intensity_mask, looks_skull_stripped
from diffiqt.anatomy.tissues import gmm_tissue_maps
from diffiqt.errors import InputError
from diffiqt.imaging.io import Volume

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))  # 1 / 2.3548

# Lin et al. 2023, T1w: (SNR_WM, SNR_GM) ~ N(mean, cov)
T1W_SNR_MEAN = np.array([64.50, 54.14])
T1W_SNR_COV = np.array([[78.47, 71.50], [71.50, 73.91]])

TISSUE_CORE = 0.9  # the "pure tissue" threshold of the contrast step


@dataclass
class LowFieldParams:
    """Parameters of one simulation; millimetres so that any voxel size works.

    ``axis`` is the slice axis of the RAS+ canonical volume: 0 sagittal,
    1 coronal, 2 axial (default: low-field T1w scans are usually axial thick slices).
    ``snr_wm``/``snr_gm`` of None are drawn from the T1w prior.
    """

    thickness_mm: float = 4.2
    gap_mm: float = 1.4
    axis: int = 2
    snr_wm: float | None = None
    snr_gm: float | None = None
    inplane_mm: float | None = None  # in-plane voxel of the scan; None or finer than the HF voxel: the HF's own

    def __post_init__(self) -> None:
        if self.thickness_mm <= 0 or self.gap_mm < 0:
            raise InputError(f"slice thickness must be > 0 and gap >= 0 (got {self.thickness_mm}, {self.gap_mm})")
        if self.inplane_mm is not None and not self.inplane_mm > 0:
            raise InputError(f"the in-plane voxel size must be > 0 mm (got {self.inplane_mm})")
        if self.axis not in (0, 1, 2):
            raise InputError(f"slice axis must be 0, 1 or 2 (got {self.axis})")
        for name in ("snr_wm", "snr_gm"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise InputError(f"{name} must be positive (got {value})")

    @classmethod
    def for_factor(cls, factor: float, voxel_mm: float, axis: int = 2, **kw) -> LowFieldParams:
        """x``factor`` decimation at the paper's 3:1 thickness:gap ratio (4.2:1.4 mm at 0.7 mm, x8)."""
        spacing = factor * voxel_mm
        return cls(thickness_mm=0.75 * spacing, gap_mm=0.25 * spacing, axis=axis, **kw)

    @property
    def spacing_mm(self) -> float:
        return self.thickness_mm + self.gap_mm


@dataclass
class LowFieldResult:
    """The simulated LF volume on its thick-slice grid, optionally on the HF grid, and what was drawn."""

    lf: Volume
    lf_on_hf: Volume | None
    info: dict = field(default_factory=dict)


def draw_snr(rng: np.random.Generator) -> tuple[float, float]:
    """(SNR_WM, SNR_GM) from the T1w prior; redrawn in the (rare) case of a non-positive value."""
    while True:
        snr_wm, snr_gm = rng.multivariate_normal(T1W_SNR_MEAN, T1W_SNR_COV)
        if snr_wm > 0 and snr_gm > 0:
            return float(snr_wm), float(snr_gm)


def slice_profile_blur(data: np.ndarray, axis: int, fwhm_vox: float) -> np.ndarray:
    """Gaussian slice profile along ``axis`` (FWHM in voxels), boundary 'nearest'."""
    return ndimage.gaussian_filter1d(data, fwhm_vox * FWHM_TO_SIGMA, axis=axis, mode="nearest").astype(np.float32)


def slice_positions(n: int, step: float) -> np.ndarray:
    """Voxel positions (along the slice axis) of the kept slices: 0, step, 2*step, ... < n."""
    count = int(np.floor((n - 1) / step + 1e-9)) + 1
    return np.arange(count) * step


def decimate(data: np.ndarray, axis: int, step: float) -> np.ndarray:
    """Keep one slice every ``step`` voxels along ``axis`` (linear sampling if ``step`` is fractional)."""
    if abs(step - round(step)) < 1e-6:
        return np.ascontiguousarray(np.take(data, np.arange(0, data.shape[axis], int(round(step))), axis=axis))
    positions = slice_positions(data.shape[axis], step)
    lower = np.floor(positions).astype(int)
    upper = np.minimum(lower + 1, data.shape[axis] - 1)
    weight = (positions - lower).astype(np.float32)
    shape = [1, 1, 1]
    shape[axis] = -1
    weight = weight.reshape(shape)
    return (np.take(data, lower, axis=axis) * (1 - weight) + np.take(data, upper, axis=axis) * weight).astype(
        np.float32
    )


def decimated_affine(affine: np.ndarray, axis: int, step: float) -> np.ndarray:
    """Affine of the kept slices: slice k lies where HF voxel k*step lay."""
    out = affine.copy()
    out[:3, axis] *= step
    return out


def inplane_steps(voxel_size: np.ndarray, axis: int, inplane_mm: float | None) -> dict[int, float]:
    """Decimation step (in HF voxels) of each in-plane axis that ``inplane_mm`` coarsens; {} if none does."""
    if inplane_mm is None:
        return {}
    return {
        a: inplane_mm / float(voxel_size[a]) for a in range(3) if a != axis and inplane_mm > voxel_size[a] * (1 + 1e-6)
    }


def acquire(data: np.ndarray, profile: dict[int, tuple[float, float]]) -> np.ndarray:
    """Along each axis of ``profile`` = {axis: (FWHM, step)} in voxels, in order: Gaussian blur, then keep one
    voxel every ``step`` (:func:`slice_profile_blur`, :func:`decimate`)."""
    for axis, (fwhm_vox, step) in profile.items():
        data = decimate(slice_profile_blur(data, axis, fwhm_vox), axis, step)
    return data


def upsample_to_grid(lf: np.ndarray, axis: int, step: float, n: int) -> np.ndarray:
    """Cubic-spline resampling of the thick-slice volume back onto the ``n`` HF slices."""
    zoom = np.ones(3)
    zoom[axis] = 1.0 / step
    out_shape = list(lf.shape)
    out_shape[axis] = n
    return ndimage.affine_transform(lf, zoom, output_shape=tuple(out_shape), order=3, mode="nearest").astype(np.float32)


def tissue_means(x: np.ndarray, pg: np.ndarray, pw: np.ndarray) -> tuple[float, float]:
    """Mean image intensity in (nearly) pure GM and pure WM."""
    gm_core, wm_core = pg > TISSUE_CORE, pw > TISSUE_CORE
    if not gm_core.any() or not wm_core.any():
        raise InputError(
            "no voxel has GM or WM probability > 0.9 after blurring; is this a T1w brain with tissue maps?"
        )
    return float(x[gm_core].mean()), float(x[wm_core].mean())


def resolve_tissues(hf: Volume, tissues: TissueMaps | None, seed: int = 0) -> tuple[dict[str, np.ndarray], str]:
    """Tissue maps as arrays, estimated by a 3-class GMM if none were given."""
    if tissues is not None:
        return {k: v.data for k, v in tissues.as_dict().items()}, "given"
    mask = intensity_mask(hf.data, skull_stripped=looks_skull_stripped(hf.data))
    return gmm_tissue_maps(hf.data, mask, seed=seed), "estimated: 3-class Gaussian mixture (diffiqt.anatomy.tissues)"


def simulate_low_field(
    hf: Volume,
    tissues: TissueMaps | None,
    params: LowFieldParams,
    rng: np.random.Generator,
    *,
    upsample: bool = True,
) -> LowFieldResult:
    """Simulate a low-field T1w volume from a high-field one (see the module docstring)."""
    axis = params.axis
    voxel = float(hf.voxel_size[axis])
    fwhm_vox, step = params.thickness_mm / voxel, params.spacing_mm / voxel
    if hf.shape[axis] < step + 1:
        raise InputError(
            f"the volume has {hf.shape[axis]} slices along axis {axis}: too few for a {params.spacing_mm} mm slice spacing"
        )
    maps, tissue_source = resolve_tissues(hf, tissues)
    inplane = inplane_steps(hf.voxel_size, axis, params.inplane_mm)
    # The slice profile along the slice axis; in-plane, a blur that widens the HF voxel (FWHM 1) to the new one.
    profile = {axis: (fwhm_vox, step), **{a: (float(np.sqrt(s**2 - 1.0)), s) for a, s in inplane.items()}}
    x_lf = acquire(hf.data, profile)
    p = {k: acquire(v, profile) for k, v in maps.items()}
    if (params.snr_wm is None) != (params.snr_gm is None):
        raise InputError("give both SNR_WM and SNR_GM, or neither (then both are drawn)")
    if params.snr_wm is not None and params.snr_gm is not None:
        snr_wm, snr_gm = params.snr_wm, params.snr_gm
    else:
        snr_wm, snr_gm = draw_snr(rng)
    mu_gm, mu_wm = tissue_means(x_lf, p["gm"], p["wm"])
    sigma = mu_gm / snr_gm
    rest = np.clip(1.0 - p["gm"] - p["wm"] - p["csf"], 0.0, 1.0)
    weight = p["gm"] + (snr_wm * sigma / mu_wm) * p["wm"] + p["csf"] + rest
    lf = (weight * x_lf + sigma * rng.standard_normal(x_lf.shape, dtype=np.float32)).astype(np.float32)
    affine = hf.affine
    for a, (_, kept) in profile.items():
        affine = decimated_affine(affine, a, kept)
    lf_volume = Volume(lf, affine)
    on_hf = None
    if upsample:
        on_hf_data = lf
        for a, (_, kept) in profile.items():
            on_hf_data = upsample_to_grid(on_hf_data, a, kept, hf.shape[a])
        on_hf = Volume(on_hf_data, hf.affine, hf.source)
    info = {
        **asdict(params),
        "snr_wm": snr_wm,
        "snr_gm": snr_gm,
        "sigma": sigma,
        "mu_gm": mu_gm,
        "mu_wm": mu_wm,
        "slice_fwhm_voxels": fwhm_vox,
        "slice_step_voxels": step,
        "inplane_step_voxels": {str(a): s for a, s in inplane.items()},
        "tissue_maps": tissue_source,
    }
    return LowFieldResult(lf_volume, on_hf, info)
