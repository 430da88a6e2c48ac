"""The site's logo and accent colour, served by the portal itself (no request leaves the page):
`/brand/logo` and `/brand/accent.css`. Their URLs carry a digest of what they serve, so a
browser keeps them for long and a new logo or colour is a new URL.

The colour comes as a style sheet of its own: the CSP allows style sheets from this origin
only, no inline style."""

from __future__ import annotations

import hashlib
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

from exchange.branding import Logo, read_logo
from exchange.site import PublicSite


class Brand:
    def __init__(self, site: PublicSite, logo: str | None) -> None:
        self.logo: Logo | None = read_logo(Path(logo)) if logo else None  # LogoError: the portal does not start
        self.css = f":root {{ --accent: {site.accent_colour}; }}\n"
        self.css_version = hashlib.sha256(self.css.encode()).hexdigest()[:16]

    @property
    def css_url(self) -> str:
        return f"/brand/accent.css?v={self.css_version}"

    @property
    def logo_url(self) -> str | None:
        return f"/brand/logo?v={self.logo.version}" if self.logo else None

    async def logo_file(self, request: Request) -> Response:
        if self.logo is None:
            return Response(status_code=404)
        return Response(self.logo.content, media_type=self.logo.media_type)

    async def accent_css(self, request: Request) -> Response:
        return Response(self.css, media_type="text/css")
