"""Tests that need a package registry: skipped with the reason where it cannot be reached, except
in CI (`CI` set), which has the network and must run them (a skip there would hide a failure)."""

from __future__ import annotations

import os

import httpx
import pytest

__all__ = ["NPM_REGISTRY", "PYPI_INDEX", "require_reachable"]

PYPI_INDEX = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
NPM_REGISTRY = os.environ.get("NPM_CONFIG_REGISTRY", "https://registry.npmjs.org").rstrip("/")


def require_reachable(url: str, what: str) -> None:
    """Skip the calling test when `url` does not answer (fail instead in CI)."""
    try:
        httpx.head(url, timeout=10, follow_redirects=True).raise_for_status()
    except httpx.HTTPError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must reach {what} ({url}): {exc}")
        pytest.skip(f"{what} is not reachable here ({url}: {exc})")
