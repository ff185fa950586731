"""Every writer of the toolkit writes whole files through a temporary file of its own.

For each writer (`mls new`, a results summary, a report): a user's file with the name the old
code used as its temporary (`OUTPUT.tmp`) is left alone, a symlink planted there or at the
target itself never redirects the write, and nothing is left behind but the target.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from modal_llm_serving.bench.results import write_json
from modal_llm_serving.files import FolderClaim, write_atomic
from modal_llm_serving.recipes.files import recipe_path
from modal_llm_serving.recipes.new import write_app

WRITERS: dict[str, Callable[[Path], None]] = {
    "mls new": lambda out: write_app(recipe_path("vllm_online"), {"N_GPU": 2}, out, force=True),
    "summary.json": lambda out: write_json(out, {"completed": 1}),
    "write_atomic": lambda out: write_atomic(out, "text\n"),
}


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("planted", ["file", "link", "target-link"])
def test_writers_never_write_through_a_planted_name(writer: str, planted: str,
                                                    tmp_path: Path) -> None:
    out = tmp_path / "out.py"
    victim = tmp_path / "victim"
    victim.write_text("mine\n")
    old_temp = tmp_path / "out.py.tmp"
    if planted == "file":
        old_temp.write_text("mine too\n")
    elif planted == "link":
        old_temp.symlink_to(victim)
    else:
        out.symlink_to(victim)
    WRITERS[writer](out)
    assert victim.read_text() == "mine\n"
    assert out.is_file() and not out.is_symlink() and out.read_text() != "mine\n"
    if planted == "file":
        assert old_temp.read_text() == "mine too\n"
    left = {path.name for path in tmp_path.iterdir()} - {"out.py", "victim", "out.py.tmp"}
    assert left == set()


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    out = tmp_path / "summary.json"
    out.write_text('{"old": true}\n')
    with pytest.raises(TypeError):
        write_atomic(out, object())  # type: ignore[arg-type]
    assert json.loads(out.read_text()) == {"old": True}
    assert [path.name for path in tmp_path.iterdir()] == ["summary.json"]


def test_a_folder_claim_is_one_holder_at_a_time_and_leaves_no_file(tmp_path: Path) -> None:
    with FolderClaim(tmp_path):
        assert "pid" in (tmp_path / ".mls-lock").read_text()
        with pytest.raises(Exception, match="being written by another run"):
            FolderClaim(tmp_path).acquire()
    assert list(tmp_path.iterdir()) == []
    with FolderClaim(tmp_path):  # free again
        pass
