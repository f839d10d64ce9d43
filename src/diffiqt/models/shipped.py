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
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import torch
from safetensors.torch import load_file, save_file

from diffiqt.errors import ConfigError, InputError
from diffiqt.imaging.io import atomic_write, save_json

WEIGHTS_DIR = Path(__file__).parents[1] / "weights"  # diffiqt/weights/
DEFAULT_MODEL = "default"  # resolved to the shipped model whose card says "default": true
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a model name: a plain file stem, never a path
SEPARATORS = tuple(sep for sep in ("/", os.sep, os.altsep) if sep)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_card(path: Path) -> dict | None:
    """The model card in ``path``, or None if it is not one (unreadable, not an object, or lacking the
    network, the weights' hash or a positive voxel size): a stray .json file beside the models is no model,
    and must not make the others unusable."""
    try:
        card = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not (isinstance(card, dict) and isinstance(card.get("network"), dict) and isinstance(card.get("sha256"), str)):
        return None
    voxel = card.get("voxel_mm")
    if isinstance(voxel, bool) or not isinstance(voxel, (int, float)) or not math.isfinite(voxel) or voxel <= 0:
        return None
    return card


def shipped_models(folder: Path = WEIGHTS_DIR) -> dict[str, dict]:
    """Name -> card of every model in ``folder``; .json files that are not cards are left out."""
    cards = {}
    for card_path in sorted(folder.glob("*.json")):
        card = read_card(card_path)
        if card is not None:
            cards[card_path.stem] = card
    return cards


def shipped_card(name: str, folder: Path = WEIGHTS_DIR) -> tuple[str, dict]:
    """(the model's own name, its card) for a shipped model's name or 'default'."""
    cards = shipped_models(folder)
    if name == DEFAULT_MODEL:
        defaults = [n for n, card in cards.items() if card.get("default")]
        if not defaults:
            raise ConfigError("no default model is shipped with this installation; give --model PATH to a checkpoint")
        if len(defaults) > 1:
            raise ConfigError(
                f"{folder}: {len(defaults)} models are marked default ({', '.join(defaults)}); "
                "give --model NAME, or unmark all but one"
            )
        return defaults[0], cards[defaults[0]]
    if name not in cards:
        if NAME.fullmatch(name) and (folder / f"{name}.json").is_file():
            raise ConfigError(
                f"{folder / name}.json: not a valid model card (unreadable, or without network, "
                "sha256 or a positive voxel_mm)"
            )
        _unknown(name, cards)
    return name, cards[name]


def _unknown(spec: str, cards: dict[str, dict]) -> NoReturn:
    known = ", ".join(cards) or "none"
    raise ConfigError(f"unknown model {spec!r}: not a checkpoint path nor a shipped model (shipped: {known})")


@dataclass(frozen=True)
class ModelRef:
    """What a ``--model`` value resolved to: a shipped model (``name`` and its weights' SHA-256 set) or a
    checkpoint or run folder."""

    path: Path  # the shipped weights file, or the checkpoint / run folder (absolute)
    name: str | None = None
    sha256: str | None = None


def resolve_model(spec: str | Path, folder: Path = WEIGHTS_DIR) -> ModelRef:
    """A shipped model's name (or 'default') first, else an existing checkpoint or run folder.

    Shipped names win over paths: a folder called ``default`` in the working directory could otherwise
    stand in for the shipped model unnoticed; give such a folder with a separator (``./default``).
    A :class:`~pathlib.Path` is always a path. Nothing is loaded: the shipped hash is checked at loading.
    """
    if isinstance(spec, str) and not any(sep in spec for sep in SEPARATORS):
        if spec == DEFAULT_MODEL or spec in shipped_models(folder) or not Path(spec).exists():
            name, card = shipped_card(spec, folder)
            return ModelRef(folder / f"{name}.safetensors", name, card["sha256"])
    path = Path(spec)
    if not path.exists():
        _unknown(str(spec), shipped_models(folder))
    return ModelRef(path.resolve())


def load_shipped(name: str, folder: Path = WEIGHTS_DIR):
    """(network with the shipped weights in float32, card); the SHA-256 is checked first."""
    from diffiqt.models.checkpoint import check_finite, check_fits, network_from_config

    name, card = shipped_card(name, folder)
    weights = folder / f"{name}.safetensors"
    if not weights.is_file():
        raise InputError(f"{weights}: the shipped weights are missing (reinstall diffiqt)")
    if sha256(weights) != card["sha256"]:
        raise InputError(f"{weights}: SHA-256 does not match its card; the file is corrupt or was changed")
    tensors = {k: v.float() for k, v in load_file(str(weights), device="cpu").items()}
    net = network_from_config(card["network"])
    check_fits(net, tensors, str(weights))
    check_finite(tensors, str(weights))
    net.load_state_dict(tensors)
    return net.eval(), card


def check_export_target(name: str, folder: Path, *, default: bool, force: bool) -> None:
    """Refuse, before any work, an export that would land outside ``folder`` or replace what it must not.

    ``name`` becomes NAME.json and NAME.safetensors in ``folder``, so it is a plain name, and not
    'default' (that word selects the model marked default). The models of the installed package are never
    replaced (export under another name); elsewhere an existing model needs ``force``.
    """
    if not NAME.fullmatch(name) or name == DEFAULT_MODEL:
        raise ConfigError(
            f"--name {name!r}: a model name is letters, digits, '.', '_' and '-', starting with a "
            f"letter or digit, and not {DEFAULT_MODEL!r}"
        )
    existing = next((p for p in (folder / f"{name}.safetensors", folder / f"{name}.json") if p.exists()), None)
    if existing is not None and folder.resolve() == WEIGHTS_DIR.resolve():
        raise ConfigError(
            f"{existing}: a model of the installed package is never replaced; export under another --name"
        )
    if existing is not None and not force:
        raise ConfigError(f"{existing}: already exists; give --force to replace it")
    if default:
        for other, card in shipped_models(folder).items():
            if card.get("default") and other != name:
                raise ConfigError(
                    f"{other} is already the default model in {folder}; drop --default or remove it first"
                )


def export_checkpoint(
    checkpoint: str | Path,
    name: str,
    folder: Path = WEIGHTS_DIR,
    *,
    dtype: str = "float16",
    default: bool = False,
    summary: dict | None = None,
    steps: int | None = None,
    sampler: str | None = None,
    force: bool = False,
) -> tuple[Path, Path]:
    """Write a checkpoint's EMA weights as a shipped model ``name`` (weights + card).

    ``steps``, ``sampler``: what ``diffiqt enhance`` samples it with by default (None: its training config's).
    ``force``: replace an existing model of that name (never one of the installed package's).
    """
    from diffiqt.models.checkpoint import DEFAULT_VOXEL_MM, read_checkpoint, read_tensors

    check_export_target(name, folder, default=default, force=force)
    if dtype not in ("float16", "float32"):
        raise ConfigError(f"dtype must be float16 or float32, not {dtype!r}")
    ckpt = read_checkpoint(checkpoint)
    tensors = read_tensors(ckpt.folder / "ema.safetensors")
    cast = {k: v.to(getattr(torch, dtype)).contiguous() if v.is_floating_point() else v for k, v in tensors.items()}
    weights = folder / f"{name}.safetensors"
    atomic_write(weights, lambda tmp: save_file(cast, str(tmp)))
    card = {
        "network": ckpt.meta["network"],
        "voxel_mm": float(ckpt.meta.get("voxel_mm", DEFAULT_VOXEL_MM)),
        "residual_sigma": ckpt.config.diffusion.residual_sigma,
        "sample_steps": steps or ckpt.config.diffusion.sample_steps,
        "sampler": sampler or ckpt.config.diffusion.sampler,
        "sha256": sha256(weights),
        "dtype": dtype,
        "step": ckpt.step,
        "default": default,
        # A summary's warning moves to the top, where diffiqt enhance reads it (Model.warning); the rest stays here.
        "trained": {key: value for key, value in (summary or {}).items() if key != "warning"},
    }
    if summary and "warning" in summary:
        card["warning"] = summary["warning"]
    return weights, save_json(card, folder / f"{name}.json")
