"""Training on a borrowed GPU: the pre-simulated pairs file, training from it without the simulator's
dependencies, the time budget, the checkpoint's shards (scripts/checkpoint_shards.py), and scripts/gpu_train.sh rehearsed on the CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import save_file

import tiny_net
from tiny_net import TINY_TRAINING
from conftest import SCRIPTS, load_script
from diffiqt import config as configs
from diffiqt.errors import ConfigError, InputError
from diffiqt.models import checkpoint as ck
from diffiqt.training.loop import resume_config, train
from diffiqt.training.pairs import StoredPairStream, make_pair
from diffiqt.training.presimulated import PAIR_STREAM, crop_to_head, read_pairs_file, training_sources, write_pairs_file

ROOT = Path(__file__).resolve().parents[1]
checkpoint_shards = load_script("checkpoint_shards")
HEAVY = ("nibabel", "nilearn", "torchio", "sklearn", "matplotlib", "pytorch_msssim")
# A 64x120x64 crop of the MNI brain, 24³ blocks, augmented (no elastic deformation: it is slow), random slice axis.
TINY_DATA = (
    "data.crop=[[60,124],[50,170],[50,114]]",
    "data.block_size=24",
    "data.augment.elastic_probability=0",
    "data.lf_axis=null",
)
# The real DiffusionIQT network (cross-batch, 27 patches of 8³ per 24³ block) at a few hundred weights.
TINY_REAL_NET = (
    'network.overrides={"widths": [4, 8], "res_blocks": 1, "embed_dim": 8, "heads": 2, '
    '"deep_feature_width": 8, "time_dim": 8, "patch_size": 8, "condition_skip": true}'
)


@pytest.fixture(scope="module")
def pairs_cfg():
    return configs.validate(configs.resolve("paper", assignments=TINY_DATA))


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory, pairs_cfg):
    path = tmp_path_factory.mktemp("pairs") / "pairs.safetensors"
    write_pairs_file(pairs_cfg, path, pairs=2, val_blocks=1)
    return path


def tiny_config(pairs_file: Path, *changes: str) -> configs.TrainConfig:
    return configs.resolve(assignments=TINY_TRAINING + (f"data.pairs_file={pairs_file}",) + changes)


# ----------------------------------------------------------------------------- the pairs file


def test_pairs_file_round_trips_compactly_with_its_metadata(pairs_file, pairs_cfg):
    stored = read_pairs_file(pairs_file, block_size=24)
    assert len(stored.pairs) == 2 and stored.voxel_mm == 1.0
    # Pair 1 is the pipeline's pair of its seed words, cropped to the head, to float16 precision.
    expected = crop_to_head(make_pair(training_sources(pairs_cfg.data), pairs_cfg.data, [0, PAIR_STREAM, 1]), 24)
    pair = stored.pairs[1]
    assert pair.target.dtype == pair.cond.dtype == np.float32 and pair.target.shape == expected.target.shape
    assert np.array_equal(pair.mask, expected.mask) and pair.scale == expected.scale
    assert np.allclose(pair.target, expected.target, atol=1e-3) and np.allclose(pair.cond, expected.cond, atol=1e-3)
    assert all(min(p.target.shape) >= 24 and np.all(np.array(p.target.shape) <= (64, 120, 64)) for p in stored.pairs)
    val = stored.validation
    assert val["target"].shape == val["cond"].shape == val["mask"].shape == (1, 1, 24, 24, 24)
    assert val["mask"].dtype == torch.bool and val["mask"].any()
    with safe_open(str(pairs_file), framework="np") as f:
        stored_dtypes = {key: str(f.get_tensor(key).dtype) for key in f.keys()}
        header = f.metadata()["diffiqt-pairs"]
    assert stored_dtypes["pairs.0.target"] == stored_dtypes["val.cond"] == "float16"
    assert stored_dtypes["pairs.0.mask"] == "uint8"
    meta = json.loads(header)
    assert meta["sources"] == ["mni152"] and meta["seed"] == 0 and meta["block_size"] == 24
    assert meta["data"]["augment"]["enabled"] and meta["diffiqt_version"]
    assert [p["scale"] for p in meta["pairs"]] == [p.scale for p in stored.pairs]
    assert "colin" not in header.lower()  # the model card's held-out brain is nowhere in the file


def test_held_out_brains_and_bad_files_are_refused(tmp_path, pairs_cfg, pairs_file):
    colin = configs.resolve("paper", assignments=('data.sources=["mni152", "colin27-brain"]',))
    with pytest.raises(ConfigError, match="colin27-brain is held out"):
        write_pairs_file(colin, tmp_path / "p.safetensors", pairs=1, val_blocks=1)
    assert not (tmp_path / "p.safetensors").exists()
    with pytest.raises(InputError, match="no such pairs file"):
        read_pairs_file(tmp_path / "missing.safetensors")
    save_file({"x": np.zeros(3, np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(InputError, match="not a diffiqt pairs file"):
        read_pairs_file(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(InputError, match="corrupt"):
        read_pairs_file(tmp_path / "junk.safetensors")
    with pytest.raises(ConfigError, match="data.block_size is 32"):
        read_pairs_file(pairs_file, block_size=32)


def test_stored_pair_stream_is_a_function_of_the_batch_index(pairs_file):
    cfg = tiny_config(pairs_file).data
    pairs = read_pairs_file(pairs_file).pairs
    from_start = iter(StoredPairStream(pairs, cfg, batch_size=2, seed=0))
    batches = [next(from_start) for _ in range(3)]
    resumed = next(iter(StoredPairStream(pairs, cfg, batch_size=2, seed=0, start_batch=2)))
    assert all(torch.equal(resumed[k], batches[2][k]) for k in ("target", "cond"))
    assert batches[0]["target"].shape == (2, 1, 24, 24, 24) and not torch.equal(
        batches[0]["target"], batches[1]["target"]
    )


# ----------------------------------------------------------------------------- training from it


def test_training_from_a_pairs_file_needs_none_of_the_simulators_dependencies(tmp_path, pairs_file):
    """The GPU machine has no nibabel, nilearn, torchio, scikit-learn, matplotlib or pytorch-msssim."""
    run, out = tmp_path / "run", tmp_path / "out"
    program = f"""
import sys
for name in {HEAVY!r}:
    sys.modules[name] = None  # any import of them fails
import torch
torch.set_num_threads(1)
from diffiqt.cli import app
app(["train", "--preset", "paper", "--out", {str(run)!r}, "--device", "cpu", "--no-progress", "--steps", "2",
     "--set", "data.pairs_file={pairs_file}", "--set", "data.block_size=24", "--set", {TINY_REAL_NET!r},
     "--set", "data.num_workers=0", "--set", "val_every=2", "--set", "diffusion.sample_steps=2"], standalone_mode=False)
sys.path.insert(0, {str(SCRIPTS)!r})
import checkpoint_shards
assert checkpoint_shards.main(["split", {str(run)!r}, "--out", {str(out)!r}]) == 0
"""
    done = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert "trained to step 2" in done.stdout and "val_loss" in done.stdout and (out / "checkpoint.json").is_file()
    meta = ck.read_checkpoint(run).meta
    assert meta["pairs_file"]["sources"] == ["mni152"] and meta["pairs_file"]["path"] == str(pairs_file)


def test_time_budget_stops_cleanly_with_a_final_checkpoint(tmp_path, pairs_file, monkeypatch):
    tiny_net.install(monkeypatch)
    cfg = tiny_config(
        pairs_file,
        "steps=1000000",
        "max_minutes=0.02",
        "checkpoint_every=100000",
        "val_every=100000",
        "log_every=100000",
    )
    result = train(cfg, tmp_path / "run", progress=False)
    assert 0 < result.step < 1_000_000
    assert result.checkpoint == ck.list_checkpoints(tmp_path / "run")[-1]
    assert ck.read_checkpoint(tmp_path / "run").step == result.step
    ck.load_network(tmp_path / "run")  # complete: config and weights load
    assert not list((tmp_path / "run" / "checkpoints").glob(".*"))  # no partial checkpoint left behind
    train_rows = (tmp_path / "run" / "train.csv").read_text().splitlines()
    val_rows = (tmp_path / "run" / "val.csv").read_text().splitlines()
    assert train_rows[-1].startswith(f"{result.step},") and val_rows[-1].startswith(f"{result.step},")
    with pytest.raises(ConfigError, match="max_minutes must be > 0"):
        train(tiny_config(pairs_file, "max_minutes=0"), tmp_path / "bad", progress=False)


def test_runs_from_before_the_new_keys_still_resume(tmp_path, monkeypatch):
    """A checkpoint written before data.pairs_file and max_minutes existed resumes (they are at their defaults)."""
    tiny_net.install(monkeypatch)
    run = tmp_path / "run"
    train(configs.resolve(assignments=TINY_TRAINING + ("steps=2",)), run, progress=False)
    for path in (run / "config.json", ck.find_checkpoint(run) / "config.json"):
        saved = json.loads(path.read_text())
        train_cfg = saved.get("train", saved)  # the checkpoint nests the run's config under "train"
        del train_cfg["max_minutes"], train_cfg["data"]["pairs_file"]
        path.write_text(json.dumps(saved))
    assert train(resume_config(run, ("steps=4",)), run, resume=True, progress=False).step == 4


# ----------------------------------------------------------------------------- bringing weights back


def test_checkpoint_shards_join_back_exactly_or_in_float16(tmp_path, pairs_file, monkeypatch):
    tiny_net.install(monkeypatch)
    run = tmp_path / "run"
    train(tiny_config(pairs_file, "steps=2"), run, progress=False)
    ema = ck.read_tensors(ck.find_checkpoint(run) / "ema.safetensors")
    sizes_mib = [v.numel() * v.element_size() / 2**20 for v in ema.values()]
    size_mib = sum(sizes_mib)
    written = checkpoint_shards.split_checkpoint(run, tmp_path / "out", shard_mib=max(sizes_mib), max_shards=len(ema))
    shards = [p for p in written if p.name.startswith("ema-")]
    assert len(shards) > 1 and all(p.stat().st_size < max(sizes_mib) * 2**20 + 4096 for p in shards)
    joined = checkpoint_shards.join_checkpoint(tmp_path / "out", tmp_path / "back")
    net, _ = ck.load_network(tmp_path / "back")
    assert all(torch.equal(net.state_dict()[k], v) for k, v in ema.items())
    assert ck.read_checkpoint(joined).step == 2 and "optimizer" not in ck.read_checkpoint(joined).meta
    # Over the total: float16 shards instead, half the size.
    checkpoint_shards.split_checkpoint(
        run, tmp_path / "half", shard_mib=size_mib, max_shards=1, total_mib=0.75 * size_mib
    )
    net, _ = ck.load_network(checkpoint_shards.join_checkpoint(tmp_path / "half", tmp_path / "back16"))
    assert all(torch.allclose(net.state_dict()[k], v, atol=1e-3) for k, v in ema.items())
    with pytest.raises(ConfigError, match="do not fit"):
        checkpoint_shards.split_checkpoint(
            run, tmp_path / "none", shard_mib=size_mib, max_shards=1, total_mib=0.1 * size_mib
        )


# ----------------------------------------------------------------------------- the script


@pytest.mark.slow  # a long end-to-end run: make test-all
def test_gpu_train_script_rehearses_end_to_end_on_the_cpu(tmp_path, pairs_file):
    """The same script as on the GPU, with --device cpu, a tiny network and 12 s of training."""
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    done = subprocess.run(
        [
            "bash",
            str(ROOT / "scripts" / "gpu_train.sh"),
            str(pairs_file),
            str(out),
            "--device",
            "cpu",
            "--minutes",
            "0.2",
            "--run-dir",
            str(tmp_path / "run"),
            "--set",
            "data.block_size=24",
            "--set",
            TINY_REAL_NET,
            "--set",
            "diffusion.sample_steps=2",
            "--set",
            "val_every=20",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "mean examples/s" in done.stdout and "val_loss" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.json",
        "ema-1-of-1.safetensors",
        "train.csv",
        "val.csv",
    ]
    joined = subprocess.run(
        [sys.executable, str(SCRIPTS / "checkpoint_shards.py"), "join", str(out), "--out", str(tmp_path / "back")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert joined.returncode == 0, joined.stderr
    net, cfg = ck.load_network(tmp_path / "back")
    assert cfg.data.pairs_file == str(pairs_file) and cfg.network.overrides["condition_skip"]
    assert (tmp_path / "back" / "val.csv").read_text() == (out / "val.csv").read_text()


def test_gpu_train_script_refuses_to_run_without_a_gpu(tmp_path, pairs_file):
    if subprocess.run(["sh", "-c", "command -v nvidia-smi"], capture_output=True).returncode == 0:
        pytest.skip("this machine has nvidia-smi")
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_train.sh"), str(pairs_file), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "no NVIDIA GPU" in done.stderr
