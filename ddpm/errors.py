"""The exceptions the commands turn into messages: the user's mistakes, and a run stopped by a signal."""

import signal
from pathlib import Path


class UserError(Exception):
    """A bad value, file or option: the CLI prints the message as it is and exits with status 2."""


class Interrupted(Exception):
    """A stage stopped on SIGINT or SIGTERM, after saving what lets it go on (`saved`, if any)."""

    def __init__(self, signum: int, step: int, saved: Path | None) -> None:
        where = f"saved {saved}; run the same command to resume" if saved else "nothing to save"
        super().__init__(f"{signal.Signals(signum).name} at step {step}; {where}")
        self.signum = signum
