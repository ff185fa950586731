"""The batch recipe's `LLM(**kwargs)` with the CPU transforms `mls local` applies to a command.

Only the throughput recipe's local run needs it (`recipe_throughput_child.py`, which imports it
by its bare name: run as a script, this folder is first on its `sys.path`); the toolkit itself
never runs the batch recipe off Modal.
"""

from __future__ import annotations

from typing import Any

from modal_llm_serving.local.transforms import CPU_TRANSFORMS


def llm_kwargs_for_local_cpu(kwargs: dict[str, Any]) -> dict[str, Any]:
    """`kwargs` with the settings a CPU cannot run dropped and eager mode set, as for a command."""
    out = {key: value for key, value in kwargs.items()
           if not any(t.action == "drop" and t.setting == key for t in CPU_TRANSFORMS)}
    out |= {t.setting: True for t in CPU_TRANSFORMS if t.action == "set"}
    return out
