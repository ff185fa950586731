"""`python -m modal_llm_serving.cli` is the `mls` command (the bench's worker tests use it)."""

import os

from modal_llm_serving.cli import main

os.environ.setdefault("PYTHONUNBUFFERED", "1")
main()
