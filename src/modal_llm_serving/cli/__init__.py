"""The `mls` command line, one module per command group; each command parses, calls the library
once, and renders. `root` holds the group and the one place errors become messages and exit
codes; importing this package registers every command on it."""

from modal_llm_serving.cli import (  # noqa: F401
    bench,
    check,
    doctor,
    local,
    plan,
    skill,
    smoke,
    tune,
)
from modal_llm_serving.cli.root import cli, main

__all__ = ["cli", "main"]
