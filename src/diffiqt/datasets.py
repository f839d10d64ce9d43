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

A user folder holds HF volumes (``*.nii``, ``*.nii.gz``, ``*.mgz``); tissue maps
may lie beside a volume named as FSL FAST writes them:
``<stem>_pve_0.nii.gz`` (CSF), ``<stem>_pve_1.nii.gz`` (GM), ``<stem>_pve_2.nii.gz`` (WM).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from diffiqt.errors import InputError
from diffiqt.io import IMAGE_SUFFIXES, Volume, has_image_suffix, load_volume

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


BUNDLED = {"mni152": mni152}


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
    skull_stripped = _looks_skull_stripped(t1.data)
    return BrainSample(path.name, t1, tissues, intensity_mask(t1.data, skull_stripped=skull_stripped), skull_stripped)


def _looks_skull_stripped(data: np.ndarray) -> bool:
    """Skull-stripped images are exactly zero over most of the field of view."""
    return float(np.mean(data == 0)) > 0.3


def list_user_folder(folder: str | os.PathLike) -> list[Path]:
    """HF volumes in a folder, skipping FAST maps and other derived files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    files = sorted(
        p for p in folder.iterdir()
        if p.is_file() and has_image_suffix(p) and "_pve_" not in p.name and not p.name.startswith(".")
    )
    if not files:
        raise InputError(f"{folder}: no NIfTI/MGZ files found")
    return files
