"""Rules on where a server runs: a low-latency server pinned to a region (MLS010), and a Server
routed near its GPUs (MLS019). Every request that crosses the world pays for it in latency.
"""

from __future__ import annotations

import ast

from modal_llm_serving.check.app import server_calls, servers
from modal_llm_serving.check.rules import Finding, finding
from modal_llm_serving.check.source import UNKNOWN, Source, dotted, kwarg, line_of

__all__ = ["low_latency_no_region", "routing_far_from_compute"]

# Where a Server's routing regions are; a compute region belongs to the area it starts with.
_ROUTING_AREAS = {"us-east": "us", "us-west": "us", "eu-west": "eu", "ap-south": "ap"}
# Region prefix -> the part of the world whose routing region serves it (None: none nearby).
_AREAS = {"us": "us", "ca": "us", "mx": "us", "eu": "eu", "uk": "eu", "ap": "ap", "jp": "ap",
          "au": "ap", "me": None, "sa": None, "af": None}


def low_latency_no_region(src: Source) -> list[Finding]:
    """MLS010: a low-latency server (http_server, app.server) with no region."""
    found = []
    for definition in servers(src, "http_server", "server"):
        for call in definition.decorator_list:
            if not (isinstance(call, ast.Call)
                    and dotted(call.func).split(".")[-1] in ("cls", "function", "server")):
                continue
            given = [kwarg(call, key) for key in ("region", "compute_region")]
            values = [src.resolve(node) for node in given if node is not None]
            # a value the checker cannot work out (an env lookup) gets the benefit of doubt
            if not any(v is UNKNOWN or v not in (None, "", []) for v in values):
                found.append(finding("MLS010", src.path, line_of(call),
                                     "no region=... on the low-latency server"))
    return found


def routing_far_from_compute(src: Source) -> list[Finding]:
    """MLS019: a Server's routing_region in another part of the world than its compute_region."""
    found = []
    for _, call in server_calls(src):
        routing = src.resolve(kwarg(call, "routing_region")) if kwarg(
            call, "routing_region") is not None else "us-east"  # the SDK's default
        compute = src.resolve(kwarg(call, "compute_region"))
        computes = compute if isinstance(compute, list) else [compute]
        area = _ROUTING_AREAS.get(routing) if isinstance(routing, str) else None
        for region in computes:
            if not (isinstance(region, str) and area):
                continue
            region_area = next((_AREAS[prefix] for prefix in _AREAS if region == prefix
                                or region.startswith(prefix + "-")), None)
            if region_area is not None and region_area != area:
                found.append(finding("MLS019", src.path, line_of(call), f"routing_region "
                                     f"{routing!r} with compute_region {region!r}"))
    return found
