"""Every command answers --help (and -h) quickly, without starting anything."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from modal_llm_serving import __version__
from modal_llm_serving.cli import cli


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            paths += command_paths(command, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


@pytest.mark.parametrize("path", command_paths(cli), ids=lambda path: " ".join(path) or "mls")
def test_help(path: tuple[str, ...]) -> None:
    for flag in ("--help", "-h"):
        result = CliRunner().invoke(cli, [*path, flag], prog_name="mls")
        assert result.exit_code == 0, result.output
        assert "Usage: mls" in result.output


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output
