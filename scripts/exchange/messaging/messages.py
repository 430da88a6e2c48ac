"""The texts sent to recipients and staff, rendered from jinja2 templates.

The templates ship with the tools (exchange/templates/messages/, one file per message and
language, `<message>.<lang>.j2`), so a site reads and adjusts exactly what is sent, in its
checkout, and the deploy installs them with the version of the tools that renders them. An e-mail template starts with a
`Subject:` line and a blank line; an SMS template is the text only.
"""

from __future__ import annotations

import datetime
import os
import re
import textwrap
import zoneinfo
from dataclasses import dataclass
from pathlib import Path

import jinja2

from exchange import templates, untrusted
from exchange.errors import ExchangeError
from exchange.site import Site

MESSAGES_ENV = "EXCHANGE_MESSAGES"

_MONTHS = {
    "nl": "januari februari maart april mei juni juli augustus september oktober november december".split(),
    "en": "January February March April May June July August September October November December".split(),
}
_WEEKDAYS = {
    "nl": "maandag dinsdag woensdag donderdag vrijdag zaterdag zondag".split(),
    "en": "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split(),
}


class MessageError(ExchangeError):
    pass


@dataclass(frozen=True)
class Email:
    to: str
    subject: str
    body: str


def when(moment: datetime.datetime | float, lang: str, zone: datetime.tzinfo | str) -> str:
    """A date and time as recipients read it, in the site's time zone (site.timezone) and named,
    e.g. "zaterdag 5 december 2026 om 14:00 (CET)", whatever zone the server's clock is set to.
    The one wording of e-mails, SMS, packages and the web page; `moment` may be a Unix time."""
    return " ".join(day_and_time(moment, lang, zone))


def day_and_time(moment: datetime.datetime | float, lang: str, zone: datetime.tzinfo | str) -> tuple[str, str]:
    """`when` in its two halves, ("zaterdag 5 december 2026", "om 14:00 (CET)"): where a narrow
    page may wrap it."""
    if isinstance(zone, str):
        zone = zoneinfo.ZoneInfo(zone)
    if isinstance(moment, int | float):
        moment = datetime.datetime.fromtimestamp(moment, datetime.UTC)
    local = moment.astimezone(zone)  # a naive moment is the server's local time, as Python reads it
    weekday, month = _WEEKDAYS[lang][local.weekday()], _MONTHS[lang][local.month - 1]
    clock = local.strftime("%H:%M")
    zone = local.tzname() or ""
    return f"{weekday} {local.day} {month} {local.year}", f"{'om' if lang == 'nl' else 'at'} {clock} ({zone})"


def wrap(text: str, width: int = 76) -> str:
    """Plain-text mail lines of at most `width`; indented lines (links) and words stay whole."""
    lines = []
    for line in text.split("\n"):
        if len(line) <= width or line.startswith(" "):
            lines.append(line)
            continue
        item = re.match(r"^(\d+\. |- )", line)
        lines.extend(
            textwrap.wrap(
                line,
                width,
                subsequent_indent=" " * len(item[1]) if item else "",
                break_long_words=False,
                break_on_hyphens=False,
            )
        )
    return "\n".join(lines)


def dicom_date(value: object) -> str:
    """DICOM DA (20260105) as 2026-01-05; anything else as it is."""
    text = str(value or "")
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if re.fullmatch(r"\d{8}", text) else text


def person(value: object) -> str:
    """DICOM PN (DOE^JANE^^^) as "DOE, JANE"."""
    family, _, rest = str(value or "").partition("^")
    given = " ".join(part for part in rest.split("^") if part)
    return f"{family}, {given}" if given else family


def mask_email(address: str) -> str:
    """Enough for staff to recognise an address, too little to use it: p***@example.org."""
    local, _, domain = address.rpartition("@")
    return f"{local[:1]}***@{domain}"


def mask_phone(number: str) -> str:
    """+31*******78: country code and the last two digits."""
    return number[:3] + "*" * (len(number) - 5) + number[-2:]


def messages_dir() -> Path:
    return Path(os.environ.get(MESSAGES_ENV) or templates.MESSAGES)


class Messages:
    def __init__(self, site: Site, directory: Path | None = None) -> None:
        self.site = site
        self.directory = directory or messages_dir()
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(self.directory)),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            # Plain text (e-mail, SMS, README.TXT), except the package's HTML page.
            autoescape=jinja2.select_autoescape(enabled_extensions=("htm.j2",), default=False),
            # File names and DICOM text are others': no control or bidi character reaches a reader.
            finalize=untrusted.shown_in_template,
        )
        self.env.filters["when"] = lambda moment, lang: when(moment, lang, site.zone)
        self.env.filters["capfirst"] = lambda text: text[:1].upper() + text[1:]  # "het LUMC" opens a sentence
        self.env.filters["dicom_date"] = dicom_date
        self.env.filters["person"] = person

    def _render(self, message: str, lang: str, **context) -> str:
        name = f"{message}.{lang}.j2"
        try:
            template = self.env.get_template(name)
        except jinja2.TemplateNotFound:
            raise MessageError(f"{self.directory}/{name}: message template missing; is the server deployed?") from None
        try:
            return template.render(site=self.site, lang=lang, **context)
        except jinja2.TemplateError as exc:
            raise MessageError(f"{self.directory}/{name}: {exc}") from None

    def email(self, message: str, lang: str, to: str, **context) -> Email:
        text = self._render(message, lang, **context)
        head, _, body = text.partition("\n\n")
        if not head.startswith("Subject: ") or "\n" in head:
            raise MessageError(
                f"{self.directory}/{message}.{lang}.j2: must start with one `Subject:` line and a blank line"
            )
        return Email(to=to, subject=head.removeprefix("Subject: ").strip(), body=wrap(body.strip()) + "\n")

    def document(self, name: str, **context) -> str:
        """A file for the study package (README.TXT, INDEX.HTM): both languages in one."""
        try:
            return self.env.get_template(name).render(site=self.site, **context)
        except jinja2.TemplateNotFound:
            raise MessageError(f"{self.directory}/{name}: template missing; is the server deployed?") from None
        except jinja2.TemplateError as exc:
            raise MessageError(f"{self.directory}/{name}: {exc}") from None

    def sms(self, message: str, lang: str, **context) -> str:
        return " ".join(self._render(message, lang, **context).split())
