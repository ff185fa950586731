"""Rules for apps on Modal's clustered containers (`@modal.clustered(size=N, rdma=...)`): container
counts in whole clusters (MLS031), all GPUs of a host per container (MLS032), RDMA asked for where
the GPU's hosts have the fabric (MLS033), and the engine's parallel sizes against the cluster's
GPUs (MLS034).

What the rules rest on, from the pinned SDK's own `modal.clustered` docstring and checks (read in
modal/_partial_function.py and modal/_functions.py): each container "must request all GPUs on its
host (for example, gpu="H100:8")"; `min_containers`, `max_containers` and `buffer_containers`
"count individual containers and must be multiples of size" (the SDK raises at deploy); without
`rdma=True` the containers "can still communicate over the private IP network". Modal's guide
(https://modal.com/docs/guide/multi-node-clusters) gives that RDMA network as 3,200 Gbps per host
(6,400 on B300) against a 50 Gbps private network
(https://modal.com/docs/guide/multi-node-training).
"""

from __future__ import annotations

from modal_llm_serving.check.rules import Finding, finding
from modal_llm_serving.check.settings import GpuRequest, whole
from modal_llm_serving.check.source import Source, kwarg, line_of
from modal_llm_serving.check.startup import Startup

__all__ = ["GPUS_PER_HOST", "containers_not_whole_clusters", "no_rdma", "parallel_vs_cluster",
           "partial_host"]

GPUS_PER_HOST = 8  # the hosts Modal clusters: 8-GPU machines (H100, H200, B200, B300)
_COUNTS = ("min_containers", "max_containers", "buffer_containers")


def _clustered(st: Startup) -> list[GpuRequest]:
    """The GPU requests of clustered definitions (one per definition and GPU type)."""
    return [request for request in st.requests if request.cluster is not None]


def containers_not_whole_clusters(src: Source, st: Startup) -> list[Finding]:
    """MLS031: a container count of a clustered definition that is not a multiple of its size."""
    found: list[Finding] = []
    for request in {id(r.definition): r for r in _clustered(st)}.values():
        for name in _COUNTS:
            node = kwarg(request.call, name)
            count = whole(src.resolve(node))
            if node is not None and count and count % request.nodes:
                found.append(finding("MLS031", src.path, line_of(node),
                                     f"{name}={count} with @clustered(size={request.nodes}): "
                                     f"{count} containers are not whole clusters of "
                                     f"{request.nodes}"))
    return found


def partial_host(src: Source, st: Startup) -> list[Finding]:
    """MLS032: a clustered container that asks for fewer (or more) GPUs than its host has."""
    return [finding("MLS032", src.path, request.line,
                    f"gpu={request.text!r} on a cluster: each container must take all "
                    f"{GPUS_PER_HOST} GPUs of its host (gpu=\"{request.type}:{GPUS_PER_HOST}\")")
            for request in _clustered(st) if request.count != GPUS_PER_HOST]


def no_rdma(src: Source, st: Startup) -> list[Finding]:
    """MLS033: a cluster of several containers without rdma=True on GPUs whose hosts Modal
    clusters over RDMA (the catalog's `fabric_gb_s`); other GPUs are not judged."""
    found: list[Finding] = []
    for request in _clustered(st):
        assert request.cluster is not None
        gpu = st.gpus.get(request.type)
        if request.nodes < 2 or gpu is None or not gpu.fabric_gb_s:
            continue
        if src.resolve(kwarg(request.cluster, "rdma")) is not True:
            found.append(finding("MLS033", src.path, line_of(request.cluster),
                                 f"@clustered(size={request.nodes}) on {request.type} without "
                                 "rdma=True: the ranks talk over the private IP network "
                                 f"(about 50 Gbps) instead of RDMA ({gpu.fabric_gb_s * 8:,.0f} "
                                 "Gbps per host)"))
    return found


def parallel_vs_cluster(src: Source, st: Startup) -> list[Finding]:
    """MLS034: tensor x pipeline x data parallelism is not nodes x GPUs per container, or the
    engine's node count (--nnodes) is missing or not the cluster's size."""
    found: list[Finding] = []
    if not st.command_found:
        return found
    tp = st.first("tensor_parallel_size") or 1
    pipeline = st.first("pipeline_parallel_size") or 1
    data = 1 if "enable_dp_attention" in st.settings else st.first("data_parallel_size") or 1
    nnodes = st.settings.get("nnodes", [])
    for request in _clustered(st):
        if request.nodes < 2:
            continue
        gives = request.nodes * request.count
        uses = tp * pipeline * data
        line = next((s.line for name in ("tensor_parallel_size", "pipeline_parallel_size")
                     for s in st.settings.get(name, []) if s.line), request.line)
        if uses != gives:
            found.append(finding("MLS034", src.path, line,
                                 f"tensor {tp} x pipeline {pipeline} x data {data} = {uses} "
                                 f"GPUs, but the cluster has {request.nodes} x {request.count} "
                                 f"= {gives}"))
        if not nnodes:
            found.append(finding("MLS034", src.path, line,
                                 f"@clustered(size={request.nodes}) but the engine command sets "
                                 "no --nnodes: each container would start an engine on its own "
                                 "GPUs alone"))
        for setting in nnodes:
            if whole(setting.value) not in (None, request.nodes):
                found.append(finding("MLS034", src.path, setting.line or line,
                                     f"{setting.written} {setting.value} against "
                                     f"@clustered(size={request.nodes})"))
    return list(dict.fromkeys(found))
