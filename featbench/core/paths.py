"""Where featbench keeps things: its cache and the suite definitions."""

from __future__ import annotations

import os
import re
from pathlib import Path

import platformdirs

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # featbench/


def cache_dir() -> Path:
    """featbench's cache: ``$FEATBENCH_CACHE``, else the user cache dir (``~/.cache/featbench``)."""
    root = os.environ.get("FEATBENCH_CACHE") or platformdirs.user_cache_dir("featbench")
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def suites_dir() -> Path:
    """Suite definitions: ``tasks/`` in a checkout, packaged as ``featbench/_suites`` in a wheel."""
    packaged = PACKAGE_DIR / "_suites"
    if packaged.is_dir():
        return packaged
    return PACKAGE_DIR.parent / "tasks"


def custom_suites_dir() -> Path:
    """Suites made by ``featbench build --custom`` (``<cache>/suites``), loadable by the name the build printed."""
    return cache_dir() / "suites"


WEIGHTS_ENV_PREFIX = "FEATBENCH_WEIGHTS_"


def weights_env_var(backbone: str) -> str:
    """The variable naming a file of `backbone`'s weights (``FEATBENCH_WEIGHTS_CONVNEXT_BASE_288``).

    An environment variable, so that every process of a run (isolated scoring children too) loads
    the same weights without each command growing an option for it."""
    return WEIGHTS_ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", backbone).upper()


def weights_files() -> dict[str, str]:
    """The weights files given to this process ({variable: path})."""
    return {k: v for k, v in os.environ.items() if k.startswith(WEIGHTS_ENV_PREFIX) and v}
