"""Hostile JSON, generated: what a server, the Hub or a damaged file may hold to break a reader.

`hostile_values()` draws one JSON value (as bytes) that breaks a bound of `untrusted.read_json`:
nesting past the depth bound, integers of 20 to 5,000 digits, floats out of range, NaN and
Infinity, a lone surrogate escape, bytes that are not UTF-8. `in_document(template)` puts one
into a document at its `@` (e.g. the usage count of an otherwise good chunk), so a reader meets
it where it would read a real field.
"""

from __future__ import annotations

from hypothesis import strategies as st

from modal_llm_serving.untrusted import MAX_DEPTH

__all__ = ["hostile_values", "in_document"]


def _nested(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


def hostile_values() -> st.SearchStrategy[bytes]:
    deep = st.tuples(st.integers(MAX_DEPTH + 1, 50_000), st.sampled_from(["list", "object"])).map(
        lambda pair: _nested(*pair))
    huge_int = st.tuples(st.integers(20, 5_000), st.booleans()).map(
        lambda pair: (b"-" if pair[1] else b"") + b"9" * pair[0])
    out_of_range = st.sampled_from([b"1e400", b"-1e999", b"NaN", b"Infinity", b"-Infinity",
                                    b"1" + b"0" * 400 + b".5", b"2e308"])
    lone_surrogate = st.integers(0xD800, 0xDFFF).map(lambda code: b'"x\\u%04x"' % code)
    not_utf8 = st.sampled_from([b'"\xff"', b'"\xc3("', b'"\xed\xa0\x80"', b'"\xc0\xaf"',
                                b'"\x80abc"'])
    return st.one_of(deep, huge_int, out_of_range, lone_surrogate, not_utf8)


def in_document(template: bytes) -> st.SearchStrategy[bytes]:
    """`template` with its `@` replaced by a hostile value."""
    assert template.count(b"@") == 1
    return hostile_values().map(lambda value: template.replace(b"@", value))
