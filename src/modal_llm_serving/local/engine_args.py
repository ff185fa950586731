"""Check an engine command with the engine's own argument parser, as the engine would read it.

`parse_vllm_serve` runs vLLM's `vllm serve` parser and its validation (the installed build: the
CPU build parses GPU-only flags too); `parse_sglang` runs SGLang's `ServerArgs` parser (SGLang
installed without its GPU dependencies is enough). Each returns the parsed namespace, or raises
`EngineArgsError` with the parser's own message, so a flag an engine version does not know is
caught before a deploy.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import io
from collections.abc import Iterator

from modal_llm_serving.errors import EngineArgsError, EngineNotInstalled
from modal_llm_serving.local.argv import engine_of
from modal_llm_serving.local.install import not_installed_hint

__all__ = ["parse_command", "parse_sglang", "parse_vllm_serve"]


@contextlib.contextmanager
def _vllm_version_lookup() -> Iterator[None]:
    """While vLLM is imported and parses: its version lookup answered for the CPU build too.

    (The same answer `launcher` gives, but undone afterwards: nothing else in this process should
    see it. The lookup is saved before `launcher` is imported, since importing it patches.)
    """
    saved = importlib.metadata.version
    from modal_llm_serving.local import launcher

    importlib.metadata.version = launcher._version
    try:
        yield
    finally:
        importlib.metadata.version = saved


def _parse(parser: argparse.ArgumentParser, args: list[str], *, engine: str) -> argparse.Namespace:
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            namespace, unknown = parser.parse_known_args(args)
    except SystemExit as exc:
        message = errors.getvalue().strip().splitlines()
        raise EngineArgsError(f"{engine}'s parser rejected the command: "
                              f"{message[-1] if message else f'exit {exc.code}'}") from None
    if unknown:
        raise EngineArgsError(f"{engine}'s parser does not know {' '.join(unknown)}")
    return namespace


def parse_vllm_serve(argv: list[str]) -> argparse.Namespace:
    """`vllm serve MODEL ...` parsed and validated by the installed vLLM; `.model` is MODEL."""
    if argv[:2] != ["vllm", "serve"]:
        raise EngineArgsError(f"not a `vllm serve` command: {' '.join(argv[:3])}")
    with _vllm_version_lookup():
        try:
            from vllm.entrypoints.cli.serve import ServeSubcommand
            from vllm.utils.argparse_utils import FlexibleArgumentParser
        except ImportError as exc:
            raise EngineNotInstalled(not_installed_hint("vLLM")) from exc
        root = FlexibleArgumentParser(prog="vllm")
        ServeSubcommand().subparser_init(root.add_subparsers(dest="subparser"))
        args = _parse(root, argv[1:], engine="vLLM")
        try:
            ServeSubcommand().validate(args)  # vLLM's own checks before anything loads
        except (ValueError, TypeError) as exc:
            raise EngineArgsError(f"vLLM rejected the command: {exc}") from exc
    if args.model_tag is not None:  # as `vllm serve` does: the positional model wins
        args.model = args.model_tag
    return args


def parse_sglang(argv: list[str]) -> argparse.Namespace:
    """`python -m sglang.launch_server ...` parsed by the installed SGLang's `ServerArgs`."""
    if engine_of(argv) != "sglang":
        raise EngineArgsError(f"not an SGLang launch command: {' '.join(argv[:3])}")
    try:
        from sglang.srt.server_args import ServerArgs
    except ImportError as exc:
        raise EngineNotInstalled(f"SGLang's parser is not importable ({exc}); install it with "
                                 "`pip install --no-deps sglang==VERSION` (see the Makefile)"
                                 ) from exc
    parser = argparse.ArgumentParser(prog="sglang.launch_server")
    ServerArgs.add_cli_args(parser)
    return _parse(parser, argv[3:], engine="SGLang")


def parse_command(argv: list[str]) -> argparse.Namespace:
    """Either engine's command, by its first words."""
    return parse_vllm_serve(argv) if engine_of(argv) == "vllm" else parse_sglang(argv)
