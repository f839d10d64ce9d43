"""The public Python API: the example of docs/usage.md runs as written, and importing the package stays light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

import diffiqt

USAGE = Path(__file__).parents[1] / "docs" / "usage.md"


def python_api_example() -> str:
    """The first Python code block of the "Python API" section of docs/usage.md."""
    section = USAGE.read_text().split("## Python API", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_every_public_name_resolves():
    assert set(diffiqt.__all__) == {*diffiqt._EXPORTS, "__version__"} and set(diffiqt.__all__) <= set(dir(diffiqt))
    for name in diffiqt.__all__:
        assert getattr(diffiqt, name) is not None
    from diffiqt.inference.enhance import enhance

    assert diffiqt.enhance_scan is enhance


def test_importing_the_package_does_not_import_torch():
    code = "import sys, diffiqt; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_documented_example_runs_end_to_end(mni, tmp_path, monkeypatch):
    """On a 48x56x64 piece of the real MNI brain, with the shipped model at its own (one) step: seconds on a CPU."""
    lower, upper = (70, 80, 60), (118, 136, 124)
    hf = mni.t1.crop(lower, upper)
    diffiqt.save_volume(hf, tmp_path / "hf.nii.gz")
    monkeypatch.chdir(tmp_path)
    exec(compile(python_api_example(), str(USAGE), "exec"), {})
    lf, enhanced = diffiqt.load_volume("lf.nii.gz"), diffiqt.load_volume("enhanced.nii.gz")
    assert lf.shape == (48, 56, 8)  # 8 thick slices of 8 mm
    assert enhanced.shape == hf.shape and np.isfinite(enhanced.data).all()
    np.testing.assert_allclose(enhanced.affine, hf.affine, atol=1e-4)
