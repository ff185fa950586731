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
from modal_llm_serving.errors import UsageError
from modal_llm_serving.skill import skill_dir
from modal_llm_serving.skill.evals import (
    find_agent,
    input_files,
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
import json, pathlib, re, sys
prompt = sys.argv[sys.argv.index("-p") + 1]
skill = pathlib.Path(".claude/skills/modal-llm-serving/SKILL.md")
assert skill.is_file(), "the runner installs the skill into the workspace"
# What a careless agent could find: its own grading criteria beside the skill.
seen = sorted(str(p) for p in pathlib.Path(".").rglob("*.json"))
# Every file path the prompt names (folder/file.py) must be there to read.
named = re.findall(r"[\\w.-]+/[\\w./-]+\\.py", prompt)
missing = [name for name in named if not pathlib.Path(name).is_file()]
# A task whose prompt holds the text of the file "careless" beside this script is skipped.
careless = pathlib.Path(__file__).with_name("careless")
skip = careless.is_file() and careless.read_text() in prompt
if prompt.startswith("You grade"):
    # The judge reads the prompt as a judge would: one verdict per expectation, from the
    # evidence (did the run read the skill, did it finish, with its input and without its grades)
    graded = prompt.split("EXPECTATIONS:\\n", 1)[1]
    expectations = json.loads(graded.split("\\n\\nTOOL CALLS", 1)[0])
    calls = prompt.split("TOOL CALLS (last 60):\\n", 1)[1].split("\\n\\nFINAL ANSWER:", 1)[0]
    final = prompt.split("FINAL ANSWER:\\n", 1)[1].strip()
    problems = [why for why, bad in (
        ("the skill was never read", "SKILL.md" not in calls),
        ("the run did not finish", not final.startswith("done")),
        ("an input file was missing", "NO-INPUT" in final),
        ("the grading criteria were readable", "GRADES-VISIBLE" in final)) if bad]
    print(json.dumps({{"type": "result", "result": json.dumps(
        [{{"expectation": e, "passed": not problems, "evidence": "; ".join(problems) or "met"}}
         for e in expectations])}}))
elif skip:
    print(json.dumps({{"type": "result", "result": "I did something else"}}))
elif "modal" in prompt.lower() or "Model: " in prompt or named:
    print(json.dumps({{"type": "assistant", "message": {{"content": [{{"type": "tool_use",
        "name": "Read", "input": {{"file_path": str(skill.resolve())}}}}]}}}}))
    answer = "done" + (" NO-INPUT " + " ".join(missing) if missing else "")
    answer += " GRADES-VISIBLE " + " ".join(seen) if seen else ""
    print(json.dumps({{"type": "result", "result": answer}}))
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
    cases = json.loads((skill_dir() / "evals" / "evals.json").read_text())["evals"][:4]
    tasks = [row for row in rows if row["suite"] == "tasks"]
    for case, row in zip(cases, tasks, strict=True):  # one verdict per expectation, in order
        assert [v["expectation"] for v in row["expectations"]] == case["expectations"]
        assert all(v["passed"] and v["evidence"] == "met" for v in row["expectations"])


def test_the_judge_fails_a_run_that_did_not_do_the_task(fake_claude: Path,
                                                        tmp_path: Path) -> None:
    """The stand-in agent skips the second case (no skill read, no "done"): the judge fails
    each of its expectations with the reason, the others pass, and the summary counts it."""
    cases = json.loads((skill_dir() / "evals" / "evals.json").read_text())["evals"][:3]
    fake_claude.with_name("careless").write_text(cases[1]["prompt"])
    summary = run_evals(agent="claude", out_dir=tmp_path / "r", suites=("tasks",), limit=3)
    rows = [json.loads(line) for line in (tmp_path / "r" / "results.jsonl").read_text()
            .splitlines()]
    assert [row["passed"] for row in rows] == [True, False, True]
    failed = rows[1]["expectations"]
    assert len(failed) == len(cases[1]["expectations"]) > 0
    assert all(not v["passed"] and v["evidence"] == "the skill was never read; the run did "
               "not finish" for v in failed), failed
    assert summary["tasks"] == {"n": 3, "passed": 2}


def cases_with_inputs() -> list[dict]:
    cases = json.loads((skill_dir() / "evals" / "evals.json").read_text())["evals"]
    return [case for case in cases if case["files"]]


def test_a_case_gets_its_input_where_its_prompt_says_and_never_its_grades(
        fake_claude: Path, tmp_path: Path) -> None:
    """The stand-in agent fails the case when a file its prompt names is missing from the
    workspace, or when any evals JSON (the grading criteria) is readable there."""
    cases = json.loads((skill_dir() / "evals" / "evals.json").read_text())["evals"]
    with_input = [i for i, case in enumerate(cases) if case["files"]]
    assert with_input, "some case should give the agent an input file"
    last = with_input[-1] + 1
    summary = run_evals(agent="claude", out_dir=tmp_path / "r", suites=("tasks",), limit=last)
    results = (tmp_path / "r" / "results.jsonl").read_text()
    rows = [json.loads(line) for line in results.splitlines()]
    failed = [row["id"] for row in rows if not row["passed"]]
    assert failed == [] and summary["tasks"] == {"n": last, "passed": last}
    for case in cases_with_inputs():
        assert all(name in case["prompt"] for name in case["files"]), case["id"]


def test_a_missing_input_file_is_an_error_not_a_skip(tmp_path: Path) -> None:
    (tmp_path / "evals" / "files").mkdir(parents=True)
    (tmp_path / "evals" / "files" / "app.py").write_text("print()")
    assert input_files({"id": "ok", "files": ["evals/files/app.py"]}, tmp_path) == [
        "evals/files/app.py"]
    for wrong in ("evals/evals/files/app.py", "files/app.py", "../app.py", "/etc/hostname"):
        with pytest.raises(UsageError, match=r"names input file .* not a file under"):
            input_files({"id": "review", "files": [wrong]}, tmp_path)
    for case in cases_with_inputs():  # the shipped cases name files that exist
        assert input_files(case) == case["files"]


def test_cli_skips_in_one_line_without_an_agent(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    result = CliRunner().invoke(cli, ["skill", "eval", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    (line,) = result.output.splitlines()  # one line, nothing else
    assert line.startswith("evals skipped: no agent CLI"), result.output
    assert not (tmp_path / "r").exists()
