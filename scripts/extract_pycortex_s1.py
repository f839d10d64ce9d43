"""Extract pycortex's subject S1 (a real whole-head 1 mm T1w, BSD-2) as a training volume.

The shipped model trains on it besides MNI152 (see docs/model-card.md). The scan is only
published inside pycortex's source archive on PyPI, so it is not a bundled source:

    pip download pycortex==1.4.0 --no-deps --no-binary :all: -d /tmp/pycortex
    python scripts/extract_pycortex_s1.py /tmp/pycortex/pycortex-1.4.0.tar.gz runs/brains

writes ``runs/brains/pycortex-s1.nii.gz`` and GM/WM/CSF maps beside it, named as FSL FAST names
them, so that ``diffiqt train --set 'data.sources=["mni152","runs/brains"]'`` finds them.

S1 comes without a brain mask or tissue maps, but with FreeSurfer's pial surfaces (in scanner
coordinates). The cerebrum is the inside of the two pial surfaces (ray-crossing parity along one
voxel axis), dilated by 2 mm to take in the CSF around it; the maps are the 3-class mixture of
:mod:`diffiqt.anatomy.tissues` inside it and zero elsewhere, as for Colin27's whole head, so the simulator
leaves scalp, skull, cerebellum and brainstem at their own intensity. A mixture over the whole
head instead puts scalp fat in "WM" and muscle in "GM" (WM/GM 1.95 against 1.30–1.34 for
Colin27 and MNI152) and teaches the network a contrast change that no brain has.
"""

import argparse
import tarfile
import tempfile
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from diffiqt.anatomy.brains import FAST_PVE_INDEX
from diffiqt.anatomy.tissues import gmm_tissue_maps
from diffiqt.imaging.io import load_volume, save_volume

ROOT = "pycortex-1.4.0/filestore/db/S1/"
MEMBERS = [ROOT + "anatomicals/raw.nii.gz", ROOT + "surfaces/pia_lh.gii", ROOT + "surfaces/pia_rh.gii"]
CSF_MARGIN_MM = 2


def ray_crossings(tri: np.ndarray) -> dict[tuple[int, int], list[float]]:
    """Where rays along axis 0 through integer (j, k) cross the triangles [F, 3, 3] (voxel units)."""
    crossings = defaultdict(list)
    lo = np.ceil(tri[:, :, 1:].min(axis=1)).astype(int)
    hi = np.floor(tri[:, :, 1:].max(axis=1)).astype(int)
    # Pial triangles are about 1 mm wide, so no projection holds more than 3 x 3 grid points.
    for dj in range(3):
        for dk in range(3):
            j, k = lo[:, 0] + dj, lo[:, 1] + dk
            keep = (j <= hi[:, 0]) & (k <= hi[:, 1])
            a, b, c, j, k = tri[keep, 0], tri[keep, 1], tri[keep, 2], j[keep], k[keep]
            e1, e2, p = b[:, 1:] - a[:, 1:], c[:, 1:] - a[:, 1:], np.stack([j, k], 1) - a[:, 1:]
            det = e1[:, 0] * e2[:, 1] - e2[:, 0] * e1[:, 1]
            det = np.where(np.abs(det) > 1e-12, det, np.nan)  # edge-on triangles are never hit
            u = (p[:, 0] * e2[:, 1] - e2[:, 0] * p[:, 1]) / det
            w = (e1[:, 0] * p[:, 1] - p[:, 0] * e1[:, 1]) / det
            hit = (u >= 0) & (w >= 0) & (u + w < 1)
            x = a[:, 0] + u * (b[:, 0] - a[:, 0]) + w * (c[:, 0] - a[:, 0])
            for key in zip(j[hit].tolist(), k[hit].tolist(), x[hit].tolist()):
                crossings[key[:2]].append(key[2])
    return crossings


def inside_surface(vertices_vox: np.ndarray, faces: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Voxels inside a closed triangle mesh given in voxel coordinates (bool, ``shape``)."""
    mask = np.zeros(shape, bool)
    i = np.arange(shape[0])
    for (j, k), xs in ray_crossings(vertices_vox[faces]).items():
        if 0 <= j < shape[1] and 0 <= k < shape[2]:
            xs = np.sort(xs)
            for enter, leave in zip(xs[0::2], xs[1::2]):
                mask[(i >= enter) & (i <= leave), j, k] = True
    return mask


def cerebrum_mask(folder: Path, affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    to_voxels = np.linalg.inv(affine)
    mask = np.zeros(shape, bool)
    for hemisphere in ("lh", "rh"):
        surface = nib.load(folder / ROOT / f"surfaces/pia_{hemisphere}.gii")
        vertices, faces = surface.darrays[0].data.astype(float), surface.darrays[1].data
        vertices = (to_voxels @ np.c_[vertices, np.ones(len(vertices))].T)[:3].T
        mask |= inside_surface(vertices, faces, shape)
    return ndimage.binary_dilation(mask, iterations=CSF_MARGIN_MM)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", type=Path, help="pycortex-1.4.0.tar.gz from PyPI")
    parser.add_argument("out", type=Path, help="folder to write pycortex-s1*.nii.gz into")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(args.archive) as tar, tempfile.TemporaryDirectory() as tmp:
        for member in MEMBERS:
            tar.extract(member, tmp, filter="data")
        head = load_volume(Path(tmp) / MEMBERS[0])
        head = head.with_data(head.data.astype("float32"))
        brain = cerebrum_mask(Path(tmp), head.affine, head.shape)
    maps = gmm_tissue_maps(head.data, brain, seed=0)
    target = args.out / "pycortex-s1.nii.gz"
    save_volume(head, target)
    for tissue, index in FAST_PVE_INDEX.items():
        save_volume(
            head.with_data(np.where(brain, maps[tissue], 0).astype("float32")),
            args.out / f"pycortex-s1_pve_{index}.nii.gz",
        )
    print(f"wrote {target} {head.shape}, cerebrum {brain.sum() / 1000:.0f} ml, and its tissue maps")


if __name__ == "__main__":
    main()
