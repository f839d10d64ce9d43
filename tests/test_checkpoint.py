"""Checkpoints: safetensors + JSON round trips, atomic writes, clear errors, never unpickling."""

import json

import pytest
import torch

import tiny_net
from diffiqt.config import TrainConfig
from diffiqt.errors import ConfigError, InputError, OutputError
from diffiqt.models import checkpoint as ck


@pytest.fixture(autouse=True)
def tiny_networks(monkeypatch):
    tiny_net.install(monkeypatch)


def _trained_state(width=4):
    torch.manual_seed(0)
    net = tiny_net.TinyDiffusionNet(width)
    ema = tiny_net.TinyDiffusionNet(width)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loss = net(torch.rand(2, 2, 6, 6, 6), torch.zeros(2)).square().mean()
    loss.backward()
    opt.step()
    return net, ema, opt


def _save(run_dir, step=7, width=4):
    net, ema, opt = _trained_state(width)
    meta = {"network": net.config, "train": TrainConfig().to_dict(), "voxel_mm": 1.0}
    return ck.save_checkpoint(run_dir, step, meta, net, ema, opt), (net, ema, opt)


def test_round_trip_restores_weights_ema_and_optimizer_exactly(tmp_path):
    folder, (net, ema, opt) = _save(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "ema.safetensors",
        "model.safetensors",
        "optimizer.safetensors",
    ]
    loaded, cfg = ck.load_network(tmp_path, weights="model")
    assert isinstance(cfg, TrainConfig) and not loaded.training
    for a, b in zip(loaded.state_dict().values(), net.state_dict().values()):
        assert torch.equal(a, b)
    loaded_ema, _ = ck.load_network(folder)  # EMA weights by default
    for a, b in zip(loaded_ema.state_dict().values(), ema.state_dict().values()):
        assert torch.equal(a, b)
    fresh = tiny_net.TinyDiffusionNet(4)
    opt2 = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    meta = ck.read_checkpoint(folder).meta
    ck.restore_optimizer(opt2, ck.read_tensors(folder / "optimizer.safetensors"), meta["optimizer"]["param_groups"])
    for key, value in opt.state_dict()["state"][0].items():
        assert torch.equal(opt2.state_dict()["state"][0][key], value)
    assert opt2.state_dict()["param_groups"] == opt.state_dict()["param_groups"]


def test_loading_never_unpickles(tmp_path, monkeypatch):
    _save(tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load must not be used")

    monkeypatch.setattr(torch, "load", refuse)
    ck.load_network(tmp_path)
    meta = json.loads((ck.find_checkpoint(tmp_path) / "config.json").read_text())
    assert meta["format"] == ck.FORMAT and meta["step"] == 7


def test_a_failed_write_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    net, ema, opt = _trained_state()
    real = ck.save_file
    calls = []

    def fail_on_third(tensors, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(ck, "save_file", fail_on_third)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(tmp_path, 3, {"network": net.config, "train": {}}, net, ema, opt)
    assert list((tmp_path / ck.CHECKPOINT_DIR).iterdir()) == []


def test_a_full_disk_is_a_one_line_output_error_and_keeps_the_earlier_checkpoint(tmp_path, monkeypatch):
    import errno

    net, ema, opt = _trained_state()
    earlier = ck.save_checkpoint(tmp_path, 2, {"network": net.config, "train": {}}, net, ema, opt)

    def full(tensors, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck, "save_file", full)
    with pytest.raises(OutputError, match="No space left on device"):
        ck.save_checkpoint(tmp_path, 3, {"network": net.config, "train": {}}, net, ema, opt)
    assert list((tmp_path / ck.CHECKPOINT_DIR).iterdir()) == [earlier]


def test_corrupt_weights_are_a_one_line_input_error(tmp_path):
    folder, _ = _save(tmp_path)
    (folder / "ema.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(InputError, match="corrupt") as err:
        ck.load_network(folder)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text", ["{not json", json.dumps({"format": "other"}), json.dumps([1, 2])])
def test_corrupt_metadata_is_an_input_error(tmp_path, text):
    folder, _ = _save(tmp_path)
    (folder / "config.json").write_text(text)
    with pytest.raises(InputError):
        ck.load_network(folder)


def test_missing_files_and_folders_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="neither a checkpoint"):
        ck.load_network(tmp_path)
    folder, _ = _save(tmp_path)
    (folder / "ema.safetensors").unlink()
    with pytest.raises(InputError, match="missing"):
        ck.load_network(folder)


def test_weights_that_do_not_fit_the_configured_network_are_a_config_error(tmp_path):
    folder, _ = _save(tmp_path, width=4)
    meta = json.loads((folder / "config.json").read_text())
    meta["network"]["width"] = 6
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="do not fit network 'tiny'") as err:
        ck.load_network(folder)
    assert "\n" not in str(err.value)


def test_unknown_network_in_a_checkpoint_is_a_config_error(tmp_path):
    folder, _ = _save(tmp_path)
    meta = json.loads((folder / "config.json").read_text())
    meta["network"] = {"name": "no-such-net"}
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="no-such-net"):
        ck.load_network(folder)


def test_prune_keeps_the_newest_and_removes_leftovers(tmp_path):
    for step in (1, 2, 3):
        _save(tmp_path, step=step)
    (tmp_path / ck.CHECKPOINT_DIR / ".step_00000004.abc.part").mkdir()
    ck.prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in (tmp_path / ck.CHECKPOINT_DIR).iterdir()) == ["step_00000002", "step_00000003"]
    assert ck.find_checkpoint(tmp_path).name == "step_00000003"
