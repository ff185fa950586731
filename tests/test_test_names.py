"""Every test a test file names (in a docstring, a comment or a message) exists.

A docstring that says "the real conversion runs in test_..." sends a reader to a test that may have
been renamed or deleted; this finds such names.
"""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
NAME = re.compile(r"\btest_[a-z0-9_]+")


def test_every_test_named_in_the_tests_exists() -> None:
    files = sorted(TESTS.rglob("*.py"))
    texts = {path: path.read_text(encoding="utf-8") for path in files}
    defined = {name for text in texts.values()
               for name in re.findall(r"^\s*(?:async )?def (test_[a-z0-9_]+)", text, re.M)}
    defined |= {path.stem for path in files}  # a module, named as a whole
    stale = sorted({f"{path.relative_to(TESTS)}: {name}" for path, text in texts.items()
                    for name in NAME.findall(text) if name not in defined})
    assert len(defined) > 100 and stale == []
