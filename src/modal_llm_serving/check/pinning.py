"""Rules on pinning: the model's revision (MLS001) and the engine and image versions (MLS013).

A pinned commit and `==` versions mean a rebuild serves what was tested; anything that floats
can change the model or the engine under you.
"""

from __future__ import annotations

import re

from modal_llm_serving.check.app import (
    ENGINE_PACKAGES,
    HEX,
    Model,
    argv_options,
    package_name,
    package_specs,
)
from modal_llm_serving.check.rules import Finding, finding
from modal_llm_serving.check.source import UNKNOWN, Source, kwarg, line_of

__all__ = ["unpinned_engine", "unpinned_revision"]

_VERSION = re.compile(r"^\d+(\.\d+){1,3}([a-z0-9.+-]*)$")
# A shell command line written as one string is text, not a list the argv reader could read.
_REVISION_IN_COMMAND = re.compile(r"--revision[ =]+[0-9a-f]{7,40}\b")


def unpinned_revision(src: Source, model: Model | None) -> list[Finding]:
    """MLS001: the model is loaded without a pinned commit."""
    if model is None:
        return []
    revision = src.constants.get("MODEL_REVISION", UNKNOWN)
    line = src.constant_lines.get("MODEL_REVISION", model.line)
    passed = [src.resolve(kwarg(c, "revision")) for c in src.calls
              if kwarg(c, "revision") is not None]
    if "MODEL_REVISION" in src.constants:
        if not (isinstance(revision, str) and HEX.match(revision)):
            return [finding("MLS001", src.path, line,
                            f"MODEL_REVISION = {revision!r} is not a commit hash")]
        if not src.mentions("MODEL_REVISION") and not passed:
            return [finding("MLS001", src.path, line,
                            "MODEL_REVISION is defined but never passed on")]
        return []
    pinned = [v for v in passed if isinstance(v, str) and HEX.match(v)]
    if not pinned and not _revision_in_argv(src):
        return [finding("MLS001", src.path, model.line,
                        f"{model.name} is loaded with no pinned revision")]
    return []


def _revision_in_argv(src: Source) -> bool:
    if any(option.flag == "--revision" and isinstance(option.value, str)
           and HEX.match(option.value) for _, option in argv_options(src)):
        return True
    return any(_REVISION_IN_COMMAND.search(str(s.value)) for s in src.strings)


def unpinned_engine(src: Source) -> list[Finding]:
    """MLS013: an engine version, pip requirement or base image that is not pinned."""
    found = []
    for name in ("VLLM_VERSION", "SGLANG_VERSION"):
        value = src.constants.get(name)
        if name in src.constants and not (isinstance(value, str) and _VERSION.match(value)):
            found.append(finding("MLS013", src.path, src.constant_lines[name],
                                 f"{name} = {value!r}"))
    for spec, line in package_specs(src):
        if package_name(spec) in ENGINE_PACKAGES and "==" not in spec:
            found.append(finding("MLS013", src.path, line, f"{spec!r} is not pinned with =="))
    for call in src.calls_named("from_registry"):
        tag = src.resolve(call.args[0]) if call.args else UNKNOWN
        if isinstance(tag, str):
            image_tag = tag.rsplit("/", 1)[-1]
            if ":" not in image_tag and "@sha256" not in tag:
                found.append(finding("MLS013", src.path, line_of(call),
                                     f"image {tag!r} has no tag"))
            elif image_tag.endswith(":latest"):
                found.append(finding("MLS013", src.path, line_of(call),
                                     f"image {tag!r} uses 'latest'"))
    return found
