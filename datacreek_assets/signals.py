"""Signal dispositions that child processes inherit.

A process started in the background by a non-interactive shell (`nohup cmd &`, many CI runners)
starts with SIGINT ignored, and some launchers ignore SIGTERM too. Dagster gives SIGTERM
SIGINT's disposition whenever it runs user code on the main thread (`user_code_error_boundary`,
resource set-up included) and in each of its CLIs (`setup_interrupt_handlers`), so SIGTERM ends
up ignored as well. An ignored signal survives exec, while a handler is reset to the default
there: the `tail -F` processes Dagster starts to mirror each step's compute logs then ignore the
SIGTERM meant to stop them, and every step waits 30 s for them (`communicate(timeout=30)`) and
leaves them running. A blocked signal (the signal mask) would survive exec too; no launcher seen
here blocks one.
"""

from __future__ import annotations

import logging
import signal
import threading


def _ignore(signum, frame) -> None:
    """Ignore the signal, as SIG_IGN did, but as a handler: exec resets it in children."""


def let_children_take_default_signals() -> bool:
    """Replace an ignored SIGINT or SIGTERM by a handler that ignores it. This process behaves as
    before (system calls restart rather than fail with EINTR); the processes it starts get the
    default actions. Returns whether anything changed. Only the main thread may set handlers:
    elsewhere this warns when a signal is ignored and changes nothing."""
    ignored = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is signal.SIG_IGN]
    if not ignored:
        return False
    if threading.current_thread() is not threading.main_thread():
        logging.getLogger(__name__).warning(
            "%s ignored and not on the main thread: processes started here (Dagster's log tailers "
            "among them) will ignore it too", ", ".join(s.name for s in ignored))
        return False
    for signum in ignored:
        signal.signal(signum, _ignore)
        signal.siginterrupt(signum, False)
    return True
