"""The pages: the templates rendered in the visitor's language (nl or en) with the texts of
text.yaml and the site's logo and colour, the message page that says what went wrong or what
happened, and help."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import jinja2
import markupsafe
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from exchange import templates as package_templates
from exchange import untrusted
from exchange.messaging.messages import day_and_time, dicom_date, messages_dir, person, when
from exchange.policy import Policy
from exchange.portal.brand import Brand
from exchange.portal.browser import CSRF_COOKIE, LANG_COOKIE, new_csrf_token, set_cookie
from exchange.portal.config import PortalConfig
from exchange.site import LANGUAGES
from exchange.validation import load_yaml


class Pages:
    def __init__(self, config: PortalConfig, policy: Policy) -> None:
        self.config, self.policy = config, policy
        templates = self.templates = Path(config.templates_dir or package_templates.PORTAL)
        self.text = load_text(templates / "text.yaml")
        self.env = jinja2.Environment(
            loader=jinja2.ChoiceLoader([jinja2.FileSystemLoader(templates), jinja2.FileSystemLoader(messages_dir())]),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            finalize=untrusted.shown_in_template,  # file names are others': shown escaped, never as controls
        )
        self.env.filters["size"] = human_size
        self.env.filters["breakable"] = breakable
        self.env.filters["stack_figures"] = stack_figures
        self.env.filters["person"], self.env.filters["dicom_date"] = person, dicom_date  # as the package's pages
        # The messages' own wording, in the site's time zone (not the server's clock zone).
        self.env.filters["when"] = lambda value, lang: when(value, lang, config.site.zone)
        self.env.filters["when_in_two"] = lambda value, lang: in_two(day_and_time(value, lang, config.site.zone))
        self.static = templates / "static"
        self.brand = Brand(config.site, config.logo)

    def check_templates(self) -> None:
        own = jinja2.FileSystemLoader(self.templates).list_templates()
        for name in [n for n in own if n.endswith(".j2")]:
            self.env.get_template(name)

    def check_static(self) -> None:
        if not self.static.is_dir():
            raise OSError(f"{self.static}: no static files")

    def language(self, request: Request) -> str:
        chosen = request.query_params.get("lang") or request.cookies.get(LANG_COOKIE)
        if chosen in LANGUAGES:
            return chosen
        for part in request.headers.get("accept-language", "").split(","):
            tag = part.split(";")[0].strip().lower()[:2]
            if tag in LANGUAGES:
                return tag
        return LANGUAGES[0]

    def page(self, request: Request, template: str, status: int = 200, **context) -> HTMLResponse:
        lang = self.language(request)
        csrf = request.cookies.get(CSRF_COOKIE) or new_csrf_token()
        html = self.env.get_template(template).render(
            site=self.config.site,
            brand=self.brand,
            policy=self.policy,
            portal_host=self.config.site.portal_host,
            lang=lang,
            t=lambda key: self.text[key][lang],
            csrf=csrf,
            path=request.url.path,
            **{"error": None, "notice": None, **context},
        )
        response = HTMLResponse(html, status_code=status)
        if request.cookies.get(CSRF_COOKIE) != csrf:
            set_cookie(response, CSRF_COOKIE, csrf)
        if request.query_params.get("lang") in LANGUAGES:
            set_cookie(response, LANG_COOKIE, lang, max_age=365 * 86400)
        return response

    def message(self, request: Request, status: int = 200, **context) -> HTMLResponse:
        """The page that says one thing, an `error` or a `notice`, and leads back to the login."""
        return self.page(request, "message.htm.j2", status=status, **context)

    async def help(self, request: Request) -> Response:
        return self.page(request, f"help.{self.language(request)}.htm.j2")


def load_text(path: Path) -> dict[str, dict[str, str]]:
    """The page texts, one entry per key with every language."""
    text = load_yaml(path.read_text(encoding="utf-8"))
    incomplete = [key for key, value in text.items() if set(value) != set(LANGUAGES)]
    if incomplete:
        raise ValueError(f"{path}: keys without every language ({', '.join(LANGUAGES)}): {', '.join(incomplete)}")
    return text


# A file name or an address may wrap after - _ / and before . @ (so an extension or a domain
# stays whole: "142300" / ".zip"), and nowhere inside a word.
_WRAPS = re.compile(r"(?<=[-_/])|(?=[.@])")


def breakable(text: object) -> markupsafe.Markup:
    """A file name or address shown as every other value (made printable, escaped), with a
    <wbr> where a line may break."""
    escaped = str(markupsafe.escape(untrusted.printable(text)))  # entities hold none of - _ / . @
    return markupsafe.Markup(_WRAPS.sub("<wbr>", escaped))


def in_two(halves: tuple[str, str]) -> markupsafe.Markup:
    """Two texts that each stay on one line; a line may break between them only (a date on a
    phone narrower than its whole width: the day, then the time)."""
    return markupsafe.Markup('<span class="nowrap">{}</span> <span class="nowrap">{}</span>').format(*halves)


def human_size(size: int, lang: str = "en") -> str:
    """123.5 MB, in Dutch 123,5 MB."""
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            text = f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
            return text.replace(".", ",") if lang == "nl" else text
        size /= 1000
    return str(size)


def stack_figures(
    pictures: Sequence, url_start: str, url_end: str, first: str, word: str, of: str
) -> markupsafe.Markup:
    """A series' stack on the view page (view.htm.j2): a figure a picture, its URL `url_start`,
    its number, `url_end` (the first's `first`, which may be the picture itself), "`word` 3
    `of` 200" as its text. What all share is escaped once; each figure is one format."""
    start, end, word, of = (markupsafe.escape(text) for text in (url_start, url_end, word, of))
    count, made = len(pictures), []
    for index, picture in enumerate(pictures, start=1):
        source = markupsafe.escape(first) if index == 1 else f"{start}{index}{end}"
        size = f' width="{int(picture.width)}" height="{int(picture.height)}"' if picture.width else ""
        loading = ' fetchpriority="high"' if index == 1 else ' loading="lazy"'
        made.append(
            f'<figure><img src="{source}"{size}{loading} alt="{word} {index} {of} {count}">'
            f"<figcaption>{index} / {count}</figcaption></figure>\n"
        )
    return markupsafe.Markup("".join(made))
