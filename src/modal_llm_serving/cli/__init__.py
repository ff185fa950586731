"""The `mls` command line, one module per command group; each command parses, calls the library
once, and renders."""

from modal_llm_serving.cli.root import cli, main

__all__ = ["cli", "main"]
