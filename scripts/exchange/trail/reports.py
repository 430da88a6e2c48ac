"""`exchange trail patient|account|staff`: what the trail holds on one patient, account or staff
member, as a table, JSON, CSV or a patient's plain-language HTML page.

Everything a record holds may be someone else's text (a file name a partner chose, a browser's
user agent), so each format escapes it where it lands: the table and CSV through
exchange.untrusted.printable (and CSV against spreadsheet formulas), JSON as ASCII, HTML by
autoescape. Times are shown in the site's zone (UTC without site data).
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jinja2

from exchange import paths, templates, untrusted
from exchange.errors import REFUSED, ExchangeError
from exchange.trail.record import AccessRecord

REPORTS = ("patient", "account", "staff")
FORMATS = ("table", "json", "csv", "html")
LANGUAGES = ("nl", "en")
DATE_FORM = "YYYY-MM-DD or YYYY-MM-DDTHH:MM"
# A patient ID is a DICOM LO: at most 64 characters, no backslash (a value separator), no controls.
PATIENT_ID = re.compile(r"[^\\\x00-\x1f\x7f]{1,64}")
# Partner and link accounts and staff members are all Unix logins. Matched whole (fullmatch): a
# "$" alone lets a trailing newline through.
NAME = re.compile(paths.UNIX_NAME)
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_MINUTE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}")
# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
COLUMNS = ("time", "event", "outcome", "account", "actor", "from", "patients", "studies", "details")


class ReportError(ExchangeError):
    """A report refused: bad input, or nothing on record for it."""

    status = REFUSED


class NoRecords(ReportError):
    """Nothing on record for the subject: said, exit 1, nothing printed (the read is still recorded)."""

    status = 1


@dataclass(frozen=True)
class Query:
    """One report's question: which records, in which window (since inclusive, until exclusive)."""

    report: str  # one of REPORTS
    subject: str  # the patient ID, account or staff member
    since: datetime.datetime | None = None
    until: datetime.datetime | None = None

    def __post_init__(self) -> None:
        if self.report not in REPORTS:
            raise ReportError(f"unknown report {self.report!r}: one of {', '.join(REPORTS)}")
        check_subject(self.report, self.subject)
        if self.since and self.until and self.since >= self.until:
            raise ReportError("--since must be before --until; nothing was read")

    def filters(self) -> dict[str, Any]:
        """The keyword arguments of Trail.query for this question."""
        key = {"patient": "patient_id", "account": "account", "staff": "actor"}[self.report]
        return {key: self.subject, "since": self.since, "until": self.until}

    def described(self) -> dict[str, str | None]:
        """The question as the trail-read audit record keeps it."""
        return {
            "report": self.report,
            "subject": self.subject,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
        }


def check_subject(report: str, subject: str) -> None:
    """Refuse what cannot be a patient ID or an account name before anything is read: a control
    character would reach the audit record and the terminal, a megabyte the index."""
    if report == "patient":
        if not PATIENT_ID.fullmatch(subject) or not subject.isprintable() or subject != subject.strip():
            raise ReportError(
                f"{untrusted.printable(subject[:80])}: not a patient ID (1-64 characters, no control characters, "
                "backslash or outer spaces); nothing was read"
            )
    elif not NAME.fullmatch(subject):
        what = "an account" if report == "account" else "a staff member's login"
        raise ReportError(
            f"{untrusted.printable(subject[:80])}: not {what} name (a-z, 0-9, _ and -, at most 32); nothing was read"
        )


def parse_moment(option: str, value: str, zone: datetime.tzinfo, until: bool = False) -> datetime.datetime:
    """--since/--until in the site's zone. A date is its whole day (until: through its end), a
    date and time its whole minute (until: through that minute), so `--until` is inclusive."""
    try:
        if _DATE.fullmatch(value):
            day = datetime.date.fromisoformat(value)
            moment = datetime.datetime.combine(day, datetime.time(), zone)
            step = datetime.timedelta(days=1)
        elif _MINUTE.fullmatch(value):
            moment = datetime.datetime.fromisoformat(value).replace(tzinfo=zone)
            step = datetime.timedelta(minutes=1)
        else:
            raise ValueError
    except ValueError:
        raise ReportError(
            f"{option} {untrusted.printable(value[:80])}: not a date; use {DATE_FORM} (the site's time zone)"
        ) from None
    # Wall-clock steps: the end of a day is the next local midnight, on a DST change too.
    moment = (moment + step) if until else moment
    return moment.astimezone(datetime.UTC)


def local(record: AccessRecord, zone: datetime.tzinfo) -> datetime.datetime:
    return record.moment.astimezone(zone)


def access_point(record: AccessRecord) -> str:
    """Where from, in one line: "web 192.0.2.7 Firefox/128", "sftp 192.0.2.7 key SHA256:..."."""
    point = record.access_point
    auth = point.get("auth")
    parts = [
        point.get("via"),
        point.get("address"),
        ("password" if auth == "password" else f"key {auth}") if auth else None,
        point.get("agent"),
    ]
    return " ".join(str(part) for part in parts if part)


def details(record: AccessRecord) -> str:
    """The event's own details as key=value, the common ones first."""
    items = dict(record.details)
    first = [key for key in ("file", "package", "bytes", "offset", "size", "complete") if key in items]
    rest = sorted(key for key in items if key not in first)
    return " ".join(f"{key}={_value(items[key])}" for key in (*first, *rest))


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ",".join(str(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    return str(value)


def rows(records: Sequence[AccessRecord], zone: datetime.tzinfo) -> list[dict[str, str]]:
    """One row of text per record (COLUMNS), not yet escaped: each format escapes it its own way."""
    return [
        {
            "time": local(record, zone).isoformat(timespec="seconds"),
            "event": record.event,
            "outcome": record.outcome,
            "account": record.account or "",
            "actor": record.actor or "",
            "from": access_point(record),
            "patients": " ".join(record.patient_ids),
            "studies": " ".join(record.study_uids),
            "details": details(record),
        }
        for record in records
    ]


def as_table(records: Sequence[AccessRecord], zone: datetime.tzinfo) -> str:
    """For the terminal: every cell printable (no escape sequence reaches it), one line per
    record (for grep; the terminal wraps what is wider), columns padded to their widest cell.
    Plain text, not rich: a year of a busy account is tens of thousands of lines."""
    table = [list(COLUMNS)]
    for row in rows(records, zone):
        row["time"] = row["time"].replace("T", " ")  # with its offset: the site's zone, summer or winter
        table.append([untrusted.printable(row[column]) for column in COLUMNS])
    widths = [max(len(line[index]) for line in table) for index in range(len(COLUMNS))]
    return "".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() + "\n"
                   for line in table)  # fmt: skip


def as_json(records: Sequence[AccessRecord], zone: datetime.tzinfo, query: Query) -> str:
    """The records whole, each with its time in the site's zone; ASCII, so no control character
    reaches a terminal unescaped."""
    shown = []
    for record in records:
        data = record.as_dict()
        data["local_time"] = local(record, zone).isoformat(timespec="seconds")
        data.pop("source", None)  # where the ingest read it: the trail's own bookkeeping
        shown.append(data)
    document = {**query.described(), "zone": str(zone), "records": shown}
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=True) + "\n"


def spreadsheet_safe(cell: str) -> str:
    """A cell a spreadsheet shows as text: one that would start a formula gets a leading '."""
    return f"'{cell}" if cell.startswith(_FORMULA_START) else cell


def as_csv(records: Sequence[AccessRecord], zone: datetime.tzinfo) -> str:
    """CSV for a spreadsheet: controls escaped (it may well be shown on a terminal), formulas guarded."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for row in rows(records, zone):
        writer.writerow(spreadsheet_safe(untrusted.printable(row[column])) for column in COLUMNS)
    return out.getvalue()


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates.TRAIL)),
        undefined=jinja2.StrictUndefined,
        autoescape=True,
        finalize=untrusted.shown_in_template,  # no control or bidi character reaches the reader either
        keep_trailing_newline=True,
    )
    env.filters["capfirst"] = lambda text: text[:1].upper() + text[1:]  # "afdeling Radiologie" opens a sentence
    return env


def _accessions(records: Sequence[AccessRecord]) -> dict[tuple[str | None, str], list[str]]:
    """(account, package) -> the accession numbers its package-made record names: a patient
    knows a study by those (on the letter, the request) far sooner than by its UID."""
    return {
        (record.account, str(record.details["package"])): list(record.details.get("accession_numbers") or ())
        for record in records
        if record.event == "package-made" and record.details.get("package")
    }


def _item(
    record: AccessRecord, zone: datetime.tzinfo, lang: str, accessions: dict[tuple[str | None, str], list[str]]
) -> dict[str, Any]:
    """What a sentence of the patient's page says of one record."""
    from exchange.messaging.messages import day_and_time

    day, clock = day_and_time(record.moment, lang, zone)
    info = record.details
    complete = info.get("complete")
    # A download or view names the file (over SFTP with its folder, "/download/x.zip").
    named = posixpath.basename(str(info.get("file") or info.get("package") or ""))
    studies = info.get("accession_numbers") or accessions.get((record.account, named)) or record.study_uids
    return {
        "event": record.event,
        "outcome": record.outcome,
        "day": day,
        "clock": clock,
        "who": record.actor or record.account or "",
        "account": record.account if record.actor and record.account else "",
        "address": record.access_point.get("address", ""),
        "via": record.access_point.get("via", ""),
        "studies": ", ".join(str(study) for study in studies),
        "file": str(info.get("file") or info.get("package") or ""),
        "complete": complete if isinstance(complete, bool) else None,
        "recipient": str(info.get("recipient") or ""),
    }


def as_html(
    records: Sequence[AccessRecord], zone: datetime.tzinfo, query: Query, lang: str, site: Any | None = None
) -> str:
    """A patient's overview in plain language, one sentence per access, self-contained (no
    request leaves the page: its own style, and a policy that forbids any other)."""
    if lang not in LANGUAGES:
        raise ReportError(f"--lang {untrusted.printable(lang)}: one of {', '.join(LANGUAGES)}")
    from exchange.messaging.messages import when

    now = datetime.datetime.now(datetime.UTC)
    accessions = _accessions(records)
    return (
        _environment()
        .get_template(f"patient.{lang}.htm.j2")
        .render(
            lang=lang,
            patient=query.subject,
            items=[_item(record, zone, lang, accessions) for record in records],
            since=when(query.since, lang, zone) if query.since else None,
            until=when(query.until, lang, zone) if query.until else None,
            made=when(now, lang, zone),
            site=site,
        )
    )


def render(
    records: Sequence[AccessRecord],
    query: Query,
    form: str,
    zone: datetime.tzinfo,
    lang: str = "nl",
    site: Any | None = None,
) -> str:
    """The records in one of FORMATS."""
    if form == "table":
        return as_table(records, zone)
    if form == "json":
        return as_json(records, zone, query)
    if form == "csv":
        return as_csv(records, zone)
    if form == "html":
        if query.report != "patient":
            raise ReportError("--format html is a patient's overview: exchange trail patient ID --format html")
        return as_html(records, zone, query, lang, site)
    raise ReportError(f"--format {untrusted.printable(form)}: one of {', '.join(FORMATS)}")


def bring_up_to_date(policy: Any, trail: Any) -> None:
    """The logs read since the last run into the trail (exchange.trail.ingest): a report never
    misses what happened a minute ago."""
    from exchange.trail.ingest import ingest

    ingest(policy, trail)


def read(query: Query, policy: Any, trail: Any | None = None) -> list[AccessRecord]:
    """The trail brought up to date, then asked. NoRecords when nothing is on record."""
    from exchange.trail.store import Trail

    trail = trail or Trail(paths.TRAIL_DIR, paths.TOOL_RUN_DIR)
    bring_up_to_date(policy, trail)
    records = trail.query(**query.filters())
    if not records:
        window = " in that period" if query.since or query.until else ""
        raise NoRecords(f"no records for {query.report} {query.subject}{window} in the trail")
    return records


def record_read(query: Query, form: str, results: int) -> None:
    """Reading the trail is itself an access (NEN 7513): who read what, and how much. A patient's
    report names the patient, so the read shows in that patient's own trail."""
    from exchange import auditlog

    auditlog.record(
        "trail-read",
        by=auditlog.actor(),
        report=query.report,
        subject=query.subject,
        query={**query.described(), "format": form},
        results=results,
        patient_ids=[query.subject] if query.report == "patient" else [],
    )
