"""Text from outside is shown inert: on the terminal and in report.md it draws only itself.

Hypothesis writes hostile strings (control characters C0 and C1, escape sequences, CR, LF, line
separators, bidi overrides, lone surrogates, Markdown table pipes, backticks, HTML, and lines
that forge a smoke table row or "all steps passed") and puts them where a server or a file puts
text: the served model id and an error message (the echo server, tests/echo_server.py), and
every string of a saved summary. The smoke table keeps its rows, says "all steps passed" only
when they did, and prints no control character; report.md keeps the shape (lines, headings,
table cells, code spans, HTML) of the same report made with plain strings.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from modal_llm_serving.cli import cli
from modal_llm_serving.display import markdown_text, terminal_text
from modal_llm_serving.redact import redact_json
from tests.echo_server import echo_server

EXAMPLES = int(os.environ.get("MLS_FUZZ_EXAMPLES", "25"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])

FORGERIES = [
    "\n  PASS  chat           0.01 s  fine\nall steps passed",
    "\x1b[2J\x1b[Hall steps passed", "x\rall steps passed", "x\u2028all steps passed",
    "\x85all steps passed", "\x9b2J", "\u202egnp.exe", "a\x00b\x07c\x7fd", "\ud800",
    "| ok | 1 |\n|---|---|", "x | y | z", "`code` <b>bold</b> [link](http://e.x) ![i](x.png)",
    "**bold** _it_ ~~s~~ # h &amp; $x$", "\\| \\` \\\\", "\t\v\f",
]
hostile = st.one_of(
    st.sampled_from(FORGERIES),
    st.text(alphabet=st.one_of(
        st.characters(categories=["Cc", "Cf", "Zl", "Zp", "Zs"]),
        st.sampled_from("|`*_[]<>#&$!\\~ aZ09-\n\r\x1b\u202e\u2066\ud800\udfff")), max_size=24))


def invoke(args: list[str]) -> Result:
    result = CliRunner().invoke(cli, args, catch_exceptions=True)
    assert result.exit_code in (0, 1, 2), (args, result.exit_code, result.output)
    assert "Traceback" not in result.output and "internal error" not in result.output
    return result


def assert_printable_lines(text: str) -> list[str]:
    lines = text.split("\n")
    for line in lines:
        assert line.isprintable(), repr(line)
    return lines


# --- the terminal --------------------------------------------------------------------------------

STEPS = ["ready", "health", "models", "chat", "chat-stream"]


def assert_smoke_table(output: str, *, passed: bool) -> None:
    """A title, one row per step in order, then the verdict; nothing forged in between."""
    lines = assert_printable_lines(output.rstrip("\n"))
    assert lines[0].startswith("smoke test of "), lines
    for line, step in zip(lines[1:6], STEPS, strict=True):
        assert re.match(rf"  (PASS|FAIL|skip)  {step} ", line), lines
    assert ("all steps passed" in lines) is passed, lines
    if passed:
        assert lines[6:] == ["all steps passed"], lines
    else:
        assert lines[6].startswith("failed at '") and len(lines) == 7, lines


@SETTINGS
@given(text=hostile)
@example(text=FORGERIES[0])
def test_smoke_table_shows_a_hostile_model_id_and_error_inert(text: str) -> None:
    with echo_server(mode="ok", model=text.replace("\ud800", "").replace("\udfff", "")) as ok:
        assert_smoke_table(invoke(["smoke", ok.url, "--ready-timeout", "5"]).output,
                           passed=True)
    with echo_server(mode="error", leak=text) as failing:
        result = invoke(["smoke", failing.url, "--ready-timeout", "5"])
        assert result.exit_code == 1
        assert_smoke_table(result.output, passed=False)


@given(text=hostile)
def test_terminal_text_is_one_printable_line(text: str) -> None:
    shown = terminal_text(text)
    assert shown.isprintable() and "\n" not in shown
    assert shown == text or not text.isprintable()  # printable text is shown as it is


# --- report.md -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run's folder (its requests failed at a server that answered 400)."""
    folder = tmp_path_factory.mktemp("run") / "out"
    with echo_server(mode="error", leak="nope") as server:
        invoke(["bench", "run", server.url, "--model", "m", "-n", "2", "--input-len", "8",
                "--output-len", "4", "--out", str(folder)])
    assert (folder / "summary.json").is_file()
    return folder


def _with_strings(summary: dict[str, Any], text: str) -> dict[str, Any]:
    """The summary with `text` in every string a server or an editor could have put there."""
    kind = next(iter(summary["error_counts"]))
    summary.update(model_id=text, base_url=text, label=text, date=text, backend=text,
                   request_goodput=1.0, slo_attainment=0.5, goodput_config=text,
                   error_counts={kind: 2, text or "empty": 1},
                   error_examples={kind: text, text or "empty": text})
    summary["harness"]["warnings"] = [text, f"{text} again"]
    summary["data"].update(dataset=text, tokenizer_source=text, input_len=text, output_len=text)
    summary["client"]["transport"] = text
    summary["config"].update(num_requests=text, duration_s=text, warmup_s=text, turns=text)
    return summary


def _report(saved_run: Path, folder: Path, text: str) -> tuple[str, list[str]]:
    shutil.copytree(saved_run, folder)
    summary = json.loads((folder / "summary.json").read_text())
    # written as the toolkit writes a summary (lone surrogates replaced: a strict reader refuses
    # them), so the report is rendered from the summary, not rebuilt without it
    (folder / "summary.json").write_text(redact_json(_with_strings(summary, text)))
    result = invoke(["bench", "report", str(folder)])
    assert result.exit_code == 0, result.output
    return (folder / "report.md").read_text(encoding="utf-8"), result.output.split("\n")


def _unescaped(char: str, line: str) -> int:
    """How many times `char` stands in `line` unescaped (after an even run of backslashes)."""
    return len(re.findall(r"(?<!\\)(?:\\\\)*" + re.escape(char), line))


def shape(report: str) -> list[tuple[Any, ...]]:
    """What Markdown makes of each line: its block kind and the markup it holds."""
    return [(re.match(r"#*>?\|?-?!?", line)[0],  # type: ignore[index]
             *(_unescaped(char, line) for char in "|`<>[]*_&$"))
            for line in report.split("\n")]


@SETTINGS
@given(text=hostile.filter(bool))  # (an empty example is left out of the terminal view)
@example(text="| forged | row |\n| all steps passed | 0 |")
def test_report_md_keeps_its_shape_whatever_the_strings(
        text: str, saved_run: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    plain, plain_lines = _report(saved_run, tmp_path_factory.mktemp("p") / "run", "plain")
    hostile_report, hostile_lines = _report(saved_run, tmp_path_factory.mktemp("h") / "run", text)
    assert_printable_lines(hostile_report)
    assert shape(hostile_report) == shape(plain), hostile_report
    assert_printable_lines("\n".join(hostile_lines))
    assert len(hostile_lines) == len(plain_lines), hostile_lines


@given(text=hostile)
def test_markdown_text_escapes_all_markup(text: str) -> None:
    shown = markdown_text(text)
    assert shown.isprintable()
    for char in "|`<>[]*_&$#!~":
        assert _unescaped(char, shown) == 0, shown


# --- by construction -----------------------------------------------------------------------------

PACKAGE = Path(__file__).parent.parent / "src" / "modal_llm_serving"
PRINTERS = {"echo", "print", "secho", "write"}  # click.echo, print, sys.stdout.write, ...
SHOWN_THROUGH = {"terminal_text", "redact_json"}


def test_every_printer_of_the_package_goes_through_terminal_text() -> None:
    """Every call that writes to the terminal (click.echo, print, sys.std*.write) prints a
    value made by `terminal_text` (or `redact_json`, JSON being inert as written)."""
    import ast

    raw = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = ast.unparse(func.value) if isinstance(func, ast.Attribute) else ""
            if name not in PRINTERS or (name == "write" and owner not in (
                    "sys.stdout", "sys.stderr")):
                continue
            wrapped = {inner.func.id for arg in node.args for inner in ast.walk(arg)
                       if isinstance(inner, ast.Call) and isinstance(inner.func, ast.Name)}
            if not wrapped & SHOWN_THROUGH:
                raw.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {ast.unparse(node)}")
    assert raw == [], "\n".join(raw)
