"""The folder view's pictures (exchange.portal.folder_view), rendered from a sender's DICOM files
by exchange.dicom.previews in worker processes of the portal's own.

A job runs alone in its worker: the file is streamed to it a piece at a time (the portal never
holds a whole file), and the answer comes back as plain bytes. A worker is limited to
RENDER_MEMORY of address space and a job to RENDER_SECONDS of wall-clock time: a job over its
time has its worker killed, and the next job gets a new one. A worker's death (a decoder's crash
on a sender's file) fails the job it had taken and no other; a worker that stopped before it
took a job (it says so at once) is replaced and the job given to the new one. How many jobs one account may run at
once is its caller's to say (exchange.portal.viewing: one).

    python -P -m exchange.portal.rendering    one worker: jobs on stdin, answers on stdout
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import resource
import signal
import struct
import sys
from collections.abc import AsyncIterable, Callable

RENDER_WORKERS = 2
RENDER_MEMORY = 2 << 30  # address space of a worker
RENDER_SECONDS = 20  # a job's wall-clock time: a CT slice takes 50 ms, a 40 Mpx JPEG 2000 frame seconds
JOBS_PER_WORKER = 500  # then it is started anew: what a decoder may leak goes with it
MAX_ANSWER = 16 << 20  # a 512 px preview is about 30 KB
COMMAND = [sys.executable, "-P", "-m", "exchange.portal.rendering"]  # -P: nothing from the working directory
CANNOT = "its pixel data cannot be decoded"
_REQUEST = struct.Struct(">QIH")  # the file's size, the frame, the transfer syntax's length; then it, the file
_TAKEN = b"T"  # the worker's word, once it has read a job's request: the file may come
_ANSWER = struct.Struct(">cQ")  # b"J" a JPEG or b"E" why not (UTF-8), its length; then it


class _Stopped(Exception):
    """The worker is gone (killed, crashed) or answered what no worker answers."""


class _Worker:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process, self.jobs = process, 0

    @classmethod
    async def start(cls, command: list[str]) -> _Worker:
        # The worker imports what the portal imports (as multiprocessing's spawn would).
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}
        process = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env
        )
        return cls(process)

    async def take(self, size: int, transfer_syntax: str, frame: int) -> bool:
        """Whether the worker took the job (False: it had stopped before)."""
        requests, answers = self.process.stdin, self.process.stdout
        assert requests is not None and answers is not None
        if self.process.returncode is not None:
            return False
        syntax = transfer_syntax.encode("utf-8", "replace")
        try:
            requests.write(_REQUEST.pack(size, frame, len(syntax)) + syntax)
            await requests.drain()
            return await answers.readexactly(1) == _TAKEN
        except (asyncio.IncompleteReadError, ConnectionError):
            return False

    async def run(self, chunks: AsyncIterable[bytes]) -> bytes | str:
        """The taken job's answer, once the worker has its file."""
        requests, answers = self.process.stdin, self.process.stdout
        assert requests is not None and answers is not None
        try:
            async for chunk in chunks:  # one piece in the portal at a time
                requests.write(chunk)
                await requests.drain()
            kind, length = _ANSWER.unpack(await answers.readexactly(_ANSWER.size))
            if kind not in (b"J", b"E") or length > MAX_ANSWER:
                raise _Stopped()
            answer = await answers.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError) as error:
            raise _Stopped() from error
        self.jobs += 1
        return answer if kind == b"J" else answer.decode("utf-8", "replace")

    def stop(self) -> None:
        # By its pid: Process.kill() polls first, which reaps a worker that died on its own behind the
        # back of asyncio's child watcher. The pid stays this worker's until that watcher reaps it.
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)

    def retire(self) -> None:
        """No more jobs: the worker ends when it reads the end of its input."""
        assert self.process.stdin is not None
        self.process.stdin.close()


class Renderer:
    """The portal's render workers, started when first needed, each job in one of them alone."""

    def __init__(
        self, workers: int = RENDER_WORKERS, seconds: float = RENDER_SECONDS, command: list[str] | None = None
    ) -> None:
        self.seconds, self.command = seconds, command or COMMAND
        self._places = asyncio.Semaphore(workers)
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()

    async def render(self, chunks: AsyncIterable[bytes], size: int, transfer_syntax: str, frame: int) -> bytes | str:
        """The JPEG of the file that `chunks` gives (`size` bytes in all), or why it cannot be
        shown. What `chunks` raises (the file's session broke) is raised, its worker stopped."""
        async with self._places:
            try:
                async with asyncio.timeout(self.seconds):
                    worker = await self._taken(size, transfer_syntax, frame)
                    try:
                        answer = await worker.run(chunks)
                    except BaseException:  # stopped, over its time, or the file's reading failed
                        self._stop(worker)
                        raise
            except TimeoutError:
                return f"rendering it takes longer than {self.seconds:g} s"
            except _Stopped:
                return CANNOT
            self._busy.discard(worker)
            if worker.jobs >= JOBS_PER_WORKER:
                worker.retire()
            else:
                self._idle.append(worker)
            return answer

    async def _taken(self, size: int, transfer_syntax: str, frame: int) -> _Worker:
        """A worker that took the job: an idle one, or a new one if none is idle or it had stopped."""
        for _ in range(2):
            worker = self._idle.pop() if self._idle else await _Worker.start(self.command)
            self._busy.add(worker)
            try:
                taken = await worker.take(size, transfer_syntax, frame)
            except BaseException:  # over its time while it started
                self._stop(worker)
                raise
            if taken:
                return worker
            self._stop(worker)
        raise _Stopped()  # a new worker that does not start

    def _stop(self, worker: _Worker) -> None:
        worker.stop()
        self._busy.discard(worker)

    async def close(self) -> None:
        """Every worker stopped, and waited for."""
        workers = [*self._idle, *self._busy]
        self._idle.clear()
        self._busy.clear()
        for worker in workers:
            worker.stop()
        for worker in workers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(worker.process.wait(), 5)


# -- a worker -----------------------------------------------------------------------------------


def _render(data: bytes, transfer_syntax: str, frame: int) -> bytes | str:
    from exchange.dicom import previews

    try:
        return previews.render(io.BytesIO(data), transfer_syntax, frame)
    except previews.PreviewError as error:
        return str(error)


def serve(render: Callable[[bytes, str, int], bytes | str] = _render) -> None:
    """A worker's life: a job at a time from stdin, its answer to stdout, until stdin ends.
    `render` gives the JPEG or why not (tests give another)."""
    resource.setrlimit(resource.RLIMIT_AS, (RENDER_MEMORY, RENDER_MEMORY))
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # what a library prints goes to the log, never into an answer
    requests = sys.stdin.buffer
    while True:
        head = requests.read(_REQUEST.size)
        if len(head) < _REQUEST.size:
            return  # the portal is done with this worker
        size, frame, length = _REQUEST.unpack(head)
        transfer_syntax = requests.read(length).decode("utf-8", "replace")
        answers.write(_TAKEN)
        answers.flush()
        data = requests.read(size)
        if len(data) < size:
            return
        failed = False
        try:
            found = render(data, transfer_syntax, frame)
        except Exception:  # noqa: BLE001 - a decoder on a sender's file may raise anything
            found, failed = CANNOT, True
        del data
        kind, payload = (b"J", found) if isinstance(found, bytes) else (b"E", found.encode("utf-8", "replace")[:1000])
        answers.write(_ANSWER.pack(kind, len(payload)) + payload)
        answers.flush()
        if failed:
            return  # whatever state the failure left goes with this worker


if __name__ == "__main__":
    serve()
