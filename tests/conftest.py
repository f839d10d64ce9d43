"""Shared fixtures: the real MNI152 brain (loaded once), CLI and torchrun runners, and the scripts of scripts/ as
modules."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture
def one_thread():
    """One torch thread (use with ``pytestmark = pytest.mark.usefixtures("one_thread")``): on a shared
    2-core machine a second thread mostly waits."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def mni():
    """The bundled MNI ICBM152 2009a T1w brain with GM/WM/CSF maps (real anatomy, 1 mm)."""
    from diffiqt.anatomy.brains import mni152

    return mni152()


@pytest.fixture(scope="session")
def mni_crop(mni):
    """A central 96x112x104 crop of the MNI brain and its tissue maps: real anatomy, fast tests."""
    from diffiqt.anatomy.brains import BrainSample, TissueMaps

    lower, upper = (50, 60, 40), (146, 172, 144)
    maps = {k: v.crop(lower, upper) for k, v in mni.tissues.as_dict().items()}
    mask = mni.mask[lower[0] : upper[0], lower[1] : upper[1], lower[2] : upper[2]]
    return BrainSample("mni152-crop", mni.t1.crop(lower, upper), TissueMaps(**maps), mask, True)


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m diffiqt ARGS`` as a user would and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "diffiqt", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def run_cli_in_process(capsys, *args) -> subprocess.CompletedProcess:
    """``diffiqt ARGS`` through the real entry point in this process (faster than :func:`run_cli`): its exit
    status and the output ``capsys`` captured."""
    from diffiqt.cli import main

    argv, sys.argv = sys.argv, ["diffiqt", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def run_torchrun(script: Path, *args, processes: int = 2, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python SCRIPT ARGS`` in ``processes`` CPU processes through torchrun (one torch thread each, on a free
    local port) and its captured output."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(processes),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(script),
        *map(str, args),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_script(name: str) -> ModuleType:
    """``scripts/NAME.py`` imported as a module (the scripts are not part of the package)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
