"""Just enough of nginx's configuration language to read `nginx -T`: the configuration nginx
loads, its includes put back in place, which server and location serve a request, and which
value of a directive applies there.

Not the site file: nginx may load another copy of it, or something else beside it.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from dataclasses import dataclass, field

FILE_HEADER = re.compile(r"^# configuration file (\S+):$", re.M)
# Whitespace, a comment, a quoted string, { } ;, or a word (which may hold ${variable}).
TOKEN = re.compile(
    r"""\s+|#[^\n]*|"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)'|([{};])|((?:\$\{[^}]*\}|[^\s{};"'\\]|\\.)+)"""
)
SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


class NginxConfigError(Exception):
    pass


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] | None = None  # the directives inside { }, for a block directive

    def all(self, name: str) -> list[Directive]:
        return [d for d in self.block or [] if d.name == name]


@dataclass
class Config:
    """`nginx -T` output: every file nginx read, by path; the first is the main file."""

    files: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dump(cls, dump: str) -> Config:
        parts = FILE_HEADER.split(dump)  # text before the first header, then (path, text) pairs
        if len(parts) < 3:
            raise NginxConfigError("no '# configuration file' in the nginx -T output")
        return cls(dict(zip(parts[1::2], parts[2::2], strict=True)))

    def main(self) -> Directive:
        path = next(iter(self.files))
        return Directive("main", [], self._parse(path, posixpath.dirname(path), depth=0))

    def _parse(self, path: str, prefix: str, depth: int) -> list[Directive]:
        if depth > 20:  # a file that includes itself: nginx would refuse it, the dump may not show why
            raise NginxConfigError(f"{path}: includes nested too deep")
        stack: list[list[Directive]] = [[]]
        words: list[str] = []
        for match in TOKEN.finditer(self.files[path]):
            quoted, single, special, word = match.groups()
            if special == ";":
                if not words:
                    continue
                stack[-1].extend(self._directive(words, prefix, depth))
                words = []
            elif special == "{":
                block = Directive(words[0] if words else "", words[1:], [])
                stack[-1].append(block)
                stack.append(block.block)
                words = []
            elif special == "}":
                if len(stack) == 1:
                    raise NginxConfigError(f"{path}: unexpected }}")
                stack.pop()
            elif quoted is not None or single is not None or word is not None:
                words.append(next(part for part in (quoted, single, word) if part is not None))
        if len(stack) != 1 or words:
            raise NginxConfigError(f"{path}: unexpected end of file")
        return stack[0]

    def _directive(self, words: list[str], prefix: str, depth: int) -> list[Directive]:
        if words[0] != "include":
            return [Directive(words[0], words[1:])]
        # In place, as nginx does: a glob's files in name order (a glob's * never crosses a /).
        pattern = posixpath.join(prefix, words[1])
        included = sorted(
            path for path in self.files if path.count("/") == pattern.count("/") and fnmatch.fnmatchcase(path, pattern)
        )
        return [d for path in included for d in self._parse(path, prefix, depth + 1)]


def tls_servers(main: Directive, port: int) -> list[Directive]:
    """The server blocks of the http block that listen with TLS on `port`."""
    return [
        server
        for http in main.all("http")
        for server in http.all("server")
        if any(
            listen.args[0].rsplit(":", 1)[-1] == str(port) and "ssl" in listen.args for listen in server.all("listen")
        )
    ]


def location_for(server: Directive, path: str) -> Directive | None:
    """The server's location nginx picks for `path`: an exact match, else the longest prefix
    if it is ^~, else the first regular expression that matches, else the longest prefix."""
    prefixes, regexes = [], []
    for location in server.all("location"):
        modifier, pattern = location.args if len(location.args) == 2 else ("", location.args[0])
        if modifier == "=" and path == pattern:
            return location
        if modifier in ("", "^~") and path.startswith(pattern):
            prefixes.append((len(pattern), modifier, location))
        elif modifier in ("~", "~*"):
            regexes.append((re.compile(pattern, re.I if modifier == "~*" else 0), location))
    longest = max(prefixes, key=lambda item: item[0], default=None)
    if longest and longest[1] == "^~":
        return longest[2]
    matching = next((location for regex, location in regexes if regex.search(path)), None)
    return matching or (longest[2] if longest else None)


def in_effect(name: str, *levels: Directive) -> list[list[str]]:
    """The arguments of every `name` directive at the innermost level that has one: nginx
    inherits a directive only into a block that does not set it itself."""
    for level in levels:
        found = level.all(name)
        if found:
            return [directive.args for directive in found]
    return []


def size_bytes(value: str) -> int:
    match = re.fullmatch(r"(\d+)([kmg]?)", value.lower())
    if not match:
        raise NginxConfigError(f"{value!r} is not a size")
    return int(match[1]) * SIZE_UNITS[match[2]]


def zone_rates_per_minute(http: Directive) -> dict[str, int]:
    """limit_req_zone name -> its rate in requests per minute."""
    rates = {}
    for zone in http.all("limit_req_zone"):
        options = dict(arg.split("=", 1) for arg in zone.args if "=" in arg)
        rate = re.fullmatch(r"(\d+)r/([sm])", options.get("rate", ""))
        if "zone" in options and rate:
            rates[options["zone"].split(":")[0]] = int(rate[1]) * (60 if rate[2] == "s" else 1)
    return rates
