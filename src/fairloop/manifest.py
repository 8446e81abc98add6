"""The manifest that travels with every reported number: config hash, seeds, versions, model ids."""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

PACKAGES = ("fairloop", "torch", "torchvision", "numpy", "pandas", "scikit-learn", "aif360", "lime")


def config_hash(config: dict[str, Any]) -> str:
    """A stable short hash of a JSON-able config (key order does not matter)."""
    canonical = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def build_manifest(config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """``config`` is what the user chose; ``extra`` adds facts such as the data hash or model id."""
    return {
        "config": config,
        "config_hash": config_hash(config),
        **extra,
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
