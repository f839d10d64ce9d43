"""Typed training configuration: dataclasses, presets, and JSON/TOML files on disk.

A config file holds only what differs from the defaults below; it is merged
onto them (or onto a preset) section by section, checked (unknown keys and
wrong types are a :class:`ConfigError` naming the key; choice fields are
``Literal`` types, so a wrong choice names the key and the choices), and the
full resolved config is written as JSON into every run folder and checkpoint.
The defaults that other modules share (the sampler, its steps) are defined here once.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from diffiqt.errors import ConfigError, InputError

SamplerName = Literal["paper", "ancestral", "ddim", "refine"]  # the keys of diffiqt.diffusion.SAMPLERS
Layout = Literal["auto", "patches", "volume"]
LossName = Literal["mse", "l1"]
LrDecay = Literal["none", "cosine"]
DEFAULT_SAMPLER: SamplerName = "paper"  # validation during training and enhancement both default to it
DEFAULT_STEPS = 20  # the paper's sampling steps
# torch.device names that diffiqt.training.distributed.resolve_device accepts; not a Literal: cuda:N has any N.
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass
class NetworkConfig:
    """Which network: a name from ``diffiqt.nets.list_networks()`` and keyword overrides."""

    name: str = "small"
    overrides: dict = field(default_factory=dict)


@dataclass
class AugmentConfig:
    """torchio augmentation of the HF brain (and its tissue maps) before LF simulation."""

    enabled: bool = True
    degrees: float = 10.0  # random rotation, +- degrees about each axis
    scales: float = 0.1  # random zoom factor in 1 +- scales
    elastic_probability: float = 0.25  # elastic deformation is slow (~10 s per brain), so only sometimes
    max_displacement_mm: float = 5.0
    bias_coefficients: float = 0.3  # smooth multiplicative bias field (polynomial order 3)
    log_gamma: float = 0.2  # gamma in exp(+- log_gamma)


@dataclass
class DataConfig:
    """Where pairs come from and how blocks are cut (see docs/training.md, "Data pipeline")."""

    sources: list[str] = field(default_factory=lambda: ["mni152"])  # bundled names, files or folders
    # One weight per source, shared equally by the brains it names (a folder of 19 synthetic brains with
    # weight 1 beside two real ones with weight 1 each: a third of the pairs synthetic). Empty: every brain alike.
    source_weights: list[float] = field(default_factory=list)
    pairs_file: str | None = None  # pre-simulated pairs (diffiqt simulate-pairs): then used instead of simulating
    val_sources: list[str] = field(default_factory=list)  # empty: hold out the anterior slab of each source
    holdout_fraction: float = 0.35  # of the head's A-P extent, when val_sources is empty
    crop: list[list[int]] | None = None  # [[x0, x1], [y0, y1], [z0, z1]] voxels, applied to every source
    block_size: int = 96  # edge of a training block; 3 x the network's patch size in the patch layout
    # Networks on the low-field grid (network setting slice_fold > 1): blocks of block_size² x slice_block
    # voxels with the slice axis last and the block's first slice on a thick-slice centre. None: cubes.
    slice_block: int | None = None
    layout: Layout = (
        "auto"  # "patches" (3x3x3 grid of patches), "volume" (whole block), "auto": patches iff cross-batch
    )
    lf_factor: float = 8.0  # decimation factor in the slice direction (paper: x8)
    # Non-empty: each simulated pair draws its factor from this list (repeat a value to weight it), so that
    # one model covers clinical spacings (x5 of 1 mm is a 5 mm spacing) besides the paper's x8.
    lf_factors: list[float] = field(default_factory=list)
    # [low, high]: each simulated pair's in-plane voxel (mm) drawn uniformly from this range, so that scans of
    # clinical in-plane resolution (1.2-1.5 mm) are inside the model's range; a voxel finer than the training
    # brain's own leaves the pair as it is. Empty: the training brain's voxel.
    inplane_mm: list[float] = field(default_factory=list)
    lf_axis: int | None = 2  # slice axis of the RAS+ volume (2: axial); None: a random axis per simulated pair
    snr_wm: float | None = None  # None: drawn per simulation from the T1w prior (Lin et al. 2023)
    snr_gm: float | None = None
    pool_size: int = 4  # simulated (augmented) pairs held by each data worker
    refresh_every: int = 8  # batches between replacing one pooled pair by a fresh simulation
    num_workers: int = 1  # DataLoader worker processes (0: load in the training process)
    val_blocks: int = 2  # fixed validation blocks per validation source
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0  # linear learning-rate warm-up
    # "cosine": after the warm-up, lr falls along a half cosine to 0 at ``steps``, so that a run of known
    # length ends on small updates instead of on the noise of a constant lr. "none": constant.
    decay: LrDecay = "none"
    grad_clip: float = 1.0  # max global gradient norm
    ema_decay: float = 0.999


@dataclass
class DiffusionConfig:
    loss: LossName = "mse"  # "mse" (paper) or "l1"; also the loss of supervised baselines
    sampler: SamplerName = DEFAULT_SAMPLER  # used for validation and as enhancement's default
    sample_steps: int = DEFAULT_STEPS
    # None: the paper's plain x-prediction. A number: the Denoiser's EDM-style preconditioning on the
    # residual x - cond with this standard deviation (see diffiqt.diffusion.Denoiser); 0.2 suits T1w x8.
    residual_sigma: float | None = None
    # Fraction of training blocks drawn at t = 1, where the x-prediction is the posterior mean E[x | LF]:
    # what one-step enhancement returns. The rest draw t ~ U[0, 1) as in the paper's Algorithm 1.
    mean_fraction: float = 0.0


@dataclass
class TrainConfig:
    """Everything a run needs; written in full to ``OUT/config.json``."""

    network: NetworkConfig = field(default_factory=NetworkConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    steps: int = 10000
    batch_size: int = 1  # blocks per step and process (27 patches each in the patch layout)
    seed: int = 0
    device: str = "auto"  # "auto" (cuda if present), "cpu", "cuda", "cuda:1"
    bf16: bool = True  # bf16 autocast, applied on CUDA only
    max_minutes: float | None = None  # stop (final validation and checkpoint) after training this long
    log_every: int = 10
    val_every: int = 500
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    tensorboard: bool = False
    # Fine-tuning: a run/checkpoint folder or shipped model name whose (EMA) weights start a new run
    init_from: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def from_dict(cls: Any, data: dict, where: str = "") -> Any:
    """Build dataclass ``cls`` from a (partial) dict, checking keys and types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a table/object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key {_join(where, unknown[0])!r}; known: {', '.join(sorted(names))}")
    values = {}
    for name, value in data.items():
        key = _join(where, name)
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = from_dict(hint, value, key)
        else:
            values[name] = _checked(value, hint, key)
    return cls(**values)


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _checked(value: Any, hint: Any, key: str) -> Any:
    """``value`` if it has type ``hint`` (ints are accepted as floats), else a ConfigError."""
    if _matches(value, hint):
        return float(value) if hint is float else value
    raise ConfigError(f"config key {key!r}: expected {_describe(hint)}, got {value!r}")


def _matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:  # the type as well as the value: True is not the choice 1
        return any(type(value) is type(choice) and value == choice for choice in args)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(choice) for choice in typing.get_args(hint))
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _check_choices(section: Any, where: str = "") -> None:
    """ConfigError naming the key and the choices for a ``Literal`` field that holds none of them.

    :func:`from_dict` already checks files and ``--set``; this catches configs built or changed in Python.
    """
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        value, key = getattr(section, f.name), _join(where, f.name)
        if dataclasses.is_dataclass(value):
            _check_choices(value, key)
        elif typing.get_origin(hints[f.name]) is Literal:
            _checked(value, hints[f.name], key)


def merge(base: dict, update: dict) -> dict:
    """``base`` with ``update`` applied recursively (nested tables merge, other values replace)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "overrides":
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_file(path: str | Path) -> dict:
    """A JSON (.json) or TOML (.toml) config file as a dict."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such config file")
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        reason = str(exc).splitlines()[0]
        raise ConfigError(
            f"{path}: not a valid {'TOML' if path.suffix.lower() == '.toml' else 'JSON'} config ({reason})"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a JSON object / TOML table")
    return data


def list_presets() -> list[str]:
    """Names of the bundled presets (``src/diffiqt/presets/*.json``)."""
    folder = resources.files("diffiqt") / "presets"
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def preset_dict(name: str) -> dict:
    """The partial config of a bundled preset."""
    if name not in list_presets():
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(list_presets())}")
    return json.loads((resources.files("diffiqt") / "presets" / f"{name}.json").read_text())


def parse_assignment(text: str) -> dict:
    """'optim.lr=3e-4' -> {'optim': {'lr': 0.0003}}; the value is JSON, or a plain string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects KEY=VALUE (e.g. optim.lr=3e-4), got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    out: dict = value
    for part in reversed(key.strip().split(".")):
        out = {part: out}
    return out


def resolve(
    preset: str | None = None, file: str | Path | None = None, assignments: tuple[str, ...] = ()
) -> TrainConfig:
    """Defaults, then the preset, then the file, then ``KEY=VALUE`` assignments, in that order; validated."""
    data = preset_dict(preset) if preset else {}
    if file is not None:
        data = merge(data, read_file(file))
    for text in assignments:
        data = merge(data, parse_assignment(text))
    return validate(from_dict(TrainConfig, data))


def validate(cfg: TrainConfig) -> TrainConfig:
    """Checks that need more than types (ranges, names); returns ``cfg``."""
    checks = [
        (cfg.steps >= 1, "steps must be >= 1"),
        (0 <= cfg.seed < 2**63, "seed must be in [0, 2^63)"),  # torch takes 64-bit seeds, and a step seed is derived
        (cfg.batch_size >= 1, "batch_size must be >= 1"),
        (cfg.data.block_size >= 8, "data.block_size must be >= 8"),
        (cfg.data.pool_size >= 1 and cfg.data.refresh_every >= 1, "data.pool_size and data.refresh_every must be >= 1"),
        (cfg.data.num_workers >= 0, "data.num_workers must be >= 0"),
        (0.0 < cfg.data.holdout_fraction < 1.0, "data.holdout_fraction must be in (0, 1)"),
        (cfg.data.lf_factor > 1.0, "data.lf_factor must be > 1"),
        (all(f > 1.0 for f in cfg.data.lf_factors), "data.lf_factors must all be > 1"),
        (
            not cfg.data.inplane_mm
            or (len(cfg.data.inplane_mm) == 2 and 0 < cfg.data.inplane_mm[0] <= cfg.data.inplane_mm[1]),
            "data.inplane_mm must be empty or [low, high] in mm with 0 < low <= high",
        ),
        (cfg.data.slice_block is None or cfg.data.slice_block >= 8, "data.slice_block must be >= 8 (or null)"),
        (
            cfg.data.slice_block is None or not cfg.data.pairs_file,
            "data.slice_block needs simulated pairs, not a pairs_file",
        ),
        (0.0 <= cfg.diffusion.mean_fraction <= 1.0, "diffusion.mean_fraction must be in [0, 1]"),
        (cfg.data.lf_axis in (0, 1, 2, None), "data.lf_axis must be 0, 1, 2 or null (a random axis per pair)"),
        (bool(cfg.data.sources), "data.sources is empty"),
        (
            not cfg.data.source_weights
            or (
                len(cfg.data.source_weights) == len(cfg.data.sources)
                and min(cfg.data.source_weights) >= 0
                and sum(cfg.data.source_weights) > 0
            ),
            "data.source_weights must give one non-negative weight per source (not all zero), or be empty",
        ),
        (cfg.max_minutes is None or cfg.max_minutes > 0, "max_minutes must be > 0 (or null: no time limit)"),
        # Adam moves each weight by about lr per step, and the weights are of order 1: above 1 the run diverges.
        (0.0 < cfg.optim.lr <= 1.0, "optim.lr must be in (0, 1]"),
        (cfg.optim.weight_decay >= 0, "optim.weight_decay must be >= 0"),
        (cfg.optim.grad_clip > 0, "optim.grad_clip must be > 0 (the largest gradient norm a step may take)"),
        (cfg.optim.warmup_steps >= 0, "optim.warmup_steps must be >= 0"),
        (0.0 <= cfg.optim.ema_decay < 1.0, "optim.ema_decay must be in [0, 1)"),
        (
            len(cfg.optim.betas) == 2 and all(0.0 <= b < 1.0 for b in cfg.optim.betas),
            "optim.betas must be two numbers in [0, 1)",
        ),
        (cfg.diffusion.sample_steps >= 1, "diffusion.sample_steps must be >= 1"),
        (
            min(cfg.log_every, cfg.val_every, cfg.checkpoint_every, cfg.keep_checkpoints) >= 1,
            "log_every, val_every, checkpoint_every and keep_checkpoints must be >= 1",
        ),
    ]
    _check_choices(cfg)
    if not DEVICE_PATTERN.fullmatch(cfg.device):
        raise ConfigError(f"config key 'device': expected auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    overlap = _overlapping_sources(cfg.data.sources, cfg.data.val_sources)
    if overlap is not None:
        raise ConfigError(
            f"data.val_sources {overlap[1]!r} overlaps the training source {overlap[0]!r}: validation "
            "must be on brains the model does not train on"
        )
    if cfg.data.crop is not None and (
        len(cfg.data.crop) != 3 or any(len(r) != 2 or r[0] >= r[1] for r in cfg.data.crop)
    ):
        raise ConfigError("data.crop must be [[x0, x1], [y0, y1], [z0, z1]] with x0 < x1 etc.")
    return cfg


def _overlapping_sources(sources: list[str], val_sources: list[str]) -> tuple[str, str] | None:
    """A (training, validation) pair of sources that name the same brains: one name, one file, or a file or
    folder inside the other's folder."""
    for train in sources:
        for val in val_sources:
            a, b = Path(train).resolve(), Path(val).resolve()
            on_disk = a.exists() and b.exists()  # a bundled name is no path: only equal names overlap then
            if train == val or (on_disk and (a == b or a in b.parents or b in a.parents)):
                return train, val
    return None
