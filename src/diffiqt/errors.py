"""Errors a user can cause. The CLI prints their message on one line and exits 2."""


class DiffiqtError(Exception):
    """Base class of every error caused by input, configuration or environment."""


class InputError(DiffiqtError):
    """An input file is missing, unreadable or not a usable 3D image."""


class OutputError(DiffiqtError):
    """An output cannot be written where asked (unwritable, or would overwrite an input)."""


class ConfigError(DiffiqtError):
    """A configuration, model name or checkpoint does not fit what was asked."""
