"""`python -m modal_llm_serving` is the `mls` command."""

from modal_llm_serving.cli import cli

if __name__ == "__main__":
    cli()
