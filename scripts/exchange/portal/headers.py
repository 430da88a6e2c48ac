"""The headers every answer carries: a strict content security policy, no framing, no referrer
(a link page's URL holds its token), and no caching of anything but the static files and the
site's logo and colour."""

from __future__ import annotations

# data: images: a view page carries its first picture (exchange.portal.viewing); an image runs nothing.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# The logo and the colour's style sheet are no documents: opened on their own, nothing in them may run.
BRAND_CSP = "default-src 'none'; frame-ancestors 'none'; sandbox"
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",  # a link page's URL holds its token
    "permissions-policy": "camera=(), microphone=(), geolocation=(), interest-cohort=()",
    "cross-origin-opener-policy": "same-origin",
}
STATIC_CACHE = "public, max-age=3600"
# /brand/ URLs carry a digest of what they serve (exchange.portal.brand): a change is a new URL.
BRAND_CACHE = "public, max-age=31536000, immutable"


class SecurityHeaders:
    """Adds the headers above to every response, and no-store to everything but static files
    and the brand (pages list patients' files; downloads are patients' files)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        brand = path.startswith("/brand/")
        cache = BRAND_CACHE if brand else STATIC_CACHE if path.startswith("/static/") else "no-store"
        own = {
            **SECURITY_HEADERS,
            "content-security-policy": BRAND_CSP if brand else PAGE_CSP,
            **({"cross-origin-resource-policy": "same-origin"} if brand else {}),
        }

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                # Only what was found is kept for long: a missing logo is no answer to keep.
                own["cache-control"] = cache if message["status"] == 200 or not brand else "no-store"
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower().decode() not in own]
                headers += [(k.encode(), v.encode()) for k, v in own.items()]
                message = {**message, "headers": headers}
            await send(message)

        return await self.app(scope, receive, send_with_headers)
