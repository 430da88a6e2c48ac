"""The one TLS client setting of the tools: the peer's certificate verified (the system's CAs
or the site's own `ca_file`) and its host name checked; TLS 1.2 at least."""

from __future__ import annotations

import ssl


def client_context(ca_file: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
