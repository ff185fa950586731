"""modal-llm-serving: serve open-weight LLMs on Modal with vLLM and SGLang.

The library behind the `mls` command. Heavy parts (the engines, the Modal SDK) are imported only
by the functions that need them, so `import modal_llm_serving` stays fast.
"""

from __future__ import annotations

from modal_llm_serving.endpoint.client import OpenAIClient
from modal_llm_serving.errors import (
    EndpointError,
    EndpointStatusError,
    EndpointTimeout,
    EngineNotInstalled,
    EngineStartError,
    MlsError,
    ModelCacheError,
    UsageError,
)
from modal_llm_serving.local.transforms import CPU_TRANSFORMS, for_local_cpu

__version__ = "0.1.0"

__all__ = [
    "CPU_TRANSFORMS",
    "EndpointError",
    "EndpointStatusError",
    "EndpointTimeout",
    "EngineNotInstalled",
    "EngineStartError",
    "MlsError",
    "ModelCacheError",
    "OpenAIClient",
    "UsageError",
    "__version__",
    "for_local_cpu",
]
