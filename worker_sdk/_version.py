"""The SDK's name and version as announced in hello."""

from __future__ import annotations

from importlib import metadata

SDK_NAME = "faultline-python"

try:
    # The distribution's name on PyPI ("faultline" there is another project).
    SDK_VERSION = metadata.version("faultline-jobs")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    SDK_VERSION = "0.0.0+unknown"
