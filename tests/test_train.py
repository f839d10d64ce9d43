"""Training: configs, exact resume, interruption, bad inputs, baselines, the real 'small' network, learning."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tiny_net
from tiny_net import TINY_TRAINING
from conftest import run_cli
from diffiqt import config as configs
from diffiqt.errors import ConfigError, DiffiqtError, InputError
from diffiqt.models import checkpoint as ck
from diffiqt.training.loop import Trainer, TrainingInterrupted, learning_rate, resume_config, train


@pytest.fixture(autouse=True)
def tiny_networks(monkeypatch):
    tiny_net.install(monkeypatch)


def tiny_config(*changes: str) -> configs.TrainConfig:
    return configs.resolve(assignments=TINY_TRAINING + changes)


def weights(run: Path, name: str = "model") -> dict:
    return load_file(str(ck.find_checkpoint(run) / f"{name}.safetensors"))


# ----------------------------------------------------------------------------- configs


def test_presets_resolve_and_validate():
    assert {"paper", "cpu-small"} <= set(configs.list_presets())
    paper = configs.validate(configs.resolve("paper"))
    assert paper.network.name == "paper" and paper.data.block_size == 96 and paper.optim.lr == 1e-4
    assert paper.data.layout == "patches" and paper.diffusion.sample_steps == 20
    assert configs.validate(configs.resolve("cpu-small")).network.name == "small"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"preset": "nope"}, "unknown preset 'nope'"),
        ({"assignments": ("optim.lrr=1",)}, "unknown config key 'optim.lrr'"),
        ({"assignments": ('steps="many"',)}, "config key 'steps': expected int"),
        ({"assignments": ("data.crop=[[1,2]]",)}, None),
        ({"assignments": ("noequals",)}, "KEY=VALUE"),
    ],
)
def test_bad_configs_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message) as err:
        configs.validate(configs.resolve(**kwargs))
    assert "\n" not in str(err.value)


def test_config_files_json_and_toml_merge_over_presets(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("steps = 7\n[optim]\nlr = 2e-4\n[data.augment]\nenabled = false\n")
    cfg = configs.resolve("cpu-small", toml, ("seed=3",))
    assert (cfg.steps, cfg.optim.lr, cfg.data.augment.enabled, cfg.seed) == (7, 2e-4, False, 3)
    assert cfg.network.name == "small"  # from the preset
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(ConfigError, match="not a valid JSON"):
        configs.resolve(file=bad)
    with pytest.raises(InputError):
        configs.resolve(file=tmp_path / "missing.json")


def test_cli_reports_bad_preset_on_one_line_with_exit_2(tmp_path):
    result = run_cli("train", "--preset", "nope", "--out", tmp_path / "run")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and "unknown preset 'nope'" in result.stderr
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- bad inputs to a run


def test_unknown_network_is_a_config_error_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match="no-such-net"):
        train(tiny_config("network.name=no-such-net", "network.overrides={}"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_interpolation_has_nothing_to_train(tmp_path):
    with pytest.raises(ConfigError, match="no trainable weights"):
        train(tiny_config("network.name=interpolation", "network.overrides={}"), tmp_path / "run", progress=False)


def test_an_existing_run_is_not_overwritten_and_resume_refuses_other_settings(tmp_path):
    run = tmp_path / "run"
    train(tiny_config("steps=2"), run, progress=False)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(tiny_config("steps=2"), run, progress=False)
    with pytest.raises(ConfigError, match="cannot change 'optim'"):
        resume_config(run, ("optim.lr=1",))
    assert resume_config(run, ("steps=9",)).steps == 9
    with pytest.raises(ConfigError, match="no run to resume"):
        resume_config(tmp_path / "elsewhere")


def test_resuming_from_a_corrupt_checkpoint_is_an_input_error(tmp_path):
    run = tmp_path / "run"
    train(tiny_config("steps=2"), run, progress=False)
    (ck.find_checkpoint(run) / "optimizer.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(InputError, match="corrupt"):
        train(resume_config(run, ("steps=4",)), run, resume=True, progress=False)


def test_interrupted_run_is_a_diffiqt_error_and_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    real_step = Trainer.train_step

    def interrupt_at_step_3(self, batch):
        if self.step == 3:
            raise KeyboardInterrupt
        return real_step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", interrupt_at_step_3)
    with pytest.raises(TrainingInterrupted, match="interrupted at step 3; last checkpoint: .*step_00000002") as err:
        train(tiny_config("steps=6"), run, progress=False)
    assert isinstance(err.value, DiffiqtError) and "\n" not in str(err.value)
    assert [p.name for p in (run / ck.CHECKPOINT_DIR).iterdir()] == ["step_00000002"]
    monkeypatch.setattr(Trainer, "train_step", real_step)
    assert train(resume_config(run), run, resume=True, progress=False).step == 6


def test_interrupt_while_writing_a_checkpoint_leaves_none_half_written(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ck, "save_file", interrupted)
    with pytest.raises(TrainingInterrupted, match="no checkpoint was written yet"):
        train(tiny_config("steps=2"), tmp_path / "run", progress=False)
    assert list((tmp_path / "run" / ck.CHECKPOINT_DIR).iterdir()) == []


# ----------------------------------------------------------------------------- exact resume


def test_resume_is_bit_exact_including_data_order_augmentation_and_noise(tmp_path):
    """6 steps straight == 3 steps, stop, resume to 6: weights, EMA, optimizer and logged losses."""
    changes = ("data.num_workers=2", "data.augment.enabled=true", "checkpoint_every=3", "val_every=100")
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(tiny_config("steps=6", *changes), straight, progress=False)
    train(tiny_config("steps=3", *changes), split, progress=False)
    result = train(resume_config(split, ("steps=6",)), split, resume=True, progress=False)
    assert result.step == 6
    for name in ("model", "ema", "optimizer"):
        a, b = weights(straight, name), weights(split, name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}:{key}"
    losses = [
        [row.split(",")[1] for row in (run / "train.csv").read_text().splitlines()[1:]] for run in (straight, split)
    ]
    assert losses[0] == losses[1] and len(losses[0]) == 6


# ----------------------------------------------------------------------------- networks and baselines


def test_supervised_baseline_trains_with_the_same_loop(tmp_path):
    result = train(tiny_config("network.name=tiny-supervised", "steps=4"), tmp_path / "run", progress=False)
    assert result.step == 4 and {"val_psnr", "val_psnr_interp"} <= set(result.val)
    assert len((tmp_path / "run" / "train.csv").read_text().splitlines()) == 5


def test_small_network_trains_in_the_patch_layout_and_reloads(tmp_path):
    """The real 'small' DiffusionIQT (patch size 8 here): a block becomes 27 patches sharing one log-SNR."""
    run = tmp_path / "run"
    cfg = tiny_config("network.name=small", 'network.overrides={"patch_size": 8}', "steps=2", "batch_size=1")
    assert configs.validate(cfg).data.layout == "auto"
    result = train(cfg, run, progress=False)
    assert result.step == 2
    net, saved = ck.load_network(run)
    assert net.name == "small" and net.cross_batch and net.patch_size == 8 and saved.network.name == "small"
    meta = json.loads((ck.find_checkpoint(run) / "config.json").read_text())
    assert meta["network"]["patch_size"] == 8 and meta["voxel_mm"] == 1.0


def test_cosine_decay_warms_up_then_falls_to_zero_at_the_last_step():
    cfg = tiny_config("steps=110", "optim.lr=0.01", "optim.warmup_steps=10", "optim.decay=cosine")
    rates = [learning_rate(cfg, step) for step in range(111)]
    assert rates[0] == pytest.approx(0.001) and rates[9] == pytest.approx(0.01)
    assert rates[60] == pytest.approx(0.005) and rates[110] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(rates[9:], rates[10:]))
    constant = tiny_config("steps=110", "optim.lr=0.01", "optim.warmup_steps=10")
    assert learning_rate(constant, 110) == 0.01
    with pytest.raises(ConfigError, match="optim.decay"):
        tiny_config("optim.decay=linear")


def test_a_run_can_start_from_another_runs_weights(tmp_path):
    """init_from (fine-tuning): with a vanishing learning rate the new run's weights are the first run's EMA weights."""
    first = tmp_path / "first"
    train(tiny_config("steps=3"), first, progress=False)
    train(tiny_config("steps=1", "optim.lr=1e-12", f"init_from={first}"), tmp_path / "second", progress=False)
    fresh = weights(first, "ema")
    for name, tensor in weights(tmp_path / "second").items():
        torch.testing.assert_close(tensor, fresh[name], rtol=0, atol=1e-9, msg=name)
    with pytest.raises(ConfigError, match="width"):
        train(
            tiny_config("steps=1", 'network.overrides={"width": 6}', f"init_from={first}"),
            tmp_path / "third",
            progress=False,
        )
    with pytest.raises(ConfigError, match="residual_sigma"):
        train(
            tiny_config("steps=1", "diffusion.residual_sigma=0.2", f"init_from={first}"),
            tmp_path / "fourth",
            progress=False,
        )
    assert not (tmp_path / "third").exists() and not (tmp_path / "fourth").exists()


def test_cli_train_and_resume(tmp_path):
    from typer.testing import CliRunner

    from diffiqt.cli import app

    run = tmp_path / "run"
    args = ["train", "--out", str(run), "--no-progress", *[a for s in TINY_TRAINING for a in ("--set", s)]]
    first = CliRunner().invoke(app, [*args, "--steps", "2"])
    assert first.exit_code == 0, first.output
    assert "trained to step 2" in first.output
    saved = json.loads((run / "config.json").read_text())
    assert saved["steps"] == 2 and saved["network"]["name"] == "tiny"
    again = CliRunner().invoke(app, ["train", "--out", str(run), "--resume", "--steps", "4", "--no-progress"])
    assert again.exit_code == 0, again.output
    assert ck.find_checkpoint(run).name == "step_00000004"
    refused = CliRunner().invoke(app, ["train", "--out", str(run), "--resume", "--preset", "paper"])
    assert isinstance(refused.exception, ConfigError)


# ----------------------------------------------------------------------------- it learns


def _learns(tmp_path, steps, *changes):
    cfg = tiny_config(
        f"steps={steps}",
        'network.overrides={"width": 8}',
        "val_every=1000",
        "checkpoint_every=1000",
        "data.val_blocks=4",
        "diffusion.sample_steps=20",
        "optim.lr=1e-3",
        *changes,
    )
    return train(cfg, tmp_path / "run", progress=False).val


@pytest.mark.slow  # a long end-to-end run: make test-all
def test_tiny_diffusion_model_beats_cubic_interpolation_on_held_out_anatomy(tmp_path):
    """80 steps on one crop of the real MNI brain; PSNR on its held-out anterior slab, 20 sampling steps."""
    val = _learns(tmp_path, 80)
    assert val["val_psnr"] > val["val_psnr_interp"] + 1.0, val


@pytest.mark.slow
@pytest.mark.parametrize("network, margin_db", [("tiny", 1.0), ("tiny-supervised", 0.5)])
def test_longer_training_with_augmentation_beats_interpolation(tmp_path, network, margin_db):
    """400 steps with augmentation (elastic included) and a refreshed pool of simulations, ~10 min on 2 cores."""
    val = _learns(
        tmp_path,
        400,
        f"network.name={network}",
        "data.augment.enabled=true",
        "data.augment.elastic_probability=0.25",
        "data.refresh_every=20",
        "data.pool_size=3",
        "data.num_workers=1",
    )
    assert val["val_psnr"] > val["val_psnr_interp"] + margin_db, val
