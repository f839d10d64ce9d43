"""Real brain volumes available offline, and users' own folders of high-field scans.

Bundled sources (nothing is downloaded at run time):

* ``mni152``: the MNI ICBM152 2009a nonlinear symmetric T1w template at 1 mm,
  skull-stripped, with GM and WM probability maps, as shipped inside the
  nilearn package (``nilearn/datasets/data``). nilearn ships no CSF map: CSF is
  taken as what is left of the intracranial mask, ``clip(mask - GM - WM, 0, 1)``,
  with the mask from the template's nonzero support. Licence of the template:
  Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre,
  Montreal Neurological Institute, McGill University; free use, copy and
  distribution with the copyright notice (see docs/data.md).

* ``colin27`` (whole head) and ``colin27-brain`` (skull-stripped): the Colin27
  single-subject T1w (one person scanned 27 times and averaged; Holmes et al.
  1998), 1 mm, 181x217x181, as shipped by Debian's ``mricron-data`` package in
  ``/usr/share/mricron/templates/ch2.nii.gz`` and ``ch2bet.nii.gz`` (package
  licence BSD-3-Clause; the image is MNI's, freely redistributable). It is the
  only real *whole-head* 1 mm T1w found in the registries reachable offline, and
  real low-field scans are not skull-stripped. No tissue maps ship with it: they
  are estimated on the skull-stripped copy (see :mod:`diffiqt.anatomy.tissues`) and are
  zero outside the brain, so the simulator keeps the scalp's own intensity.
  ``make install`` installs the package where apt is available; without it these
  two are simply not offered.

A user folder holds HF volumes (``*.nii``, ``*.nii.gz``, ``*.mgz``); tissue maps
may lie beside a volume named as FSL FAST writes them:
``<stem>_pve_0.nii.gz`` (CSF), ``<stem>_pve_1.nii.gz`` (GM), ``<stem>_pve_2.nii.gz`` (WM).
A source of brains is a bundled name, a file or a folder (:func:`load_sources`).
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from diffiqt.errors import ConfigError, InputError
from diffiqt.imaging.io import IMAGE_SUFFIXES, Volume, has_image_suffix, load_volume

TISSUES = ("gm", "wm", "csf")
FAST_PVE_INDEX = {"csf": 0, "gm": 1, "wm": 2}


@dataclass
class TissueMaps:
    """Partial-volume probability maps in [0, 1] on one grid."""

    gm: Volume
    wm: Volume
    csf: Volume

    def as_dict(self) -> dict[str, Volume]:
        return {name: getattr(self, name) for name in TISSUES}


@dataclass
class BrainSample:
    """One high-field T1w volume, its tissue maps (if known) and its head/brain mask."""

    name: str
    t1: Volume
    tissues: TissueMaps | None
    mask: np.ndarray  # bool, on t1's grid
    skull_stripped: bool
    weight: float = 1.0  # relative chance of being drawn for a training pair (data.source_weights)


def _nilearn_data_dir() -> Path:
    import nilearn

    return Path(nilearn.__file__).parent / "datasets" / "data"


def mni152() -> BrainSample:
    """The MNI ICBM152 2009a T1w template (1 mm, 197x233x189) with GM/WM/CSF maps."""
    root = _nilearn_data_dir()
    stem = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
    t1 = load_volume(root / stem.format("t1"))
    gm = load_volume(root / stem.format("gm"))
    wm = load_volume(root / stem.format("wm"))
    # The maps are stored as uint8 0..255; probabilities in [0, 1] are needed.
    gm = gm.with_data(gm.data / 255.0)
    wm = wm.with_data(wm.data / 255.0)
    mask = intensity_mask(t1.data, skull_stripped=True)
    csf = wm.with_data(np.clip(mask - gm.data - wm.data, 0.0, 1.0).astype(np.float32))
    return BrainSample("mni152", t1, TissueMaps(gm, wm, csf), mask, skull_stripped=True)


COLIN27_DIR = Path(os.environ.get("DIFFIQT_COLIN27_DIR", "/usr/share/mricron/templates"))


def colin27_available() -> bool:
    return (COLIN27_DIR / "ch2.nii.gz").is_file() and (COLIN27_DIR / "ch2bet.nii.gz").is_file()


def _colin27_files() -> tuple[Path, Path]:
    if not colin27_available():
        raise InputError(f"Colin27 not found in {COLIN27_DIR}; install Debian's mricron-data (make install does)")
    return COLIN27_DIR / "ch2.nii.gz", COLIN27_DIR / "ch2bet.nii.gz"


def _colin27_brain_and_maps() -> tuple[Volume, np.ndarray, TissueMaps]:
    from diffiqt.anatomy.tissues import gmm_tissue_maps

    _, brain_path = _colin27_files()
    brain = load_volume(brain_path)
    brain_mask = intensity_mask(brain.data, skull_stripped=True)
    maps = gmm_tissue_maps(brain.data, brain_mask, seed=0)
    return brain, brain_mask, TissueMaps(**{k: brain.with_data(v) for k, v in maps.items()})


def colin27() -> BrainSample:
    """Colin27 whole-head T1w (skull and scalp present), tissue maps estimated inside the brain."""
    head_path, _ = _colin27_files()
    head = load_volume(head_path)
    _, _, tissues = _colin27_brain_and_maps()
    return BrainSample("colin27", head, tissues, intensity_mask(head.data, skull_stripped=False), skull_stripped=False)


def colin27_brain() -> BrainSample:
    """Colin27 skull-stripped T1w with estimated tissue maps."""
    brain, brain_mask, tissues = _colin27_brain_and_maps()
    return BrainSample("colin27-brain", brain, tissues, brain_mask, skull_stripped=True)


BUNDLED = {"mni152": mni152, "colin27": colin27, "colin27-brain": colin27_brain}

# The test brains: every figure on unseen anatomy (model card, bench, demo) is measured on them, so no
# training run may train, validate, stop early or choose a checkpoint on them (diffiqt train refuses).
TEST_BRAINS = ("colin27-brain", "colin27")


@dataclass(frozen=True)
class HeldOutIdentity:
    """How a test brain is recognised: its bundled name, its files and their folder, its voxel data."""

    names: frozenset[str]
    files: frozenset[Path]
    folders: frozenset[Path]
    hashes: frozenset[str]

    def check(self, spec: str, sample: BrainSample | None = None) -> None:
        """InputError if the training source ``spec`` (or a brain it loaded) is, lies beside or copies a test
        brain: its folder holds other images of the test subject (e.g. Colin27's ch2better)."""
        if spec in self.names:
            raise InputError(
                f"{spec} is a test brain (held out for every reported figure); train and validate on "
                "other brains (empty data.val_sources holds out part of each training brain)"
            )
        paths = [Path(spec)] + ([sample.t1.source.path] if sample is not None and sample.t1.source else [])
        for path in paths:
            resolved = path.resolve()
            if resolved in self.files or resolved in self.folders or resolved.parent in self.folders:
                raise InputError(f"data source {spec!r}: {resolved} is (or lies beside) a test brain")
        if sample is not None and voxel_hash(sample.t1) in self.hashes:
            raise InputError(f"data source {spec!r}: {sample.name} has the voxel data of a test brain")


def voxel_hash(volume: Volume) -> str:
    """SHA-256 of the voxel data: the same image under another name or path has the same hash."""
    return hashlib.sha256(np.ascontiguousarray(volume.data).tobytes()).hexdigest()


@functools.lru_cache(maxsize=1)
def held_out_identity() -> HeldOutIdentity:
    """The test brains' names, files and voxel hashes (read once per process; names only without mricron-data)."""
    files = [p.resolve() for p in (COLIN27_DIR / "ch2.nii.gz", COLIN27_DIR / "ch2bet.nii.gz") if p.is_file()]
    return HeldOutIdentity(
        frozenset(TEST_BRAINS),
        frozenset(files),
        frozenset(f.parent for f in files),
        frozenset(voxel_hash(load_volume(f)) for f in files),
    )


def available_bundled() -> list[str]:
    """Names of the bundled brains present on this machine."""
    return [name for name in BUNDLED if not name.startswith("colin27") or colin27_available()]


def load_bundled(name: str) -> BrainSample:
    """A bundled real brain by name (see :data:`BUNDLED`)."""
    try:
        return BUNDLED[name]()
    except KeyError:
        raise InputError(f"unknown bundled brain {name!r}; choose from {', '.join(BUNDLED)}") from None


def intensity_mask(data: np.ndarray, *, skull_stripped: bool) -> np.ndarray:
    """A head (or brain) mask from intensity alone.

    Voxels above 10% of the robust maximum (99.5th percentile), the largest
    connected component, holes filled. For a skull-stripped image this is the
    brain; for a whole-head image it is the head.
    """
    hi = np.percentile(data[data > 0], 99.5) if np.any(data > 0) else 0.0
    fg = data > 0.1 * hi if skull_stripped else data > 0.05 * hi
    labels, n = ndimage.label(fg)
    if n == 0:
        return fg
    sizes = ndimage.sum_labels(fg, labels, index=np.arange(1, n + 1))
    largest = labels == (int(np.argmax(sizes)) + 1)
    largest = ndimage.binary_closing(largest, iterations=2)
    return ndimage.binary_fill_holes(largest)


def fast_tissue_paths(path: Path) -> dict[str, Path] | None:
    """FSL FAST partial-volume maps beside ``path``, if all three exist."""
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            stem, ext = name[: -len(suffix)], suffix
            break
    else:
        return None
    found = {t: path.with_name(f"{stem}_pve_{i}{ext}") for t, i in FAST_PVE_INDEX.items()}
    return found if all(p.exists() for p in found.values()) else None


def load_user_volume(path: str | os.PathLike) -> BrainSample:
    """A user's HF volume, with FAST tissue maps if they lie beside it."""
    path = Path(path)
    t1 = load_volume(path)
    tissue_paths = fast_tissue_paths(path)
    tissues = None
    if tissue_paths is not None:
        maps = {t: load_volume(p, check_content=False) for t, p in tissue_paths.items()}
        for t, v in maps.items():
            if v.shape != t1.shape or not np.allclose(v.affine, t1.affine, atol=1e-4):
                raise InputError(f"{tissue_paths[t]}: tissue map is not on the grid of {path}")
        tissues = TissueMaps(**{t: v.with_data(np.clip(v.data, 0, 1)) for t, v in maps.items()})
    skull_stripped = looks_skull_stripped(t1.data)
    mask = intensity_mask(t1.data, skull_stripped=skull_stripped)
    check_head(mask, path)
    return BrainSample(path.name, t1, tissues, mask, skull_stripped)


def check_head(mask: np.ndarray, path: str | os.PathLike) -> None:
    """Refuse an image in which no head was found: every later step would work on an empty set of voxels."""
    if not mask.any():
        raise InputError(f"{path}: no head or brain found (the mask is empty: is the image tiny, negative or blank?)")


def looks_skull_stripped(data: np.ndarray) -> bool:
    """Skull-stripped images are exactly zero over most of the field of view."""
    return float(np.mean(data == 0)) > 0.3


def list_user_folder(folder: str | os.PathLike) -> list[Path]:
    """HF volumes in a folder, skipping FAST maps and other derived files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and has_image_suffix(p) and "_pve_" not in p.name and not p.name.startswith(".")
    )
    if not files:
        raise InputError(f"{folder}: no NIfTI/MGZ files found")
    return files


@functools.lru_cache(maxsize=4)
def _bundled(name: str) -> BrainSample:
    """Bundled brains are read once per process (several runs in one process share them; none is modified)."""
    return load_bundled(name)


def load_sources(specs: list[str]) -> list[BrainSample]:
    """Brains named by bundled name ('mni152'), file path or folder path."""
    samples = []
    for spec in specs:
        path = Path(spec)
        if spec in BUNDLED and not path.exists():
            samples.append(_bundled(spec))
        elif path.is_dir():
            samples.extend(load_user_volume(p) for p in list_user_folder(path))
        else:
            samples.append(load_user_volume(path))
    return samples


def crop_sample(sample: BrainSample, lower, upper) -> BrainSample:
    """The sub-volume [lower, upper) of a brain, its tissue maps and mask."""
    lower, upper = np.maximum(np.asarray(lower, int), 0), np.minimum(np.asarray(upper, int), sample.t1.shape)
    if np.any(upper <= lower):
        raise ConfigError(
            f"crop {lower.tolist()}..{upper.tolist()} is empty for {sample.name} of shape {sample.t1.shape}"
        )
    box = tuple(slice(a, b) for a, b in zip(lower, upper))
    tissues = None
    if sample.tissues is not None:
        tissues = TissueMaps(**{k: v.crop(lower, upper) for k, v in sample.tissues.as_dict().items()})
    return replace(sample, t1=sample.t1.crop(lower, upper), tissues=tissues, mask=sample.mask[box])
