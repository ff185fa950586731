"""The throughput recipe's data path, on this machine, with no GPU and vLLM out of reach.

The recipe's plain-Python parts (reading the JSONL records, the shared-prefix prompt, clipping a
long text, writing a batch's results, resuming by id, the job's first step) run here on a real
folder, the way they run on the mounted Volume, with `import vllm` failing: they must not need
it. The labelling itself (`label_batch`) runs on vLLM's CPU build in the engine test.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from modal_llm_serving.recipes.files import load_recipe, recipe_path


@pytest.fixture
def recipe(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The recipe, loaded with the real Modal SDK, in a process where `import vllm` fails."""
    monkeypatch.setitem(sys.modules, "vllm", None)  # Python's own "not importable" marker
    with pytest.raises(ImportError):
        import vllm  # noqa: F401
    return load_recipe(recipe_path("qwen3_throughput"), module_name="throughput_data")


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_records_are_read_from_jsonl_and_bad_lines_named(recipe: ModuleType,
                                                         tmp_path: Path) -> None:
    path = tmp_path / "tickets.jsonl"
    path.write_text('{"id": "a", "text": "one"}\n\n{"id": 7, "text": "two", "extra": 1}\n')
    assert recipe.read_records(path) == [{"id": "a", "text": "one"}, {"id": 7, "text": "two"}]
    for lines, words in (
            (['{"id": "a", "text": "x"}', "{not json"], r"tickets.jsonl:2: not JSON"),
            (['{"id": "a"}'], r'tickets.jsonl:1: want \{"id": ..., "text": "..."\}'),
            (['{"id": true, "text": "x"}'], "tickets.jsonl:1: want"),
            (['["a", "x"]'], "tickets.jsonl:1: want"),
            (['{"id": "a", "text": "x"}', '{"id": "a", "text": "y"}'],
             "tickets.jsonl:2: id 'a' appears twice")):
        path.write_text("\n".join(lines) + "\n")
        with pytest.raises(ValueError, match=words):
            recipe.read_records(path)


def test_every_prompt_opens_with_the_same_instruction_and_labels(recipe: ModuleType) -> None:
    """The part prefix caching can reuse is the whole system message, identical for every text."""
    labels = recipe.LABELS
    first, second = (recipe.chat_messages(text, labels) for text in ("my card", "a crash"))
    assert [m["role"] for m in first] == ["system", "user"]
    assert first[0] == second[0] and first[1]["content"] == "my card"
    assert first[0]["content"].startswith(recipe.INSTRUCTION)
    assert all(label in first[0]["content"] for label in labels)
    assert recipe.CHAT_TEMPLATE_KWARGS == {"enable_thinking": False}


def test_the_shared_prefix_is_shared_in_tokens(recipe: ModuleType, tiny_model_path: Path) -> None:
    """What prefix caching keys on: the token ids of two records' prompts, rendered by a real
    chat template, agree through the whole instruction and label list."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)

    def tokens(messages: list[dict[str, str]], **kwargs: bool) -> list[int]:
        text = tokenizer.apply_chat_template(messages, tokenize=False, **kwargs,
                                             **recipe.CHAT_TEMPLATE_KWARGS)
        return list(tokenizer.encode(text, add_special_tokens=False))

    one, two = (tokens(recipe.chat_messages(text, recipe.LABELS), add_generation_prompt=True)
                for text in ("where is my refund", "the app crashes"))
    system = tokens(recipe.chat_messages("", recipe.LABELS)[:1])
    assert len(system) > 20 and one[:len(system)] == system == two[:len(system)]
    assert one != two


def test_long_texts_are_clipped_to_input_len_tokens(recipe: ModuleType,
                                                    tiny_model_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    short = "the capital of france is paris"
    assert recipe.clip(short, tokenizer, 1000) == short
    long = " ".join(["hello world"] * 200)
    clipped = recipe.clip(long, tokenizer, 16)
    assert len(tokenizer.encode(clipped, add_special_tokens=False)) == 16
    assert long.startswith(clipped)


def test_a_rerun_skips_the_ids_whose_results_were_written(recipe: ModuleType,
                                                          tmp_path: Path) -> None:
    records = [{"id": f"r{i}", "text": f"text {i}"} for i in range(7)]
    results = tmp_path / "results" / "tickets"
    assert recipe.done_ids(results) == set()  # no folder yet: nothing done
    batches = recipe.pending_batches(records, set(), 3)
    assert [[r["id"] for r in batch] for batch in batches] == [
        ["r0", "r1", "r2"], ["r3", "r4", "r5"], ["r6"]]
    # the first and last batches finished; the middle one died before its file was renamed
    for batch in (batches[0], batches[2]):
        recipe.write_results(results, [{"id": r["id"], "label": "other"} for r in batch])
    (results / "crashed.tmp").write_text('{"id": "r3", "label": "bug report"}\n')
    written = sorted(results.glob("*.jsonl"))
    assert len(written) == 2 and written[0] != written[1]  # one new file per batch
    assert all(json.loads(line)["label"] == "other"
               for part in written for line in part.read_text().splitlines())
    done = recipe.done_ids(results)
    assert done == {"r0", "r1", "r2", "r6"}
    again = recipe.pending_batches(records, done, 3)
    assert [[r["id"] for r in batch] for batch in again] == [["r3", "r4", "r5"]]
    # a null label (an answer cut short) is a result too: the rerun does not loop on it
    recipe.write_results(results, [{"id": "r3", "label": None}])
    assert "r3" in recipe.done_ids(results)


def test_the_job_counts_what_is_left_before_fanning_out(recipe: ModuleType,
                                                         tmp_path: Path) -> None:
    """The job's loop, run here on a folder: its first event says what a rerun still has to do."""
    data = write_jsonl(tmp_path / "tickets.jsonl", recipe.sample_tickets)
    results = tmp_path / "results"
    recipe.write_results(results, [{"id": recipe.sample_tickets[0]["id"], "label": "billing"}])
    with pytest.warns(UserWarning, match="executing locally"):
        events = recipe.label_file.local(str(data), str(results))
        first = next(events)
    events.close()  # the rest would call the GPU workers
    assert first == {"records": len(recipe.sample_tickets),
                     "done": 1, "batches": 1}


def test_the_entry_point_refuses_bad_input_in_one_line(recipe: ModuleType,
                                                       tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="not both"):
        recipe.main(input_file="a.jsonl", volume_file="inputs/a.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n")
    # refused before anything touches the Volume
    with pytest.raises(SystemExit, match=r"bad.jsonl:1: not JSON") as caught:
        recipe.upload(str(bad))
    assert "\n" not in str(caught.value)
    with pytest.raises(SystemExit, match="No such file"):
        recipe.upload(str(tmp_path / "missing.jsonl"))
