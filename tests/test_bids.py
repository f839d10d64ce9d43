"""BIDS mode of ``diffiqt enhance`` and ``diffiqt simulate`` (issue 16): a dataset in, derivatives out.

The example datasets are built from small pieces of the bundled MNI152 brain: two subjects, the second
with two sessions. The commands run in this process through the CLI's entry point, as in
tests/test_misuse.py (a process per run would import torch each time), with the untrained tiny network
of tests/tiny_net.py sampling in one step, so that enhancing a scan takes a fraction of a second.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import torch
from conftest import run_cli_in_process as cli
from conftest import run_torchrun

from diffiqt.imaging import bids

pytestmark = pytest.mark.usefixtures("one_thread")

BIDS_WORKER = Path(__file__).parent / "bids_worker.py"
SCANS = (
    "sub-01/anat/sub-01_T1w.nii.gz",
    "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz",
    "sub-02/ses-2/anat/sub-02_ses-2_acq-fast_run-1_T1w.nii.gz",
)


# ----------------------------------------------------------------------------- data and running


@pytest.fixture(scope="module")
def volumes(tmp_path_factory, mni) -> dict:
    """A 40x48x64 piece of the MNI brain (HF, with tissue maps), its x8 LF scan, and a checkpoint of the tiny
    network that samples in one step."""
    import tiny_net

    from diffiqt import nets
    from diffiqt.anatomy.brains import TissueMaps
    from diffiqt.config import TrainConfig
    from diffiqt.models.checkpoint import save_checkpoint
    from diffiqt.simulation import LowFieldParams, simulate_low_field

    lower, upper = (70, 90, 60), (110, 138, 124)
    hf = mni.t1.crop(lower, upper)
    maps = TissueMaps(**{k: v.crop(lower, upper) for k, v in mni.tissues.as_dict().items()})
    lf = simulate_low_field(hf, maps, LowFieldParams.for_factor(8, 1.0), np.random.default_rng(0), upsample=False).lf
    with pytest.MonkeyPatch.context() as patch:
        tiny_net.install(patch)
        torch.manual_seed(0)
        net = nets.build_network("tiny", width=4).eval()
    cfg = TrainConfig()
    cfg.diffusion.sample_steps = 1
    run = tmp_path_factory.mktemp("run")
    checkpoint = save_checkpoint(run, 1, {"network": dict(net.config), "train": cfg.to_dict()}, net, net, None)
    return {"hf": hf, "maps": maps, "lf": lf, "checkpoint": checkpoint}


@pytest.fixture(autouse=True)
def tiny_networks(monkeypatch):
    import tiny_net

    tiny_net.install(monkeypatch)


def make_dataset(root: Path, volume, scans=SCANS, description: dict | None = None) -> Path:
    """A BIDS dataset at ``root`` whose T1w scans (paths in it) all hold ``volume``, with the usual extras."""
    from diffiqt.imaging.io import save_volume

    root.mkdir(parents=True)
    (root / bids.DESCRIPTION).write_text(json.dumps(description or {"Name": "example", "BIDSVersion": "1.10.0"}))
    (root / "participants.tsv").write_text("participant_id\nsub-01\nsub-02\n")
    for scan in scans:
        save_volume(volume, root / scan)
        (root / scan.replace(".nii.gz", ".json")).write_text(json.dumps({"MagneticFieldStrength": 0.064}))
    return root


def files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def tree(*roots: Path) -> dict[str, tuple]:
    """Every file and folder under ``roots`` with its bytes' SHA-256 and modification time."""
    return {
        str(p): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder", p.stat().st_mtime_ns)
        for root in roots
        if root.exists()
        for p in sorted(root.rglob("*"))
    }


def enhanced_names(scan: str, samples: int = 2) -> list[str]:
    stem = scan[: -len("_T1w.nii.gz")]
    descs = ["enhanced"] + (["sd"] if samples > 1 else [])
    return [f"{stem}_desc-{desc}_T1w{suffix}" for desc in descs for suffix in (".json", ".nii.gz")]


# ----------------------------------------------------------------------------- the whole run


def test_enhance_writes_bids_derivatives_and_a_second_run_writes_nothing(capsys, tmp_path, volumes):
    from diffiqt.imaging.io import load_volume

    raw = make_dataset(tmp_path / "raw", volumes["lf"])
    out = raw / "derivatives" / "diffiqt"
    result = cli(capsys, "enhance", raw, "-o", out, "--model", volumes["checkpoint"], "--samples", "2")
    assert result.returncode == 0, result.stderr
    assert files(out) == sorted([bids.DESCRIPTION] + [name for scan in SCANS for name in enhanced_names(scan)])

    description = json.loads((out / bids.DESCRIPTION).read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "diffiqt"
    assert description["GeneratedBy"][0]["Version"] and description["BIDSVersion"]
    assert (out / description["DatasetLinks"]["input"]).resolve() == raw.resolve()

    # The reader accepts the derivative as a dataset: every image parses, with the input's entities and a desc.
    derivative = bids.read_dataset(out)
    found, problems = bids.find_t1w(derivative, skip_desc=())
    assert derivative.is_derivative and problems == []
    assert sorted((s.subject, s.session, s.desc) for s in found) == [
        ("01", None, "enhanced"),
        ("01", None, "sd"),
        ("02", "1", "enhanced"),
        ("02", "1", "sd"),
        ("02", "2", "enhanced"),
        ("02", "2", "sd"),
    ]
    assert dict(next(s for s in found if s.session == "2").entities)["acq"] == "fast"

    sidecar = json.loads((out / enhanced_names(SCANS[2])[0]).read_text())
    assert sidecar["Sources"] == [f"bids:input:{SCANS[2]}"]
    link, path = sidecar["Sources"][0].split(":")[1:]
    assert (out / description["DatasetLinks"][link] / path).is_file()  # the URI resolves to the input scan
    assert sidecar["resolved_model"]["path"] == str(Path(volumes["checkpoint"]).resolve())
    assert (sidecar["steps"], sidecar["samples"]) == (1, 2)
    assert sidecar["lowfield_geometry"] == {
        "voxel_size_mm": [1.0, 1.0, 8.0],
        "slice_axis": 2,
        "slice_axis_name": "axial",
        "slice_spacing_mm": 8.0,
    }
    assert json.loads((out / enhanced_names(SCANS[2])[2]).read_text())["Sources"] == sidecar["Sources"]
    enhanced = load_volume(out / enhanced_names(SCANS[0])[1])
    assert enhanced.shape == (40, 48, 64) and np.allclose(enhanced.affine, volumes["hf"].affine)

    try:  # the official reader, where it is installed
        import bids as pybids
    except ImportError:
        pybids = None
    if pybids is not None:
        layout = pybids.BIDSLayout(raw, derivatives=out)
        assert len(layout.get(scope="derivatives", desc="enhanced", suffix="T1w", extension=".nii.gz")) == 3

    before = tree(raw)
    again = cli(capsys, "enhance", raw, "-o", out, "--model", volumes["checkpoint"], "--samples", "2")
    assert again.returncode == 0, again.stderr
    assert tree(raw) == before  # not a file written, replaced or touched
    assert [line.split(":")[0] for line in again.stderr.splitlines() if line.startswith("skipped")] == [
        f"skipped {scan}" for scan in SCANS
    ]
    assert "nothing to do" in again.stderr


def test_simulate_makes_a_lowfield_derivative_that_enhance_takes(capsys, tmp_path, volumes):
    from diffiqt.imaging.io import save_volume

    raw = make_dataset(tmp_path / "raw", volumes["hf"], SCANS[:2])
    for scan in SCANS[:2]:  # FAST maps beside the scans, as folder mode reads them
        for index, name in enumerate(("csf", "gm", "wm")):
            save_volume(getattr(volumes["maps"], name), raw / scan.replace("_T1w.nii.gz", f"_T1w_pve_{index}.nii.gz"))
    lowfield = raw / "derivatives" / "diffiqt-lowfield"
    result = cli(capsys, "simulate", raw, "-o", lowfield, "--factor", "8")
    assert result.returncode == 0, result.stderr
    stems = [scan[: -len("_T1w.nii.gz")] for scan in SCANS[:2]]
    assert files(lowfield) == sorted(
        [bids.DESCRIPTION]
        + [
            f"{stem}_desc-{desc}_T1w{suffix}"
            for stem in stems
            for desc in ("lowfield", "lowfieldupsampled")
            for suffix in (".json", ".nii.gz")
        ]
    )
    sidecar = json.loads((lowfield / f"{stems[1]}_desc-lowfield_T1w.json").read_text())
    assert sidecar["Sources"] == [f"bids:input:{SCANS[1]}"] and sidecar["tissue_maps"] == "given"
    assert sidecar["lowfield_geometry"]["slice_spacing_mm"] == 8.0 and sidecar["seed"] == 0
    assert json.loads((lowfield / bids.DESCRIPTION).read_text())["DatasetType"] == "derivative"

    enhanced = raw / "derivatives" / "diffiqt"
    result = cli(capsys, "enhance", lowfield, "-o", enhanced, "--model", volumes["checkpoint"])
    assert result.returncode == 0, result.stderr
    # desc-lowfield is replaced by desc-enhanced; the upsampled copies are no input (diffiqt made them).
    assert files(enhanced) == sorted(
        [bids.DESCRIPTION] + [f"{stem}_desc-enhanced_T1w{suffix}" for stem in stems for suffix in (".json", ".nii.gz")]
    )
    link = json.loads((enhanced / bids.DESCRIPTION).read_text())["DatasetLinks"]["input"]
    assert (enhanced / link).resolve() == lowfield.resolve()


# ----------------------------------------------------------------------------- torchrun


def test_torchrun_splits_the_scans_and_rank_0_alone_reports_the_plan(tmp_path, volumes):
    """Two CPU processes: each scan enhanced once, by one of them; a bad file name reported once, counted by
    rank 0 (of its 3 scans: the bad one and its 2 jobs); rank 0's error exit stops no work of rank 1."""
    raw = make_dataset(tmp_path / "raw", volumes["lf"])
    (raw / "sub-01" / "anat" / "sub-01_run-x_y_T1w.nii.gz").write_bytes(b"")
    out = raw / "derivatives" / "diffiqt"
    log = tmp_path / "log"
    log.mkdir()
    result = run_torchrun(BIDS_WORKER, log, "enhance", raw, "-o", out, "--model", volumes["checkpoint"])
    assert result.returncode != 0  # rank 0 exited with status 2
    enhanced = [(log / f"rank{rank}.txt").read_text().split() for rank in (0, 1)]
    assert enhanced[0] and enhanced[1] and sorted(enhanced[0] + enhanced[1]) == sorted(SCANS), result.stderr
    assert files(out) == sorted([bids.DESCRIPTION] + [name for scan in SCANS for name in enhanced_names(scan, 1)])
    assert json.loads((out / bids.DESCRIPTION).read_text())["DatasetType"] == "derivative"
    assert result.stderr.count("not a BIDS file name") == 1, result.stderr
    assert result.stderr.count("1 of 3 T1w scans were not processed") == 1, result.stderr


def test_a_stray_rank_in_the_environment_leaves_one_process_that_enhances_every_scan(
    capsys, monkeypatch, tmp_path, volumes
):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("MASTER_ADDR", "MASTER_PORT"):  # what torchrun would have set too
        monkeypatch.delenv(name, raising=False)
    raw = make_dataset(tmp_path / "raw", volumes["lf"])
    result = cli(capsys, "enhance", raw, "-o", tmp_path / "out", "--model", volumes["checkpoint"])
    assert result.returncode == 0, result.stderr
    assert files(tmp_path / "out") == sorted(
        [bids.DESCRIPTION] + [name for scan in SCANS for name in enhanced_names(scan, 1)]
    )


# ----------------------------------------------------------------------------- filters


@pytest.mark.parametrize(
    "options, expected",
    [
        (("--participant-label", "01"), SCANS[:1]),
        (("--participant-label", "sub-02"), SCANS[1:]),
        (("--participant-label", "02", "--session-label", "ses-2"), SCANS[2:]),
        (("--session-label", "1", "--session-label", "2"), SCANS[1:]),
        (("--participant-label", "sub-01", "--participant-label", "02"), SCANS),
    ],
)
def test_participant_and_session_labels_select_scans(capsys, tmp_path, volumes, options, expected):
    raw = make_dataset(tmp_path / "raw", volumes["lf"])
    out = tmp_path / "out"
    result = cli(capsys, "enhance", raw, "-o", out, "--model", volumes["checkpoint"], *options)
    assert result.returncode == 0, result.stderr
    assert files(out) == sorted([bids.DESCRIPTION] + [name for scan in expected for name in enhanced_names(scan, 1)])


# ----------------------------------------------------------------------------- bad datasets


def refused(capsys, roots: tuple[Path, ...], words: str, *args) -> None:
    """``diffiqt ARGS`` exits 2 with one line on stderr containing ``words``, and changes nothing in ``roots``."""
    before = tree(*roots)
    result = cli(capsys, *args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and words in lines[0], result.stderr
    assert tree(*roots) == before


@pytest.mark.parametrize(
    "damage, out, options, words",
    [
        ("no description", "out", (), "no dataset_description.json"),
        ("description not json", "out", (), "cannot be read as JSON"),
        ("no T1w", "out", (), "no T1w scans"),
        ("unreadable only scan", "out", (), "cannot be read as NIfTI"),
        ("misnamed only scan", "out", (), "not a BIDS file name"),
        ("", "out", ("--participant-label", "03"), "no T1w scan of sub-03"),
        ("", "out", ("--participant-label", "01", "--session-label", "1"), "no T1w scan of ses-1"),
        ("", "out", ("--participant-label", "0_1"), "a BIDS label is letters and digits"),
        ("", "raw", (), "inside the input dataset"),
        ("", "raw/sub-01", (), "inside the input dataset"),
        ("", "raw/derivatives", (), "inside the input dataset"),
        ("", "raw/derivatives/x.nii.gz", (), "must be a folder"),
        ("", "raw/derivatives/other", ("--png",), "--png is not available"),
    ],
)
def test_a_bad_dataset_or_output_is_one_line_and_nothing_written(
    capsys, tmp_path, volumes, damage, out, options, words
):
    raw = make_dataset(tmp_path / "raw", volumes["lf"], SCANS[:1] if "only" in damage else SCANS)
    if damage == "no description":
        (raw / bids.DESCRIPTION).unlink()
    elif damage == "description not json":
        (raw / bids.DESCRIPTION).write_text("{ not json")
    elif damage == "no T1w":
        for scan in SCANS:
            (raw / scan).rename(raw / scan.replace("_T1w", "_T2w"))
    elif damage == "unreadable only scan":
        (raw / SCANS[0]).write_bytes(b"not an image")
    elif damage == "misnamed only scan":
        (raw / SCANS[0]).rename(raw / "sub-01" / "anat" / "sub-01_my_T1w.nii.gz")
    refused(
        capsys, (tmp_path,), words, "enhance", raw, "-o", tmp_path / out, "--model", volumes["checkpoint"], *options
    )


def test_an_existing_non_derivative_or_foreign_derivative_output_is_refused(capsys, tmp_path, volumes):
    raw = make_dataset(tmp_path / "raw", volumes["lf"], SCANS[:1])
    other = make_dataset(tmp_path / "other", volumes["lf"], SCANS[:1])
    refused(capsys, (tmp_path,), "not a derivative", "enhance", raw, "-o", other, "--model", volumes["checkpoint"])
    out = tmp_path / "out"
    assert cli(capsys, "enhance", other, "-o", out, "--model", volumes["checkpoint"]).returncode == 0
    refused(
        capsys,
        (tmp_path,),
        "derivatives of another dataset",
        "enhance",
        raw,
        "-o",
        out,
        "--model",
        volumes["checkpoint"],
    )


def test_labels_need_a_bids_dataset_and_sub_folders_need_a_description(capsys, tmp_path, volumes):
    from diffiqt.imaging.io import save_volume

    save_volume(volumes["lf"], tmp_path / "scans" / "a.nii.gz")
    refused(
        capsys,
        (tmp_path,),
        "select scans of a BIDS dataset",
        "enhance",
        tmp_path / "scans",
        "-o",
        tmp_path / "out",
        "--model",
        volumes["checkpoint"],
        "--participant-label",
        "01",
    )
    refused(
        capsys,
        (tmp_path,),
        "no dataset_description.json",
        "simulate",
        tmp_path / "scans",
        "-o",
        tmp_path / "out",
        "--session-label",
        "1",
    )
    (tmp_path / "scans" / "sub-01").mkdir()
    refused(capsys, (tmp_path,), "no dataset_description.json", "simulate", tmp_path / "scans", "-o", tmp_path / "out")


def test_a_bad_scan_is_reported_and_the_others_are_processed(capsys, tmp_path, volumes):
    """One line per bad scan, the good ones done, exit 2 at the end; a re-run does only what is left."""
    raw = make_dataset(tmp_path / "raw", volumes["lf"])
    (raw / SCANS[1]).write_bytes(b"not an image")
    (raw / "sub-01" / "anat" / "sub-01_run-x_y_T1w.nii.gz").write_bytes(b"")
    out = tmp_path / "out"
    result = cli(capsys, "enhance", raw, "-o", out, "--model", volumes["checkpoint"])
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "skipped" in line or "error" in line]
    assert len(lines) == 3, result.stderr
    assert "sub-01_run-x_y_T1w.nii.gz: not a BIDS file name" in lines[0] and "cannot be read as NIfTI" in lines[1]
    assert "2 of 4 T1w scans were not processed" in lines[2]
    assert files(out) == sorted([bids.DESCRIPTION] + enhanced_names(SCANS[0], 1) + enhanced_names(SCANS[2], 1))

    before = tree(tmp_path)  # unrepaired, a re-run names what is done and what is not, and writes nothing
    result = cli(capsys, "enhance", raw, "-o", out, "--model", volumes["checkpoint"])
    assert result.returncode == 2 and tree(tmp_path) == before
    lines = result.stderr.splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == [f"skipped {SCANS[0]}", f"skipped {SCANS[2]}"], result.stderr
    assert "nothing to do: the outputs of 2 of the 4" in result.stderr and "2 of 4 T1w scans were not" in lines[-1]

    from diffiqt.imaging.io import save_volume

    save_volume(volumes["lf"], raw / SCANS[1])  # repaired: the re-run enhances it alone
    result = cli(capsys, "enhance", raw, "-o", out, "--model", volumes["checkpoint"], "--participant-label", "02")
    assert result.returncode == 0, result.stderr
    assert f"skipped {SCANS[2]}: its outputs exist" in result.stderr
    assert set(enhanced_names(SCANS[1], 1)) <= set(files(out))


def test_outputs_missing_a_sibling_are_refused_until_force_redoes_them(capsys, tmp_path, volumes):
    raw = make_dataset(tmp_path / "raw", volumes["lf"], SCANS[:1])
    out = tmp_path / "out"
    assert cli(capsys, "enhance", raw, "-o", out, "--model", volumes["checkpoint"]).returncode == 0
    # --samples 2 adds desc-sd: desc-enhanced exists without it, so the scan is neither done nor free to write.
    refused(
        capsys,
        (tmp_path,),
        "already exists; give --force",
        "enhance",
        raw,
        "-o",
        out,
        "--model",
        volumes["checkpoint"],
        "--samples",
        "2",
    )
    result = cli(capsys, "enhance", raw, "-o", out, "--model", volumes["checkpoint"], "--samples", "2", "--force")
    assert result.returncode == 0, result.stderr
    assert files(out) == sorted([bids.DESCRIPTION] + enhanced_names(SCANS[0], 2))


# ----------------------------------------------------------------------------- the reader alone


def test_names_parse_and_derivatives_replace_desc():
    assert bids.parse_name("sub-01_ses-a_acq-lf_run-2_T1w.nii.gz") == (
        ("sub", "01"),
        ("ses", "a"),
        ("acq", "lf"),
        ("run", "2"),
    )
    for bad in ("sub-01_T2w.nii", "T1w.nii", "sub-01_x_T1w.nii", "sub-01_run-1_run-2_T1w.nii", "sub-0_1_T1w.nii.gz"):
        assert bids.parse_name(bad) is None, bad
    scan = bids.Scan(
        Path("/x"),
        PurePosixPath("sub-01/anat/sub-01_desc-lowfield_run-1_T1w.nii.gz"),
        (("sub", "01"), ("desc", "lowfield"), ("run", "1")),
    )
    assert str(scan.derivative("enhanced", ".json")) == "sub-01/anat/sub-01_run-1_desc-enhanced_T1w.json"
    assert bids.labels(["sub-01", "02"], "sub") == ["01", "02"]
