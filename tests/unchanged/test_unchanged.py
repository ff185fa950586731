"""Issue 20's refactor changes no output: each recorded file is produced again, byte for byte."""

from __future__ import annotations

from pathlib import Path

from tests.unchanged.cases import BEFORE, outputs


def test_outputs_unchanged(tmp_path: Path) -> None:
    now = outputs(tmp_path)
    before = {p.name: p.read_text() for p in BEFORE.iterdir()}
    assert sorted(now) == sorted(before)
    changed = [name for name in before if now[name] != before[name]]
    assert not changed, changed
