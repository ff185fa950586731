"""The toolkit's own cache folder: converted models, facts read from the Hub, error logs."""

from __future__ import annotations

import os
from pathlib import Path

from modal_llm_serving.errors import UsageError

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """The toolkit's cache folder: $MLS_CACHE_DIR, else $XDG_CACHE_HOME/modal-llm-serving.

    A setting that names something other than a folder (a file, /dev/null) is the user's to
    fix: one line, exit 2, instead of a failure deep inside whatever wanted to cache."""
    if explicit := os.environ.get("MLS_CACHE_DIR"):
        folder, where = Path(explicit), f"MLS_CACHE_DIR={explicit}"
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        folder = Path(base) / "modal-llm-serving"
        where = f"the cache folder {folder} (XDG_CACHE_HOME or HOME)"
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{where} is not a folder; point it at a folder (or unset it)")
    return folder
