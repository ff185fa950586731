"""Every row of the hostile corpus (corpus.py), run as its own `mls` process: the documented
exit code, never 3 ("a bug in mls"), no traceback, one line on stderr."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.mockserver import MockProcess
from tests.hostile.corpus import CASES, REV, Case
from tests.ports import REFUSING_URL

CLOSED = REFUSING_URL  # a port we hold and never listen on: connections are refused at once


@pytest.fixture(scope="module")
def mock() -> Iterator[Any]:
    with MockProcess(ttft_ms=1, itl_ms=1) as server:
        yield server


def run_case(case: Case, tmp: Path, mock_url: str) -> subprocess.CompletedProcess[str]:
    def fill(text: str) -> str:
        return (text.replace("{tmp}", str(tmp)).replace("{mock}", mock_url)
                .replace("{closed}", CLOSED).replace("{rev}", REV))

    def limits() -> None:
        if case.file_size_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (case.file_size_limit,) * 2)

    (tmp / "home").mkdir()
    if case.setup is not None:
        case.setup(tmp)
    env = {**os.environ, "HOME": str(tmp / "home"), "MLS_CACHE_DIR": str(tmp / "cache"),
           "HF_ENDPOINT": CLOSED, "PYTHONUNBUFFERED": "1"}
    env.pop("MLS_API_KEY", None)
    env.update({name: fill(value) for name, value in case.env.items()})
    return subprocess.run([sys.executable, "-m", "modal_llm_serving.cli",
                           *(fill(word) for word in case.argv)],
                          cwd=tmp, env=env, capture_output=True, text=True, errors="replace",
                          timeout=case.timeout_s, stdin=subprocess.DEVNULL, preexec_fn=limits,
                          check=False)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_hostile_case_keeps_the_contract(case: Case, tmp_path: Path,
                                         request: pytest.FixtureRequest) -> None:
    mock_url = request.getfixturevalue("mock").url if case.mock else CLOSED
    done = run_case(case, tmp_path, mock_url)
    said = f"exit {done.returncode}\nstdout: {done.stdout[-800:]}\nstderr: {done.stderr[-800:]}"
    assert done.returncode != 3, said
    assert done.returncode == case.code, said
    assert "Traceback" not in done.stdout + done.stderr, said
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    if case.report or case.code == 0:
        assert errors == [] and (case.progress or len(lines) <= 1), said
    elif case.progress:
        assert len(errors) == 1 and lines[-1] == errors[0], said
    else:
        assert lines == errors and len(errors) == 1, said


def test_the_corpus_ids_are_unique() -> None:
    assert len({case.id for case in CASES}) == len(CASES)
