"""diffiqt: low-field brain MRI enhancement with a 3D conditional diffusion model.

The public Python API (see docs/usage.md, "Python API")::

    scan = diffiqt.load_volume("lf.nii.gz")                    # a Volume in RAS+
    model = diffiqt.load_model("default")                      # a shipped model, checkpoint or run folder
    result = diffiqt.enhance_scan(scan, model, diffiqt.EnhanceOptions(samples=2))
    diffiqt.save_volume(result.mean, "enhanced.nii.gz")

and ``diffiqt.simulate_low_field(hf, None, diffiqt.LowFieldParams.for_factor(8, 1.0), rng)`` makes a
low-field scan of a high-field one. The names are imported on first use, so that ``import diffiqt`` (and
the command line, which imports this package) does not pay for torch and scipy until they are needed.

``enhance_scan`` is :func:`diffiqt.inference.enhance.enhance`.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("diffiqt")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

if TYPE_CHECKING:  # what the lazy names below resolve to, for type checkers and editors
    from diffiqt.imaging.io import Volume, load_volume, save_volume
    from diffiqt.inference.enhance import EnhanceOptions, EnhanceResult
    from diffiqt.inference.enhance import enhance as enhance_scan
    from diffiqt.models.loading import Model, load_model
    from diffiqt.simulation import LowFieldParams, LowFieldResult, simulate_low_field

# public name -> (module, name in that module)
_EXPORTS: dict[str, tuple[str, str]] = {
    "Volume": ("diffiqt.imaging.io", "Volume"),
    "load_volume": ("diffiqt.imaging.io", "load_volume"),
    "save_volume": ("diffiqt.imaging.io", "save_volume"),
    "LowFieldParams": ("diffiqt.simulation", "LowFieldParams"),
    "LowFieldResult": ("diffiqt.simulation", "LowFieldResult"),
    "simulate_low_field": ("diffiqt.simulation", "simulate_low_field"),
    "Model": ("diffiqt.models.loading", "Model"),
    "load_model": ("diffiqt.models.loading", "load_model"),
    "EnhanceOptions": ("diffiqt.inference.enhance", "EnhanceOptions"),
    "EnhanceResult": ("diffiqt.inference.enhance", "EnhanceResult"),
    "enhance_scan": ("diffiqt.inference.enhance", "enhance"),
}

__all__ = [
    "EnhanceOptions",
    "EnhanceResult",
    "LowFieldParams",
    "LowFieldResult",
    "Model",
    "Volume",
    "__version__",
    "enhance_scan",
    "load_model",
    "load_volume",
    "save_volume",
    "simulate_low_field",
]  # _EXPORTS and the version


def __getattr__(name: str) -> Any:
    """Import a public name on first use and keep it, so later lookups are plain attribute reads."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'diffiqt' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
