"""The README's contract, generated: any input ends in a result or one line, a documented code.

For each command, hypothesis draws option values from what people (and typos) pass: numbers of
every size and sign, nan and inf, words, newlines, non-ASCII; files of random bytes, TOML with
nan, JSON of the wrong shape. Each invocation must exit 0, 1, 2 or 130 with no traceback (an
unexpected exception would exit 3, "internal error"), and nothing half-written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modal_llm_serving.bench.records import RequestRecord
from modal_llm_serving.cli import cli
from modal_llm_serving.redact import (
    forget_secrets,
    redact,
    redact_headers,
    redact_url,
    register_environment,
)
from tests.ports import REFUSING_PORT, REFUSING_URL

DOCUMENTED_EXITS = {0, 1, 2, 130}
CLOSED = REFUSING_URL  # a port we hold and never listen on: connections are refused at once
REV = "220b46e3b2180893580a4454f21f22d3ebb187d3"
EXAMPLES = int(os.environ.get("MLS_FUZZ_EXAMPLES", "40"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "NaN", "1e400", "-0", "0", "1e-320", "1e23"]),
    st.integers(-(10**30), 10**30).map(str),
    st.text(max_size=6))
words = st.one_of(st.text(max_size=12), st.sampled_from(
    ["x\ny", "é", "a:b", "Authorization: Bearer\nX", "uniform:1:nan", "normal:nan:1",
     "normal:5:inf", "1,2,nan", "0", "-1", "inf", "1,1", "uniform:9:1"]))


def invoke(args: list[str], **kwargs: Any) -> Result:
    return CliRunner().invoke(cli, args, catch_exceptions=True, **kwargs)


def assert_contract(result: Result) -> None:
    """A documented exit code, no traceback, and on failure a message (not a stack)."""
    assert result.exit_code in DOCUMENTED_EXITS, (result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        repr(result.exception), result.output)
    assert "Traceback" not in result.output
    assert "internal error" not in result.output, result.output


# --- options, per command ------------------------------------------------------------------------

PLAN_OPTIONS = ["--concurrency", "--context-length", "--ttft-ms", "--tpot-ms", "--throughput",
                "--cold-start-s", "--budget", "--goal", "--region", "--precision", "--gpu"]


@pytest.fixture(scope="module")
def local_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local checkpoint folder with a small Llama-shaped config (planning needs no weights)."""
    folder = tmp_path_factory.mktemp("model")
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "hidden_size": 2048, "num_hidden_layers": 16,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000,
        "intermediate_size": 8192, "max_position_embeddings": 8192, "torch_dtype": "bfloat16"}))
    return folder


@SETTINGS
@given(picks=st.lists(st.tuples(st.sampled_from(PLAN_OPTIONS), st.one_of(numbers, words)),
                      max_size=3),
       assignments=st.lists(st.tuples(st.text(max_size=8), st.one_of(numbers, words)),
                            max_size=2))
def test_plan_any_options(local_model: Path, picks: list[tuple[str, str]],
                          assignments: list[tuple[str, str]]) -> None:
    args = ["plan", "--model", str(local_model)]
    for option, value in picks:
        args += [option, value]
    for name, value in assignments:
        args += ["--set", f"{name}={value}"]
    assert_contract(invoke(args))


@SETTINGS
@given(toml=st.one_of(
    st.binary(max_size=80),
    st.lists(st.tuples(st.sampled_from(["concurrency", "ttft_ms", "budget_per_hour",
                                        "input_tokens", "output_tokens", "context_length",
                                        "cold_start_s", "goal", "offline", "model"]),
                       st.sampled_from(["nan", "inf", "-inf", "1e30", "100000000000000000000000",
                                        "-5", "0", "'x'", "[1]", "{a=1}", "true", "3"])),
             max_size=4).map(lambda pairs: "\n".join(f"{k} = {v}" for k, v in pairs).encode())))
def test_plan_any_workload_file(local_model: Path, tmp_path_factory: pytest.TempPathFactory,
                                toml: bytes) -> None:
    path = tmp_path_factory.mktemp("workload") / "w.toml"
    text = toml if b"model" in toml else toml + f'\nmodel = "{local_model}"'.encode()
    path.write_bytes(text)
    assert_contract(invoke(["plan", str(path)]))


@SETTINGS
@given(catalog=st.one_of(
    st.binary(max_size=60),
    st.sampled_from(["price_per_hour = nan", "price_per_hour = inf", "memory_gb = -1",
                     "fp8_tflops = 'x'", "nvlink = 3", "hbm_tb_s = 1e300"]).map(
        lambda line: f"[gpus.H100]\n{line}\n".encode()),
    st.sampled_from(["[platform]\nengine_init_s = nan\n", "gpus = 5\n", "[gpus]\nH100 = 3\n",
                     "[nope]\n"]).map(str.encode)))
def test_plan_any_gpu_catalog(local_model: Path, tmp_path_factory: pytest.TempPathFactory,
                              catalog: bytes) -> None:
    path = tmp_path_factory.mktemp("catalog") / "gpus.toml"
    path.write_bytes(catalog)
    result = invoke(["plan", "--model", str(local_model), "--gpu-catalog", str(path)])
    assert_contract(result)
    assert "$nan" not in result.output and "$inf" not in result.output


def test_absurd_workloads_are_refused_with_the_limit(local_model: Path) -> None:
    huge = invoke(["plan", "--model", str(local_model), "--concurrency", str(10**23)])
    assert huge.exit_code == 2 and "at most 1e+06" in huge.output
    many = invoke(["plan", "--model", str(local_model), "--concurrency", "900000"])
    assert many.exit_code == 1 and "GPUs" in many.output, many.output
    long = invoke(["plan", "--model", str(local_model), "--set", "input_tokens=9000"])
    assert long.exit_code == 1 and "maximum context of 8192" in long.output, long.output


BENCH_NUMERIC = ["--burstiness", "--duration", "--warmup", "--cooldown", "--timeout",
                 "--stall-timeout", "--num-requests", "--concurrency", "--rate",
                 "--max-concurrency", "--retries", "--turns", "--seed"]


@SETTINGS
@given(picks=st.lists(st.tuples(st.sampled_from([*BENCH_NUMERIC, "--input-len", "--output-len",
                                                 "--header", "--api-key", "--slo"]),
                                st.one_of(numbers, words)), max_size=3),
       url=st.one_of(st.just(CLOSED), st.sampled_from([
           "http://127.0.0.1:99999", "http://127.0.0.1:0", "ftp://x", "http://", "http:// x",
           f"http://user:pw@127.0.0.1:{REFUSING_PORT}", f"https://127.0.0.1:{REFUSING_PORT}/v1?x=1",
                f"127.0.0.1:{REFUSING_PORT}"]),
           st.text(max_size=10)))
def test_bench_run_any_options(tmp_path_factory: pytest.TempPathFactory,
                               picks: list[tuple[str, str]], url: str) -> None:
    out = tmp_path_factory.mktemp("bench") / "out"
    # No --model: after checking every option, listing the models of the closed port fails at
    # once (a valid -n 1000000000 would otherwise run a billion refused connections).
    args = ["bench", "run", url, "--out", str(out), "--no-report"]
    for option, value in picks:
        args += [option, value]
    result = invoke(args)
    assert_contract(result)
    assert "pw@" not in result.output
    if result.exit_code == 2:  # refused at the edge: nothing written
        assert not out.exists() or not any(out.iterdir())


@SETTINGS
@given(timeout=st.one_of(numbers, st.sampled_from(["0", "0.2", "1"])),
       header=st.one_of(st.none(), words),
       url=st.sampled_from([CLOSED, "http://127.0.0.1:99999", f"https://x:y@127.0.0.1:{REFUSING_PORT}"]))
def test_smoke_any_options(timeout: str, header: str | None, url: str) -> None:
    try:  # a valid timeout longer than a second would only wait; the invalid ones must fail
        if 1 < float(timeout) < float("inf"):
            timeout = "1"
    except ValueError:
        pass
    args = ["smoke", url, "--ready-timeout", timeout] + (["--header", header] if header else [])
    result = invoke(args)
    assert_contract(result)
    assert ":y@" not in result.output


@SETTINGS
@given(source=st.one_of(st.text(max_size=200), st.binary(max_size=200).map(
    lambda b: b.decode("latin-1")), st.sampled_from([
        "x = " + "(" * 3000 + ")" * 3000, "x = " + "+".join(["a"] * 60000),
        "def f():\n" + "".join("    " * i + "if x:\n" for i in range(1, 120)) + "    " * 120
        + "pass\n"])),
       timeout=numbers)
def test_check_any_file(tmp_path_factory: pytest.TempPathFactory, source: str,
                        timeout: str) -> None:
    path = tmp_path_factory.mktemp("check") / "app.py"
    path.write_text(source, encoding="utf-8", errors="surrogateescape")
    assert_contract(invoke(["check", "--no-import", "--import-timeout", timeout, str(path)]))


def test_check_with_a_python_that_cannot_run(tmp_path: Path) -> None:
    fake = tmp_path / "python"
    fake.write_text("not a program")
    app = tmp_path / "app.py"
    app.write_text("import modal\napp = modal.App('x')\n")
    result = invoke(["check", "--python", str(fake), str(app)])
    assert result.exit_code == 2 and "not an executable program" in result.output


@SETTINGS
@given(recipe=st.one_of(words, st.sampled_from(["vllm_online", "nope", "/etc/passwd", "."])),
       port=numbers)
def test_local_command_any_options(recipe: str, port: str) -> None:
    assert_contract(invoke(["local", "command", "--no-check", "--recipe", recipe,
                            "--port", port]))


# --- files a run left (or someone edited) ------------------------------------------------------

records = st.one_of(
    st.builds(lambda i: RequestRecord(index=i, input_len=4, max_tokens=4, sent_ns=0,
                                      first_token_ns=5, last_token_ns=9, end_ns=10,
                                      token_events=2, completion_tokens=2).to_dict(),
              st.integers(0, 99)),
    st.dictionaries(st.sampled_from(["index", "input_len", "max_tokens", "sent_ns", "end_ns",
                                     "error", "itl_ns", "saw_done", "completion_tokens"]),
                    st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=3),
                              st.lists(st.integers(), max_size=2)), max_size=6))
jsonl_lines = st.one_of(records.map(json.dumps), st.sampled_from(
    ["[1, 2]", "null", '"x"', "{", "\udcff", "{}", ""]))
summaries = st.one_of(
    st.just("{}"), st.just("[]"), st.just("{\"completed\": 1"), st.binary(max_size=20).map(
        lambda b: b.decode("latin-1")),
    st.fixed_dictionaries({
        "completed": st.one_of(st.integers(0, 5), st.text(max_size=2)), "failed": st.just(0),
        "duration": st.one_of(st.floats(0, 9), st.none()), "request_throughput": st.just(1.0),
        "output_throughput": st.just(1.0), "total_token_throughput": st.just(1.0),
        "achieved_concurrency": st.just(1.0), "n_ttft": st.one_of(st.integers(0, 3), st.none()),
        "mean_ttft_ms": st.one_of(st.floats(0, 9), st.text(max_size=2)),
        "error_counts": st.one_of(st.just({"x": 1}), st.just([1]), st.text(max_size=2)),
        "harness": st.one_of(st.just({"client_cpu_fraction_of_one_core": "a"}),
                             st.just({"warnings": [1]}), st.just([]))}).map(json.dumps))


@SETTINGS
@given(lines=st.one_of(st.none(), st.lists(jsonl_lines, max_size=6)),
       summary=st.one_of(st.none(), summaries),
       sweep=st.one_of(st.none(), st.sampled_from(['{"levels": ["c1", "c2"]', "{}",
                                                   '{"levels": ["c1", 3]}', '["c1"]',
                                                   '{"levels": ["c1", "c9"]}'])),
       in_level=st.booleans())
def test_bench_report_any_folder(tmp_path_factory: pytest.TempPathFactory,
                                 lines: list[str] | None, summary: str | None,
                                 sweep: str | None, in_level: bool) -> None:
    folder = tmp_path_factory.mktemp("report")
    target = folder / "c1" if in_level else folder
    target.mkdir(exist_ok=True)
    if lines is not None:
        (target / "requests.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8",
                                               errors="surrogateescape")
    if summary is not None:
        (target / "summary.json").write_text(summary, encoding="utf-8", errors="surrogateescape")
    if sweep is not None:
        (folder / "sweep.json").write_text(sweep)
    result = invoke(["bench", "report", str(folder)])
    assert_contract(result)
    has_data = lines is not None or summary is not None
    if result.exit_code == 0:
        assert has_data and (folder / "report.md").is_file()


@SETTINGS
@given(data=st.one_of(st.binary(max_size=60), st.lists(jsonl_lines, max_size=4).map(
    lambda lines: "\n".join(lines).encode("utf-8", "surrogateescape"))),
       suffix=st.sampled_from([".jsonl", ".json"]))
def test_bench_dataset_any_file(tmp_path_factory: pytest.TempPathFactory, data: bytes,
                                suffix: str) -> None:
    folder = tmp_path_factory.mktemp("dataset")
    path = folder / f"prompts{suffix}"
    path.write_bytes(data)
    result = invoke(["bench", "run", CLOSED, "--model", "m", "--dataset", str(path),
                     "--tokenizer", str(folder), "--out", str(folder / "out"), "-n", "1"])
    assert_contract(result)


# --- results are never lost or mixed -----------------------------------------------------------

def test_out_with_results_is_refused_unless_overwrite(tmp_path: Path) -> None:
    (tmp_path / "summary.json").write_text("{}")
    refused = invoke(["bench", "run", CLOSED, "--model", "m", "--out", str(tmp_path)])
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    assert (tmp_path / "summary.json").read_text() == "{}"  # untouched
    (tmp_path / "notes.txt").write_text("mine")
    foreign = invoke(["bench", "run", CLOSED, "--model", "m", "--out", str(tmp_path),
                      "--overwrite"])
    assert foreign.exit_code == 2 and "not benchmark results" in foreign.output
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_out_that_cannot_be_written_is_refused_before_any_work(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = invoke(["bench", "run", CLOSED, "--model", "m", "--out", str(blocker / "x")])
    assert result.exit_code == 2 and "cannot write there" in result.output


def test_default_folders_never_collide(tmp_path: Path) -> None:
    from modal_llm_serving.bench.results import new_out_dir

    made = {new_out_dir(tmp_path, "bench") for _ in range(5)}  # within one second
    assert len(made) == 5 and all(path.is_dir() for path in made)


def test_interrupted_sweep_folder_reports(tmp_path: Path) -> None:
    """An interrupt after the first level: sweep.json names both, only c1 has records."""
    from modal_llm_serving.bench.results import write_sweep

    (tmp_path / "c1").mkdir()
    record = RequestRecord(index=0, input_len=4, max_tokens=4, sent_ns=0, first_token_ns=5,
                           last_token_ns=9, end_ns=10, token_events=2, completion_tokens=2)
    (tmp_path / "c1" / "requests.jsonl").write_text(json.dumps(record.to_dict()) + "\n")
    write_sweep(tmp_path, ["c1", "c2"], [])
    result = invoke(["bench", "report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "interrupted; rebuilt" in (tmp_path / "report.md").read_text()


# --- secrets and client-side mistakes ----------------------------------------------------------

def test_redaction_of_urls_headers_and_known_values() -> None:
    assert redact_url("see https://a:b@h.example/v1 and http://t@h") == \
        "see https://***@h.example/v1 and http://***@h"
    assert redact_headers({"X-Api-Key": "k", "Cookie": "c", "Modal-Secret": "s",
                           "Modal-Session-ID": "id"}) == {
        "X-Api-Key": "***", "Cookie": "***", "Modal-Secret": "***", "Modal-Session-ID": "id"}
    forget_secrets()
    # Modal's proxy tokens too, as a pair and in the combined form its Endpoint docs export
    register_environment({"MLS_API_KEY": "sk-very-secret",
                          "MODAL_PROXY_TOKEN_SECRET": "ws-pair-secret",
                          "MODAL_PROXY_TOKEN": "wk-one.ws-combined"})
    try:
        assert redact("key sk-very-secret leaked") == "key *** leaked"
        assert redact("ws-pair-secret, Bearer wk-one.ws-combined") == "***, Bearer ***"
    finally:
        forget_secrets()


@pytest.mark.parametrize("header", ["X-Trace: a\nb", "X-Name: é", "Bad Name: x"])
def test_bad_header_is_said_at_once_not_retried(header: str) -> None:
    result = invoke(["smoke", CLOSED, "--header", header, "--ready-timeout", "300"])
    assert result.exit_code == 2 and "header" in result.output.lower(), result.output


def test_https_to_a_plain_http_server_is_said_at_once(tmp_path: Path) -> None:
    import http.server
    import threading

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}"
        smoke = invoke(["smoke", url, "--ready-timeout", "300"])
        assert smoke.exit_code == 2 and "http://" in smoke.output, smoke.output
        bench = invoke(["bench", "run", url, "--out", str(tmp_path / "o")])
        assert bench.exit_code == 2 and "TLS" in bench.output, bench.output
    finally:
        server.shutdown()


# Real-looking credentials (the shapes of a Hugging Face token and an OpenAI-style key).
HF_SECRET = "hf_T9xQw3LmZ8rKvB2nYp5sJd7GfH4cA6eRtU"
API_SECRET = "sk-proj-4fJ9kL2mN8pQ1rS6tV3wX7yZ0aB5cD"


@pytest.mark.parametrize(("args", "env", "secret"), [
    (["revision", "org/model"], {"HF_TOKEN": HF_SECRET}, HF_SECRET),  # from the environment
    (["smoke", CLOSED, "--api-key", API_SECRET], {}, API_SECRET),  # from an option
])
def test_an_unexpected_error_is_one_line_with_a_log_and_credentials_masked(
        args: list[str], env: dict[str, str], secret: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Exit 3: one line, the traceback in a log, and the credential the command sent masked in
    both. The bug is planted below our code: httpx's transport raises an unexpected error that
    quotes the request's Authorization header, as a library's message may."""
    import httpx

    def boom(_transport: Any, request: httpx.Request) -> httpx.Response:
        raise RuntimeError(f"proxy refused {request.headers['authorization']!r}")

    monkeypatch.setattr(httpx.HTTPTransport, "handle_request", boom)
    result = invoke(args, env=env)
    assert result.exit_code == 3
    shown = result.stdout + result.stderr
    assert secret not in shown and secret[4:20] not in shown
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("Error: internal error: RuntimeError: proxy refused 'Bearer ***'")
    assert "details in" in line
    log = Path(line.split("details in ", 1)[1].split(";", 1)[0]).read_text()
    assert "Traceback" in log and "RuntimeError: proxy refused 'Bearer ***'" in log
    assert secret not in log and secret[4:20] not in log


@pytest.mark.parametrize("header", ["Host: evil.example", "content-length: 5",
                                    "Transfer-Encoding: chunked", "Connection: close"])
@pytest.mark.parametrize("command", [["smoke"], ["bench", "run"],
                                     ["bench", "cold-start", "--model", "m"]])
def test_a_header_the_client_sets_is_refused(header: str, command: list[str]) -> None:
    """Sent twice (ours and the user's), it is a request-smuggling shape: one line, exit 2."""
    result = invoke([*command, CLOSED, "--header", header])
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("Error: header") and "set by the client itself" in line, line
