"""Run every rule on a file: the static rules family by family, then the import check."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from modal_llm_serving.check import cluster, pinning, regions, security, serving, startup, storage
from modal_llm_serving.check.app import engines, model_reference, patterns
from modal_llm_serving.check.imports import import_findings
from modal_llm_serving.check.rules import Finding, finding
from modal_llm_serving.check.source import Source, read_python_source

__all__ = ["check_file", "check_files", "check_source"]


def _static_findings(src: Source, *, gpu_catalog: Path | None) -> list[Finding]:
    """Each rule's findings, in rule order (`check_source` sorts them by line)."""
    model = model_reference(src)
    found_engines = engines(src)
    found_patterns = patterns(src)
    low_latency = any(kind in ("http_server", "app.server") for kind, _ in found_patterns)
    can_start = startup.read_startup(src, model, found_engines, gpu_catalog=gpu_catalog)
    return [
        *pinning.unpinned_revision(src, model),  # MLS001
        *storage.volumes(src, model, found_engines),  # MLS002, MLS003
        *storage.no_hf_xet(src, model),  # MLS004
        *serving.no_readiness_check(src, found_patterns),  # MLS005
        *serving.no_smoke_path(src),  # MLS006
        *serving.several_patterns(src, found_patterns, found_engines),  # MLS007
        *serving.max_inputs_with_http_server(src),  # MLS008
        *security.dev_mode_public(src),  # MLS009
        *(regions.low_latency_no_region(src) if low_latency else []),  # MLS010
        *(serving.no_503_retry(src) if low_latency else []),  # MLS011
        *security.secret_in_code(src),  # MLS012
        *pinning.unpinned_engine(src),  # MLS013
        *serving.gpu_snapshot_multi_gpu(src),  # MLS014
        *serving.extra_endpoints(src),  # MLS015
        # MLS016 (syntax) is `check_source`'s; MLS017 and MLS018 are the import check's
        *regions.routing_far_from_compute(src),  # MLS019
        *security.unauthenticated_without_key(src),  # MLS020
        *serving.concurrent_on_server(src),  # MLS021
        *startup.tp_vs_gpus(src, can_start),  # MLS022
        *startup.does_not_fit(src, can_start),  # MLS023
        *startup.context_beyond_model(src, can_start),  # MLS024
        *startup.precision_unsupported(src, can_start),  # MLS025
        *startup.timeout_too_short(src, can_start),  # MLS026
        *startup.concurrency_vs_batch(src, can_start),  # MLS027
        *startup.gated_without_token(src, can_start),  # MLS028
        *startup.unpinned_extra_models(src, can_start),  # MLS029
        *security.shell_command(src),  # MLS030
        *cluster.containers_not_whole_clusters(src, can_start),  # MLS031
        *cluster.partial_host(src, can_start),  # MLS032
        *cluster.no_rdma(src, can_start),  # MLS033
        *cluster.parallel_vs_cluster(src, can_start),  # MLS034
    ]


def check_source(source: str, *, path: str = "<source>",
                 gpu_catalog: Path | None = None) -> list[Finding]:
    """Static checks of `source` (no import); the startup rules read GPUs from `gpu_catalog`
    (else $MLS_GPU_CATALOG, else the built-in one), as `mls plan` does."""
    try:
        findings = _static_findings(Source(ast.parse(source, filename=path), path),
                                    gpu_catalog=gpu_catalog)
    except SyntaxError as exc:
        return [finding("MLS016", path, exc.lineno or 1, f"{exc.msg}")]
    except ValueError as exc:  # e.g. null bytes: not Python source at all
        return [finding("MLS016", path, 1, str(exc))]
    except (RecursionError, MemoryError):  # Python's own parser gives up on such nesting too
        return [finding("MLS016", path, 1, "nested too deeply to parse or analyze")]
    return sorted(findings, key=lambda f: (f.line, f.rule.id))


def check_file(path: Path, *, import_check: bool = True, import_timeout: float = 60.0,
               python: str | None = None, gpu_catalog: Path | None = None) -> list[Finding]:
    """All checks of one file: static, then (where safe) an import with the real Modal SDK."""
    try:
        source = read_python_source(path)
    except (OSError, UnicodeDecodeError) as exc:
        return [finding("MLS017", str(path), 1, f"cannot read the file: {exc}")]
    except SyntaxError as exc:  # an unknown PEP 263 coding: Python cannot read it either
        return [finding("MLS016", str(path), exc.lineno or 1, exc.msg)]
    findings = check_source(source, path=str(path), gpu_catalog=gpu_catalog)
    if import_check and not any(f.rule.id == "MLS016" for f in findings):
        findings += import_findings(path, ast.parse(source), timeout=import_timeout,
                                    python=python or sys.executable)
    return sorted(findings, key=lambda f: (f.line, f.rule.id))


def check_files(paths: list[Path], *, import_check: bool = True, import_timeout: float = 60.0,
                python: str | None = None) -> list[Finding]:
    """`check_file` of each path, in order."""
    findings: list[Finding] = []
    for path in paths:
        findings += check_file(path, import_check=import_check, import_timeout=import_timeout,
                               python=python)
    return findings
