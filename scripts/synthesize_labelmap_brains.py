"""Synthesise realistic T1w whole-head training brains, with FAST-style tissue maps, from label maps.

    python scripts/synthesize_labelmap_brains.py runs/brains-synth --data ../shared/data/synthseg-label-maps
    python scripts/synthesize_labelmap_brains.py OUT --subjects 1 2 3 --seed 0 --montage /tmp/synth_montage.png

Why: our training needs more whole-head high-field anatomy than the few real scans we have. The 20 whole-head
label maps of real subjects distributed with SynthSeg (Billot et al., 2023; github.com/BBillot/SynthSeg,
Apache License 2.0, see LICENSE.txt beside the maps) give real anatomy; this script (our own code) turns each
into one fixed 3T-MPRAGE-like volume instead of SynthSeg's random contrasts, because our simulator needs a
realistic T1w contrast. Output per subject NN: synthseg-NN.nii.gz (float32, WM ~ 1, air 0, the label map's
affine, 1 mm) and synthseg-NN_pve_{0,1,2}.nii.gz (CSF, GM, WM partial-volume maps in [0, 1], zero outside the
brain so the simulator keeps the scalp's, skull's and face's own intensity).

Intensities: one value per tissue, drawn once per subject from a generator seeded by (--seed, subject).
The shipped priors (prior_means_t1/prior_stds_t1, [2, 25]) are indexed by SynthSeg's 25 "contrast-specific"
classes, whose label->class table is NOT among the files (generation_classes.npy has 48 classes, so it does not
index them). So the label->prior-class assignment below is ours: class 2 (the brightest, mean 160) is read as
white matter and sets the scale, and each non-brain label (identified by location: skin, soft tissue, skull,
marrow, eyes, vessels, ...) takes the prior class whose mean fits that tissue's T1 look, drawn as
N(mean, spread / 4) / 160. Brain values do NOT follow the priors (classes 1-3 read as CSF/WM/cortex would give
WM/GM ~ 1.7, unlike 3T MPRAGE); we enforce WM = 1, cortex = 1 / U(1.30, 1.34) (real T1w brains here measure
1.30-1.34; the cortex value is solved so that this holds inside the GM/WM maps > 0.9, where deep and
cerebellar grey matter count as GM), CSF = U(0.25, 0.35), and deep grey matter etc. at a fixed fraction
of the way from GM to WM (+/- 0.05).
The std priors (prior_stds_t1) are unused: a ~10% spread is far noisier than a 3T scan, so the texture is a
correlated 3% of the label value. Then a Gaussian partial-volume blur (sigma 0.5 voxel), a smooth
multiplicative bias field (within about +/-8% over the brain), and a rescale so that median WM = 1.
Tissue maps come straight from the labels (one-hot, Gaussian sigma 0.6 voxel, times the brain mask).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

# The label maps beside this checkout (shared/ next to the repository), unless --data names another folder.
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "synthseg-label-maps"
# Brain tissue -> (labels, position between GM (0) and WM (1)); cerebral WM, cortex and CSF are set apart.
WM, GM, CSF = (2, 41), (3, 42), (4, 5, 14, 15, 24, 43, 44, 72)
BRAIN_T = {
    "thalamus": ((10, 49), 0.55),
    "caudate": ((11, 50), 0.15),
    "putamen": ((12, 51), 0.35),
    "pallidum": ((13, 52), 0.70),
    "hippocampus": ((17, 53), -0.05),
    "amygdala": ((18, 54), 0.0),
    "accumbens": ((26, 58), 0.15),
    "ventral_dc": ((28, 60), 0.60),
    "brainstem": ((16,), 0.75),
    "cerebellum_wm": ((7, 46), 0.90),
    "cerebellum_ctx": ((8, 47), 0.05),
    "optic_chiasm": ((85,), 0.70),
    "wm_hypo": ((25, 57), 0.60),
    "vessel": ((30, 62), -0.40),
    "choroid_plexus": ((136, 137, 163, 164), None),  # None: halfway between CSF and GM
}
# Non-brain label -> (our reading of it, prior class whose mean fits its T1 look); prior means in ().
NONBRAIN = {
    511: ("skin + subcutaneous fat", 8),  # 152: fat, bright
    507: ("soft tissue: muscle/fat", 16),  # 94
    516: ("bone marrow (diploe, vertebrae)", 7),  # 124
    515: ("cortical bone / skull", 15),  # 18: dark
    506: ("eyes (vitreous)", 22),  # 30: dark, CSF-like
    509: ("nasal mucosa", 11),  # 87
    508: ("orbital muscle / nerve", 20),  # 68
    530: ("optic nerve", 5),  # 88
    512: ("spinal cord", 9),  # 142
    514: ("dura / venous sinus", 12),  # 60
    502: ("large vessels", 21),  # 48
}
GM_MAP = GM + tuple(
    label
    for k in (
        "thalamus",
        "caudate",
        "putamen",
        "pallidum",
        "hippocampus",
        "amygdala",
        "accumbens",
        "ventral_dc",
        "cerebellum_ctx",
        "vessel",
        "choroid_plexus",
    )
    for label in BRAIN_T[k][0]
)
WM_MAP = WM + tuple(label for k in ("brainstem", "cerebellum_wm", "optic_chiasm", "wm_hypo") for label in BRAIN_T[k][0])


def draw_contrast(rng: np.random.Generator, means: np.ndarray) -> dict:
    """This subject's random contrast parameters, drawn once."""
    return {
        "ratio": rng.uniform(1.30, 1.34),
        "csf": rng.uniform(0.25, 0.35),
        "jitter": {k: rng.normal(0, 0.05) for k in BRAIN_T},
        "nonbrain": {
            label: float(np.clip(rng.normal(means[0, c], means[1, c] / 4) / means[0, 2], 0.03, 1.1))
            for label, (_, c) in NONBRAIN.items()
        },
    }


def label_values(contrast: dict, gm: float) -> np.ndarray:
    """Lookup table label -> intensity (WM = 1) for a cortex intensity ``gm``."""
    csf = contrast["csf"]
    values = {0: 0.0, **{label: 1.0 for label in WM}, **{label: gm for label in GM}, **{label: csf for label in CSF}}
    for k, (labels, t) in BRAIN_T.items():
        v = 0.5 * (gm + csf) if t is None else gm + (t + contrast["jitter"][k]) * (1 - gm)
        values.update({label: v for label in labels})
    values.update(contrast["nonbrain"])
    lut = np.full(max(values) + 1, np.nan, np.float32)
    lut[list(values)] = list(values.values())
    return lut


def calibrate_gm(contrast: dict, labels: np.ndarray, pve: dict[int, np.ndarray], bias: np.ndarray) -> float:
    """Cortex intensity giving the drawn WM/GM ratio as measured inside the maps (> 0.9), deep GM and bias
    field included."""
    size = max(NONBRAIN) + 1
    n_gm, n_wm = (np.bincount(labels[m], bias[m], minlength=size) for m in (pve[1] > 0.9, pve[2] > 0.9))
    gm = 1 / contrast["ratio"]
    for _ in range(5):
        lut = np.nan_to_num(label_values(contrast, gm)[:size])
        gm *= (n_wm @ lut / n_wm.sum()) / (n_gm @ lut / n_gm.sum()) / contrast["ratio"]
    return gm


def bias_field(rng: np.random.Generator, shape: tuple[int, ...], amplitude: float = 0.04) -> np.ndarray:
    """exp of a cubic-spline-smooth random field from a 4^3 control grid (log-std ``amplitude``)."""
    coarse = rng.normal(0, amplitude, (4, 4, 4))
    field = ndimage.zoom(coarse, [s / 4 for s in shape], order=3, mode="nearest")[tuple(slice(0, s) for s in shape)]
    return np.exp(field).astype(np.float32)


def to_1mm(labels: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour resampling of a label map to 1 mm isotropic (no-op if it already is)."""
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    if np.allclose(zooms, 1, atol=1e-3):
        return labels, affine
    shape = np.ceil(np.array(labels.shape) * zooms).astype(int)
    out = ndimage.affine_transform(labels, 1 / zooms, output_shape=tuple(shape), order=0)
    return out, affine @ np.diag([*(1 / zooms), 1])


def synthesise(
    labels: np.ndarray, rng: np.random.Generator, means: np.ndarray
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """The T1w-like volume and the {0: CSF, 1: GM, 2: WM} partial-volume maps for one label map."""
    brain = (labels > 0) & (labels < 500)
    pve = {
        i: np.clip(ndimage.gaussian_filter(np.isin(labels, group).astype(np.float32), 0.6), 0, 1) * brain
        for i, group in enumerate((CSF, GM_MAP, WM_MAP))
    }
    contrast = draw_contrast(rng, means)
    bias = bias_field(rng, labels.shape)
    lut = label_values(contrast, calibrate_gm(contrast, labels, pve, bias))
    if labels.min() < 0 or labels.max() >= lut.size or np.isnan(lut[np.unique(labels)]).any():
        raise SystemExit(f"labels without an intensity in {np.unique(labels).tolist()}")
    mean = lut[labels]
    texture = ndimage.gaussian_filter(rng.standard_normal(labels.shape, dtype=np.float32), 1.0)
    texture *= 0.03 / texture.std()
    image = ndimage.gaussian_filter(mean * (1 + texture), 0.5) * bias
    image = np.clip(image, 0, None)
    image /= np.median(image[np.isin(labels, WM)])
    return image.astype(np.float32), {i: p.astype(np.float32) for i, p in pve.items()}


def save_atomic(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write a float32 NIfTI to a hidden temp name in the same folder, then rename over ``path``."""
    tmp = path.with_name(f".{path.name[:-7]}.tmp{os.getpid()}.nii.gz")
    img = nib.Nifti1Image(data, affine)
    img.set_data_dtype(np.float32)
    nib.save(img, tmp)
    os.replace(tmp, path)


def montage(out: Path, names: list[str], png: str) -> None:
    """Three orthogonal mid slices of each named subject, for a visual check."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(names), 3, figsize=(12, 4 * len(names)), squeeze=False)
    for row, name in zip(axes, names):
        v = np.asarray(nib.as_closest_canonical(nib.load(out / f"{name}.nii.gz")).dataobj)  # RAS
        c = [s // 2 for s in v.shape]
        for ax, sl in zip(row, (v[c[0]], v[:, c[1]], v[:, :, c[2]])):
            ax.imshow(sl.T, cmap="gray", vmin=0, vmax=1.3, origin="lower")
            ax.set_title(name)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(png, dpi=70)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="output folder (created if needed)")
    parser.add_argument("--data", type=Path, default=DATA, help="folder of training_seg_NN.nii.gz + priors")
    parser.add_argument("--subjects", type=int, nargs="+", default=list(range(1, 21)), help="subject numbers")
    parser.add_argument("--seed", type=int, default=0, help="base seed (each subject draws from (seed, NN))")
    parser.add_argument("--montage", help="also save a PNG of mid slices of the first 3 subjects here")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    means = np.load(args.data / "prior_means_t1.npy")
    for n in args.subjects:
        t0 = time.perf_counter()
        img = nib.load(args.data / f"training_seg_{n:02d}.nii.gz")
        labels, affine = to_1mm(np.rint(np.asarray(img.dataobj)).astype(np.int32), img.affine)
        image, pve = synthesise(labels, np.random.default_rng([args.seed, n]), means)
        name = f"synthseg-{n:02d}"
        save_atomic(image, affine, args.out / f"{name}.nii.gz")
        for i, p in pve.items():
            save_atomic(p, affine, args.out / f"{name}_pve_{i}.nii.gz")
        wm, gm, csf = (image[pve[i] > 0.9].mean() for i in (2, 1, 0))
        print(
            f"{name}: shape {labels.shape} vox {np.sqrt((affine[:3, :3] ** 2).sum(0)).round(3).tolist()} "
            f"WM/GM {wm / gm:.3f} CSF/WM {csf / wm:.3f} nonzero {np.mean(image > 0):.3f} "
            f"brain {np.mean(sum(pve.values()) > 0):.3f} {time.perf_counter() - t0:.1f}s",
            flush=True,
        )
    if args.montage:
        montage(args.out, [f"synthseg-{n:02d}" for n in args.subjects[:3]], args.montage)


if __name__ == "__main__":
    main()
