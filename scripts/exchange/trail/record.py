"""One access record: an event that touched patient data, as NEN 7513 asks for it (which event,
when, which patient, which user, on behalf of whom, from which access point, with what outcome).

Records are made by exchange.trail.events from the audit log, the SFTP log and sshd's logins,
chained into the month files by exchange.trail.chain and indexed by exchange.trail.index.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from typing import Any

# The events of the trail. A report names them in plain words (exchange.trail.reports).
EVENTS = (
    "package-made",  # staff packaged studies into an account's download folder
    "link-issued",  # a one-time link account was made and its e-mail and SMS sent
    "link-password-resent",  # a new password by SMS
    "credentials-issued",  # a partner's password was sent
    "reminder-sent",  # a recipient was reminded of packages not yet downloaded
    "web-login",
    "web-login-failed",
    "sftp-login",
    "download",  # over SFTP or the web page: complete or not, bytes, offset
    "upload",
    "web-view",  # images of a package or folder seen on the web page
    "pacs-retrieve",  # studies fetched from PACS to be packaged
    "pacs-import",  # a received upload stored into PACS
    "file-purged",  # the retention removed a file
    "link-revoked",
    "link-expired",
    "account-removed",
    "trail-read",  # someone read the trail itself
    "trail-months-removed",  # the retention removed the oldest months: which, and where the chain now starts
)
OUTCOMES = ("ok", "incomplete", "refused", "failed")


@dataclass(frozen=True)
class AccessRecord:
    time: str  # UTC, ISO 8601 to the second: when the event happened
    event: str  # one of EVENTS
    account: str | None  # the exchange account it concerns (partner or link), if any
    actor: str | None  # who acted: the staff member behind sudo, the partner organisation, the link's masked recipient
    outcome: str = "ok"  # one of OUTCOMES
    local_time: str | None = None  # the same moment in the site's zone, ISO 8601 with its offset
    # Where from: "address" (IP), "auth" ("password" or the SSH key's SHA256 fingerprint), "agent"
    # (the browser's user agent), "via" ("sftp", "web", "server").
    access_point: dict[str, str] = field(default_factory=dict)
    patient_ids: tuple[str, ...] = ()
    study_uids: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)  # the event's own: file, bytes, offset, complete, ...
    # Where the record came from, "<log>:<inode>:<offset after its line>": ingest resumes after it.
    source: str | None = None

    def __post_init__(self) -> None:
        if self.event not in EVENTS:
            raise ValueError(f"unknown trail event {self.event!r}")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {self.outcome!r}")
        datetime.datetime.fromisoformat(self.time)  # ValueError: not a time

    def as_dict(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "local_time": self.local_time,
            "event": self.event,
            "account": self.account,
            "actor": self.actor,
            "outcome": self.outcome,
            "access_point": dict(self.access_point),
            "patient_ids": list(self.patient_ids),
            "study_uids": list(self.study_uids),
            "details": dict(self.details),
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AccessRecord:
        return cls(
            time=data["time"],
            event=data["event"],
            account=data.get("account"),
            actor=data.get("actor"),
            outcome=data.get("outcome", "ok"),
            local_time=data.get("local_time"),
            access_point=dict(data.get("access_point") or {}),
            patient_ids=tuple(data.get("patient_ids") or ()),
            study_uids=tuple(data.get("study_uids") or ()),
            details=dict(data.get("details") or {}),
            source=data.get("source"),
        )

    @property
    def moment(self) -> datetime.datetime:
        return datetime.datetime.fromisoformat(self.time)


def canonical(data: dict[str, Any]) -> str:
    """The one JSON spelling of a record, the same bytes whenever it is hashed."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
