"""Misuse, continued (issue 17): what the loader accepts, and training runs that diverge, are stopped, killed,
run twice at once or find a corrupt checkpoint.

The loader property test feeds random headers, dtypes and shapes: every file gives a finite float32 volume or
the project's InputError, nothing else. The subprocess tests (SIGKILL, SIGTERM) are marked slow: each starts
Python and torch afresh.
"""

from __future__ import annotations

import fcntl
import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

import tiny_net
from diffiqt import config as configs
from diffiqt.errors import ConfigError, InputError
from diffiqt.models import checkpoint as ck
from diffiqt.training import loop
from diffiqt.training.loop import Trainer, TrainingDiverged, TrainingInterrupted, resume_config, train

pytestmark = pytest.mark.usefixtures("one_thread")
TESTS = Path(__file__).parent
# Runs the CLI in a fresh process that can build the tiny networks too.
RUNNER = "import sys, tiny_net; tiny_net.install(); from diffiqt.cli import main; sys.argv[0] = 'diffiqt'; main()"


@pytest.fixture(autouse=True)
def tiny_networks(monkeypatch):
    tiny_net.install(monkeypatch)


def tiny(*changes: str) -> configs.TrainConfig:
    return configs.resolve(assignments=tiny_net.TINY_TRAINING + ("val_every=100",) + changes)


def tensors(folder: Path, name: str) -> dict:
    return load_file(str(folder / f"{name}.safetensors"))


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- the loader

DTYPES = [
    "uint8",
    "int16",
    "int32",
    "int64",
    "float32",
    "float64",
    "complex64",
    "int8",
    "uint16",
    [("R", "u1"), ("G", "u1"), ("B", "u1")],
]
REALS = st.floats(allow_nan=True, allow_infinity=True, width=32)


@st.composite
def nifti_files(draw):
    """Bytes of a NIfTI-1 file: a random dtype, shape, affine, scaling and datatype code; sometimes cut short."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=5)))
    header = nib.Nifti1Header()
    header.set_data_dtype(dtype)
    header.set_data_shape(shape)
    header["vox_offset"] = 352
    for axis, row in enumerate(("srow_x", "srow_y", "srow_z")):  # half the time a plain 1 mm grid, which loads
        header[row] = draw(st.one_of(st.just(list(np.eye(4)[axis])), st.lists(REALS, min_size=4, max_size=4)))
    header["pixdim"] = [1.0] + draw(st.lists(REALS, min_size=7, max_size=7))
    for key in ("sform_code", "qform_code"):
        header[key] = draw(st.integers(0, 4))
    for key in ("quatern_b", "quatern_c", "quatern_d", "scl_slope", "scl_inter"):
        header[key] = draw(REALS)
    code = draw(st.sampled_from([None, None, 0, 128, 999, 1792, 2304]))
    if code is not None:
        header["datatype"] = code
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    voxels = rng.integers(0, 256, int(np.prod(shape)) * dtype.itemsize, dtype=np.uint8).tobytes()
    blob = header.binaryblock + bytes(4) + voxels
    blob = blob[: len(blob) - draw(st.integers(0, 8))] if draw(st.booleans()) else blob
    suffix = draw(st.sampled_from([".nii", ".nii.gz", ".mgz"]))
    return suffix, gzip.compress(blob) if suffix != ".nii" else blob


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(nifti_files())
def test_the_loader_gives_a_finite_float32_volume_or_an_input_error(tmp_path, file):
    from diffiqt.imaging.io import load_volume

    suffix, blob = file
    path = tmp_path / f"random{suffix}"
    path.write_bytes(blob)
    try:
        volume = load_volume(path)
    except InputError as exc:
        assert "\n" not in str(exc)
        return
    assert volume.data.dtype == np.float32 and volume.data.ndim == 3
    assert np.isfinite(volume.data).all() and np.isfinite(volume.affine).all()


# ----------------------------------------------------------------------------- training: wrong results


def test_a_non_finite_loss_stops_the_run_before_its_step_and_no_nan_checkpoint_is_written(tmp_path, monkeypatch):
    real, calls = loop.batch_loss, []

    def poisoned(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(loop, "batch_loss", poisoned)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="diverged at step 3: the loss is nan.*step_00000002") as err:
        train(tiny("steps=6"), run, progress=False)
    assert "\n" not in str(err.value)
    assert [p.name for p in ck.list_checkpoints(run)] == ["step_00000002"]
    for name in ("model", "ema", "optimizer"):
        assert all(torch.isfinite(t).all() for t in tensors(ck.list_checkpoints(run)[0], name).values())


def test_nan_weights_are_refused_when_a_checkpoint_loads(tmp_path):
    from safetensors.torch import save_file

    run = tmp_path / "run"
    train(tiny("steps=2"), run, progress=False)
    folder = ck.find_checkpoint(run)
    broken = {k: torch.full_like(v, float("nan")) for k, v in tensors(folder, "ema").items()}
    save_file(broken, str(folder / "ema.safetensors"))
    with pytest.raises(InputError, match="ema.safetensors: .* tensors hold NaN or Inf"):
        ck.load_network(run)


# ----------------------------------------------------------------------------- training: stopped, locked, corrupt


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_signal_during_a_step_stops_at_its_end_with_a_checkpoint(tmp_path, monkeypatch, name):
    real = Trainer.train_step

    def signalled(self, batch):
        result = real(self, batch)
        if self.step == 3:  # the signal arrives while the step is still busy (inside train_step)
            os.kill(os.getpid(), getattr(signal, name))
        return result

    monkeypatch.setattr(Trainer, "train_step", signalled)
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted, match=f"stopped by {name} at step 3; last checkpoint: .*step_00000003"):
        train(tiny("steps=6", "checkpoint_every=2"), run, progress=False)
    assert [p.name for p in ck.list_checkpoints(run)] == ["step_00000002", "step_00000003"]
    monkeypatch.setattr(Trainer, "train_step", real)
    assert train(resume_config(run), run, resume=True, progress=False).step == 6


def test_a_run_folder_in_use_is_refused_and_a_stale_lock_blocks_nothing(tmp_path):
    run = tmp_path / "run"
    train(tiny("steps=2"), run, progress=False)
    with open(run / loop.LOCK_FILE, "w") as holder:  # another process training there
        holder.write("4242\n")
        holder.flush()
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ConfigError, match=r"another process \(pid 4242\) is training in this run folder"):
            train(resume_config(run, ("steps=3",)), run, resume=True, progress=False)
    # The holder is gone (as after a kill): its pid is still in the file, but the lock went with it.
    assert train(resume_config(run, ("steps=3",)), run, resume=True, progress=False).step == 3


def test_resume_passes_over_a_corrupt_newest_checkpoint_with_a_warning(tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny("steps=4"), run, progress=False)
    newest = ck.list_checkpoints(run)[-1]
    straight = tensors(newest, "model")
    (newest / "ema.safetensors").write_bytes(b"cut short by a full disk")
    capsys.readouterr()
    assert train(resume_config(run), run, resume=True, progress=False).step == 4
    warning = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert (
        len(warning) == 1
        and "step_00000004" in warning[0]
        and "resuming from" in warning[0]
        and "step_00000002" in warning[0]
    )
    assert same_tensors(tensors(ck.list_checkpoints(run)[-1], "model"), straight)


# ----------------------------------------------------------------------------- processes killed and stopped


def _env() -> dict:
    paths = [str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "OMP_NUM_THREADS": "1"}


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, *map(str, args)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_a_run_killed_at_random_points_resumes_to_the_same_weights(tmp_path):
    """SIGKILL (no handler runs, no lock is released by hand) at random moments of training, then --resume,
    until the run finishes: the weights, EMA and optimizer state equal those of a run never interrupted."""
    settings = [arg for s in tiny_net.TINY_TRAINING + ("val_every=100", "checkpoint_every=1") for arg in ("--set", s)]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train(tiny("steps=8", "checkpoint_every=1"), straight, progress=False)
    rng = np.random.default_rng(17)
    for attempt in range(8):
        resume = (killed / "config.json").exists()  # else the killed run had not started: start it again
        process = _start(
            "train", "--out", killed, "--steps", 8, "--no-progress", *(("--resume",) if resume else settings)
        )
        deadline = time.monotonic() + 120
        while not (killed / "train.csv").exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(float(rng.uniform(0.0, 1.0)))
        if process.poll() is None and attempt < 3:
            process.kill()
        out, err = process.communicate(timeout=300)
        if process.returncode == 0:
            break
        assert process.returncode == -signal.SIGKILL, err
    assert process.returncode == 0, err
    for name in ("model", "ema", "optimizer"):
        assert same_tensors(tensors(ck.find_checkpoint(straight), name), tensors(ck.find_checkpoint(killed), name)), (
            name
        )


def _tiny_checkpoint(root: Path) -> Path:
    from diffiqt import nets

    torch.manual_seed(0)
    net = nets.build_network("tiny", width=4).eval()
    cfg = configs.TrainConfig()
    cfg.diffusion.sample_steps = 1
    return ck.save_checkpoint(root / "run", 1, {"network": dict(net.config), "train": cfg.to_dict()}, net, net, None)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["simulate", "enhance"])
def test_sigterm_leaves_all_outputs_or_none_and_no_part_files(tmp_path, mni_crop, command):
    from diffiqt.imaging.io import save_volume
    from diffiqt.simulation import LowFieldParams, simulate_low_field

    if command == "simulate":
        scan = save_volume(mni_crop.t1, tmp_path / "hf.nii.gz")
        extra = ("--png",)
    else:
        lf = simulate_low_field(
            mni_crop.t1, mni_crop.tissues, LowFieldParams.for_factor(8, 1.0), np.random.default_rng(0), upsample=False
        ).lf
        scan = save_volume(lf, tmp_path / "lf.nii.gz")
        extra = ("--model", _tiny_checkpoint(tmp_path), "--samples", 2, "--png")
    rng = np.random.default_rng(5)
    for attempt in range(3):
        out = tmp_path / f"out{attempt}"
        process = _start(command, scan, "-o", out / "result.nii.gz", *extra)
        time.sleep(float(rng.uniform(2.0, 8.0)))
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=300)
        written = sorted(p.name for p in out.iterdir()) if out.exists() else []
        if process.returncode == 0:
            assert len(written) == 4, written  # the image, its _std or _upsampled sibling, the montage, the sidecar
        else:  # stopped as by Ctrl-C, or by the default action if the signal came before diffiqt started
            assert process.returncode in (130, -signal.SIGTERM), err
            assert written == [], written
