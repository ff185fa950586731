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

import json
import os

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modal_llm_serving.bench.data import load_jsonl
from modal_llm_serving.bench.records import RequestRecord
from modal_llm_serving.bench.results import read_records, read_summary
from modal_llm_serving.cli import cli
from modal_llm_serving.endpoint.wire import (
    MAX_TOKEN_COUNT,
    MalformedResponse,
    error_message,
    parse_object,
    read_chunk,
)
from modal_llm_serving.errors import BenchDataError, UntrustedDataError, UsageError
from modal_llm_serving.facts.models import model_facts
from modal_llm_serving.untrusted import MAX_DEPTH, read_json, read_json_file
from tests.hostile_json import hostile_values, in_document

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
    result = CliRunner().invoke(cli, ["bench", "report", str(folder), "--json"])
    assert result.exit_code == 2, result.output
    assert "sweep.json is unusable" in result.output and "Traceback" not in result.output


@SETTINGS
@given(line=in_document(b'{"prompt": "hi", "output_tokens": @}'))
def test_a_hostile_dataset_line_is_a_bench_data_error(tmp_path_factory: pytest.TempPathFactory,
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

    with pytest.raises(BenchDataError, match=r"prompts\.jsonl"):
        load_jsonl(path, tokenizer=Words(), output_len=None, seed=0)
