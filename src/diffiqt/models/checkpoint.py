"""Checkpoints as safetensors + JSON: nothing is ever unpickled.

A checkpoint is a folder ``OUT/checkpoints/step_00001000/`` holding

* ``config.json``: format tag, step, the network's ``config`` (so that
  ``diffiqt.nets.build_network(**network)`` rebuilds it), the full training
  config, the normalisation and the optimizer's hyper-parameters;
* ``model.safetensors``: the trained weights; ``ema.safetensors``: their
  exponential moving average (what enhancement uses);
* ``optimizer.safetensors``: the optimizer's per-parameter state (Adam moments, step counts).

The folder is written under a temporary name and renamed into place, so a
checkpoint is either complete or absent. Training randomness is counter-based
(seeded from the seed, rank and step, see :mod:`diffiqt.training.loop`), so no RNG
state needs saving beyond the seed and step.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from diffiqt.config import TrainConfig, from_dict
from diffiqt.errors import ConfigError, DiffiqtError, InputError, OutputError

if TYPE_CHECKING:  # diffiqt.nets is imported when a network is built, not with this module
    from diffiqt.nets.base import Network

FORMAT = "diffiqt-checkpoint"
VERSION = 1
CHECKPOINT_DIR = "checkpoints"
PREFIX = "step_"
DEFAULT_VOXEL_MM = 1.0  # the model grid of a checkpoint that does not record one (the MNI brain's 1 mm)


def network_from_config(network: dict) -> Network:
    """A network from its stored config (``{"name": ..., **overrides}``, as checkpoints and model cards hold it):
    ``diffiqt.nets.build_network(**network)``, with unknown names or arguments a ConfigError."""
    from diffiqt import nets

    network = dict(network)
    name = network.pop("name", None)
    try:
        return nets.build_network(name, **network)
    except DiffiqtError:
        raise
    except (KeyError, ValueError, TypeError) as exc:
        reason = str(exc).strip("'\"").splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"cannot build network {name!r}: {reason}") from None


def state_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's state as independent, contiguous CPU tensors (what safetensors requires)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def check_fits(module: Network, tensors: dict[str, torch.Tensor], where: str) -> None:
    """ConfigError naming the first missing/unexpected/mis-shaped weight, if ``tensors`` do not fit."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [k for k in expected if k in tensors and tuple(tensors[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        problem = (
            f"missing {missing[0]!r}"
            if missing
            else f"unexpected {unexpected[0]!r}"
            if unexpected
            else f"{wrong[0]!r} has shape {tuple(tensors[wrong[0]].shape)}, the network needs {expected[wrong[0]]}"
        )
        raise ConfigError(
            f"{where}: weights do not fit network {module.name!r} ({problem}; "
            f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} mis-shaped)"
        )


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file as CPU tensors; InputError if missing or corrupt."""
    if not path.is_file():
        raise InputError(f"{path}: missing from the checkpoint")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: corrupt or not a safetensors file ({reason})") from None


def check_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    """InputError if any tensor holds NaN or Inf: such a network computes NaN everywhere, and an optimizer
    state like that makes every later step NaN; both are refused when loaded, not found after the work."""
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise InputError(f"{where}: {len(bad)} of {len(tensors)} tensors hold NaN or Inf (first {bad[0]!r})")


def load_weights(module: Network, path: Path) -> None:
    """Load a safetensors file into ``module``, checking names, shapes and finiteness first."""
    tensors = read_tensors(path)
    check_fits(module, tensors, str(path))
    check_finite(tensors, str(path))
    module.load_state_dict(tensors)


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """(per-parameter state tensors keyed 'index.name', JSON-able param groups)."""
    state = optimizer.state_dict()
    tensors = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if not torch.is_tensor(value):
                raise TypeError(f"optimizer state {name!r} is not a tensor")  # no such optimizer is used here
            tensors[f"{index}.{name}"] = value.detach().to("cpu", copy=True).contiguous()
    return tensors, json.loads(json.dumps(state["param_groups"]))


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    """Inverse of :func:`optimizer_tensors`."""
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"optimizer state does not fit the network ({exc})") from None


@dataclass
class Checkpoint:
    """A checkpoint folder and its parsed ``config.json``."""

    folder: Path
    meta: dict

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    @property
    def config(self) -> TrainConfig:
        return from_dict(TrainConfig, self.meta["train"])


def save_checkpoint(
    run_dir: Path, step: int, meta: dict, model: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer | None
) -> Path:
    """Write ``run_dir/checkpoints/step_NNNNNNNN`` atomically; returns its path.

    ``meta`` must hold "network" and "train"; the format tag, step and optimizer
    groups are added here. An existing checkpoint of the same step is replaced.
    """
    root = Path(run_dir) / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".part", dir=root))
    try:
        meta = {"format": FORMAT, "version": VERSION, "step": step, **meta}
        save_file(state_tensors(model), str(tmp / "model.safetensors"))
        save_file(state_tensors(ema), str(tmp / "ema.safetensors"))
        if optimizer is not None:
            tensors, groups = optimizer_tensors(optimizer)
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            meta["optimizer"] = {"type": type(optimizer).__name__, "param_groups": groups}
        (tmp / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        _usual_permissions(tmp)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except OSError as exc:  # a full disk or a lost mount: the earlier checkpoints stay as they were
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"{final}: checkpoint not written ({exc.strerror or exc}); earlier ones are kept") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _usual_permissions(folder: Path) -> None:
    """mkdtemp makes the folder private (0700); give it and its files the permissions of a plain mkdir."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for file in folder.iterdir():
        file.chmod(0o666 & ~umask)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX) :].isdigit()
    )


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints, and leftovers of interrupted writes."""
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for part in (Path(run_dir) / CHECKPOINT_DIR).glob(".*.part"):
        shutil.rmtree(part, ignore_errors=True)


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, given it or a run folder (its newest checkpoint)."""
    path = Path(path)
    if (path / "config.json").is_file() and (path / "model.safetensors").exists():
        return path
    found = list_checkpoints(path)
    if not found:
        raise InputError(f"{path}: neither a checkpoint folder nor a run folder with checkpoints")
    return found[-1]


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Parse and check a checkpoint's ``config.json`` (weights are read separately)."""
    folder = find_checkpoint(path)
    try:
        meta = json.loads((folder / "config.json").read_text())
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise InputError(
            f"{folder / 'config.json'}: corrupt checkpoint metadata ({str(exc).splitlines()[0]})"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(f"{folder}: not a diffiqt checkpoint (config.json lacks format {FORMAT!r})")
    if meta.get("version") != VERSION or not isinstance(meta.get("network"), dict) or "train" not in meta:
        raise InputError(f"{folder}: unsupported or incomplete checkpoint (version {meta.get('version')!r})")
    return Checkpoint(folder, meta)


def load_network(
    path: str | Path, weights: str = "ema", device: str | torch.device = "cpu"
) -> tuple[Network, TrainConfig]:
    """(network in eval mode, its training config) from a checkpoint or run folder.

    ``weights`` is "ema" (the averaged weights, best for inference) or "model".
    """
    if weights not in ("ema", "model"):
        raise ConfigError(f"weights must be 'ema' or 'model', got {weights!r}")
    ckpt = read_checkpoint(path)
    net = network_from_config(ckpt.meta["network"])
    load_weights(net, ckpt.folder / f"{weights}.safetensors")
    return net.to(device).eval(), ckpt.config
