"""The link records and token index on disk (no host needed): one bad file never stops the
others, a token goes with its account even without a readable record."""

from __future__ import annotations

import datetime
import os
import time

import pytest

from exchange import linkstatus, safefs
from exchange.links import LinkError, LinkRecord, LinkStore, token_hash
from exchange.messaging import notices

NOW = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=datetime.UTC)


def record(account: str, token: str) -> LinkRecord:
    return LinkRecord(
        account=account,
        email="patient@example.org",
        phone="+31612345678",
        lang="nl",
        note="",
        created=NOW,
        expires=NOW + datetime.timedelta(days=7),
        issued_by="staff-jdoe",
        token_sha256=token_hash(token),
    )


def test_an_unreadable_record_is_named_and_never_stops_the_others(tmp_path):
    store = LinkStore(tmp_path)
    store.save(record("link-aaaaaaaa", "a" * 43))
    store.save(record("link-bbbbbbbb", "b" * 43))
    (tmp_path / "links" / "link-bbbbbbbb.json").write_text("")  # e.g. cut short by a power failure
    assert [r.account for r in store.all()] == ["link-aaaaaaaa"]
    assert store.unreadable() == [
        f"{tmp_path}/links/link-bbbbbbbb.json: unreadable link record (Invalid JSON: EOF while parsing a value at line 1 column 0)"
    ]
    with pytest.raises(LinkError, match="link-bbbbbbbb.json: unreadable link record"):
        store.get("link-bbbbbbbb")
    assert store.get("link-" + "x" * 300) is None  # not a link account name: never a path
    # Its token still goes with it, found without the record.
    assert store.by_token("b" * 43, NOW) == ("link-bbbbbbbb", NOW + datetime.timedelta(days=7))
    store.delete("link-bbbbbbbb")
    assert store.by_token("b" * 43, NOW) is None and store.by_token("a" * 43, NOW) is not None
    assert sorted(os.listdir(tmp_path / "links")) == ["link-aaaaaaaa.json"]


def test_an_upload_that_vanishes_while_counted_is_left_out(tmp_path, monkeypatch):
    for name in ("a.pdf", "b.pdf"):
        (tmp_path / name).write_text("x")
        os.utime(tmp_path / name, (time.time() - 600, time.time() - 600))
    real = os.stat

    def stat(path, *args, **kwargs):
        if str(path).endswith("a.pdf"):  # moved away by staff between listing and looking
            raise FileNotFoundError(2, "No such file or directory", path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(safefs.os, "stat", stat)
    assert [u.path for u in notices.settled_uploads(tmp_path, time.time(), 32)[0]] == ["b.pdf"]


def test_last_logins_compare_times_across_a_change_of_offset(tmp_path):
    log = tmp_path / "sftp.log"
    log.write_text(
        "2026-10-25T02:30:00.000000+02:00 account=link-aaaaaaaa internal-sftp[7]: session opened for local user x\n"
        "2026-10-25T02:10:00.000000+01:00 account=link-aaaaaaaa uid=5003 internal-sftp[8]: session opened for local user x\n"
    )  # (the second with its sender's uid, as rsyslog writes it since it logs it)  # the second is the later one: 01:10 UTC against 00:30 UTC
    assert linkstatus.last_logins([log]) == {"link-aaaaaaaa": "2026-10-25T01:10:00+00:00"}
