"""A render worker for the tests (exchange.portal.rendering's own loop and protocol, another
drawing): the transfer syntax says what to do, the frame for how many milliseconds.

    python -P -m tests.unit.render_stub
"""

from __future__ import annotations

import os
import time

from exchange.portal import rendering


def render(data: bytes, transfer_syntax: str, frame: int) -> bytes | str:
    time.sleep(frame / 1000)
    if transfer_syntax == "hang":
        time.sleep(3600)
    if transfer_syntax == "die":  # as a decoder's crash on a sender's file
        os._exit(9)
    if transfer_syntax == "refuse":
        return "not an image"
    return b"\xff\xd8\xff" + f"{os.getpid()}:{len(data)}".encode() + b"\xff\xd9"


if __name__ == "__main__":
    rendering.serve(render)
