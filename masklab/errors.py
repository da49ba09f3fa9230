"""Exceptions masklab raises on purpose, each with the exit code the CLI maps it to.

Exit codes (the CLI's contract): 0 all inputs succeeded; 1 some inputs failed (the run finished);
2 usage error; 3 model weights unavailable (offline, no cache); 4 weights do not fit the model.
"""

from __future__ import annotations

__all__ = [
    "MasklabError",
    "UsageError",
    "WeightsUnavailableError",
    "WeightsMismatchError",
    "ImageLoadError",
    "MissingDependencyError",
    "DatasetError",
]


class MasklabError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with when this reaches it."""

    exit_code = 1


class UsageError(MasklabError, ValueError):
    """Bad arguments: an unknown model name, a flag out of range, an input that does not exist."""

    exit_code = 2


class WeightsUnavailableError(MasklabError):
    """Pretrained weights are not cached and cannot be downloaded (offline, or the URL failed)."""

    exit_code = 3


class WeightsMismatchError(MasklabError, ValueError):
    """A weights file does not fit the architecture (missing/unexpected keys, wrong shapes)."""

    exit_code = 4


class ImageLoadError(MasklabError, ValueError):
    """An input could not be read as an image (unsupported format, corrupt, too many pixels...)."""

    exit_code = 1


class MissingDependencyError(MasklabError, ImportError):
    """An optional dependency is not installed; the message names the ``pip install`` line."""

    exit_code = 2


class DatasetError(MasklabError, ValueError):
    """A dataset file is malformed: a missing field, an unknown image or category id, a bad mask."""

    exit_code = 2
