"""The one base of what the tools refuse or cannot do. The CLI has one handler for it: the
message (escaped where it lands) and the exit status the error carries."""

REFUSED = 2  # refused before anything was done: bad input, an unknown account, data to fix
FAILED = 1  # failed on the way; the message says what was left and what to do


class ExchangeError(Exception):
    """A request refused or failed; its message says why, and what was left as it was."""

    status = FAILED

    def __init__(self, *args: object, status: int | None = None) -> None:
        super().__init__(*args)
        if status is not None:
            self.status = status
