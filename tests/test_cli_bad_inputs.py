"""Every bad input gets one line on stderr, a non-zero exit, no traceback, no output, input untouched."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import run_cli


def _brainish(shape=(24, 24, 24)) -> np.ndarray:
    """A smooth blob: enough signal for the input checks (these tests never reach the simulator)."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    return (100 * np.exp(-4 * (grid**2).sum(0))).astype(np.float32)


def _nifti(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (input path, expected words in the message)."""
    good = _nifti(tmp / "good.nii.gz", _brainish())
    truncated = tmp / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    not_nifti = tmp / "notes.nii.gz"
    not_nifti.write_bytes(gzip.compress(b"this is not an image"))
    text = tmp / "notes.txt"
    text.write_text("hello")
    nan = _brainish()
    nan[3, 3, 3] = np.nan
    inf = _brainish()
    inf[3, 3, 3] = np.inf
    return {
        "missing": (tmp / "nope.nii.gz", "no such file"),
        "not_nifti": (not_nifti, "cannot be read"),
        "wrong_suffix": (text, "not a NIfTI"),
        "truncated": (truncated, "cannot be read"),
        "2d": (_nifti(tmp / "flat.nii.gz", np.ones((20, 20), np.float32)), "3D volume is needed"),
        "4d": (_nifti(tmp / "series.nii.gz", np.ones((8, 8, 8, 3), np.float32)), "4D image with 3 volumes"),
        "nan": (_nifti(tmp / "nan.nii.gz", nan), "NaN"),
        "inf": (_nifti(tmp / "inf.nii.gz", inf), "Inf"),
        "all_zero": (_nifti(tmp / "zero.nii.gz", np.zeros((16, 16, 16), np.float32)), "every voxel is zero"),
    }


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def _assert_clean_failure(result, expected: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert expected in lines[0], lines[0]


@pytest.mark.parametrize(
    "case", ["missing", "not_nifti", "wrong_suffix", "truncated", "2d", "4d", "nan", "inf", "all_zero"]
)
def test_simulate_refuses_bad_input(tmp_path, case):
    source, expected = _bad_inputs(tmp_path)[case]
    before = _digest(source)
    out_dir = tmp_path / "out"
    result = run_cli("simulate", source, "-o", out_dir / "lf.nii.gz")
    _assert_clean_failure(result, expected)
    assert not out_dir.exists() or list(out_dir.iterdir()) == []
    assert _digest(source) == before


def test_output_equal_to_input_is_refused(tmp_path):
    source = _nifti(tmp_path / "brain.nii.gz", _brainish())
    before = _digest(source)
    result = run_cli("simulate", source, "-o", source)
    _assert_clean_failure(result, "refusing to overwrite")
    assert _digest(source) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["brain.nii.gz"]


def test_unwritable_output_folder_is_refused(tmp_path):
    source = _nifti(tmp_path / "brain.nii.gz", _brainish())
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    result = run_cli("simulate", source, "-o", blocker / "lf.nii.gz", "--no-upsample")
    _assert_clean_failure(result, "not a folder")
    if Path("/proc").is_dir():  # unwritable even for root, which ignores permission bits: found before the work
        result = run_cli(
            "simulate", source, "-o", "/proc/diffiqt_lf.nii.gz", "--no-upsample", "--snr-wm", "60", "--snr-gm", "50"
        )
        _assert_clean_failure(result, "/proc: folder is not writable")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "brain.nii.gz"]


def test_bad_option_values_are_refused(tmp_path):
    source = _nifti(tmp_path / "brain.nii.gz", _brainish())
    _assert_clean_failure(run_cli("simulate", source, "-o", tmp_path / "o.nii.gz", "--axis", "diagonal"), "--axis")
    _assert_clean_failure(run_cli("simulate", source, "-o", tmp_path / "o.nii.gz", "--snr-wm", "60"), "SNR")
    _assert_clean_failure(run_cli("simulate", source, "-o", tmp_path / "o.nii.gz", "--inplane", "0"), "in-plane")
    _assert_clean_failure(run_cli("simulate", source, "-o", tmp_path / "o.png"), "must end in")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["brain.nii.gz"]
