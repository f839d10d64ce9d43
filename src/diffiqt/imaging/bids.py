"""BIDS datasets in, BIDS derivatives out: the small part of the layout that diffiqt needs.

This is a reader of one layout, not a BIDS validator (pybids would be a large dependency for it):

* a dataset is a folder with ``dataset_description.json`` (a JSON object);
* its T1w scans are ``sub-<label>/[ses-<label>/]anat/sub-<label>[_ses-<label>][_<key>-<value>...]_T1w.nii[.gz]``
  (``derivatives/``, ``sourcedata/`` and hidden files are not looked at); a scan whose name does not
  parse, or names another subject or session than its folders, is a :class:`Problem`, not a scan;
* the derivatives of a scan keep its folders and entities and add (or replace) ``desc``:
  ``OUT/sub-<label>/[ses-<label>/]anat/<entities>_desc-<what>_T1w.nii.gz``, each with a JSON sidecar
  whose ``Sources`` are BIDS URIs ``bids:input:<path in the input dataset>``; ``OUT/dataset_description.json``
  says ``DatasetType: derivative``, who made it, and (``DatasetLinks``) where ``input`` is.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from diffiqt.errors import ConfigError, InputError, OutputError
from diffiqt.imaging.io import Volume

DESCRIPTION = "dataset_description.json"
BIDS_VERSION = "1.10.0"  # of the specification the derivatives are written to
INPUT_LINK = "input"  # the DatasetLinks name under which a derivative refers to the dataset it was made from
LABEL = re.compile(r"[A-Za-z0-9]+")
ENTITY = re.compile(r"([a-z]+)-([A-Za-z0-9]+)")
T1W_SUFFIXES = (".nii.gz", ".nii")

DESC_ENHANCED = "enhanced"  # diffiqt enhance: the mean of the samples
DESC_SD = "sd"  # diffiqt enhance with --samples > 1: their per-voxel standard deviation
DESC_LOWFIELD = "lowfield"  # diffiqt simulate: the thick-slice scan
DESC_UPSAMPLED = "lowfieldupsampled"  # diffiqt simulate: that scan resampled onto the high-field grid
# T1w images diffiqt made that are no scan to start from: enhancing an enhanced image, an uncertainty map or
# the upsampled copy of a simulated scan would also give two outputs one name (entities less desc are equal).
DERIVED_DESCS = frozenset({DESC_ENHANCED, DESC_SD, DESC_UPSAMPLED})


@dataclass(frozen=True)
class Dataset:
    """A BIDS dataset: its root folder (absolute) and its parsed ``dataset_description.json``."""

    root: Path
    description: dict

    @property
    def is_derivative(self) -> bool:
        return self.description.get("DatasetType") == "derivative"


@dataclass(frozen=True)
class Scan:
    """One T1w scan of a dataset.

    ``entities`` are the key-value pairs of the file name in their order, ``sub`` first (and ``ses``
    second where the scan has a session); ``relpath`` is the path in the dataset, '/'-separated as in a BIDS URI.
    """

    path: Path
    relpath: PurePosixPath
    entities: tuple[tuple[str, str], ...]

    @property
    def subject(self) -> str:
        return self.entities[0][1]

    @property
    def session(self) -> str | None:
        return dict(self.entities).get("ses")

    @property
    def desc(self) -> str | None:
        return dict(self.entities).get("desc")

    def derivative(self, desc: str, suffix: str = ".nii.gz") -> PurePosixPath:
        """The path, in a derivative dataset, of this scan's ``desc`` image (or its sidecar: ``suffix`` .json).

        ``desc`` replaces the scan's own (a scan of a derivative dataset may have one) and comes last, as
        the specification orders entities.
        """
        entities = [f"{key}-{value}" for key, value in self.entities if key != "desc"] + [f"desc-{desc}"]
        return self.relpath.parent / ("_".join(entities) + "_T1w" + suffix)

    @property
    def uri(self) -> str:
        """The scan as a BIDS URI from a derivative that links its dataset as ``input``."""
        return f"bids:{INPUT_LINK}:{self.relpath}"


@dataclass(frozen=True)
class Problem:
    """A file that looks like a T1w scan but cannot be used, and why; ``relpath`` as in :class:`Scan`."""

    relpath: PurePosixPath
    reason: str

    def __str__(self) -> str:
        return f"{self.relpath}: {self.reason}"


def is_dataset(path: Path) -> bool:
    """A folder with a ``dataset_description.json``: what makes ``diffiqt enhance/simulate`` read it as BIDS."""
    return path.is_dir() and (path / DESCRIPTION).is_file()


def looks_like_dataset(path: Path) -> bool:
    """A folder with ``sub-*`` folders: meant as a BIDS dataset, whether or not it has its description."""
    return path.is_dir() and any(child.is_dir() for child in path.glob("sub-*"))


def read_dataset(root: Path) -> Dataset:
    """The dataset at ``root``; InputError if ``dataset_description.json`` is missing or is no JSON object."""
    file = root / DESCRIPTION
    if not file.is_file():
        raise InputError(f"{root}: no {DESCRIPTION}; a BIDS dataset needs one (with at least Name and BIDSVersion)")
    try:
        description = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{file}: cannot be read as JSON ({str(exc).splitlines()[0] or type(exc).__name__})") from None
    if not isinstance(description, dict):
        raise InputError(f"{file}: not a JSON object")
    return Dataset(root.resolve(), description)


def find_t1w(dataset: Dataset, skip_desc: Collection[str] = DERIVED_DESCS) -> tuple[list[Scan], list[Problem]]:
    """The T1w scans of ``dataset`` and the T1w-looking files that cannot be used, both sorted by path.

    Images whose ``desc`` is in ``skip_desc`` are left out (by default those diffiqt derives and never
    starts from, see :data:`DERIVED_DESCS`).
    """
    root = dataset.root
    files = sorted({*root.glob("sub-*/anat/*_T1w.nii*"), *root.glob("sub-*/ses-*/anat/*_T1w.nii*")})
    scans, problems = [], []
    for file in files:
        if file.name.startswith(".") or not file.name.endswith(T1W_SUFFIXES) or not file.is_file():
            continue
        relpath = PurePosixPath(file.relative_to(root).as_posix())
        entities = parse_name(file.name)
        folders = [(part.split("-", 1)[0], part.split("-", 1)[1]) for part in relpath.parts[:-2]]
        if entities is None:
            problems.append(
                Problem(
                    relpath,
                    "not a BIDS file name (sub-<label>[_<key>-<value>...]_T1w.nii[.gz], labels of letters and digits)",
                )
            )
        elif [pair for pair in entities if pair[0] in ("sub", "ses")] != folders or entities[0][0] != "sub":
            problems.append(Problem(relpath, f"its name's sub/ses entities do not match its folders {relpath.parent}"))
        elif dict(entities).get("desc") not in skip_desc:
            scans.append(Scan(file, relpath, entities))
    return scans, problems


def parse_name(name: str) -> tuple[tuple[str, str], ...] | None:
    """The entities of a ``..._T1w.nii[.gz]`` file name in order, or None if the name is not key-value pairs."""
    stem = next(name[: -len(s)] for s in T1W_SUFFIXES if name.endswith(s))
    parts = stem.split("_")
    if parts[-1] != "T1w" or len(parts) < 2:
        return None
    matches = [ENTITY.fullmatch(part) for part in parts[:-1]]
    found = [m for m in matches if m is not None]
    if len(found) != len(matches):
        return None
    entities = tuple((m.group(1), m.group(2)) for m in found)
    return entities if len({key for key, _ in entities}) == len(entities) else None


def labels(values: Iterable[str], entity: str) -> list[str]:
    """``--participant-label`` / ``--session-label`` values without their optional ``sub-`` / ``ses-`` prefix."""
    out = []
    for value in values:
        label = value[len(entity) + 1 :] if value.startswith(f"{entity}-") else value
        if not LABEL.fullmatch(label):
            raise ConfigError(
                f"{entity} label {value!r}: a BIDS label is letters and digits (optionally after '{entity}-')"
            )
        out.append(label)
    return out


def in_selection(relpath: PurePosixPath, participants: Collection[str], sessions: Collection[str]) -> bool:
    """Does a file lie in the folders of the selected participants and sessions (empty: all of them)?"""
    parts = relpath.parts
    subject = parts[0][len("sub-") :]
    session = parts[1][len("ses-") :] if len(parts) > 3 else None
    return (not participants or subject in participants) and (not sessions or session in sessions)


def select(dataset: Dataset, scans: list[Scan], participants: Collection[str], sessions: Collection[str]) -> list[Scan]:
    """The scans of the selected participants and sessions; InputError if there are none, or a label selects none.

    A label that matches nothing is most likely a typo, so it stops the run rather than being passed over.
    """
    if not scans:
        raise InputError(f"{dataset.root}: no T1w scans (sub-<label>/[ses-<label>/]anat/*_T1w.nii[.gz])")
    for label in participants:
        if not any(scan.subject == label for scan in scans):
            raise InputError(f"--participant-label {label}: {dataset.root} has no T1w scan of sub-{label}")
    chosen = [scan for scan in scans if in_selection(scan.relpath, participants, ())]
    for label in sessions:
        if not any(scan.session == label for scan in chosen):
            raise InputError(
                f"--session-label {label}: no T1w scan of ses-{label} in the selected participants of {dataset.root}"
            )
    return [scan for scan in chosen if in_selection(scan.relpath, (), sessions)]


def check_output_root(dataset: Dataset, out: Path) -> None:
    """Refuse, before any work, an output folder that is not a place for this dataset's derivatives.

    Refused: a path with a suffix (a file name), an existing file; the dataset itself or any folder in it
    other than under ``derivatives/`` (the specification's place for derivatives; ``derivatives/`` itself
    holds one folder per pipeline); a folder whose ``dataset_description.json`` is not a derivative's, or is
    the derivative of another dataset.
    """
    if out.suffix or (out.exists() and not out.is_dir()):
        raise OutputError(
            f"{out}: the input is a BIDS dataset, so --out must be a folder (e.g. {dataset.root / 'derivatives' / 'diffiqt'})"
        )
    resolved = out.resolve()
    if resolved == dataset.root or dataset.root in resolved.parents:
        inside = resolved.relative_to(dataset.root).parts
        if not inside or inside[0] != "derivatives" or len(inside) == 1:
            raise OutputError(
                f"{out}: inside the input dataset; write derivatives to a folder under "
                f"{dataset.root / 'derivatives'} (e.g. derivatives/diffiqt) or outside it"
            )
    if not (out / DESCRIPTION).exists():
        return
    existing = read_dataset(out)
    if not existing.is_derivative:
        raise OutputError(f"{out}: holds a BIDS dataset that is not a derivative; give another --out")
    links = existing.description.get("DatasetLinks")
    link = links.get(INPUT_LINK) if isinstance(links, dict) else None
    if link is not None and (resolved / str(link)).resolve() != dataset.root:
        raise OutputError(f"{out}: holds the derivatives of another dataset ({link}); give another --out")


def derivative_description(dataset: Dataset, out: Path, version: str, what: str) -> dict:
    """The ``dataset_description.json`` of derivatives of ``dataset`` written to ``out``.

    ``DatasetLinks`` gives the input as a path relative to ``out``, so that the sidecars' BIDS URIs
    resolve while the two folders move together (the usual ``derivatives/`` layout).
    """
    name = dataset.description.get("Name")
    link = Path(os.path.relpath(dataset.root, out.resolve())).as_posix()
    return {
        "Name": f"diffiqt {what}" + (f" of {name}" if isinstance(name, str) and name else ""),
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "diffiqt",
                "Version": version,
                "Description": "low-field brain MRI enhancement with a 3D conditional diffusion model",
            }
        ],
        "DatasetLinks": {INPUT_LINK: link},
    }


def write_description(dataset: Dataset, out: Path, version: str, what: str) -> Path | None:
    """Write the derivative's ``dataset_description.json`` unless it exists (then it is left as it is: a
    re-run changes nothing); its path if written."""
    from diffiqt.imaging.io import save_json

    file = out / DESCRIPTION
    return None if file.exists() else save_json(derivative_description(dataset, out, version, what), file)


def lowfield_geometry(volume: Volume, axis: int) -> dict:
    """The low-field grid as a sidecar records it: voxel size (mm, along the RAS+ axes i, j, k), the thick
    slices' axis (0 sagittal, 1 coronal, 2 axial) and their spacing (mm)."""
    from diffiqt.imaging.io import AXIS_NAMES

    size = [round(float(v), 6) for v in volume.voxel_size]
    names = {index: name for name, index in AXIS_NAMES.items()}
    return {"voxel_size_mm": size, "slice_axis": axis, "slice_axis_name": names[axis], "slice_spacing_mm": size[axis]}
