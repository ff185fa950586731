"""The eval runner, offline: recorded transcripts, and a stand-in agent CLI on PATH."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from modal_llm_serving.cli import cli
from modal_llm_serving.skill.evals import (
    find_agent,
    judge_prompt,
    parse_transcript,
    parse_verdicts,
    run_evals,
    score_triggers,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "evals"


def lines(name: str) -> list[str]:
    return (FIXTURES / name).read_text().splitlines()


def test_claude_transcripts_trigger_or_not() -> None:
    triggered = parse_transcript(lines("claude_triggered.jsonl"))
    assert triggered.triggered and len(triggered.tool_calls) == 2
    assert triggered.final.startswith("Here is app.py")
    quiet = parse_transcript(lines("claude_not_triggered.jsonl"))
    assert not quiet.triggered and quiet.final.startswith("Use sentence-transformers")


def test_codex_transcript_and_a_truncated_line() -> None:
    transcript = parse_transcript(lines("codex_triggered.jsonl"))
    assert transcript.triggered and transcript.events == 5  # the non-JSON line is skipped
    assert transcript.final == "Wrote app.py from the cold-start recipe."


def test_naming_another_skill_is_not_a_trigger() -> None:
    event = {"type": "assistant", "message": {"content": [
        {"type": "tool_use", "name": "Skill", "input": {"skill": "modal-llm-serving-old"}},
        {"type": "tool_use", "name": "Read",
         "input": {"file_path": "x/modal-finetuning/SKILL.md"}}]}}
    assert not parse_transcript([json.dumps(event)]).triggered


def test_trigger_precision_and_recall() -> None:
    scores = score_triggers([(True, True), (True, False), (False, True), (False, False),
                             (True, True)])
    assert (scores["true_positive"], scores["false_positive"], scores["false_negative"]) == (
        2, 1, 1)
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == pytest.approx(2 / 3)
    assert score_triggers([(False, False)])["precision"] is None  # nothing to divide


def test_judge_answers_are_matched_in_order_and_gaps_fail() -> None:
    judged = parse_transcript(lines("judge.jsonl")).final
    verdicts = parse_verdicts(judged, ["a", "b", "c"])
    assert [v["passed"] for v in verdicts] == [True, False, False]
    assert verdicts[2]["evidence"] == "the judge gave no verdict"
    assert all(not v["passed"] for v in parse_verdicts("I cannot grade this.", ["a"]))
    assert all(not v["passed"] for v in parse_verdicts("[1, 2", ["a"]))


def test_judge_prompt_carries_task_expectations_and_evidence() -> None:
    case = {"prompt": "Deploy Qwen3", "expectations": ["pins the revision"]}
    prompt = judge_prompt(case, parse_transcript(lines("claude_triggered.jsonl")))
    assert "Deploy Qwen3" in prompt and "pins the revision" in prompt
    assert "modal --version" in prompt and "Here is app.py" in prompt


FAKE_AGENT = """#!{python}
import json, pathlib, sys
prompt = sys.argv[sys.argv.index("-p") + 1]
skill = pathlib.Path(".claude/skills/modal-llm-serving/SKILL.md")
assert skill.is_file(), "the runner installs the skill into the workspace"
if prompt.startswith("You grade"):
    print(json.dumps({{"type": "result", "result": json.dumps(
        [{{"passed": True, "evidence": "ok"}}] * 20)}}))
elif "Modal" in prompt or "modal" in prompt:
    print(json.dumps({{"type": "assistant", "message": {{"content": [{{"type": "tool_use",
        "name": "Read", "input": {{"file_path": str(skill.resolve())}}}}]}}}}))
    print(json.dumps({{"type": "result", "result": "done"}}))
else:
    print(json.dumps({{"type": "result", "result": "not mine"}}))
"""


@pytest.fixture
def fake_claude(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in `claude` on PATH that loads the skill when the prompt mentions Modal."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    agent = bin_dir / "claude"
    agent.write_text(FAKE_AGENT.format(python=sys.executable))
    agent.chmod(agent.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-not-a-key")
    return agent


def test_runner_end_to_end_with_a_stand_in_agent(fake_claude: Path, tmp_path: Path) -> None:
    assert find_agent() == "claude"
    out = tmp_path / "results"
    summary = run_evals(agent="claude", out_dir=out, limit=4)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and {row["suite"] for row in rows} == {"trigger", "tasks"}
    assert summary["trigger"]["n"] == 4 and summary["tasks"] == {"n": 4, "passed": 4}
    assert json.loads((out / "summary.json").read_text()) == summary


def test_cli_skips_in_one_line_without_an_agent(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    result = CliRunner().invoke(cli, ["skill", "eval", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0 and "evals skipped: no agent CLI" in result.output
    assert not (tmp_path / "r").exists()
