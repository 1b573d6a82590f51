"""Version checks for the optional adapters, so that an old library fails with a message, not a traceback.

The small CPU models need only what pyproject.toml asks for; the adapters of the papers' pretrained
components use newer transformers APIs (prefix attention masks, the PIL ZoeDepth processor) and say so
when they are absent.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from packaging.version import Version  # a dependency of transformers, hence always installed here


def require(package: str, minimum: str, feature: str) -> None:
    """Raise an ImportError naming `feature` when `package` is missing or older than `minimum`."""
    try:
        installed = version(package)
    except PackageNotFoundError as error:
        raise ImportError(f"{feature} needs {package} >= {minimum}, which is not installed") from error
    if Version(installed) < Version(minimum):
        raise ImportError(f"{feature} needs {package} >= {minimum} (the version it was tested with); "
                          f"installed: {installed}. Upgrade with: pip install -U '{package}>={minimum}'")
