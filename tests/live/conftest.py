"""Live tests deploy the recipes on Modal for real: skipped unless Modal credentials are present.

They also need the API-key Secret the server recipes use (`mls-api-key`, holding MLS_API_KEY) and
the same key in this shell's MLS_API_KEY; they never create or overwrite a Secret. Every deployed
app is stopped at the end, pass or fail. GPU time is billed: run them on purpose with
`pytest tests/live -m live`.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest


def modal_credentials_present() -> bool:
    """A token in the environment, or in ~/.modal.toml (any profile); never read beyond that."""
    if os.environ.get("MODAL_TOKEN_ID") and os.environ.get("MODAL_TOKEN_SECRET"):
        return True
    config = Path(os.environ.get("MODAL_CONFIG_PATH", Path.home() / ".modal.toml"))
    try:
        profiles = tomllib.loads(config.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return False
    return any(isinstance(p, dict) and p.get("token_id") and p.get("token_secret")
               for p in profiles.values())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    skip = pytest.mark.skip(reason="no Modal credentials (MODAL_TOKEN_ID/MODAL_TOKEN_SECRET or "
                                   "a token in ~/.modal.toml): live tests deploy for real")
    present = modal_credentials_present()
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.live)
            if not present:
                item.add_marker(skip)
