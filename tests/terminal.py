"""Children started as a shell starts a command in the foreground of a terminal.

A test that presses Ctrl-C (SIGINT) or hangs up (SIGHUP) on a child must give the child those
signals at their defaults: a suite started in the background (`make test &`: a non-interactive
shell starts it with SIGINT ignored) or under `nohup` (SIGHUP ignored) passes them on ignored,
and the toolkit rightly keeps a signal it inherited ignored (`stopping.py`), so the test would
see nothing happen and hang until its timeout.
"""

from __future__ import annotations

import signal


def as_in_a_terminal() -> None:
    """`preexec_fn` for such a child: Ctrl-C and hang-up at their defaults."""
    for number in (signal.SIGINT, signal.SIGHUP):
        signal.signal(number, signal.SIG_DFL)
