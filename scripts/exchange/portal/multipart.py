"""A multipart/form-data body as a stream of parts, file data passed on as it arrives.

Starlette's own form parser spools files to a temporary file on the portal's disk; an upload
here goes straight into the account's upload folder instead. python-multipart does the
parsing (a push parser); this turns its callbacks into events that async code can await on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from python_multipart.multipart import MultipartParser, parse_options_header


class MalformedBody(ValueError):
    pass


@dataclass
class PartStart:
    name: str
    filename: str | None  # None: a plain field


@dataclass
class PartData:
    data: bytes


class PartEnd:
    pass


class _Collector:
    def __init__(self) -> None:
        self.events: list = []
        self._headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""

    def callbacks(self) -> dict:
        return {
            "on_part_begin": lambda: self._headers.clear(),
            "on_header_field": lambda data, start, end: setattr(self, "_field", self._field + data[start:end]),
            "on_header_value": lambda data, start, end: setattr(self, "_value", self._value + data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": lambda data, start, end: self.events.append(PartData(bytes(data[start:end]))),
            "on_part_end": lambda: self.events.append(PartEnd()),
        }

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def _headers_finished(self) -> None:
        kind, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if kind != b"form-data" or b"name" not in options:
            raise MalformedBody("a part without a form-data name")
        filename = options.get(b"filename")
        self.events.append(
            PartStart(
                options[b"name"].decode("utf-8", "replace"),
                filename.decode("utf-8", "replace") if filename is not None else None,
            )
        )


async def parts(content_type: str, body: AsyncIterator[bytes]) -> AsyncIterator[PartStart | PartData | PartEnd]:
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise MalformedBody("not multipart/form-data")
    collector = _Collector()
    parser = MultipartParser(options[b"boundary"], collector.callbacks())
    async for chunk in body:
        try:
            parser.write(chunk)
        except MalformedBody:
            raise
        except Exception as exc:  # python-multipart's parse errors
            raise MalformedBody(str(exc)) from None
        events, collector.events = collector.events, []
        for event in events:
            yield event
    parser.finalize()
    for event in collector.events:
        yield event
