"""Outside JSON, read through each of its readers: a hostile value is a classified failure of
that request or that file, never an exception of another kind and never exit 3.

The values (tests/hostile_json.py) break a bound of `untrusted.read_json`: nesting, huge or
out-of-range numbers, NaN, lone surrogates, bytes that are not UTF-8. Each test puts them where a
reader reads a real field: a stream chunk's usage, a model's config.json, a saved summary, a
record, a sweep index, a dataset line. The readers that talk to a server (smoke, bench,
`mls revision`, the Hub) meet the same values over loopback in tests/bench/test_hostile_server.py
and tests/test_deadlines.py.
"""

from __future__ import annotations

import doctest
import hashlib
import json
import os
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.mockserver import MockProcess, Script
from modal_llm_serving import untrusted
from modal_llm_serving.bench.api import run_benchmark
from modal_llm_serving.bench.data import load_jsonl
from modal_llm_serving.bench.options import parse_options
from modal_llm_serving.bench.records import RequestRecord
from modal_llm_serving.bench.results import read_records, read_summary
from modal_llm_serving.cli import cli
from modal_llm_serving.endpoint.smoke import run_smoke
from modal_llm_serving.endpoint.wire import (
    MAX_TOKEN_COUNT,
    MalformedResponse,
    error_message,
    parse_object,
    read_chunk,
)
from modal_llm_serving.errors import DatasetError, UntrustedDataError, UsageError
from modal_llm_serving.facts.hub import read_hub_model
from modal_llm_serving.facts.models import model_facts
from modal_llm_serving.untrusted import MAX_DEPTH, read_json, read_json_file
from tests.hostile_json import hostile_values, in_document
from tests.hub_server import HubRepo, running_hub

EXAMPLES = int(os.environ.get("MLS_FUZZ_EXAMPLES", "40"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])

CHUNK = b'{"id": "c", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": @}}'
CONFIG = (b'{"architectures": ["LlamaForCausalLM"], "hidden_size": 2048, "num_hidden_layers": '
          b'16, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000, '
          b'"intermediate_size": 8192, "max_position_embeddings": @, "torch_dtype": "bfloat16"}')
SUMMARY = b'{"completed": 1, "failed": 0, "duration": @, "request_throughput": 1}'
RECORD = b'{"index": 0, "input_len": 4, "max_tokens": 4, "completion_tokens": @}'
GOOD_RECORD = RequestRecord(index=1, input_len=4, max_tokens=4, sent_ns=0, first_token_ns=10,
                            last_token_ns=20, end_ns=30, token_events=2, completion_tokens=2)


def test_module_examples() -> None:
    result = doctest.testmod(untrusted)
    assert result.attempted > 0 and result.failed == 0


@SETTINGS
@given(value=hostile_values(), where=st.sampled_from(
    [b"@", b"[1, @]", b'{"a": {"b": [@]}}', CHUNK, CONFIG, SUMMARY]))
def test_read_json_refuses_each_bound_wherever_it_is_broken(value: bytes, where: bytes) -> None:
    document = where.replace(b"@", value)
    with pytest.raises(UntrustedDataError):
        read_json(document, what="x")
    with pytest.raises(UntrustedDataError):  # text too, as decoded with errors="replace"
        text = document.decode("utf-8", "surrogateescape")
        read_json(text, what="x")


def test_the_bounds_leave_real_data_alone() -> None:
    nested: object = 1
    for _ in range(MAX_DEPTH - 1):
        nested = [nested]
    real = {"n": 2**63 - 1, "m": -(2**63) + 1, "f": 1.5e308, "tiny": 1e-320, "emoji": "😀",
            "brackets": "[[[[" * 100, "deep": nested}
    assert read_json(json.dumps(real), what="x") == real  # escaped: a surrogate pair is whole
    assert read_json(json.dumps(real, ensure_ascii=False).encode(), what="x") == real
    with pytest.raises(UntrustedDataError, match="larger than 10 bytes"):
        read_json(b"[1, 2, 3, 4, 5]", what="x", max_bytes=10)


@SETTINGS
@given(chunk=in_document(CHUNK))
def test_a_hostile_chunk_is_a_malformed_response(chunk: bytes) -> None:
    with pytest.raises(MalformedResponse):
        read_chunk(parse_object(chunk, what="the chunk"), chat=True)
    line = error_message(chunk)  # an error body: shown as one line, never raised
    assert "\n" not in line


@pytest.mark.parametrize("count", [MAX_TOKEN_COUNT + 1, 2**63 - 1, -1])
def test_usage_counts_are_bounded(count: int) -> None:
    payload = {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": count}}
    with pytest.raises(MalformedResponse, match="not a token count"):
        read_chunk(payload, chat=True)


@SETTINGS
@given(config=in_document(CONFIG))
def test_a_hostile_config_json_is_a_usage_error(tmp_path_factory: pytest.TempPathFactory,
                                                 config: bytes) -> None:
    folder = tmp_path_factory.mktemp("model")
    (folder / "config.json").write_bytes(config)
    with pytest.raises(UsageError):
        model_facts(str(folder))
    result = CliRunner().invoke(cli, ["plan", "--model", str(folder)])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) <= 3 and "Traceback" not in result.output


@SETTINGS
@given(summary=in_document(SUMMARY), record=in_document(RECORD), with_records=st.booleans())
def test_hostile_saved_results_are_skipped_or_refused(tmp_path_factory: pytest.TempPathFactory,
                                                      summary: bytes, record: bytes,
                                                      with_records: bool) -> None:
    folder = tmp_path_factory.mktemp("run")
    (folder / "summary.json").write_bytes(summary)
    if with_records:
        good = json.dumps(GOOD_RECORD.to_dict()).encode()
        (folder / "requests.jsonl").write_bytes(good + b"\n" + record + b"\n")
        assert len(list(read_records(folder / "requests.jsonl"))) == 1  # the hostile one skipped
        rebuilt = read_summary(folder)  # summary.json unusable: rebuilt from the records
        assert rebuilt["completed"] == 1 and "rebuilt" in rebuilt["label"]
    else:
        with pytest.raises(UsageError, match="not valid JSON"):
            read_summary(folder)
    result = CliRunner().invoke(cli, ["bench", "report", str(folder)])
    assert result.exit_code == (0 if with_records else 2), result.output
    assert "Traceback" not in result.output


@SETTINGS
@given(sweep=in_document(b'{"levels": ["c1"], "complete": @}'))
def test_a_hostile_sweep_index_is_refused_in_one_line(tmp_path_factory: pytest.TempPathFactory,
                                                      sweep: bytes) -> None:
    folder = tmp_path_factory.mktemp("sweep")
    (folder / "c1").mkdir()
    (folder / "c1" / "requests.jsonl").write_text(json.dumps(GOOD_RECORD.to_dict()) + "\n")
    (folder / "sweep.json").write_bytes(sweep)
    with pytest.raises(ValueError):
        read_json_file(folder / "sweep.json")
    before = sorted(folder.rglob("*"))
    result = CliRunner().invoke(cli, ["bench", "report", str(folder), "--json"])
    assert result.exit_code == 2, result.output
    assert "sweep.json is unusable" in result.output and "Traceback" not in result.output
    assert sorted(folder.rglob("*")) == before  # refused before any report was written


@SETTINGS
@given(line=in_document(b'{"prompt": "hi", "output_tokens": @}'))
def test_a_hostile_dataset_line_is_a_dataset_error(tmp_path_factory: pytest.TempPathFactory,
                                                      line: bytes) -> None:
    path = tmp_path_factory.mktemp("data") / "prompts.jsonl"
    path.write_bytes(line + b"\n")

    class Words:
        source = "words"

        def encode(self, text: str) -> list[int]:
            return list(range(len(text.split())))

        def decode(self, ids: object) -> str:
            return ""

        def close(self) -> None:
            pass

    with pytest.raises(DatasetError, match=r"prompts\.jsonl"):
        load_jsonl(path, tokenizer=Words(), output_len=None, seed=0)


# --- the same values from a server, through the readers that talk to one ------------------------

@pytest.fixture(scope="module")
def mock() -> Iterator[MockProcess]:
    with MockProcess(model="fuzz") as running:
        yield running
        assert running.stats()["errors"] == []


def _json_answer(body: bytes) -> Script:
    return Script(framing="length", pieces=(body,), content_type="application/json")


GOOD_COMPLETION = json.dumps({"id": "x", "choices": [{"message": {"content": "Paris."}}],
                              "usage": {"prompt_tokens": 5, "completion_tokens": 2}}).encode()
GOOD_STREAM = (b'data: {"id": "x", "choices": [{"delta": {"content": "Paris."}}]}\n\n'
               b'data: {"id": "x", "choices": [], "usage": {"prompt_tokens": 5, '
               b'"completion_tokens": 2}}\n\ndata: [DONE]\n\n')


@SETTINGS
@given(step=st.sampled_from(["models", "chat", "chat-stream"]),
       models=in_document(b'{"data": [{"id": "fuzz", "created": @}]}'),
       completion=in_document(b'{"id": "x", "choices": [{"message": {"content": "P"}}], '
                              b'"usage": {"prompt_tokens": 5, "completion_tokens": @}}'),
       chunk=in_document(CHUNK))
def test_smoke_fails_the_step_that_reads_a_hostile_answer(
        mock: MockProcess, step: str, models: bytes, completion: bytes, chunk: bytes) -> None:
    answers = [_json_answer(completion if step == "chat" else GOOD_COMPLETION),
               Script(pieces=(b"data: " + chunk + b"\n\ndata: [DONE]\n\n",) if step ==
                      "chat-stream" else (GOOD_STREAM,))]
    mock.script(answers, models=models if step == "models" else b'{"data": [{"id": "fuzz"}]}')
    try:
        report = run_smoke(mock.url, ready_timeout=2.0, request_timeout=3.0)
    finally:
        mock.script()
    assert report.failed is not None and report.failed.name == step, report.to_dict()
    assert "\n" not in report.failed.detail


@SETTINGS
@given(chunk=in_document(CHUNK), tokenize=in_document(b'{"tokens": [1, @]}'))
def test_bench_counts_a_hostile_chunk_as_that_requests_failure(
        mock: MockProcess, tmp_path_factory: pytest.TempPathFactory, chunk: bytes,
        tokenize: bytes) -> None:
    good = b'data: {"id": "c", "choices": [{"delta": {"content": "hi"}}]}\n\n'
    mock.script([Script(pieces=(good + b"data: " + chunk + b"\n\ndata: [DONE]\n\n",))],
                routes={"/tokenize": _json_answer(tokenize)})
    out = tmp_path_factory.mktemp("bench")
    try:
        options = parse_options(mock.url, model="fuzz", concurrency="2", num_requests=2,
                                input_len="4", output_len="4", timeout=5.0, stall_timeout=2.0)
        summary = run_benchmark(options, out_dir=out)[0].to_dict()
    finally:
        mock.script()
    assert summary["failed"] == 2 and summary["error_counts"] == {"malformed_chunk": 2}
    assert summary["data"]["tokenizer_source"].startswith("none: word counts")  # /tokenize bad


@SETTINGS
@given(answer=in_document(b'{"sha": "' + b"0" * 40 + b'", "n": @}'))
def test_revision_refuses_a_hostile_hub_answer_in_one_line(mock: MockProcess,
                                                           answer: bytes) -> None:
    mock.script(routes={"*": _json_answer(answer)})
    try:
        result = CliRunner().invoke(cli, ["revision", "org/model"],
                                    env={"HF_ENDPOINT": mock.url})
    finally:
        mock.script()
    assert result.exit_code == 1 and not result.stdout, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "commit hash" in result.stderr


@SETTINGS
@given(config=in_document(CONFIG), info=st.booleans())
def test_a_hostile_hub_answer_is_a_usage_error(tmp_path_factory: pytest.TempPathFactory,
                                              monkeypatch: pytest.MonkeyPatch, mock: MockProcess,
                                              config: bytes, info: bool) -> None:
    home = tmp_path_factory.mktemp("hub")
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("MLS_CACHE_DIR", str(home / "mls"))
    commit = hashlib.sha1(config).hexdigest()
    if info:  # the Hub's own model-info answer is hostile: huggingface_hub parses it
        mock.script(routes={"*": _json_answer(config)})
        monkeypatch.setenv("HF_ENDPOINT", mock.url)
        try:
            with pytest.raises(UsageError):
                read_hub_model("org/model", commit, timeout=10)
        finally:
            mock.script()
        return
    repo = HubRepo(files={"config.json": config}, commit=commit)
    with running_hub({"org/model": repo}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        with pytest.raises(UsageError):
            read_hub_model("org/model", commit)
