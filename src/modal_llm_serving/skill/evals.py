"""Run the skill's evals through a real agent CLI, and score what it did.

Two suites live in the skill's `evals/` folder: `trigger-evals.json` (queries that should or should
not make an agent load this skill) and `evals.json` (tasks with expectations). `run_evals` sends
each to an agent CLI found on PATH (`claude -p ... --output-format stream-json`, or `codex exec
--json ...`) in a scratch workspace where the skill is installed, and reads the agent's JSON-lines
transcript:

- **triggered**: some tool call of the agent names this skill (the Skill tool with its name, or a
  read of `modal-llm-serving/SKILL.md`). Precision and recall come from those verdicts.
- **expectations**: the same agent CLI, given the task, the expectations and the run's final
  answer and tool calls, answers a JSON list of {expectation, passed, evidence}; a case passes
  when every expectation does.

Results are written as each case finishes (`results.jsonl`), then `summary.json`. Parsing and
scoring are plain functions of recorded transcripts, so they are tested offline.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from modal_llm_serving.errors import UsageError
from modal_llm_serving.files import write_atomic
from modal_llm_serving.redact import redact_json
from modal_llm_serving.skill import SKILL_NAME, skill_dir
from modal_llm_serving.skill.install import install_skill

__all__ = ["AGENTS", "Transcript", "find_agent", "input_files", "judge_prompt", "parse_transcript",
           "parse_verdicts", "run_evals", "score_triggers"]

# How each agent CLI runs one prompt non-interactively with a JSON-lines transcript, and where
# it looks for project-level skills (relative to the workspace).
AGENTS: dict[str, dict[str, Any]] = {
    "claude": {"argv": ["claude", "-p", "{prompt}", "--output-format", "stream-json",
                        "--verbose", "--permission-mode", "acceptEdits"],
               "skills": ".claude/skills",
               "credentials": ("ANTHROPIC_API_KEY", "~/.claude/.credentials.json",
                               "~/.claude.json")},
    "codex": {"argv": ["codex", "exec", "--json", "--skip-git-repo-check", "{prompt}"],
              "skills": ".agents/skills",
              "credentials": ("OPENAI_API_KEY", "~/.codex/auth.json")},
}


@dataclasses.dataclass(frozen=True)
class Transcript:
    """What an agent run did: its tool calls (serialized) and its final answer."""

    tool_calls: list[str]
    final: str
    events: int

    @property
    def triggered(self) -> bool:
        return any(_names_the_skill(call) for call in self.tool_calls)


def _names_the_skill(call: str) -> bool:
    return f"{SKILL_NAME}/SKILL.md" in call or f'"{SKILL_NAME}"' in call or (
        f"skill: {SKILL_NAME}" in call)


def _walk(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


def parse_transcript(lines: list[str]) -> Transcript:
    """Tool calls and final answer from a JSON-lines transcript (claude or codex); lines that
    are not JSON objects are skipped, so a truncated transcript still yields what it has."""
    calls: list[str] = []
    final = ""
    events = 0
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        events += 1
        for node in _walk(event):
            kind = node.get("type")
            if kind == "tool_use" and "input" in node:  # claude
                calls.append(json.dumps({"name": node.get("name"), "input": node["input"]}))
            elif kind in ("command_execution", "function_call", "local_shell_call"):  # codex
                calls.append(json.dumps({key: node[key] for key in node
                                         if key in ("command", "name", "arguments", "action")}))
            elif kind == "agent_message" and isinstance(node.get("text"), str):
                final = node["text"]
        if event.get("type") == "result" and isinstance(event.get("result"), str):
            final = event["result"]
    return Transcript(tool_calls=calls, final=final, events=events)


def score_triggers(verdicts: list[tuple[bool, bool]]) -> dict[str, Any]:
    """(should_trigger, triggered) pairs to precision, recall and the counts behind them."""
    tp = sum(1 for want, got in verdicts if want and got)
    fp = sum(1 for want, got in verdicts if not want and got)
    fn = sum(1 for want, got in verdicts if want and not got)
    tn = len(verdicts) - tp - fp - fn
    return {"n": len(verdicts), "true_positive": tp, "false_positive": fp,
            "false_negative": fn, "true_negative": tn,
            "precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / (tp + fn) if tp + fn else None}


def judge_prompt(case: dict[str, Any], transcript: Transcript) -> str:
    """The grading request for one case: task, expectations, and what the agent did."""
    calls = "\n".join(call[:400] for call in transcript.tool_calls[-60:])
    expectations = json.dumps(case.get("expectations", []), indent=1)
    return (
        "You grade one run of a coding agent. Do not run any tool. For each expectation decide "
        "from the evidence below whether the run met it. Answer with only a JSON list of "
        '{"expectation": ..., "passed": true|false, "evidence": "..."}, one per expectation, '
        f"in order.\n\nTASK:\n{case.get('prompt', '')}\n\nEXPECTATIONS:\n{expectations}\n\n"
        f"TOOL CALLS (last 60):\n{calls}\n\nFINAL ANSWER:\n{transcript.final[:8000]}\n")


def parse_verdicts(text: str, expectations: list[str]) -> list[dict[str, Any]]:
    """The judge's JSON list, matched to the expectations in order; anything unreadable or
    missing counts as not passed, with the reason as evidence."""
    start, end = text.find("["), text.rfind("]")
    answer: Any = None
    if 0 <= start < end:
        try:
            answer = json.loads(text[start:end + 1])
        except ValueError:
            answer = None
    items = [item for item in answer if isinstance(item, dict)] if isinstance(answer, list) \
        else []
    verdicts = []
    for index, expectation in enumerate(expectations):
        item = items[index] if index < len(items) else {}
        passed = item.get("passed") is True
        evidence = str(item.get("evidence", "")) if item else "the judge gave no verdict"
        verdicts.append({"expectation": expectation, "passed": passed, "evidence": evidence})
    return verdicts


def find_agent(preferred: str | None = None) -> str | None:
    """The first agent CLI on PATH that has credentials (or `preferred`, if it qualifies)."""
    names = [preferred] if preferred else list(AGENTS)
    for name in names:
        if name not in AGENTS:
            raise UsageError(f"unknown agent {name!r}; choose one of {', '.join(AGENTS)}")
        if shutil.which(AGENTS[name]["argv"][0]) and any(
                os.environ.get(item) if item.isupper() else Path(item).expanduser().exists()
                for item in AGENTS[name]["credentials"]):
            return name
    return None


def _run_agent(agent: str, prompt: str, *, workspace: Path, timeout: float) -> list[str]:
    argv = [word.replace("{prompt}", prompt) for word in AGENTS[agent]["argv"]]
    try:
        done = subprocess.run(argv, cwd=workspace, capture_output=True, text=True,
                              errors="replace", timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:  # (the partial output is bytes, undecoded)
        out = (exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes)
               else (exc.stdout or ""))
        return out.splitlines()
    return done.stdout.splitlines()


def input_files(case: dict[str, Any], skill: Path | None = None) -> list[str]:
    """The input files a task case names (paths relative to the skill folder, which is also
    where its prompt finds them in the workspace); one that is missing is an error, since a case
    run without its input grades the agent on a task it was never given."""
    skill = skill or skill_dir()
    names = case.get("files", [])
    for name in names:
        path = Path(name)
        if path.is_absolute() or ".." in path.parts or not (skill / path).is_file():
            raise UsageError(f"eval {case.get('id', '?')!r} names input file {name!r}, which is "
                             f"not a file under {skill}; fix its \"files\" in evals/evals.json")
    return list(names)


def _workspace(agent: str, files: list[str]) -> Path:
    """A scratch folder with the skill installed where `agent` looks (without its evals: the
    installer leaves them out) and each input file at the path the case's prompt names."""
    folder = Path(tempfile.mkdtemp(prefix="mls-eval-"))
    install_skill(folder / AGENTS[agent]["skills"])
    for name in files:
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((skill_dir() / name).read_bytes())
    return folder


def run_evals(*, agent: str, out_dir: Path, suites: tuple[str, ...] = ("trigger", "tasks"),
              limit: int | None = None, timeout: float = 900.0,
              on_case: Callable[[dict[str, Any]], None] = lambda _c: None) -> dict[str, Any]:
    """Run the suites through `agent`; write results as they come; return the summary."""
    folder = skill_dir() / "evals"
    cases = json.loads((folder / "evals.json").read_text(encoding="utf-8"))["evals"][:limit] \
        if "tasks" in suites else []
    inputs = {case["id"]: input_files(case) for case in cases}  # all found before any run
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"agent": agent, "date": time.strftime("%Y-%m-%d %H:%M")}
    with (out_dir / "results.jsonl").open("a", encoding="utf-8") as sink:
        def record(row: dict[str, Any]) -> None:
            sink.write(redact_json(row) + "\n")
            sink.flush()
            on_case(row)

        if "trigger" in suites:
            queries = json.loads((folder / "trigger-evals.json").read_text(encoding="utf-8"))
            verdicts = []
            for query in queries[:limit]:
                workspace = _workspace(agent, [])
                try:
                    lines = _run_agent(agent, query["query"], workspace=workspace,
                                       timeout=timeout)
                finally:
                    shutil.rmtree(workspace, ignore_errors=True)
                got = parse_transcript(lines).triggered
                verdicts.append((bool(query["should_trigger"]), got))
                record({"suite": "trigger", "query": query["query"],
                        "should_trigger": query["should_trigger"], "triggered": got})
            summary["trigger"] = score_triggers(verdicts)
        if "tasks" in suites:
            passed = 0
            for case in cases:
                workspace = _workspace(agent, inputs[case["id"]])
                try:
                    transcript = parse_transcript(_run_agent(
                        agent, case["prompt"], workspace=workspace, timeout=timeout))
                    judged = parse_transcript(_run_agent(
                        agent, judge_prompt(case, transcript), workspace=workspace,
                        timeout=timeout))
                finally:
                    shutil.rmtree(workspace, ignore_errors=True)
                verdicts_ = parse_verdicts(judged.final, case.get("expectations", []))
                ok = bool(verdicts_) and all(v["passed"] for v in verdicts_)
                passed += ok
                record({"suite": "tasks", "id": case["id"], "passed": ok,
                        "triggered": transcript.triggered, "expectations": verdicts_})
            summary["tasks"] = {"n": len(cases[:limit]), "passed": passed}
    write_atomic(out_dir / "summary.json", redact_json(summary, indent=2))
    return summary
