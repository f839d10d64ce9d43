"""Extract pycortex's subject S1 (a real whole-head 1 mm T1w, BSD-2) as a training volume.

The shipped model trains on it besides MNI152 (see docs/model-card.md). The scan is only
published inside pycortex's source archive on PyPI, so it is not a bundled source:

    pip download pycortex==1.4.0 --no-deps --no-binary :all: -d /tmp/pycortex
    python scripts/extract_pycortex_s1.py /tmp/pycortex/pycortex-1.4.0.tar.gz runs/brains

writes ``runs/brains/pycortex-s1.nii.gz`` and its GM/WM/CSF maps beside it, named as FSL FAST
names them (so ``diffiqt train --set 'data.sources=["mni152","runs/brains"]'`` finds them).
No brain mask ships with S1, so the maps are the 3-class mixture of :mod:`diffiqt.tissues`
fitted over the whole head: scalp fat counts as "WM", muscle as "GM".
"""

import argparse
import tarfile
import tempfile
from pathlib import Path

from diffiqt.datasets import FAST_PVE_INDEX, intensity_mask
from diffiqt.io import load_volume, save_volume
from diffiqt.tissues import gmm_tissue_maps

MEMBER = "pycortex-1.4.0/filestore/db/S1/anatomicals/raw.nii.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", type=Path, help="pycortex-1.4.0.tar.gz from PyPI")
    parser.add_argument("out", type=Path, help="folder to write pycortex-s1*.nii.gz into")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(args.archive) as tar, tempfile.TemporaryDirectory() as tmp:
        tar.extract(MEMBER, tmp, filter="data")
        head = load_volume(Path(tmp) / MEMBER)
    head = head.with_data(head.data.astype("float32"))
    target = args.out / "pycortex-s1.nii.gz"
    save_volume(head, target)
    maps = gmm_tissue_maps(head.data, intensity_mask(head.data, skull_stripped=False), seed=0)
    for tissue, index in FAST_PVE_INDEX.items():
        save_volume(head.with_data(maps[tissue]), args.out / f"pycortex-s1_pve_{index}.nii.gz")
    print(f"wrote {target} {head.shape} and its tissue maps")


if __name__ == "__main__":
    main()
