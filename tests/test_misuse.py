"""Misuse, as a careless user commits it (issue 17): nothing the user owns is lost, no model is silently
substituted, no wrong result passes as one.

Each refusal is checked the same way: exit status 2, one line on stderr that names the problem, no new
file, and every file that was there before byte for byte as it was.

The commands run in this process through the CLI's entry point (:func:`diffiqt.cli.main`, what
``python -m diffiqt`` calls): a process per case would import torch again each time, about 2 s of CPU
apiece, and put this file far over its time budget. tests/test_cli_bad_inputs.py runs real processes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- shared small real data

@pytest.fixture(scope="module")
def data(tmp_path_factory, mni) -> dict[str, Path]:
    """One x8 LF scan of a 40x48x64 piece of the real MNI brain, its HF truth, a too-small scan, and a
    checkpoint (in a run folder) of an untrained tiny network that samples in one step: fast to enhance."""
    import tiny_net

    from diffiqt import nets
    from diffiqt.checkpoint import save_checkpoint
    from diffiqt.config import TrainConfig
    from diffiqt.datasets import TissueMaps
    from diffiqt.io import save_volume
    from diffiqt.simulate import LowFieldParams, simulate_low_field

    root = tmp_path_factory.mktemp("misuse")
    lower, upper = (70, 90, 60), (110, 138, 124)
    hf = mni.t1.crop(lower, upper)
    maps = TissueMaps(**{k: v.crop(lower, upper) for k, v in mni.tissues.as_dict().items()})
    lf = simulate_low_field(hf, maps, LowFieldParams.for_factor(8, 1.0), np.random.default_rng(0), upsample=False).lf
    tiny = root / "tiny.nii.gz"
    nib.save(nib.Nifti1Image(np.full((6, 6, 3), 100, np.float32), np.diag([1, 1, 8, 1.0])), tiny)
    with pytest.MonkeyPatch.context() as patch:  # the checkpoint is read back through the patched registry (below)
        tiny_net.install(patch)
        torch.manual_seed(0)
        net = nets.build_network("tiny", width=4).eval()
    cfg = TrainConfig()
    cfg.diffusion.sample_steps = 1
    run = root / "run"
    checkpoint = save_checkpoint(run, 1, {"network": dict(net.config), "train": cfg.to_dict()}, net, net, None)
    return {"lf": save_volume(lf, root / "lf.nii.gz"), "hf": save_volume(hf, root / "hf.nii.gz"), "tiny": tiny,
            "run": run, "checkpoint": checkpoint}


@pytest.fixture(autouse=True)
def tiny_networks(monkeypatch):
    """The commands can build the tiny network of the checkpoint (they run in this process)."""
    import tiny_net

    tiny_net.install(monkeypatch)


def _copy(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    (shutil.copytree if source.is_dir() else shutil.copyfile)(source, target)
    return target


def _shifted(source: Path, target: Path, mm: float) -> Path:
    """``source`` with its field of view moved ``mm`` along x: the same image, somewhere else in the world."""
    img = nib.load(source)
    affine = img.affine.copy()
    affine[0, 3] += mm
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), target)
    return target


# ----------------------------------------------------------------------------- running and checking

def _cli(capsys, *args) -> subprocess.CompletedProcess:
    """``diffiqt ARGS`` through the real entry point; its exit status and captured output."""
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


def _tree(*roots: Path) -> dict[str, str]:
    """Every file and folder under ``roots`` (hidden ones included) and the SHA-256 of each file's bytes."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
            for root in roots for p in sorted(root.rglob("*"))}


def _refused(capsys, roots: Path | tuple[Path, ...], words: str, *args) -> None:
    """``diffiqt ARGS`` exits 2 with one line on stderr containing ``words``, and changes nothing in ``roots``."""
    roots = roots if isinstance(roots, tuple) else (roots,)
    before = _tree(*roots)
    result = _cli(capsys, *args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and words in lines[0], result.stderr
    assert _tree(*roots) == before


# ----------------------------------------------------------------------------- 1. data loss

@pytest.mark.parametrize("option, victim", [("--csv", "target"), ("--json", "pred"), ("--png", "target"), ("--csv", "mask")])
def test_evaluate_never_writes_a_report_over_an_input(capsys, tmp_path, data, option, victim):
    files = {name: _copy(data["hf"], tmp_path / f"{name}.nii.gz") for name in ("pred", "target", "mask")}
    _refused(capsys, tmp_path, "refusing to overwrite", "evaluate", "--pred", files["pred"], "--target", files["target"],
             "--mask", files["mask"], option, files[victim])


@pytest.mark.parametrize("command, victim", [("enhance", "a_enhanced.nii.gz"), ("simulate", "a_lf.nii.gz")])
def test_folder_mode_never_writes_over_another_input(capsys, tmp_path, data, command, victim):
    """In folder mode a's output may be another input of the folder, not only a itself."""
    folder = tmp_path / "scans"
    for name in ("a.nii.gz", victim):
        _copy(data["lf" if command == "enhance" else "hf"], folder / name)
    model = ("--model", data["checkpoint"]) if command == "enhance" else ()
    _refused(capsys, tmp_path, "refusing to overwrite", command, folder, "-o", folder, *model)


@pytest.mark.parametrize("command", ["simulate", "enhance", "evaluate"])
def test_an_existing_output_is_not_replaced_without_force(capsys, tmp_path, data, command):
    scan = _copy(data["lf" if command == "enhance" else "hf"], tmp_path / "scan.nii.gz")
    existing = tmp_path / ("scores.csv" if command == "evaluate" else "out.nii.gz")
    existing.write_text("the user's own file")
    args = {"simulate": ("simulate", scan, "-o", existing),
            "enhance": ("enhance", scan, "-o", existing, "--model", data["checkpoint"]),
            "evaluate": ("evaluate", "--pred", scan, "--target", scan, "--csv", existing)}[command]
    _refused(capsys, tmp_path, "already exists; give --force", *args)


@pytest.mark.parametrize("command", ["simulate", "enhance", "evaluate"])
def test_two_inputs_whose_outputs_would_be_one_file_are_refused(capsys, tmp_path, data, command):
    """x.nii and x.nii.gz are two scans but one x.json sidecar (one x_errors.png for evaluate)."""
    folder = tmp_path / "scans"
    source = data["lf" if command == "enhance" else "hf"]
    _copy(source, folder / "x.nii.gz")
    nib.save(nib.load(source), folder / "x.nii")
    args = {"simulate": ("simulate", folder, "-o", tmp_path / "out"),
            "enhance": ("enhance", folder, "-o", tmp_path / "out", "--model", data["checkpoint"]),
            "evaluate": ("evaluate", "--pred", folder, "--target", folder, "--png", tmp_path / "out")}[command]
    _refused(capsys, tmp_path, "would be written for both x.nii", *args)


@pytest.mark.parametrize("name", ["../../x", "sub/x", "..", ".hidden", "default"])
def test_export_model_takes_a_plain_name_only(capsys, tmp_path, data, name):
    _refused(capsys, tmp_path, "a model name is", "export-model", data["checkpoint"], "--name", name,
             "--folder", tmp_path / "models")


def test_export_model_never_replaces_a_shipped_model_and_replaces_an_export_only_with_force(capsys, tmp_path, data):
    from diffiqt.pretrained import WEIGHTS_DIR, read_card, shipped_models

    for force in ((), ("--force",)):
        for shipped in shipped_models():
            _refused(capsys, (tmp_path, WEIGHTS_DIR), "never replaced", "export-model", data["checkpoint"], "--name", shipped, *force)
    models = tmp_path / "models"
    models.mkdir()
    (models / "mine.json").write_text("an earlier export")
    _refused(capsys, tmp_path, "already exists; give --force", "export-model", data["checkpoint"], "--name", "mine", "--folder", models)
    result = _cli(capsys, "export-model", data["checkpoint"], "--name", "mine", "--folder", models, "--force")
    assert result.returncode == 0, result.stderr
    assert read_card(models / "mine.json")["step"] == 1


def test_join_checkpoint_never_writes_into_an_existing_run(capsys, tmp_path, data):
    from diffiqt.transfer import split_checkpoint

    split_checkpoint(data["checkpoint"], tmp_path / "shards")
    run = _copy(data["run"], tmp_path / "run")
    _refused(capsys, tmp_path, "already holds a run", "join-checkpoint", tmp_path / "shards", "--out", run)


# ----------------------------------------------------------------------------- 3. model substitution

def test_shipped_names_win_over_folders_in_the_working_directory(monkeypatch, tmp_path, data):
    from diffiqt.errors import ConfigError
    from diffiqt.pretrained import WEIGHTS_DIR, resolve_model, shipped_card

    name, card = shipped_card("default")
    for decoy in ("default", name):
        _copy(data["checkpoint"], tmp_path / decoy)
    _copy(data["checkpoint"], tmp_path / "my-run")
    monkeypatch.chdir(tmp_path)
    for spec in ("default", name):
        ref = resolve_model(spec)
        assert (ref.name, ref.path, ref.sha256) == (name, WEIGHTS_DIR / f"{name}.safetensors", card["sha256"])
    assert resolve_model("./default").path == (tmp_path / "default").resolve()  # a separator makes it a path
    assert resolve_model("my-run").path == (tmp_path / "my-run").resolve()  # no shipped model has that name
    assert resolve_model(Path("default")).name is None  # a Path is always a path
    for spec in ("nothing", "./nothing"):
        with pytest.raises(ConfigError, match="not a checkpoint path nor a shipped model"):
            resolve_model(spec)


def test_a_stray_json_in_the_weights_folder_breaks_no_model_and_two_defaults_are_refused(tmp_path):
    from diffiqt.errors import ConfigError
    from diffiqt.pretrained import WEIGHTS_DIR, load_shipped, resolve_model, shipped_card

    name, card = shipped_card("default")
    for suffix in (".json", ".safetensors"):
        _copy(WEIGHTS_DIR / f"{name}{suffix}", tmp_path / f"{name}{suffix}")
    (tmp_path / "notes.json").write_text("{ not json")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "zero.json").write_text(json.dumps({**card, "voxel_mm": 0}))
    assert load_shipped("default", tmp_path)[1]["sha256"] == card["sha256"]
    with pytest.raises(ConfigError, match="zero.json: not a valid model card"):
        resolve_model("zero", tmp_path)
    (tmp_path / "second.json").write_text(json.dumps(card))  # default: true as well
    with pytest.raises(ConfigError, match="2 models are marked default"):
        resolve_model("default", tmp_path)


def test_the_sidecar_records_the_resolved_shipped_model_and_its_hash(capsys, monkeypatch, tmp_path, data):
    """With a folder called 'default' in the working directory, the shipped default model still runs."""
    from diffiqt.pretrained import WEIGHTS_DIR, sha256, shipped_card

    name, card = shipped_card("default")
    _copy(data["checkpoint"], tmp_path / "default")
    monkeypatch.chdir(tmp_path)
    result = _cli(capsys, "enhance", data["lf"], "-o", "out.nii.gz")
    assert result.returncode == 0, result.stderr
    resolved = json.loads((tmp_path / "out.json").read_text())["resolved_model"]
    assert resolved == {"name": name, "path": str(WEIGHTS_DIR / f"{name}.safetensors"), "sha256": card["sha256"]}
    assert resolved["sha256"] == sha256(WEIGHTS_DIR / f"{name}.safetensors")


# ----------------------------------------------------------------------------- 6. smaller

def test_an_enhance_error_is_one_line_without_the_models_note(capsys, tmp_path, data):
    """The shipped model's card has a warning; it is printed after the work, never before an error."""
    _refused(capsys, tmp_path, "too small", "enhance", data["tiny"], "-o", tmp_path / "out.nii.gz")


@pytest.mark.parametrize("args, words", [
    (("MISSING",), "no such file"),
    (("LF", "--sampler", "bogus"), "unknown sampler"),
    (("LF", "--max-voxels", "-100"), "at least 1"),
    (("LF", "--device", "bogus"), "device 'bogus'"),
    (("LF", "--device", "meta"), "device 'meta'"),
])
def test_enhance_checks_its_input_and_options_before_loading_a_model(capsys, monkeypatch, tmp_path, data, args, words):
    def no_model(spec):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr("diffiqt.enhance.load_model", no_model)
    scan = {"MISSING": tmp_path / "missing.nii.gz", "LF": _copy(data["lf"], tmp_path / "lf.nii.gz")}
    _refused(capsys, tmp_path, words, "enhance", scan[args[0]], *args[1:], "-o", tmp_path / "out.nii.gz")


def test_every_command_takes_dash_h_for_help():
    import typer
    from typer.testing import CliRunner

    from diffiqt.cli import app

    runner = CliRunner()
    for command in [[], *[[name] for name in typer.main.get_command(app).commands]]:
        result = runner.invoke(app, [*command, "-h"])
        assert result.exit_code == 0 and "Usage" in result.output, (command, result.output)


def test_evaluate_json_has_null_for_infinity_and_force_replaces_an_old_report(capsys, tmp_path, data):
    pred, target = _copy(data["hf"], tmp_path / "pred.nii.gz"), _copy(data["hf"], tmp_path / "target.nii.gz")
    report = tmp_path / "scores.json"
    report.write_text("an old report")
    result = _cli(capsys, "evaluate", "--pred", pred, "--target", target, "--json", report, "--no-segmentation", "--force")
    assert result.returncode == 0, result.stderr

    def strict(constant: str):
        raise AssertionError(f"{constant} in the JSON report")

    row = json.loads(report.read_text(), parse_constant=strict)[0]
    assert row["psnr"] is None and row["ssim"] == pytest.approx(1.0)  # identical volumes: PSNR is infinite


def test_requires_python_admits_no_python_without_tomllib():
    import tomllib

    SpecifierSet = pytest.importorskip("packaging.specifiers").SpecifierSet

    spec = SpecifierSet(tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["requires-python"])
    assert "3.11" in spec and "3.10" not in spec


# ----------------------------------------------------------------------------- 2. wrong results

def test_evaluate_refuses_a_prediction_elsewhere_in_the_world_and_a_mask_off_the_targets_grid(capsys, tmp_path, data):
    target = _copy(data["hf"], tmp_path / "target.nii.gz")
    far = _shifted(data["lf"], tmp_path / "far.nii.gz", 1000.0)
    _refused(capsys, tmp_path, "does not overlap", "evaluate", "--pred", far, "--target", target)
    pred = _copy(data["hf"], tmp_path / "pred.nii.gz")
    mask = _shifted(data["hf"], tmp_path / "mask.nii.gz", 500.0)
    _refused(capsys, tmp_path, "mask is not on the target's grid", "evaluate", "--pred", pred, "--target", target, "--mask", mask)


def test_a_model_with_nan_weights_writes_no_nan_volume(capsys, tmp_path, data):
    from safetensors.torch import load_file, save_file

    broken = _copy(data["checkpoint"], tmp_path / "broken")
    ema = broken / "ema.safetensors"
    save_file({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in load_file(ema).items()}, ema)
    scan = _copy(data["lf"], tmp_path / "lf.nii.gz")
    _refused(capsys, tmp_path, "NaN or Inf", "enhance", scan, "-o", tmp_path / "out.nii.gz", "--model", broken)


def test_a_stray_rank_in_the_environment_does_not_make_folder_mode_skip_scans(capsys, monkeypatch, tmp_path, data):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("MASTER_ADDR", "MASTER_PORT"):  # what torchrun would have set too
        monkeypatch.delenv(name, raising=False)
    for name in ("a", "b"):
        _copy(data["lf"], tmp_path / "scans" / f"{name}.nii.gz")
    result = _cli(capsys, "enhance", tmp_path / "scans", "-o", tmp_path / "out", "--model", data["checkpoint"])
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_enhanced.json", "a_enhanced.nii.gz",
                                                                    "b_enhanced.json", "b_enhanced.nii.gz"]
