"""Misuse, as a careless user commits it (issue 17): nothing the user owns is lost, no model is silently
substituted, no wrong result passes as one.

Each refusal is checked the same way: exit status 2, one line on stderr that names the problem, no new
file, and every file that was there before byte for byte as it was.

The commands run in this process through the CLI's entry point (:func:`diffiqt.cli.main`, what
``python -m diffiqt`` calls): a process per case would import torch again each time, about 2 s of CPU
apiece, and put this file far over its time budget. tests/test_cli_bad_inputs.py runs real processes.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import load_script
from conftest import run_cli_in_process as _cli

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- shared small real data


@pytest.fixture(scope="module")
def data(tmp_path_factory, mni) -> dict[str, Path]:
    """One x8 LF scan of a 40x48x64 piece of the real MNI brain, its HF truth, a too-small scan, and a
    checkpoint (in a run folder) of an untrained tiny network that samples in one step: fast to enhance."""
    import tiny_net

    from diffiqt import nets
    from diffiqt.anatomy.brains import TissueMaps
    from diffiqt.config import TrainConfig
    from diffiqt.imaging.io import save_volume
    from diffiqt.models.checkpoint import save_checkpoint
    from diffiqt.simulation import LowFieldParams, simulate_low_field

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
    return {
        "lf": save_volume(lf, root / "lf.nii.gz"),
        "hf": save_volume(hf, root / "hf.nii.gz"),
        "tiny": tiny,
        "run": run,
        "checkpoint": checkpoint,
    }


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


def _tree(*roots: Path) -> dict[str, str]:
    """Every file and folder under ``roots`` (hidden ones included) and the SHA-256 of each file's bytes."""
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
        for root in roots
        for p in sorted(root.rglob("*"))
    }


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


@pytest.mark.parametrize(
    "option, victim", [("--csv", "target"), ("--json", "pred"), ("--png", "target"), ("--csv", "mask")]
)
def test_evaluate_never_writes_a_report_over_an_input(capsys, tmp_path, data, option, victim):
    files = {name: _copy(data["hf"], tmp_path / f"{name}.nii.gz") for name in ("pred", "target", "mask")}
    _refused(
        capsys,
        tmp_path,
        "refusing to overwrite",
        "evaluate",
        "--pred",
        files["pred"],
        "--target",
        files["target"],
        "--mask",
        files["mask"],
        option,
        files[victim],
    )


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
    args = {
        "simulate": ("simulate", scan, "-o", existing),
        "enhance": ("enhance", scan, "-o", existing, "--model", data["checkpoint"]),
        "evaluate": ("evaluate", "--pred", scan, "--target", scan, "--csv", existing),
    }[command]
    _refused(capsys, tmp_path, "already exists; give --force", *args)


@pytest.mark.parametrize("command", ["simulate", "enhance", "evaluate"])
def test_two_inputs_whose_outputs_would_be_one_file_are_refused(capsys, tmp_path, data, command):
    """x.nii and x.nii.gz are two scans but one x.json sidecar (one x_errors.png for evaluate)."""
    folder = tmp_path / "scans"
    source = data["lf" if command == "enhance" else "hf"]
    _copy(source, folder / "x.nii.gz")
    nib.save(nib.load(source), folder / "x.nii")
    args = {
        "simulate": ("simulate", folder, "-o", tmp_path / "out"),
        "enhance": ("enhance", folder, "-o", tmp_path / "out", "--model", data["checkpoint"]),
        "evaluate": ("evaluate", "--pred", folder, "--target", folder, "--png", tmp_path / "out"),
    }[command]
    _refused(capsys, tmp_path, "would be written for both x.nii", *args)


@pytest.mark.parametrize("name", ["../../x", "sub/x", "..", ".hidden", "default"])
def test_export_model_takes_a_plain_name_only(capsys, tmp_path, data, name):
    _refused(
        capsys,
        tmp_path,
        "a model name is",
        "export-model",
        data["checkpoint"],
        "--name",
        name,
        "--folder",
        tmp_path / "models",
    )


def test_export_model_never_replaces_a_shipped_model_and_replaces_an_export_only_with_force(capsys, tmp_path, data):
    from diffiqt.models.shipped import WEIGHTS_DIR, read_card, shipped_models

    for force in ((), ("--force",)):
        for shipped in shipped_models():
            _refused(
                capsys,
                (tmp_path, WEIGHTS_DIR),
                "never replaced",
                "export-model",
                data["checkpoint"],
                "--name",
                shipped,
                *force,
            )
    models = tmp_path / "models"
    models.mkdir()
    (models / "mine.json").write_text("an earlier export")
    _refused(
        capsys,
        tmp_path,
        "already exists; give --force",
        "export-model",
        data["checkpoint"],
        "--name",
        "mine",
        "--folder",
        models,
    )
    result = _cli(capsys, "export-model", data["checkpoint"], "--name", "mine", "--folder", models, "--force")
    assert result.returncode == 0, result.stderr
    assert read_card(models / "mine.json")["step"] == 1


def test_join_checkpoint_never_writes_into_an_existing_run(capsys, tmp_path, data):
    """scripts/checkpoint_shards.py join: one line on stderr, exit status 2, nothing changed."""
    shards = load_script("checkpoint_shards")
    shards.split_checkpoint(data["checkpoint"], tmp_path / "shards")
    run = _copy(data["run"], tmp_path / "run")
    before = _tree(tmp_path)
    assert shards.main(["join", str(tmp_path / "shards"), "--out", str(run)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "already holds a run" in lines[0], lines
    assert _tree(tmp_path) == before


# ----------------------------------------------------------------------------- 3. model substitution


def test_shipped_names_win_over_folders_in_the_working_directory(monkeypatch, tmp_path, data):
    from diffiqt.errors import ConfigError
    from diffiqt.models.shipped import WEIGHTS_DIR, resolve_model, shipped_card

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
    from diffiqt.models.shipped import WEIGHTS_DIR, load_shipped, resolve_model, shipped_card

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
    from diffiqt.models.shipped import WEIGHTS_DIR, sha256, shipped_card

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


@pytest.mark.parametrize(
    "args, words",
    [
        (("MISSING",), "no such file"),
        (("LF", "--sampler", "bogus"), "unknown sampler"),
        (("LF", "--max-voxels", "-100"), "at least 1"),
        (("LF", "--device", "bogus"), "device 'bogus'"),
        (("LF", "--device", "meta"), "device 'meta'"),
    ],
)
def test_enhance_checks_its_input_and_options_before_loading_a_model(capsys, monkeypatch, tmp_path, data, args, words):
    def no_model(spec):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr("diffiqt.models.loading.load_model", no_model)
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
    result = _cli(
        capsys, "evaluate", "--pred", pred, "--target", target, "--json", report, "--no-segmentation", "--force"
    )
    assert result.returncode == 0, result.stderr

    def strict(constant: str):
        raise AssertionError(f"{constant} in the JSON report")

    row = json.loads(report.read_text(), parse_constant=strict)[0]
    assert row["psnr"] is None and row["ssim"] == pytest.approx(1.0)  # identical volumes: PSNR is infinite


def test_requires_python_admits_no_python_without_tomllib():
    import tomllib

    SpecifierSet = pytest.importorskip("packaging.specifiers").SpecifierSet

    spec = SpecifierSet(
        tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["requires-python"]
    )
    assert "3.11" in spec and "3.10" not in spec


# ----------------------------------------------------------------------------- 2. wrong results


def test_evaluate_refuses_a_prediction_elsewhere_in_the_world_and_a_mask_off_the_targets_grid(capsys, tmp_path, data):
    target = _copy(data["hf"], tmp_path / "target.nii.gz")
    far = _shifted(data["lf"], tmp_path / "far.nii.gz", 1000.0)
    _refused(capsys, tmp_path, "does not overlap", "evaluate", "--pred", far, "--target", target)
    pred = _copy(data["hf"], tmp_path / "pred.nii.gz")
    mask = _shifted(data["hf"], tmp_path / "mask.nii.gz", 500.0)
    _refused(
        capsys,
        tmp_path,
        "mask is not on the target's grid",
        "evaluate",
        "--pred",
        pred,
        "--target",
        target,
        "--mask",
        mask,
    )


def test_a_model_with_nan_weights_writes_no_nan_volume(capsys, tmp_path, data):
    from safetensors.torch import load_file, save_file

    broken = _copy(data["checkpoint"], tmp_path / "broken")
    ema = broken / "ema.safetensors"
    save_file(
        {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in load_file(ema).items()}, ema
    )
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
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "a_enhanced.json",
        "a_enhanced.nii.gz",
        "b_enhanced.json",
        "b_enhanced.nii.gz",
    ]


# ----------------------------------------------------------------------------- 4. bad input files and values

BASE = np.random.default_rng(0).random((8, 8, 8)).astype(np.float32) + 1


def _raw_nifti(path: Path, data: np.ndarray = BASE, **fields) -> Path:
    """``data`` as a NIfTI-1 file whose header fields are set as given and written byte for byte: nibabel's
    own writer would fix or refuse most of the broken headers that these tests need."""
    header = nib.Nifti1Header()
    header.set_data_dtype(data.dtype)
    header.set_data_shape(fields.pop("shape", data.shape))
    header.set_sform(np.eye(4), code=1)
    header.set_qform(np.eye(4), code=1)
    header["vox_offset"] = 352
    for key, value in fields.items():
        header[key] = value
    blob = header.binaryblock + bytes(4) + data.tobytes(order="F")
    path.write_bytes(gzip.compress(blob) if path.name.endswith((".gz", ".mgz")) else blob)
    return path


NAN = float("nan")
RGB = np.zeros((8, 8, 8), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])


@pytest.mark.parametrize(
    "name, data, fields, words",
    [
        ("complex.nii.gz", BASE.astype(np.complex64), {}, "voxels are complex"),
        ("rgb.nii.gz", RGB, {}, "voxels are RGB"),
        ("code.nii", BASE, {"datatype": 999}, "data code 999 not recognized"),
        (
            "pixdim.nii.gz",
            BASE,
            {"pixdim": [1, NAN, 1, 1, 1, 1, 1, 1], "sform_code": 0, "qform_code": 0},
            "has NaN or Inf",
        ),
        ("sform.nii.gz", BASE, {"srow_x": [NAN, 0, 0, 0]}, "has NaN or Inf"),
        (
            "zero.nii.gz",
            BASE,
            {"srow_x": [0] * 4, "srow_y": [0] * 4, "srow_z": [0] * 4, "qform_code": 0},
            "is singular",
        ),
        ("inter.nii", BASE, {"scl_slope": 1.0, "scl_inter": NAN}, "invalid intercept"),
        ("nifti.mgz", BASE, {}, "a NIfTI file named .mgz"),
        ("huge.nii", BASE, {"shape": (30000, 30000, 2)}, "declares 30000x30000x2 voxels"),
        ("huge.nii.gz", BASE, {"shape": (30000, 30000, 2)}, "declares 30000x30000x2 voxels"),
        ("one.nii.gz", np.ones((1, 1, 1), np.float32), {}, "single-slice"),
        ("negative.nii.gz", -BASE, {}, "no head or brain found"),
        ("four.nii.gz", BASE[:4, :4, :4].copy(), {}, "no head or brain found"),
    ],
)
def test_broken_or_unusable_files_are_refused_by_name(capsys, tmp_path, name, data, fields, words):
    bad = _raw_nifti(tmp_path / name, data, **fields)
    _refused(capsys, tmp_path, f"{bad}: ", "evaluate", "--pred", bad, "--target", bad)
    _refused(capsys, tmp_path, words, "evaluate", "--pred", bad, "--target", bad)


@pytest.mark.parametrize("data", [-BASE, BASE[:4, :4, :4].copy()], ids=["negative", "four"])
def test_simulate_refuses_an_image_without_a_head(capsys, tmp_path, data):
    bad = _raw_nifti(tmp_path / "scan.nii.gz", data)
    _refused(capsys, tmp_path, "no head or brain found", "simulate", bad, "-o", tmp_path / "out.nii.gz")


@pytest.mark.parametrize("card", ["{ not json", "[1, 2]", "{}", "NO_SHA", "VOXEL_0", "VOXEL_ABC"])
def test_a_broken_model_card_is_refused_by_name(tmp_path, card):
    from diffiqt.errors import ConfigError
    from diffiqt.models.shipped import WEIGHTS_DIR, resolve_model, shipped_card

    name, good = shipped_card("default")
    text = {
        "NO_SHA": json.dumps({k: v for k, v in good.items() if k != "sha256"}),
        "VOXEL_0": json.dumps({**good, "voxel_mm": 0}),
        "VOXEL_ABC": json.dumps({**good, "voxel_mm": "abc"}),
    }.get(card, card)
    _copy(WEIGHTS_DIR / f"{name}.safetensors", tmp_path / "mine.safetensors")
    (tmp_path / "mine.json").write_text(text)
    with pytest.raises(ConfigError, match="mine.json: not a valid model card") as err:
        resolve_model("mine", tmp_path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("command", ["enhance", "simulate"])
def test_a_seed_beyond_64_bits_is_refused_before_any_work(capsys, tmp_path, data, command):
    scan = _copy(data["lf"], tmp_path / "scan.nii.gz")
    model = ("--model", data["checkpoint"]) if command == "enhance" else ()
    _refused(capsys, tmp_path, "--seed", command, scan, "-o", tmp_path / "out.nii.gz", "--seed", 2**70, *model)


def test_a_file_name_starting_with_a_dash_gets_a_one_line_hint_and_works_as_dot_slash(
    capsys, monkeypatch, tmp_path, data
):
    _copy(data["hf"], tmp_path / "-scan.nii.gz")
    monkeypatch.chdir(tmp_path)
    _refused(
        capsys, tmp_path, "write ./-scan.nii.gz or put it after --", "simulate", "-scan.nii.gz", "-o", "out.nii.gz"
    )
    options = ("--no-upsample", "--snr-wm", 60, "--snr-gm", 50)
    for args in (
        ("./-scan.nii.gz", "-o", "out.nii.gz", *options),
        ("-o", "out2.nii.gz", *options, "--", "-scan.nii.gz"),
    ):
        result = _cli(capsys, "simulate", *args)
        assert result.returncode == 0, result.stderr


def test_evaluate_refuses_a_report_in_a_folder_or_where_nothing_can_be_written(capsys, tmp_path, data):
    scan = _copy(data["hf"], tmp_path / "hf.nii.gz")
    (tmp_path / "folder").mkdir()
    _refused(
        capsys, tmp_path, "is a folder", "evaluate", "--pred", scan, "--target", scan, "--csv", tmp_path / "folder"
    )
    _refused(
        capsys,
        tmp_path,
        "/proc: folder is not writable",
        "evaluate",
        "--pred",
        scan,
        "--target",
        scan,
        "--csv",
        "/proc/scores.csv",
    )


def test_stale_part_files_of_ones_own_outputs_are_removed_and_others_kept(capsys, tmp_path, data):
    scan = _copy(data["hf"], tmp_path / "hf.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    stale = [out / ".lf.nii.gz.k2j4x9q1.part.nii.gz", out / ".lf.json.abcd_123.part.json"]
    kept = [out / ".other.nii.gz.k2j4x9q1.part.nii.gz", out / "lf.nii.gz.part"]
    for path in stale + kept:
        path.write_text("left by a killed run")
    result = _cli(capsys, "simulate", scan, "-o", out / "lf.nii.gz", "--no-upsample", "--snr-wm", 60, "--snr-gm", 50)
    assert result.returncode == 0, result.stderr
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)


# ----------------------------------------------------------------------------- 2. wrong results: training settings

TINY_SETTINGS = [
    arg
    for setting in (
        "network.name=tiny",
        'network.overrides={"width": 4}',
        "data.crop=[[60,124],[50,170],[50,114]]",
        "data.block_size=24",
        "data.num_workers=0",
        "data.augment.enabled=false",
        "data.val_blocks=1",
        "diffusion.sample_steps=1",
        "steps=2",
        "val_every=100",
    )
    for arg in ("--set", setting)
]


@pytest.mark.parametrize(
    "setting, words",
    [
        ("optim.lr=1e30", "optim.lr must be in (0, 1]"),
        ("optim.lr=0", "optim.lr must be in (0, 1]"),
        ("optim.grad_clip=-1", "optim.grad_clip must be > 0"),
        ("optim.betas=[2,0.9]", "optim.betas must be two numbers in [0, 1)"),
        ("optim.weight_decay=-1", "optim.weight_decay must be >= 0"),
        ("steps=0", "steps must be >= 1"),
        ("seed=18446744073709551616", "seed must be in [0, 2^63)"),
        ("diffusion.sample_steps=0", "diffusion.sample_steps must be >= 1"),
        ('data.val_sources=["mni152"]', "overlaps the training source 'mni152'"),
        ("batch_size=100000", "batch_size 100000: blocks of 96 voxels need at least"),
    ],
)
def test_train_refuses_bad_settings_before_writing_anything(capsys, tmp_path, setting, words):
    _refused(capsys, tmp_path, words, "train", "--out", tmp_path / "run", "--set", setting, "--no-progress")


def test_val_sources_inside_a_training_folder_are_refused(tmp_path):
    from diffiqt import config as configs
    from diffiqt.errors import ConfigError

    (tmp_path / "brains").mkdir()
    (tmp_path / "brains" / "a.nii.gz").write_bytes(b"")
    with pytest.raises(ConfigError, match="overlaps the training source"):  # resolve() validates
        configs.resolve(
            assignments=(
                f'data.sources=["{tmp_path / "brains"}"]',
                f'data.val_sources=["{tmp_path / "brains" / "a.nii.gz"}"]',
            )
        )


def test_train_refuses_an_out_that_is_a_file_or_cannot_be_made(capsys, tmp_path):
    (tmp_path / "file").write_text("not a run folder")
    _refused(capsys, tmp_path, "not a folder", "train", "--out", tmp_path / "file", *TINY_SETTINGS, "--no-progress")
    _refused(
        capsys,
        tmp_path,
        "/proc: folder is not writable",
        "train",
        "--out",
        "/proc/diffiqt-run",
        *TINY_SETTINGS,
        "--no-progress",
    )


def test_resume_refuses_a_corrupt_log_before_writing_anything(capsys, tmp_path):
    run = tmp_path / "run"
    result = _cli(capsys, "train", "--out", run, *TINY_SETTINGS, "--no-progress")
    assert result.returncode == 0, result.stderr
    (run / "train.csv").write_text("step,loss\nnot a number,1\n")
    _refused(
        capsys,
        tmp_path,
        "train.csv: not a log this run can continue",
        "train",
        "--out",
        run,
        "--resume",
        "--steps",
        4,
        "--no-progress",
    )
