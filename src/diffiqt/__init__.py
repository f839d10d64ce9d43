"""diffiqt: low-field brain MRI enhancement with a 3D conditional diffusion model."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("diffiqt")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
