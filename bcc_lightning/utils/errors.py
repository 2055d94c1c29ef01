"""One exception type for mistakes the user can fix; entry points print its message without a traceback."""

from __future__ import annotations

import signal


class UserError(Exception):
    """A problem with the user's input, config or files, with a message that says what to do."""


class Stopped(BaseException):
    """The run was asked to stop by a signal (SIGTERM from `kill`, `docker stop`, systemd, Kubernetes or SLURM;
    SIGUSR1 from SLURM's pre-emption warning). A BaseException, like KeyboardInterrupt, so that `except Exception`
    blocks on the way out do not swallow it. Entry points print `message` and exit with `exit_code`."""

    def __init__(self, signum: int, message: str = "") -> None:
        self.signum = int(signum)
        self.message = message or f"Stopped by {self.signal_name}."
        super().__init__(self.message)

    @property
    def signal_name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    @property
    def exit_code(self) -> int:
        """128 + the signal number: what a shell reports for a process the signal killed (143 for SIGTERM, 138 for
        SIGUSR1), so supervisors read a clean stop the same way as before."""
        return 128 + self.signum
