"""The audit log's events as access records: which of them touched patient data, and who acted.

The audit log names accounts and files; the trail names patients. A package's own record
(study-packaged, the manifest) names its patients and studies, so every later download,
view or purge of that file is mapped to them by (account, file name).
"""

from __future__ import annotations

import datetime
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from exchange import untrusted
from exchange.trail.record import AccessRecord

# What the trail keeps of a text others control (a file name, a browser's user agent): bounded,
# never interpreted; shown escaped where it lands (exchange.trail.reports).
TEXT_LIMIT = untrusted.TEXT_LIMIT
# The web page's announcement of its own SSH connection (exchange.portal.sftp): no record of its
# own, it tells the SFTP sessions of the web page from those of SFTP clients (exchange.trail.logins).
PORTAL_SSH = "portal-ssh-connection"

# audit event -> trail event, for those that keep their name or only change it.
RENAMED = {
    "study-packaged": "package-made",
    "link-issued": "link-issued",
    "link-password-resent": "link-password-resent",
    "partner-credentials-issued": "credentials-issued",
    "reminder-sent": "reminder-sent",
    "portal-login": "web-login",
    "portal-login-failed": "web-login-failed",
    "portal-download": "download",
    "portal-upload": "upload",
    "portal-view": "web-view",
    "pacs-retrieve": "pacs-retrieve",
    "pacs-import": "pacs-import",
    "file-purged": "file-purged",
    "link-revoked": "link-revoked",
    "link-expired": "link-expired",
    "account-removed": "account-removed",
    "trail-read": "trail-read",
}
# The outcomes the tools write, in the trail's words.
OUTCOMES = {
    "packaged": "ok",
    "imported": "ok",
    "incomplete": "incomplete",
    "refused": "refused",
    "failed": "failed",
    "interrupted": "failed",
}


@dataclass(frozen=True)
class Manifest:
    """What a download of a package is mapped by: its patients and studies, digest and size."""

    patient_ids: tuple[str, ...]
    study_uids: tuple[str, ...]
    sha256: str
    size: int


@dataclass
class Context:
    """What mapping an event needs beyond its own line: the site's zone, the partners'
    organisations, the links' masked recipients (kept in the ingest's state) and the manifests."""

    zone: datetime.tzinfo = datetime.UTC
    download_folder: str = "download"  # the policy's accounts.download_folder: where packages lie
    organisations: Mapping[str, str] = field(default_factory=dict)
    recipients: dict[str, str] = field(default_factory=dict)  # link account -> its masked recipient
    manifests: dict[tuple[str, str], Manifest] = field(default_factory=dict)  # made in this run
    stored: Callable[[str, str], Manifest | None] = lambda account, name: None  # made in earlier runs
    # Every package made for an account in earlier runs (or batches), by name, oldest first.
    stored_all: Callable[[str], Mapping[str, Manifest]] = lambda account: {}

    def manifest(self, account: str | None, name: object) -> Manifest | None:
        if not account or not isinstance(name, str):
            return None
        return self.manifests.get((account, name)) or self.stored(account, name)

    def packages(self, account: str) -> dict[str, Manifest]:
        """Every package made for the account, by name (the latest of a name): those a download of
        an unknown file of the account may have been."""
        found = dict(self.stored_all(account))
        found.update({name: made for (owner, name), made in self.manifests.items() if owner == account})
        return found

    def actor_of(self, account: str | None) -> str | None:
        """Who acts in an account's own events: the partner's organisation, the link's recipient."""
        if not account:
            return None
        return self.organisations.get(account) or self.recipients.get(account) or account

    def times(self, moment: datetime.datetime) -> tuple[str, str]:
        utc = moment.astimezone(datetime.UTC).replace(microsecond=0)
        return utc.isoformat(), utc.astimezone(self.zone).isoformat()


def zone_named(name: str | None) -> datetime.tzinfo:
    try:
        return zoneinfo.ZoneInfo(name) if name else datetime.UTC
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return datetime.UTC


def text(value: object) -> str:
    """A text others control, as the trail keeps it: bounded; escaped only when shown."""
    return untrusted.cut("" if value is None else value)


def strings(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (text(value),)
    if isinstance(value, list | tuple):
        return tuple(text(item) for item in value if isinstance(item, str) and item)
    return ()


def web_point(entry: Mapping[str, Any]) -> dict[str, str]:
    point = {"via": "web", "address": text(entry.get("ip") or "unknown")}
    if entry.get("agent"):
        point["agent"] = text(entry["agent"])
    return point


def record(
    context: Context, moment: datetime.datetime, event: str, account: str | None, actor: str | None, **fields
) -> AccessRecord:
    utc, local = context.times(moment)
    return AccessRecord(time=utc, local_time=local, event=event, account=account, actor=actor, **fields)


def from_audit(entry: Mapping[str, Any], context: Context, source: str | None = None) -> AccessRecord | None:
    """The access record of one believed audit line, or None if the event touches no patient data.
    ValueError: the line is not a record the tools write (no event, no time)."""
    event = entry.get("event")
    if not isinstance(event, str) or event not in RENAMED:
        return None
    moment = datetime.datetime.fromisoformat(str(entry["time"]))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    account = entry.get("account") if isinstance(entry.get("account"), str) else None
    by = text(entry["by"]) if entry.get("by") else None
    made = _MAPPERS.get(event, _server)(entry, context, account, by)
    return record(context, moment, RENAMED[event], account, source=source, **made)


def _details(entry: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {key: text(entry[key]) if isinstance(entry[key], str) else entry[key] for key in keys if key in entry}


def _server(entry, context, account, by) -> dict:
    """Staff's and the purge's own events: the staff member (or "purge") acts, on the server."""
    keys = ("recipient", "expires", "days", "reason", "kind", "uploads_discarded", "expired", "query", "results")
    return {"actor": by, "access_point": {"via": "server"}, "details": _details(entry, *keys)}


def _packaged(entry, context, account, by) -> dict:
    name = entry.get("package")
    manifest = Manifest(strings(entry.get("patient_ids")), strings(entry.get("study_uids")),
                        str(entry.get("sha256") or ""), int(entry.get("bytes") or 0))  # fmt: skip
    if account and isinstance(name, str):
        context.manifests[(account, name)] = manifest
    return {
        "actor": by,
        "access_point": {"via": "server"},
        "patient_ids": manifest.patient_ids,
        "study_uids": manifest.study_uids,
        "details": {
            "package": text(name),
            "sha256": manifest.sha256,
            "bytes": manifest.size,
            "files": entry.get("files"),
            "accession_numbers": list(strings(entry.get("accession_numbers"))),
        },
    }


def _link_issued(entry, context, account, by) -> dict:
    if account and entry.get("recipient"):
        context.recipients[account] = text(entry["recipient"])
    return _server(entry, context, account, by)


def _web_login(entry, context, account, by) -> dict:
    outcome = "ok" if entry.get("event") == "portal-login" else "refused"
    return {
        "actor": context.actor_of(account),
        "outcome": outcome,
        "access_point": web_point(entry),
        "details": _details(entry, "kind", "reason"),
    }


def _web_download(entry, context, account, by) -> dict:
    manifest = context.manifest(account, entry.get("file"))
    sent, offset, size = entry.get("bytes"), entry.get("offset"), entry.get("size")
    # Complete only when the whole file was given in one response: a resumed download's
    # pieces are each a record of their own, none of them the whole file.
    complete = offset == 0 and isinstance(size, int) and sent == size
    details = {**_details(entry, "file", "bytes", "offset", "size"), "complete": complete}
    if manifest:
        details["sha256"] = manifest.sha256
    return {
        "actor": context.actor_of(account),
        "outcome": "ok" if complete else "incomplete",
        "access_point": web_point(entry),
        "patient_ids": manifest.patient_ids if manifest else (),
        "study_uids": manifest.study_uids if manifest else (),
        "details": details,
    }


def _web_upload(entry, context, account, by) -> dict:
    return {
        "actor": context.actor_of(account),
        "access_point": web_point(entry),
        "details": _details(entry, "file", "bytes"),
    }


def _web_view(entry, context, account, by) -> dict:
    manifest = context.manifest(account, entry.get("file")) if entry.get("folder") == "download" else None
    patients = manifest.patient_ids if manifest else strings(entry.get("patient_ids"))
    return {
        "actor": context.actor_of(account),
        "access_point": web_point(entry),
        "patient_ids": patients,
        "study_uids": manifest.study_uids if manifest else (),
        "details": _details(entry, "folder", "file", "series", "pictures"),
    }


def _pacs(entry, context, account, by) -> dict:
    patients = entry.get("patients")
    if isinstance(patients, dict):  # pacs-import: the patient as received, and the hospital's own
        patients = [*strings(patients.get("received")), *strings(patients.get("local"))]
    keys = ("pacs", "pacs_ae", "method", "path", "instances", "stored", "bytes", "failed", "not_sent", "detail")
    return {
        "actor": by,
        "outcome": OUTCOMES.get(str(entry.get("outcome")), "ok"),
        "access_point": {"via": "server"},
        "patient_ids": tuple(dict.fromkeys(strings(patients))),
        "study_uids": strings(entry.get("studies")),
        "details": _details(entry, *keys),
    }


def _purged(entry, context, account, by) -> dict:
    path = entry.get("path")
    folder, _, name = str(path or "").lstrip("/").partition("/")
    packaged = folder == context.download_folder and name and "/" not in name
    manifest = context.manifest(account, name) if packaged else None
    details = _details(entry, "path", "size", "kind", "age_hours")
    if manifest:
        details["sha256"] = manifest.sha256
    return {
        "actor": by,
        "access_point": {"via": "server"},
        "patient_ids": manifest.patient_ids if manifest else (),
        "study_uids": manifest.study_uids if manifest else (),
        "details": details,
    }


def _trail_read(entry, context, account, by) -> dict:
    """A read of a patient's trail is in that patient's trail: a patient may ask who looked."""
    return {
        "actor": by,
        "access_point": {"via": "server"},
        "patient_ids": strings(entry.get("patient_ids")),
        "details": _details(entry, "report", "subject", "query", "results"),
    }


_MAPPERS = {
    "study-packaged": _packaged,
    "link-issued": _link_issued,
    "portal-login": _web_login,
    "portal-login-failed": _web_login,
    "portal-download": _web_download,
    "portal-upload": _web_upload,
    "portal-view": _web_view,
    "pacs-retrieve": _pacs,
    "pacs-import": _pacs,
    "file-purged": _purged,
    "trail-read": _trail_read,
}
