"""Pretrained models shipped inside the package, and their export from a training checkpoint.

A shipped model is two files in ``diffiqt/weights/``: ``NAME.safetensors``
(EMA weights, stored as float16 or float32) and ``NAME.json`` (the network
config, the model grid's voxel size, the weights' SHA-256 and a summary of how
it was trained). The hash is checked before the weights are read; safetensors
holds plain tensors only, so nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from diffiqt.errors import ConfigError, InputError
from diffiqt.io import atomic_write, save_json

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_MODEL = "default"  # resolved to the shipped model whose card says "default": true


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shipped_models(folder: Path = WEIGHTS_DIR) -> dict[str, dict]:
    """Name -> card of every model shipped in ``folder``."""
    cards = {}
    for card_path in sorted(folder.glob("*.json")):
        card = json.loads(card_path.read_text())
        cards[card_path.stem] = card
    return cards


def resolve_name(name: str, folder: Path = WEIGHTS_DIR) -> str:
    cards = shipped_models(folder)
    if name == DEFAULT_MODEL:
        defaults = [n for n, card in cards.items() if card.get("default")]
        if not defaults:
            raise ConfigError("no default model is shipped with this installation; give --model PATH to a checkpoint")
        return defaults[0]
    if name not in cards:
        known = ", ".join(cards) or "none"
        raise ConfigError(f"unknown model {name!r}: not a checkpoint path nor a shipped model (shipped: {known})")
    return name


def load_shipped(name: str, folder: Path = WEIGHTS_DIR):
    """(network with the shipped weights in float32, card); the SHA-256 is checked first."""
    from diffiqt.checkpoint import build_network, check_fits

    name = resolve_name(name, folder)
    card = shipped_models(folder)[name]
    weights = folder / f"{name}.safetensors"
    if not weights.is_file():
        raise InputError(f"{weights}: the shipped weights are missing (reinstall diffiqt)")
    if sha256(weights) != card["sha256"]:
        raise InputError(f"{weights}: SHA-256 does not match its card; the file is corrupt or was changed")
    tensors = {k: v.float() for k, v in load_file(str(weights), device="cpu").items()}
    net = build_network(card["network"])
    check_fits(net, tensors, str(weights))
    net.load_state_dict(tensors)
    return net.eval(), card


def export_checkpoint(checkpoint: str | Path, name: str, folder: Path = WEIGHTS_DIR, *, dtype: str = "float16",
                      default: bool = False, summary: dict | None = None, steps: int | None = None) -> tuple[Path, Path]:
    """Write a checkpoint's EMA weights as a shipped model ``name`` (weights + card).

    ``steps``: the sampling steps ``diffiqt enhance`` uses for it by default (None: its training config's).
    """
    from diffiqt.checkpoint import read_checkpoint, read_tensors

    if dtype not in ("float16", "float32"):
        raise ConfigError(f"dtype must be float16 or float32, not {dtype!r}")
    ckpt = read_checkpoint(checkpoint)
    tensors = read_tensors(ckpt.folder / "ema.safetensors")
    cast = {k: v.to(getattr(torch, dtype)).contiguous() if v.is_floating_point() else v for k, v in tensors.items()}
    weights = folder / f"{name}.safetensors"
    atomic_write(weights, lambda tmp: save_file(cast, str(tmp)))
    card = {
        "network": ckpt.meta["network"],
        "voxel_mm": float(ckpt.meta.get("voxel_mm", 1.0)),
        "residual_sigma": ckpt.config.diffusion.residual_sigma,
        "sample_steps": steps or ckpt.config.diffusion.sample_steps,
        "sha256": sha256(weights),
        "dtype": dtype,
        "step": ckpt.step,
        "default": default,
        "trained": summary or {},
    }
    return weights, save_json(card, folder / f"{name}.json")
