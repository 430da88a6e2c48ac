"""The two folders over the web: the listing, downloads (byte ranges, so a broken one resumes)
and uploads (streamed into the upload folder as they arrive). Every file is read and written
through the session's own SFTP (exchange.portal.files)."""

from __future__ import annotations

import mimetypes
import weakref
from collections.abc import Callable
from email.utils import formatdate
from urllib.parse import quote

import asyncssh
from starlette.requests import ClientDisconnect, Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from exchange import auditlog
from exchange.policy import Policy
from exchange.portal import files, multipart
from exchange.portal.browser import client_ip, csrf_ok, session_of
from exchange.portal.pages import Pages
from exchange.portal.sessions import SessionStore, TooManyTransfers, WebSession

DRAIN_MAX_BYTES = 64 << 20  # a refused upload's body read on for a clean answer; a bigger one is cut off


def folder(policy: Policy, which: str) -> str:
    """The chroot's path of the account's download or upload folder."""
    accounts = policy.accounts
    return "/" + (accounts.download_folder if which == "download" else accounts.upload_folder)


class Transfers:
    def __init__(
        self, pages: Pages, sessions: SessionStore, policy: Policy,
        listed: Callable[[WebSession, list[files.Listed]], None] = lambda session, downloads: None,
    ) -> None:  # fmt: skip
        # listed: told the download folder a files page shows (exchange.portal.viewing reads ahead)
        self.pages, self.sessions, self.policy, self.listed = pages, sessions, policy, listed

    def folder(self, which: str) -> str:
        return folder(self.policy, which)

    async def folders(self, request: Request) -> Response:
        session = session_of(request, self.sessions)
        if session is None:
            return self.pages.message(request, status=401, error="session_ended")
        try:
            downloads = await files.listing(session.ssh.sftp, self.folder("download"))
            uploads = await files.listing(session.ssh.sftp, self.folder("upload"))
        except (OSError, asyncssh.Error):  # the SSH session broke (account removed, sshd restarted)
            self.sessions.close(session.id)
            return self.pages.message(request, status=401, error="session_ended")
        self.listed(session, downloads)
        notices = request.query_params.getlist("uploaded")
        error = request.query_params.get("error")  # set by our own redirects; anything else is ignored
        return self.pages.page(
            request, "files.htm.j2", session=session, downloads=downloads, uploads=uploads, uploaded=notices,
            error=error if f"error_{error}" in self.pages.text else None, quote=quote,
        )  # fmt: skip

    async def download(self, request: Request) -> Response:
        session = session_of(request, self.sessions)
        if session is None:
            return self.pages.message(request, status=401, error="session_ended")
        ip = client_ip(request)
        try:
            name = files.check_name(request.path_params["name"])
            path = f"{self.folder('download')}/{name}"
            attrs = await session.ssh.sftp.stat(path)
            if not attrs.type == asyncssh.FILEXFER_TYPE_REGULAR:
                raise files.BadName(name)
        except (files.BadName, asyncssh.SFTPError):
            auditlog.record("portal-download-refused", account=session.account, ip=ip, file=request.path_params["name"])
            return self.pages.message(request, status=404, error="no_such_file")
        size, modified = attrs.size, format_http_date(attrs.mtime)
        # A resumed download continues the same file only (If-Range: the date it started from).
        if_range = request.headers.get("if-range")
        wanted = request.headers.get("range") if if_range in (None, modified) else None
        try:
            span = files.byte_range(wanted, size)
        except files.RangeNotSatisfiable:
            return Response(status_code=416, headers={"content-range": f"bytes */{size}"})
        start, end = span if span else (0, size - 1)
        length = end - start + 1 if size else 0
        headers = {
            "content-length": str(length),
            "accept-ranges": "bytes",
            "content-disposition": f"attachment; filename*=UTF-8''{quote(name)}",
            "last-modified": modified,
        }
        if span:
            headers["content-range"] = f"bytes {start}-{end}/{size}"
        media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if request.method == "HEAD":  # the headers only: nothing read, nothing downloaded
            return Response(status_code=206 if span else 200, headers=headers, media_type=media_type)
        try:
            slot = self.sessions.transfer_slot(session)  # taken now: a hundred at once cannot all pass
        except TooManyTransfers:
            return self.pages.message(request, status=429, error="too_many_transfers")

        async def body():
            sent = 0
            try:
                if length:
                    async for data in files.read_file(session.ssh.sftp, path, start, length):
                        sent += len(data)
                        yield data
            finally:
                slot.release()
                auditlog.record(
                    "portal-download", account=session.account, ip=ip, agent=session.agent, file=name, bytes=sent,
                    offset=start, size=size, complete=sent == length,
                )  # fmt: skip

        stream = body()
        weakref.finalize(stream, slot.release)  # a body dropped before it ever ran gives its place back
        return StreamingResponse(stream, status_code=206 if span else 200, headers=headers, media_type=media_type)

    async def upload(self, request: Request) -> Response:
        response = await self.receive_upload(request)
        await drain(request)
        return response

    async def receive_upload(self, request: Request) -> Response:
        session = session_of(request, self.sessions)
        if session is None:
            return self.pages.message(request, status=401, error="session_ended")
        ip = client_ip(request)
        limit = self.policy.portal.upload_max_mb << 20
        done: list[str] = []

        def back(error: str | None = None) -> Response:
            query = "&".join([f"uploaded={quote(name)}" for name in done] + ([f"error={error}"] if error else []))
            return RedirectResponse("/files" + (f"?{query}" if query else ""), 303)

        if int(request.headers.get("content-length") or 0) > limit + (1 << 20):
            return back("too_large")
        csrf, current, upload = None, None, None
        try:
            slot = self.sessions.transfer_slot(session)
        except TooManyTransfers:
            return back("too_many_transfers")
        try:
            with slot:
                async for event in multipart.parts(request.headers.get("content-type", ""), request.stream()):
                    if isinstance(event, multipart.PartStart):
                        current = event
                        if event.name == "csrf":
                            csrf = ""
                        elif event.name == "file" and event.filename:
                            if not csrf_ok(request, csrf):  # the token field comes first in the form
                                return back("form_expired")
                            name = files.upload_name(event.filename)
                            upload = await files.Upload(session.ssh.sftp, self.folder("upload"), name, limit).start()
                    elif isinstance(event, multipart.PartData):
                        if upload is not None:
                            await upload.write(event.data)
                        elif current is not None and current.name == "csrf" and len(csrf) < 256:
                            csrf += event.data.decode("ascii", "replace")
                    elif upload is not None:  # the end of a file part
                        name = await upload.finish()
                        auditlog.record(
                            "portal-upload",
                            account=session.account,
                            ip=ip,
                            agent=session.agent,
                            file=name,
                            bytes=upload.size,
                        )
                        done.append(name)
                        upload = None
        except files.BadName:
            return back("bad_name")
        except files.TooLarge:
            auditlog.record("portal-upload-refused", account=session.account, ip=ip, reason="too-large")
            return back("too_large")
        except multipart.MalformedBody:
            return back("bad_upload")
        except ClientDisconnect:
            auditlog.record("portal-upload-aborted", account=session.account, ip=ip)
            return Response(status_code=400)
        except (OSError, asyncssh.Error) as failure:  # the server refused the write (e.g. disk full)
            auditlog.record("portal-upload-failed", account=session.account, ip=ip, reason=str(failure))
            return back("upload_failed")
        finally:
            if upload is not None:
                await upload.discard()
        return back(None if done else "no_file")


async def drain(request: Request, most: int = DRAIN_MAX_BYTES) -> None:
    """Read what is left of a refused request's body (up to `most`), so the answer reaches the
    browser: closing with unread data makes the kernel reset the connection, and nginx then
    shows a 502 instead of the page that says what was wrong."""
    read = 0
    try:
        async for chunk in request.stream():
            read += len(chunk)
            if read > most:
                return
    except (RuntimeError, ClientDisconnect):
        return  # read to its end already, or the browser went away


def format_http_date(timestamp: int | None) -> str:
    return formatdate(timestamp or 0, usegmt=True)
