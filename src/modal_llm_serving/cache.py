"""The toolkit's own cache folder: converted models, facts read from the Hub, error logs."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """The toolkit's cache folder: $MLS_CACHE_DIR, else $XDG_CACHE_HOME/modal-llm-serving."""
    if explicit := os.environ.get("MLS_CACHE_DIR"):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "modal-llm-serving"
