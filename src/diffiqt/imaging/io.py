"""NIfTI/MGZ input and output around one small type, :class:`Volume`.

Every volume is held in RAS+ canonical orientation as float32 (see
:func:`load_volume`). A volume remembers the file it came from, so that
:func:`save_volume` can put a result on the same grid back into the input's
own orientation and header (qform/sform codes included).
Outputs are written atomically: a temporary file in the target folder, then a rename.
nibabel is imported only by the functions that read or write images, so that training
from a pairs file (:mod:`diffiqt.training.presimulated`), which needs :class:`Volume` and
:func:`save_json` alone, runs where nibabel is not installed.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import re
import tempfile
import zlib
from dataclasses import dataclass, field, replace
from itertools import product
from pathlib import Path
from typing import TYPE_CHECKING, cast
from collections.abc import Iterable

import numpy as np

from diffiqt.errors import InputError, OutputError

if TYPE_CHECKING:
    import nibabel as nib

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".mgz", ".mgh")
AXIS_NAMES = {"sagittal": 0, "coronal": 1, "axial": 2}  # a RAS+ axis by the plane of the slices across it
DEFLATE_MAX_RATIO = 1032  # deflate (gzip) never compresses more than this: a bound on what a .gz file can hold


@dataclass(frozen=True)
class Source:
    """Where a volume came from: its file, header and orientation on disk."""

    path: Path
    header: nib.spatialimages.SpatialHeader
    affine: np.ndarray  # the on-disk voxel-to-world affine
    shape: tuple[int, int, int]  # the on-disk 3D shape


@dataclass
class Volume:
    """A 3D float32 image and its voxel-to-world (RAS+ mm) affine.

    ``data`` is indexed [i, j, k]; ``affine`` maps (i, j, k, 1) to world millimetres.
    ``source`` is set for volumes read from disk and kept by :meth:`with_data`.
    """

    data: np.ndarray
    affine: np.ndarray
    source: Source | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.data = np.asarray(self.data, dtype=np.float32)
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.data.ndim != 3:
            raise ValueError(f"Volume data must be 3D, got shape {self.data.shape}")
        if self.affine.shape != (4, 4):
            raise ValueError(f"Volume affine must be 4x4, got {self.affine.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def voxel_size(self) -> np.ndarray:
        """Voxel edge lengths in mm along i, j, k."""
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))

    def with_data(self, data: np.ndarray) -> Volume:
        """The same grid (affine, source) holding other data of the same shape."""
        if tuple(data.shape) != self.shape:
            raise ValueError(f"shape {data.shape} does not match the grid {self.shape}")
        return replace(self, data=data)

    def crop(self, lower, upper) -> Volume:
        """The sub-volume [lower, upper) in voxels, with its affine shifted to keep world positions."""
        lower, upper = np.asarray(lower, dtype=int), np.asarray(upper, dtype=int)
        data = self.data[lower[0] : upper[0], lower[1] : upper[1], lower[2] : upper[2]]
        affine = self.affine.copy()
        affine[:3, 3] = self.voxel_to_world(lower)
        return Volume(np.ascontiguousarray(data), affine)

    def world_to_voxel(self, xyz) -> np.ndarray:
        """Continuous voxel coordinates of world points (..., 3)."""
        xyz = np.asarray(xyz, dtype=np.float64)
        inv = np.linalg.inv(self.affine)
        return xyz @ inv[:3, :3].T + inv[:3, 3]

    def voxel_to_world(self, ijk) -> np.ndarray:
        """World coordinates (mm) of voxel coordinates (..., 3)."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def world_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper world corners (mm) of the axis-aligned box that the voxels (edges included) cover."""
        corners = self.voxel_to_world(list(product(*[(-0.5, n - 0.5) for n in self.shape])))
        return corners.min(axis=0), corners.max(axis=0)


def has_image_suffix(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    if not has_image_suffix(path):
        raise InputError(f"{path}: not a NIfTI or MGZ file (expected {', '.join(IMAGE_SUFFIXES)})")


def _read_image(path: Path):
    import nibabel as nib

    _check_file(path)
    # nibabel logs the header problems it fixes or refuses on stderr: the refusal below is to be the one line.
    logger, level = nib.imageglobals.logger, nib.imageglobals.logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        # nib.load is typed to return any file-based image; the NIfTI/MGZ suffixes checked above are spatial.
        img = cast("nib.spatialimages.SpatialImage", nib.load(str(path)))
        with np.errstate(over="ignore", invalid="ignore"):  # values beyond float32 become Inf, refused by the caller
            data = _as_3d_shape(img.shape, path) and _check_header(img, path) and img.get_fdata(dtype=np.float32)
    except _read_errors() as exc:
        raise _unreadable(path, exc) from None
    finally:
        logger.setLevel(level)
    return img, data


def _read_errors() -> tuple[type[BaseException], ...]:
    """What nibabel and the decompressors raise for a file that is not a readable image."""
    import nibabel as nib

    return (
        nib.filebasedimages.ImageFileError,
        nib.spatialimages.HeaderDataError,
        nib.freesurfer.mghformat.MGHError,
        EOFError,
        OSError,
        zlib.error,
        gzip.BadGzipFile,
        ValueError,
    )


def _unreadable(path: Path, exc: BaseException) -> InputError:
    if _nifti_named_mgh(path):
        return InputError(f"{path}: a NIfTI file named {split_image_name(path)[1]}; rename it .nii.gz or .nii")
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return InputError(f"{path}: cannot be read as NIfTI/MGZ ({reason})")


def check_image(path: str | os.PathLike) -> None:
    """InputError unless ``path`` is a NIfTI/MGZ file whose header says one 3D volume.

    Only the header is read, so a whole dataset is checked in moments before any work; a file whose voxel
    data are damaged passes, and fails when :func:`load_volume` reads it.
    """
    import nibabel as nib

    path = Path(path)
    _check_file(path)
    try:
        _as_3d_shape(cast("nib.spatialimages.SpatialImage", nib.load(str(path))).shape, path)
    except _read_errors() as exc:
        raise _unreadable(path, exc) from None


def _nifti_named_mgh(path: Path) -> bool:
    """Does a file named .mgz/.mgh hold a NIfTI header (magic 'n+1' at byte 344), gzipped or not?"""
    if not path.name.lower().endswith((".mgz", ".mgh")):
        return False
    try:
        with path.open("rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
        with gzip.open(path, "rb") if gzipped else path.open("rb") as handle:
            return handle.read(348)[344:348] in (b"n+1\0", b"ni1\0")
    except (OSError, EOFError, zlib.error):
        return False


def _as_3d_shape(shape: tuple[int, ...], path: Path) -> bool:
    """Check, before reading any voxel, that the image is one 3D volume (or 4D with one)."""
    shape = tuple(int(s) for s in shape)
    if 0 in shape:
        raise InputError(f"{path}: the image is empty (shape {shape})")
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) == 4:
        raise InputError(f"{path}: 4D image with {shape[3]} volumes; give one 3D volume")
    if len(shape) != 3:
        raise InputError(f"{path}: a {len(shape)}D image; a 3D volume is needed (shape {shape})")
    if min(shape) < 2:
        raise InputError(f"{path}: a single-slice image (shape {shape}); a 3D volume is needed")
    return True


def _check_header(img, path: Path) -> bool:
    """Refuse, before reading any voxel, a header whose image would be silently wrong or would not fit in memory."""
    dtype = np.dtype(img.get_data_dtype())
    if dtype.kind not in "biuf":  # reading complex voxels as float would drop the imaginary part unnoticed
        what = "complex" if dtype.kind == "c" else "RGB" if dtype.fields else "not numbers"
        raise InputError(f"{path}: its voxels are {what} ({dtype}); a real-valued (magnitude) image is needed")
    affine = img.affine
    if affine is None or not np.all(np.isfinite(affine)):
        raise InputError(f"{path}: the header's voxel-to-world transform (sform/qform/pixdim) has NaN or Inf")
    sizes = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if not np.all(sizes > 0) or abs(np.linalg.det(affine[:3, :3])) <= 1e-6 * np.prod(sizes):
        raise InputError(
            f"{path}: the header's voxel-to-world transform is singular (a zero sform, or zero voxel sizes)"
        )
    _check_declared_size(img, path, dtype)
    return True


def _check_declared_size(img, path: Path, dtype: np.dtype) -> None:
    """The file can hold the array its header declares: nibabel would otherwise allocate the declared array before
    finding the file too short (30000 x 30000 x 2 float32 is 7 GB, from a header in a 1 kB file)."""
    declared = int(getattr(img.dataobj, "offset", 0)) + math.prod(int(n) for n in img.shape) * dtype.itemsize
    size = path.stat().st_size
    with path.open("rb") as handle:
        compressed = handle.read(2) == b"\x1f\x8b"
    if declared > (size * DEFLATE_MAX_RATIO if compressed else size):
        raise InputError(
            f"{path}: the header declares {'x'.join(map(str, img.shape))} voxels of {dtype} "
            f"({declared / 1e6:.6g} MB) but the {'compressed ' if compressed else ''}file has {size} bytes; "
            "it is truncated or its header is wrong"
        )


def check_finite_nonempty(data: np.ndarray, where: str) -> None:
    """Refuse NaN/Inf voxels and images with no signal: both would poison every later step."""
    bad = ~np.isfinite(data)
    if bad.any():
        raise InputError(f"{where}: {int(bad.sum())} voxels are NaN or Inf")
    if not np.any(data):
        raise InputError(f"{where}: every voxel is zero")


def load_volume(path: str | os.PathLike, *, check_content: bool = True) -> Volume:
    """Read a 3D NIfTI/MGZ into RAS+ canonical orientation as float32.

    A trailing singleton 4th dimension is dropped. Raises :class:`InputError`
    for a missing or unreadable file, a 2D/4D image, and (if ``check_content``)
    NaN/Inf voxels or an all-zero image.
    """
    import nibabel as nib

    path = Path(path)
    img, data = _read_image(path)  # scaled by the header's slope/intercept
    data = data.reshape(data.shape[:3])  # drop a trailing singleton 4th dimension
    if check_content:
        check_finite_nonempty(data, str(path))
    affine = np.asarray(img.affine, dtype=np.float64)
    source = Source(path=path.resolve(), header=img.header.copy(), affine=affine.copy(), shape=data.shape)
    ornt = nib.orientations.io_orientation(affine)
    canonical = nib.orientations.apply_orientation(data, ornt)
    canonical_affine = affine @ nib.orientations.inv_ornt_aff(ornt, data.shape)
    return Volume(np.ascontiguousarray(canonical), canonical_affine, source)


def _on_source_grid(volume: Volume) -> bool:
    """Is ``volume`` on the (reoriented) grid of the file it came from?"""
    import nibabel as nib

    src = volume.source
    if src is None:
        return False
    ornt = nib.orientations.io_orientation(src.affine)
    expected = src.affine @ nib.orientations.inv_ornt_aff(ornt, src.shape)
    return volume.shape == _canonical_shape(src) and np.allclose(volume.affine, expected)


def _canonical_shape(src: Source) -> tuple[int, ...]:
    import nibabel as nib

    ornt = nib.orientations.io_orientation(src.affine)
    shape = [0, 0, 0]
    for in_axis, (out_axis, _) in enumerate(ornt):
        shape[int(out_axis)] = int(src.shape[in_axis])
    return tuple(shape)


def check_output_path(out: str | os.PathLike, inputs=()) -> Path:
    """Validate an output path before any work: right suffix, writable folder, not an input."""
    out = Path(out)
    if not has_image_suffix(out):
        raise OutputError(f"{out}: output must end in {', '.join(IMAGE_SUFFIXES)}")
    resolved = out.resolve()
    for inp in inputs:
        if inp is not None and Path(inp).resolve() == resolved:
            raise OutputError(f"{out}: output path is the input file; refusing to overwrite it")
    check_folder(resolved.parent)
    return out


def check_folder(folder: Path) -> None:
    """The folder an output goes to (or its nearest existing ancestor, where it will be created) is writable."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise OutputError(f"{existing}: not a folder")
    if not os.access(existing, os.W_OK | os.X_OK) or not _can_create_in(existing):
        raise OutputError(f"{existing}: folder is not writable")


def _can_create_in(folder: Path) -> bool:
    """Can a file be made in ``folder``? For root, os.access says yes everywhere, /proc included; a trial file
    (removed at once) tells before the work rather than after it."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def check_outputs(
    outputs: Iterable[tuple[str | os.PathLike, str]], inputs: Iterable[str | os.PathLike], *, force: bool
) -> None:
    """Refuse, before any work, a command whose outputs would lose something the user owns.

    ``outputs`` are (path, what it is written for) pairs. Refused: an output that is one of ``inputs``
    (any of them, not only its own: in folder mode ``a_enhanced.nii.gz`` may be another scan); two
    outputs that are one file (the sidecars of ``x.nii`` and ``x.nii.gz`` are both ``x.json``); an
    output that is a folder; an output that exists, unless ``force``; an unwritable folder.
    When nothing is refused, temporary files that a killed earlier run left for these outputs are removed.
    """
    protected = {Path(p).resolve() for p in inputs}
    owners: dict[Path, str] = {}
    for out, owner in outputs:
        out = Path(out)
        resolved = out.resolve()
        if resolved in protected:
            raise OutputError(f"{out}: output path is an input file; refusing to overwrite it")
        if resolved in owners:
            raise OutputError(f"{out}: would be written for both {owners[resolved]} and {owner}; rename one of them")
        owners[resolved] = owner
        if out.is_dir():
            raise OutputError(f"{out}: is a folder; an output file is needed")
        if out.exists() and not force:
            raise OutputError(f"{out}: already exists; give --force to replace it")
        check_folder(resolved.parent)
    for out in owners:
        for part in stale_parts(out):
            part.unlink(missing_ok=True)


def stale_parts(path: Path) -> list[Path]:
    """Temporary files of :func:`atomic_write` for ``path`` (what a run killed while writing it leaves behind)."""
    if not path.parent.is_dir():
        return []
    pattern = re.compile(re.escape(f".{path.name}.") + r"[a-z0-9_]+" + re.escape(f".part{_part_suffix(path)}"))
    return sorted(p for p in path.parent.iterdir() if pattern.fullmatch(p.name) and p.is_file())


def _part_suffix(path: Path) -> str:
    """The suffix a temporary file for ``path`` keeps, so that nibabel writes it in the same format."""
    return "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


class OutputGroup:
    """Outputs that stand or fall together: if the block fails, files it wrote are removed.

    Use as ``with OutputGroup() as group: group.add(save_volume(...))``.
    """

    def __init__(self) -> None:
        self.paths: list[Path] = []

    def add(self, path: Path) -> Path:
        self.paths.append(Path(path))
        return path

    def __enter__(self) -> OutputGroup:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            for path in self.paths:
                path.unlink(missing_ok=True)


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` for a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{_part_suffix(path)}", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_volume(volume: Volume, path: str | os.PathLike, *, inputs=()) -> Path:
    """Write ``volume`` atomically as NIfTI (or MGZ by suffix).

    If the volume is on the grid of the file it was read from, the data are put
    back into that file's orientation and written with its affine and header, so
    a round trip is exact. Otherwise it is written in RAS+ with its own affine
    (qform and sform both set, codes taken from the source header if any).
    ``inputs`` are paths the output must not overwrite. A volume with NaN or Inf voxels is refused.
    """
    import nibabel as nib

    path = check_output_path(path, inputs)
    bad = int(np.count_nonzero(~np.isfinite(volume.data)))
    if bad:  # e.g. a model with NaN weights: a volume of NaN is no result, and must not pass as one
        raise OutputError(f"{path}: not written: {bad} of {volume.data.size} voxels of the result are NaN or Inf")
    header: nib.spatialimages.SpatialHeader | None
    try:
        if volume.source is not None and _on_source_grid(volume):
            src = volume.source
            ras, ornt = nib.orientations.axcodes2ornt(("R", "A", "S")), nib.orientations.io_orientation(src.affine)
            back = nib.orientations.apply_orientation(volume.data, nib.orientations.ornt_transform(ras, ornt))
            data, affine, header = np.ascontiguousarray(back), src.affine, src.header.copy()
        else:
            data, affine = volume.data, volume.affine
            header = volume.source.header.copy() if volume.source is not None else None
        img = _make_image(path, data, affine, header)
        atomic_write(path, lambda tmp: nib.save(img, str(tmp)))
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from None
    return path


def _make_image(path: Path, data: np.ndarray, affine: np.ndarray, header):
    import nibabel as nib

    data = np.asarray(data, dtype=np.float32)
    if path.name.lower().endswith((".mgz", ".mgh")):
        return nib.MGHImage(data, affine)
    if isinstance(header, nib.Nifti1Header):
        hdr = header.copy()
        hdr.set_data_dtype(np.float32)
        hdr.set_data_shape(data.shape)
        img = nib.Nifti1Image(data, affine, hdr)
        qcode = int(hdr["qform_code"]) or 1
        scode = int(hdr["sform_code"]) or 1
    else:
        img = nib.Nifti1Image(data, affine)
        qcode = scode = 1  # scanner-anatomical
    img.set_qform(affine, code=qcode)
    img.set_sform(affine, code=scode)
    img.header.set_slope_inter(1.0, 0.0)
    return img


def split_image_name(path: str | os.PathLike) -> tuple[str, str]:
    """('brain', '.nii.gz') for 'dir/brain.nii.gz'; the suffix defaults to '.nii.gz' if unknown."""
    name = Path(path).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], name[-len(suffix) :]
    return name, ".nii.gz"


def sibling_path(path: str | os.PathLike, tag: str, suffix: str | None = None) -> Path:
    """'out.nii.gz' + tag '_std' -> 'out_std.nii.gz'; with ``suffix`` ('.json') the image suffix is replaced."""
    path = Path(path)
    stem, ext = split_image_name(path)
    return path.with_name(f"{stem}{tag}{suffix if suffix is not None else ext}")


def save_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` to ``path`` atomically."""
    path = Path(path)
    try:
        atomic_write(path, lambda tmp: tmp.write_text(text))
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from None
    return path


def save_json(obj, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON, atomically; NaN and infinite numbers are written as null.

    JSON has no NaN or Infinity: Python would write them anyway, and strict readers (jq, browsers,
    most other languages) then refuse the whole file.
    """
    import json

    return save_text(
        json.dumps(_finite(obj), indent=2, sort_keys=True, default=_json_default, allow_nan=False) + "\n", path
    )


def _finite(value):
    """``value`` with every non-finite float (Python's or numpy's, arrays included) replaced by None."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, np.ndarray):
        return _finite(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        return None
    return value


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
