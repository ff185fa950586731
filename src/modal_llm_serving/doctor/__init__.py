"""`mls doctor`: is this machine's Modal CLI, SDK, Python and profile what you think it is?

`checks` asks each question and `run_doctor` runs them in order; `probe` asks interpreters and
reads launchers; `report` is the answer's shape, with secrets masked.
"""

from modal_llm_serving.doctor.checks import SUPPORTED_MODAL, run_doctor
from modal_llm_serving.doctor.probe import (
    LauncherInfo,
    PythonInfo,
    find_launcher_interpreter,
    probe_python,
)
from modal_llm_serving.doctor.report import Check, DoctorReport

__all__ = ["SUPPORTED_MODAL", "Check", "DoctorReport", "LauncherInfo", "PythonInfo",
           "find_launcher_interpreter", "probe_python", "run_doctor"]
