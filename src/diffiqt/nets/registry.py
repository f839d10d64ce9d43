"""Networks by name: configs and the CLI pick them here, checkpoints rebuild them from ``net.config``."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from diffiqt.errors import ConfigError
from diffiqt.nets.base import Network
from diffiqt.nets.baselines import Interpolation, UNet3d
from diffiqt.nets.diffiqt import DiffusionIQTNet
from diffiqt.nets.esrgan import ESRGANGenerator3d
from diffiqt.nets.linear_iqt import LinearIQT


@dataclass(frozen=True)
class _Entry:
    builder: type[Network]
    summary: str
    paper_parameters_m: float | None  # the paper's count in millions (Tables 1 and 2), if it gives one
    settings: dict[str, Any] = field(default_factory=dict)  # differences from the builder's defaults


_ABLATION = {"attention": False, "cross_batch": False}
_SMALL = dict(widths=[8, 32, 64], res_blocks=1, embed_dim=128, heads=4, deep_feature_width=128, time_dim=64)
_REGISTRY: dict[str, _Entry] = {
    "paper": _Entry(DiffusionIQTNet, "DiffusionIQT: attention, deep feature, cross-batch", 15.2),
    "no-crossbatch": _Entry(DiffusionIQTNet, "ablation: no cross-batch attention or padding", 13.6, _ABLATION),
    "no-deepfeature-no-crossbatch": _Entry(
        DiffusionIQTNet, "ablation: neither deep feature nor cross-batch", 9.9, {**_ABLATION, "deep_feature": False}
    ),
    "small": _Entry(
        DiffusionIQTNet,
        "DiffusionIQT at CPU size: all mechanisms, narrow (8 channels at full resolution)",
        None,
        _SMALL,
    ),
    "lowfield-small": _Entry(
        DiffusionIQTNet,
        "DiffusionIQT on the low-field grid: x8 slices folded into channels, all mechanisms, 32 channels",
        None,
        {**_SMALL, "widths": [32, 64, 128], "patch_size": 16, "slice_fold": 8},
    ),
    "unet": _Entry(UNet3d, "3D U-Net (Lin et al. 2023)", 48.8, {"widths": [96, 192, 384, 768]}),
    "resunet": _Entry(UNet3d, "3D ResU-Net (Lin et al. 2023)", 37.2, {"widths": [80, 160, 320, 640], "residual": True}),
    "esrgan": _Entry(ESRGANGenerator3d, "3D ESRGAN generator (RRDB)", 28.7),
    "interpolation": _Entry(Interpolation, "cubic interpolation: the LF condition itself", None),
    "linear-iqt": _Entry(LinearIQT, "linear IQT: per-slice-phase least-squares filter (fitted, not trained)", None),
}


def list_networks() -> list[str]:
    """Names accepted by :func:`build_network`, in the order the paper presents them."""
    return list(_REGISTRY)


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown network {name!r}; choose one of: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def build_network(name: str, **overrides: Any) -> Network:
    """Build the network ``name`` with the given constructor arguments changed.

    The module gets ``name`` and ``config``: ``build_network(**net.config)`` rebuilds the same
    architecture, and ``config`` is JSON-serialisable (checkpoints store it).
    """
    entry = _entry(name)
    parameters = inspect.signature(entry.builder).parameters.values()
    defaults = {p.name: _jsonable(p.default) for p in parameters if p.default is not inspect.Parameter.empty}
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ConfigError(f"network {name!r} has no setting {', '.join(unknown)}; it has: {', '.join(defaults)}")
    settings = {**defaults, **entry.settings, **{k: _jsonable(v) for k, v in overrides.items()}}
    try:
        net = entry.builder(**settings)
    except (ValueError, TypeError) as exc:  # settings that do not fit together, e.g. from a config file
        raise ConfigError(f"network {name!r} cannot be built with these settings: {exc}") from exc
    net.name = name
    net.config = {"name": name, **settings}
    return net


def network_config(net: Network) -> dict[str, Any]:
    """The arguments that rebuild ``net`` with :func:`build_network` (a copy of ``net.config``)."""
    return dict(net.config)


def network_summary(name: str) -> str:
    """One line saying what the network ``name`` is."""
    return _entry(name).summary


def paper_parameters_m(name: str) -> float | None:
    """The paper's parameter count for ``name`` in millions, or None where the paper gives none."""
    return _entry(name).paper_parameters_m


def count_parameters(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def count_flops(net: Network) -> int:
    """FLOPs of one forward pass on one patch (patch_size³), as FlopCounterMode counts them.

    FlopCounterMode counts convolutions and matrix products (2 per multiply-add); elementwise work
    such as norms, activations and the cell-local token convolutions is not included. A network built
    on the meta device (``with torch.device("meta"): build_network(...)``) is counted without computing.
    """
    device = next(net.parameters(), torch.empty(0)).device
    size = net.patch_size
    x = torch.zeros(1, net.in_channels, size, size, size, device=device)
    args = (x, torch.zeros(1, device=device)) if net.needs_time else (x,)
    training = net.training
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net.eval()(*args)
    net.train(training)
    return counter.get_total_flops()
