"""Benchmark prompts: synthetic with exact input token lengths, a user JSONL, or ShareGPT.

Exact lengths need the server's tokenizer. The server's own `/tokenize` + `/detokenize` (vLLM,
SGLang) is preferred because it is the tokenizer that counts; otherwise a local tokenizer folder or
Hub id; otherwise word counts (approximate, and said so). The input length is the prompt text's
token count; on the chat endpoint the server's `usage.prompt_tokens` adds its chat template.

A synthetic prompt of L tokens: L token ids from a random offset in a seeded corpus, decoded, then
re-tokenized and trimmed or extended until the count is L (decode/encode is not always a round
trip). Prompts come from a pool of distinct prompts that the run cycles through. Shared-prefix
prompts (`--shared-prefix N:LEN`) open with one of N system prompts of LEN tokens, picked per prompt
with the seed, then their own distinct text: the prefix a server's cache can reuse.

Length specs: `128` (fixed), `uniform:64:256` (inclusive), `normal:128:32` (mean:std, clipped to
at least 1).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import httpx

from modal_llm_serving.endpoint.client import OpenAIClient
from modal_llm_serving.endpoint.wire import is_int
from modal_llm_serving.errors import (
    BenchDataError,
    DatasetError,
    EndpointError,
    EndpointStatusError,
    UsageError,
)
from modal_llm_serving.files import require_regular_file
from modal_llm_serving.untrusted import read_json, read_json_file

__all__ = ["PREFLIGHT_S", "LengthSpec", "Prompt", "Tokenizer", "exact_text", "load_jsonl",
           "load_sharegpt", "make_tokenizer", "parse_length", "shared_prefix_prompts",
           "synthetic_prompts", "token_corpus"]

# The most one pre-flight request (/v1/models, /tokenize, /detokenize) may take, when --timeout
# allows that much: they are small answers, and a run should not wait minutes to begin.
PREFLIGHT_S = 30.0

_WORDS = ('time', 'year', 'people', 'way', 'day', 'man', 'thing', 'woman', 'life', 'child',
    'world', 'school', 'state', 'family', 'student', 'group', 'country', 'problem', 'hand',
    'part', 'place', 'case', 'week', 'company', 'system', 'program', 'question', 'work',
    'government', 'number', 'night', 'point', 'home', 'water', 'room', 'mother', 'area', 'money',
    'story', 'fact', 'month', 'lot', 'right', 'study', 'book', 'eye', 'job', 'word', 'business',
    'issue', 'side', 'kind', 'head', 'house', 'service', 'friend', 'father', 'power', 'hour',
    'game', 'line', 'end', 'member', 'law', 'car', 'city', 'community', 'name', 'president',
    'team', 'minute', 'idea', 'kid', 'body', 'information', 'back', 'parent', 'face', 'others',
    'level', 'office', 'door', 'health', 'person', 'art', 'war', 'history', 'party', 'result',
    'change', 'morning', 'reason', 'research', 'girl', 'guy', 'moment', 'air', 'teacher',
    'force', 'education', 'river', 'mountain', 'cloud', 'signal', 'engine', 'model', 'token',
    'server', 'memory', 'cache', 'network', 'window', 'bridge', 'garden', 'ocean', 'market',
    'picture', 'letter', 'season', 'forest', 'village', 'music', 'energy', 'travel', 'planet',
    'science', 'theory', 'method')


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One request's content: text (or chat messages), its input length and output budget."""

    text: str
    input_len: int  # the prefix's tokens included
    output_len: int
    messages: tuple[dict[str, str], ...] | None = None
    prefix: str | None = None  # a shared system prompt sent before the text (and its history)
    at_s: float | None = None  # a trace's send time, s from its start (trace.py)
    follows: bool = False  # a trace: the next turn of the session of the prompt before it


@dataclasses.dataclass(frozen=True)
class LengthSpec:
    kind: str  # fixed | uniform | normal
    a: float
    b: float = 0.0

    def sample(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            return int(self.a)
        if self.kind == "uniform":
            return rng.randint(int(self.a), int(self.b))
        return max(1, round(rng.gauss(self.a, self.b)))

    @property
    def mean(self) -> float:
        return (self.a + self.b) / 2 if self.kind == "uniform" else self.a

    def __str__(self) -> str:
        if self.kind == "fixed":
            return str(int(self.a))
        return f"{self.kind}:{self.a:g}:{self.b:g}"


# The longest prompt or output a benchmark asks for: beyond any model's context today, and the
# most a client can build prompts for in reasonable time and memory.
MAX_TOKENS = 1_048_576


def parse_length(spec: str, *, option: str) -> LengthSpec:
    """`128`, `uniform:64:256` or `normal:128:32`; a UsageError names the option otherwise."""
    hint = f"{option} takes N, uniform:MIN:MAX or normal:MEAN:STD (e.g. 128 or uniform:64:256)"
    parts = spec.strip().split(":")
    try:
        if len(parts) == 1:
            value = int(parts[0])
            if not 1 <= value <= MAX_TOKENS:
                raise UsageError(f"{option} {spec!r} must be 1 to {MAX_TOKENS} tokens; {hint}")
            return LengthSpec("fixed", value)
        kind, *numbers = parts
        if kind not in ("uniform", "normal") or len(numbers) != 2:
            raise UsageError(f"{option} {spec!r} is not a length spec; {hint}")
        if kind == "uniform":
            low, high = int(numbers[0]), int(numbers[1])
            if not 1 <= low <= high <= MAX_TOKENS:
                raise UsageError(f"{option} {spec!r}: need 1 <= MIN <= MAX <= {MAX_TOKENS}; "
                                 f"{hint}")
            return LengthSpec("uniform", low, high)
        mean, std = float(numbers[0]), float(numbers[1])
        if not (math.isfinite(mean) and math.isfinite(std)):
            raise UsageError(f"{option} {spec!r}: MEAN and STD must be finite numbers; {hint}")
        if not 1 <= mean <= MAX_TOKENS or not 0 <= std <= MAX_TOKENS:
            raise UsageError(f"{option} {spec!r}: need 1 <= MEAN <= {MAX_TOKENS} and "
                             f"0 <= STD <= {MAX_TOKENS}; {hint}")
        return LengthSpec("normal", mean, std)
    except ValueError:
        raise UsageError(f"{option} {spec!r} has a part that is not a number; {hint}") from None


class Tokenizer(Protocol):
    source: str

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def close(self) -> None: ...


class ServerTokenizer:
    """The server's own `/tokenize` and `/detokenize` (vLLM and SGLang serve both); each call
    ends within `timeout_s` in all."""

    def __init__(self, base_url: str, model: str, headers: dict[str, str], *,
                 timeout_s: float = PREFLIGHT_S) -> None:
        self._http = OpenAIClient(base_url, headers=headers, timeout=timeout_s)
        self._model = model
        self.source = f"server /tokenize ({base_url})"

    def probe(self) -> bool:
        """Both /tokenize and /detokenize answer sensibly (prompt building needs the two)."""
        try:
            return bool(ids := self.encode("hello world")) and bool(self.decode(ids).strip())
        except BenchDataError:
            return False

    def encode(self, text: str) -> list[int]:
        tokens = self._call("/tokenize", {"model": self._model, "prompt": text,
                                          "add_special_tokens": False}, "tokens")
        if not isinstance(tokens, list) or not all(is_int(token) for token in tokens):
            raise BenchDataError("the server's /tokenize answered tokens that are not a list of "
                                 "integers; pass --tokenizer")
        return tokens

    def decode(self, ids: Sequence[int]) -> str:
        text = self._call("/detokenize", {"model": self._model, "tokens": list(ids)}, "prompt")
        if not isinstance(text, str):
            raise BenchDataError("the server's /detokenize answered a prompt that is not text; "
                                 "pass --tokenizer")
        return text

    def _call(self, path: str, payload: dict[str, Any], key: str) -> object:
        """POST `payload` to `path`; the answer's `key`, or BenchDataError in one line (the
        server is untrusted input, and a partial one may lack either route)."""
        try:
            body = self._http.post_json(path, payload)
        except httpx.HTTPError as exc:
            raise BenchDataError(f"the server's {path} failed ({type(exc).__name__}); pass "
                                 "--tokenizer") from None
        except EndpointStatusError as exc:
            raise BenchDataError(f"the server's {path} answered {exc.status}; pass "
                                 "--tokenizer (a folder with tokenizer.json or a Hub id)") from None
        except EndpointError as exc:  # not JSON, past a bound, or past the deadline
            raise BenchDataError(f"{exc}; pass --tokenizer") from None
        if key not in body:
            raise BenchDataError(f"the server's {path} answered without {key!r}; pass --tokenizer")
        return body[key]

    def close(self) -> None:
        self._http.close()


class LocalTokenizer:
    """A tokenizer folder (tokenizer.json, via `tokenizers`) or anything transformers loads."""

    def __init__(self, name: str) -> None:
        path = Path(name).expanduser()
        self.source = f"local tokenizer {name}"
        if (path / "tokenizer.json").is_file():
            from tokenizers import Tokenizer as HFTokenizer

            try:
                fast = HFTokenizer.from_file(str(path / "tokenizer.json"))
            except Exception as exc:  # tokenizers raises its own kinds for a broken file
                raise UsageError(f"--tokenizer {name!r}: its tokenizer.json could not be loaded "
                                 f"({type(exc).__name__}); give a working tokenizer") from None
            self._encode: Callable[[str], list[int]] = lambda text: list(
                fast.encode(text, add_special_tokens=False).ids)
            self._decode: Callable[[Sequence[int]], str] = lambda ids: str(fast.decode(list(ids)))
            return
        try:
            from transformers import AutoTokenizer

            slow = AutoTokenizer.from_pretrained(name)
        except Exception as exc:  # transformers raises many kinds for a bad name
            raise UsageError(f"--tokenizer {name!r} could not be loaded ({type(exc).__name__}); "
                             "give a folder with tokenizer.json or a Hub id") from exc
        self._encode = lambda text: list(slow.encode(text, add_special_tokens=False))
        self._decode = lambda ids: str(slow.decode(list(ids)))

    def encode(self, text: str) -> list[int]:
        return self._encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self._decode(ids)

    def close(self) -> None:
        """Nothing to release."""


class WordTokenizer:
    """No tokenizer at hand: one word is one "token" (approximate for any real model)."""

    source = "none: word counts (approximate; pass --tokenizer for exact lengths)"

    def encode(self, text: str) -> list[int]:
        return [_word_id(word) for word in text.split()]

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(_WORDS[i % len(_WORDS)] for i in ids)

    def close(self) -> None:
        """Nothing to release."""


def _word_id(word: str) -> int:
    try:
        return _WORDS.index(word)
    except ValueError:
        return 0


def make_tokenizer(*, base_url: str, model: str, headers: dict[str, str],
                   tokenizer: str | None, timeout_s: float = PREFLIGHT_S) -> Tokenizer:
    """--tokenizer if given, else the server's /tokenize if it answers (each call within
    `timeout_s`), else word counts."""
    if tokenizer:
        return LocalTokenizer(tokenizer)
    server = ServerTokenizer(base_url, model, headers, timeout_s=timeout_s)
    if server.probe():
        return server
    server.close()
    return WordTokenizer()


def synthetic_prompts(tokenizer: Tokenizer, *, count: int, input_len: LengthSpec,
                      output_len: LengthSpec, seed: int) -> tuple[list[Prompt], float]:
    """`count` distinct prompts with exact token lengths; returns them and the exact fraction."""
    rng = random.Random(seed)
    corpus = token_corpus(tokenizer, rng)
    prompts, exact = [], 0
    for _ in range(count):
        target = input_len.sample(rng)
        text, actual = exact_text(tokenizer, corpus, target, rng)
        exact += actual == target
        prompts.append(Prompt(text=text, input_len=actual, output_len=output_len.sample(rng)))
    return prompts, exact / count if count else 1.0


def shared_prefix_prompts(tokenizer: Tokenizer, *, count: int, prefixes: int, prefix_len: int,
                          input_len: LengthSpec, output_len: LengthSpec,
                          seed: int) -> tuple[list[Prompt], float]:
    """`count` synthetic prompts (their own text of `input_len` tokens), each opening with one of
    `prefixes` system prompts of `prefix_len` tokens; returns them and the exact fraction."""
    rng = random.Random(seed ^ 0x5EED)  # apart from the texts' own draws
    corpus = token_corpus(tokenizer, rng)
    shared = [exact_text(tokenizer, corpus, prefix_len, rng) for _ in range(prefixes)]
    texts, exact = synthetic_prompts(tokenizer, count=count, input_len=input_len,
                                     output_len=output_len, seed=seed)
    prompts = []
    for prompt in texts:
        prefix, prefix_tokens = shared[rng.randrange(prefixes)]
        prompts.append(dataclasses.replace(prompt, prefix=prefix,
                                           input_len=prefix_tokens + prompt.input_len))
    share = sum(tokens == prefix_len for _text, tokens in shared) / prefixes
    return prompts, exact * share


def token_corpus(tokenizer: Tokenizer, rng: random.Random) -> list[int]:
    """Token ids of a seeded text of 4096 words: prompts are slices of it."""
    corpus = tokenizer.encode(" ".join(rng.choice(_WORDS) for _ in range(4096)))
    if not corpus:
        raise BenchDataError(f"the tokenizer ({tokenizer.source}) returned no tokens for text")
    return corpus


def exact_text(tokenizer: Tokenizer, corpus: list[int], target: int,
               rng: random.Random) -> tuple[str, int]:
    """Text of `target` tokens from a random offset of `corpus` (or as near as eight tries of
    decode and re-encode get); returns it and its actual token count."""
    start = rng.randrange(len(corpus))
    ids = [corpus[(start + i) % len(corpus)] for i in range(target)]
    text, actual = "", 0
    for _ in range(8):
        text = tokenizer.decode(ids)
        actual = len(tokenizer.encode(text))
        if actual == target:
            break
        if actual > target:
            ids = ids[: max(1, len(ids) - (actual - target))]
        else:
            more = target - actual
            ids = ids + [corpus[(start + len(ids) + i) % len(corpus)] for i in range(more)]
    return text, actual


def load_jsonl(path: Path, *, tokenizer: Tokenizer, output_len: LengthSpec | None,
               seed: int) -> list[Prompt]:
    """Lines of {"prompt", "output_tokens"?} (vLLM's custom format) or {"messages": [...]}."""
    rng = random.Random(seed)
    prompts = []
    for number, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            row = read_json(line, what=f"{path}:{number}")
        except ValueError as exc:  # not JSON, or past a bound (UntrustedDataError)
            raise DatasetError(f"{exc}; each line must be an object like "
                               '{"prompt": "...", "output_tokens": 128}') from None
        prompts.append(_jsonl_prompt(row, path, number, tokenizer, output_len, rng))
    if not prompts:
        raise DatasetError(f"{path} holds no prompts")
    return prompts


def _jsonl_prompt(row: Any, path: Path, number: int, tokenizer: Tokenizer,
                  output_len: LengthSpec | None, rng: random.Random) -> Prompt:
    where = f"{path}:{number}"
    if not isinstance(row, dict) or not ("prompt" in row or "messages" in row):
        raise DatasetError(f'{where} needs a "prompt" string or a "messages" list')
    out = row.get("output_tokens", row.get("output_len"))
    if output_len is not None:
        out = output_len.sample(rng)
    if not is_int(out) or not 1 <= out <= MAX_TOKENS:
        raise DatasetError(f'{where} has no usable "output_tokens"; add it per line or pass '
                             "--output-len")
    if "messages" in row:
        messages = row["messages"]
        if not (isinstance(messages, list) and all(
                isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages)):
            raise DatasetError(f'{where}: "messages" must be a list of {{"role", "content"}}')
        text = "\n".join(m["content"] for m in messages)
        return Prompt(text=text, input_len=len(tokenizer.encode(text)), output_len=out,
                      messages=tuple({"role": str(m.get("role", "user")),
                                      "content": m["content"]} for m in messages))
    if not isinstance(row["prompt"], str):
        raise DatasetError(f'{where}: "prompt" must be a string')
    return Prompt(text=row["prompt"], input_len=len(tokenizer.encode(row["prompt"])),
                  output_len=out)


def load_sharegpt(path: Path, *, tokenizer: Tokenizer, output_len: LengthSpec | None,
                  seed: int, limit: int) -> list[Prompt]:
    """ShareGPT JSON: each conversation's first human turn, output = its reply's token count."""
    require_regular_file(path, what="--dataset")
    try:
        data = read_json_file(path)
    except (OSError, ValueError) as exc:  # UntrustedDataError is a ValueError
        raise DatasetError(f"{path} is not a readable ShareGPT JSON file "
                             f"({type(exc).__name__})") from None
    if not isinstance(data, list):
        raise DatasetError(f"{path}: ShareGPT files are a JSON list of "
                             '{"conversations": [{"from", "value"}, ...]}')
    rng = random.Random(seed)
    rng.shuffle(data)
    prompts = []
    for item in data:
        turns = item.get("conversations") if isinstance(item, dict) else None
        if not isinstance(turns, list) or len(turns) < 2:
            continue
        human, reply = turns[0], turns[1]
        if not (isinstance(human, dict) and isinstance(reply, dict)):
            continue
        text, answer = str(human.get("value", "")), str(reply.get("value", ""))
        if not text:
            continue
        out = output_len.sample(rng) if output_len else len(tokenizer.encode(answer))
        if out < 1:
            continue
        prompts.append(Prompt(text=text, input_len=len(tokenizer.encode(text)), output_len=out))
        if len(prompts) >= limit:
            break
    if not prompts:
        raise DatasetError(f"{path} has no usable conversations (human turn, then a reply)")
    return prompts


def _read_lines(path: Path) -> Iterator[str]:
    require_regular_file(path, what="--dataset")  # /dev/zero is one line without end
    try:
        with path.open(encoding="utf-8") as handle:
            yield from handle
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 "
                             "JSONL") from None
