"""Delivery follow-up (exchange.trail.delivery, exchange.messaging.delivery_notices): from a real
trail in tmp, through the real SMTP server on loopback, each reminder and notice once."""

from __future__ import annotations

import datetime
import json
import os
import stat

import pytest

from exchange import linkstatus, templates
from exchange.links import LinkRecord, LinkStore, token_hash
from exchange.messaging.delivery_notices import notify_delivery
from exchange.messaging.messages import Messages
from exchange.policy import load_policy
from exchange.site import parse_site
from exchange.trail import delivery
from exchange.trail.record import AccessRecord
from exchange.trail.store import Trail
from roles import REPO
from tests.messaging import free_port
from tests.sites import relay_site

POLICY = load_policy(REPO / "policies.yaml").policy  # links: 7 days, reminder 2 days before the end
NOW = datetime.datetime(2026, 12, 4, 12, 0, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)
PATIENT = "1234567"


def site_of(servers, smtp_port: int | None = None):
    smtp, sms, ca = servers
    return parse_site(relay_site(smtp_port or smtp.port, sms.url, str(ca)), "test")


@pytest.fixture
def world(tmp_path, servers):
    """A state folder, a trail and a send function, all in tmp; `mails()` what this test got."""

    class World:
        state = tmp_path / "state"
        run = str(tmp_path / "run")
        trail = Trail(folder=str(tmp_path / "trail"), run_dir=run)
        store = LinkStore(tmp_path / "state")
        site = site_of(servers)
        before = len(servers[0].received)

        def send(self, now=NOW, site=None, policy=POLICY):
            site = site or self.site
            lines: list[str] = []
            result = notify_delivery(
                policy, site, Messages(site, templates.MESSAGES), lines.append, self.state, self.trail, now, self.run
            )
            return (*result, [json.loads(line) for line in lines])

        def mails(self):
            return servers[0].received[self.before :]

        def append(self, *records: AccessRecord) -> None:
            with self.trail.writing() as writer:
                writer.append(list(records))

    return World()


def link(account: str, created: datetime.datetime, days: float = 7, **changes) -> LinkRecord:
    fields = {
        "account": account,
        "email": f"{account.removeprefix('link-')}@example.org",
        "phone": "+31612345678",
        "lang": "en",
        "note": "",
        "created": created,
        "expires": created + datetime.timedelta(days=days),
        "issued_by": "staff-jdoe",
        "token_sha256": token_hash(account * 5),
    }
    return LinkRecord(**{**fields, **changes})


def flat(body: str) -> str:
    """A mail body with its wrapped lines joined."""
    return " ".join(body.split())


def at(moment: datetime.datetime) -> str:
    return moment.isoformat(timespec="seconds")


def made(account: str, name: str, when: datetime.datetime, size: int = 1000) -> AccessRecord:
    return AccessRecord(
        time=at(when), event="package-made", account=account, actor="staff-jdoe",
        patient_ids=(PATIENT,), study_uids=("1.2.3",),
        details={"package": name, "sha256": "ab" * 32, "bytes": size, "files": 3},
    )  # fmt: skip


def downloaded(
    account: str,
    name: str,
    when: datetime.datetime,
    size: int = 1000,
    via: str = "web",
    offset: int = 0,
    file_size: object = 1000,
) -> AccessRecord:
    complete = offset == 0 and size == 1000
    return AccessRecord(
        time=at(when), event="download", account=account, actor="p***@example.org",
        outcome="ok" if complete else "incomplete", access_point={"address": "192.0.2.7", "via": via},
        patient_ids=(PATIENT,), details={"file": name if via == "web" else f"/download/{name}", "bytes": size,
                                         "offset": offset, "size": file_size, "complete": complete},
    )  # fmt: skip


def issued(account: str, when: datetime.datetime) -> AccessRecord:
    return AccessRecord(
        time=at(when), event="link-issued", account=account, actor="staff-jdoe",
        details={"recipient": "p***@example.org +31*******78", "expires": at(when + 7 * DAY)},
    )  # fmt: skip


def ended(account: str, when: datetime.datetime, event: str = "link-expired") -> AccessRecord:
    return AccessRecord(
        time=at(when), event=event, account=account, actor="staff-jdoe" if event == "link-revoked" else "purge"
    )


def test_each_package_is_downloaded_completely_or_not_when_and_from_where(world):
    account = "link-aaaaaaaa"
    world.append(
        made(account, "CT.zip", NOW - 3 * DAY),
        made(account, "MR.zip", NOW - 3 * DAY),
        downloaded(account, "CT.zip", NOW - 2 * DAY, size=400),  # broken off
        downloaded(account, "CT.zip", NOW - DAY, via="sftp"),  # SFTP names the path in the chroot
        downloaded(account, "MR.zip", NOW - 4 * DAY),  # before this MR.zip was made: another file
        downloaded("link-bbbbbbbb", "MR.zip", NOW - DAY),  # another account's
        # Read over SFTP from the upload folder: no package, so the ingest could not judge it.
        AccessRecord(time=at(NOW - DAY), event="download", account=account, actor="p***@example.org",
                     details={"file": "/upload/MR.zip", "bytes": 1000}),
    )  # fmt: skip
    ct, mr = delivery.deliveries(world.trail, account)
    assert (ct.delivered, ct.completed.time, ct.completed.where) == (True, NOW - DAY, "192.0.2.7 (sftp)")
    assert len(ct.downloads) == 2 and ct.most_bytes == 1000
    assert (mr.delivered, mr.downloads) == (False, ())
    assert not delivery.all_delivered([ct, mr]) and not delivery.all_delivered([])
    world.store.save(link(account, NOW - 3 * DAY))
    (row,) = linkstatus.link_rows(POLICY, world.store, world.trail)
    assert row["packages"] == [
        {"package": "CT.zip", "made": at(NOW - 3 * DAY), "bytes": 1000, "downloaded": True, "percent": 100,
         "when": at(NOW - DAY), "from": "192.0.2.7 (sftp)", "tries": 2},
        {"package": "MR.zip", "made": at(NOW - 3 * DAY), "bytes": 1000, "downloaded": False, "percent": 0,
         "when": None, "from": None, "tries": 0},
    ]  # fmt: skip


def test_a_web_download_resumed_in_ranges_is_complete_once_its_pieces_cover_the_package(world):
    """A phone's broken download resumes by ranges: each range a record, none of them whole. It
    counted as never downloaded, so the recipient was reminded and staff told it never arrived."""
    account = "link-aaaaaaaa"
    world.append(
        made(account, "CT.zip", NOW - 3 * DAY), made(account, "MR.zip", NOW - 3 * DAY),
        downloaded(account, "CT.zip", NOW - 2 * DAY, size=600),  # broken off
        downloaded(account, "CT.zip", NOW - 2 * DAY + datetime.timedelta(minutes=1), size=300, offset=500),
        downloaded(account, "CT.zip", NOW - DAY, size=200, offset=800),  # the last piece
        downloaded(account, "MR.zip", NOW - 2 * DAY, size=400),
        downloaded(account, "MR.zip", NOW - DAY, size=400, offset=600),  # 400 to 600 never came
        downloaded(account, "MR.zip", NOW - DAY, size=400, offset=200, via="sftp"),  # SFTP: no ranges known
        # A piece of another file under the name (staff replaced it in the folder), or one its record garbles.
        downloaded(account, "MR.zip", NOW - DAY, size=200, offset=400, file_size=2000),
        downloaded(account, "MR.zip", NOW - DAY, size=200, offset=400, file_size=True),
    )  # fmt: skip
    ct, mr = delivery.deliveries(world.trail, account)
    assert (ct.delivered, ct.completed.time, ct.most_bytes) == (True, NOW - DAY, 1000)
    assert (mr.delivered, mr.most_bytes) == (False, 800)
    world.store.save(link(account, NOW - 3 * DAY))
    (row,) = linkstatus.link_rows(POLICY, world.store, world.trail)
    assert [(p["downloaded"], p["percent"], p["tries"]) for p in row["packages"]] == [(True, 100, 3), (False, 80, 5)]


def test_thousands_of_ranges_complete_the_package_with_the_one_that_fills_the_last_gap():
    """Found by halving over the downloads, not by joining them all again after each one."""
    from exchange.trail.store import PackageManifest

    package = PackageManifest("link-aaaaaaaa", "CT.zip", "ab" * 32, 10_000, (PATIENT,), ("1.2.3",), at(NOW - DAY))
    pieces = [(offset, 1) for offset in range(10_000) if offset != 4321] + [
        (4000, 300),
        (9999, 1),
        (4321, 1),
    ]  # overlaps, not the gap
    downloads = tuple(
        delivery.Download(NOW + datetime.timedelta(seconds=n), False, size, offset, 10_000, "192.0.2.7", "web")
        for n, (offset, size) in enumerate(pieces)
    )
    found = delivery.Delivery(package, downloads)
    assert found.completed == downloads[-1] and found.most_bytes == 10_000
    assert delivery.Delivery(package, downloads[:-1]).completed is None
    assert delivery.Delivery(package, downloads[:-1]).most_bytes == 9_999


def test_a_package_made_again_under_its_name_needs_a_download_of_its_own(world):
    account = "link-aaaaaaaa"
    world.append(
        made(account, "CT.zip", NOW - 3 * DAY),
        downloaded(account, "CT.zip", NOW - 2 * DAY),
        made(account, "CT.zip", NOW - DAY),  # staff replaced it
    )
    found = delivery.deliveries(world.trail, account)
    assert [item.delivered for item in found] == [True, False]


def test_the_reminder_goes_to_the_recipient_once_in_their_language_without_password_or_link(world, audit_socket):
    account = "link-aaaaaaaa"
    world.store.save(link(account, NOW - 6 * DAY, lang="nl"))  # ends in 1 day: the reminder was due a day ago
    world.append(made(account, "CT thorax.zip", NOW - 5 * DAY), made(account, "Done.zip", NOW - 5 * DAY))
    world.append(downloaded(account, "Done.zip", NOW - 4 * DAY))
    sent, failures, records = world.send()
    assert (sent, failures) == (1, [])
    (mail,) = world.mails()
    assert mail.recipients == ["aaaaaaaa@example.org"]
    assert mail.message["Subject"].startswith("Herinnering: er staan beelden")
    body = flat(mail.body)
    assert "CT thorax.zip" in body and "Done.zip" not in body  # only what still waits
    assert "De link is geldig tot zaterdag 5 december 2026 om 13:00 (CET)" in body
    assert "/l/" not in body and "wachtwoord uit de sms" in body  # neither link nor password
    assert [r["event"] for r in records] == ["reminder-sent"]
    assert records[0]["account"] == account and records[0]["packages"] == ["CT thorax.zip"]
    assert "reminder-sent" in [r["event"] for r in audit_socket.records()]
    # The next runs send nothing more, also hours later.
    assert world.send()[:2] == (0, [])
    assert world.send(NOW + datetime.timedelta(hours=5))[:2] == (0, [])
    assert len(world.mails()) == 1
    folder = world.state / "delivery-notices"
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(folder / f"{account}.json").st_mode) == 0o600


def test_no_reminder_before_its_time_after_the_end_or_once_everything_arrived(world):
    world.store.save(link("link-aaaaaaaa", NOW - 4 * DAY))  # reminder due in a day
    world.store.save(link("link-bbbbbbbb", NOW - 8 * DAY))  # ended a day ago, its record not yet purged
    world.store.save(link("link-cccccccc", NOW - 6 * DAY))  # everything arrived
    for account in ("link-aaaaaaaa", "link-bbbbbbbb", "link-cccccccc"):
        world.append(made(account, "CT.zip", NOW - 4 * DAY))
    world.append(downloaded("link-cccccccc", "CT.zip", NOW - 2 * DAY))
    assert world.send()[:2] == (0, [])
    assert world.mails() == []
    assert world.send(NOW + DAY)[:2] == (1, [])
    assert [m.recipients for m in world.mails()] == [["aaaaaaaa@example.org"]]


def test_a_link_shorter_than_the_reminder_days_is_reminded_half_way(world):
    assert delivery.reminder_time(NOW, NOW + DAY, 2) == NOW + DAY / 2
    assert delivery.reminder_time(NOW, NOW + 7 * DAY, 2) == NOW + 5 * DAY
    assert delivery.reminder_time(NOW, NOW + 7 * DAY, 0) is None  # the policy's "none"
    world.store.save(link("link-aaaaaaaa", NOW - datetime.timedelta(hours=13), days=1))  # half way 1 h ago
    world.store.save(link("link-bbbbbbbb", NOW - datetime.timedelta(hours=11), days=1))  # in 1 h
    for account in ("link-aaaaaaaa", "link-bbbbbbbb"):
        world.append(made(account, "CT.zip", NOW - datetime.timedelta(hours=10)))
    assert world.send()[:2] == (1, [])
    assert [m.recipients for m in world.mails()] == [["aaaaaaaa@example.org"]]
    no_reminders = POLICY.model_copy(update={"links": POLICY.links.model_copy(update={"reminder_days_before_end": 0})})
    assert world.send(NOW + datetime.timedelta(hours=2), policy=no_reminders)[:2] == (0, [])


def test_nothing_for_a_link_without_packages(world):
    world.store.save(link("link-aaaaaaaa", NOW - 6 * DAY, notify_downloaded=True))  # live, reminder due
    world.append(issued("link-bbbbbbbb", NOW - 8 * DAY), ended("link-bbbbbbbb", NOW - DAY))  # ended
    world.append(made("link-cccccccc", "CT.zip", NOW - DAY))  # another account's package
    assert world.send()[:2] == (0, [])
    assert world.mails() == []


def test_a_failed_send_is_named_not_marked_and_sent_by_the_next_run(world):
    account = "link-aaaaaaaa"
    world.store.save(link(account, NOW - 6 * DAY))
    world.append(made(account, "CT.zip", NOW - 5 * DAY))
    down = world.site.model_copy(update={"email": world.site.email.model_copy(update={"port": free_port()})})
    sent, failures, records = world.send(site=down)  # the relay is down
    assert sent == 0 and records == []
    assert len(failures) == 1 and failures[0].startswith(f"reminder not sent: {account}: e-mail not sent: smtp ")
    assert world.mails() == []
    assert world.send()[:2] == (1, [])
    assert world.send()[:2] == (0, [])
    assert len(world.mails()) == 1


def test_staff_hear_once_when_everything_was_downloaded_if_they_asked(world):
    world.store.save(link("link-aaaaaaaa", NOW - 2 * DAY, notify_downloaded=True, note="cardiology review"))
    world.store.save(link("link-bbbbbbbb", NOW - 2 * DAY))  # not asked
    for account in ("link-aaaaaaaa", "link-bbbbbbbb"):
        world.append(made(account, "CT.zip", NOW - 2 * DAY), made(account, "MR.zip", NOW - 2 * DAY))
        world.append(downloaded(account, "CT.zip", NOW - DAY))
    assert world.send()[:2] == (0, [])  # MR.zip still waits
    world.append(downloaded("link-aaaaaaaa", "MR.zip", NOW - DAY, size=999))  # all but one byte
    assert world.send()[:2] == (0, [])
    world.append(*(downloaded(account, "MR.zip", NOW - DAY / 2) for account in ("link-aaaaaaaa", "link-bbbbbbbb")))
    sent, failures, records = world.send()
    assert (sent, failures) == (1, [])
    (mail,) = world.mails()
    assert mail.recipients == ["desk@hospital.example"]
    assert mail.message["Subject"] == "Downloaded: all packages of link-aaaaaaaa (2 packages)"
    assert "cardiology review" in flat(mail.body)
    assert "MR.zip (1.0 kB): Friday 4 December 2026 at 01:00 (CET) from 192.0.2.7 (web)" in flat(mail.body)
    assert records[0]["event"] == "delivery-notice-sent" and records[0]["kind"] == "downloaded"
    assert world.send()[:2] == (0, [])
    # A package added later: a notice of its own once that one arrived too.
    world.append(made("link-aaaaaaaa", "XR.zip", NOW))
    assert world.send(NOW + DAY / 24)[:2] == (0, [])
    world.append(downloaded("link-aaaaaaaa", "XR.zip", NOW + DAY / 12))
    assert world.send(NOW + DAY / 6)[:2] == (1, [])
    assert world.send(NOW + DAY / 4)[:2] == (0, [])
    assert len(world.mails()) == 2


def test_staff_hear_once_of_a_link_that_ended_with_packages_never_downloaded(world):
    gone, fine, revoked = "link-aaaaaaaa", "link-bbbbbbbb", "link-cccccccc"
    for account in (gone, fine, revoked):
        world.append(issued(account, NOW - 7 * DAY), made(account, "CT.zip", NOW - 6 * DAY))
    world.append(
        downloaded(gone, "CT.zip", NOW - 5 * DAY, size=250),  # a quarter, then never again
        downloaded(fine, "CT.zip", NOW - 5 * DAY),
        ended(gone, NOW - DAY / 24),
        ended(fine, NOW - DAY / 24),
        ended(revoked, NOW - 2 * DAY, "link-revoked"),
    )
    # No link records: they went with the accounts.
    sent, failures, records = world.send()
    assert (sent, failures) == (2, [])
    mails = {mail.message["Subject"]: mail for mail in world.mails()}
    assert sorted(mails) == [
        "Not downloaded: link-aaaaaaaa ended with 1 package never downloaded completely",
        "Not downloaded: link-cccccccc ended with 1 package never downloaded completely",
    ]
    body = flat(mails["Not downloaded: link-aaaaaaaa ended with 1 package never downloaded completely"].body)
    assert "(for p***@example.org +31*******78, issued by staff-jdoe on Friday 27 November 2026" in body
    assert "expired on Friday 4 December 2026 at 12:00 (CET)" in body
    assert "CT.zip (1.0 kB, made Saturday 28 November 2026 at 13:00 (CET)): partly, 25% at most" in body
    revoked_body = flat(mails["Not downloaded: link-cccccccc ended with 1 package never downloaded completely"].body)
    assert "was revoked by staff-jdoe" in revoked_body and "never started" in revoked_body
    assert all(mail.recipients == ["desk@hospital.example"] for mail in world.mails())
    assert sorted((r["event"], r["kind"], r["account"]) for r in records) == [
        ("delivery-notice-sent", "ended", gone), ("delivery-notice-sent", "ended", revoked),
    ]  # fmt: skip
    assert world.send()[:2] == (0, [])
    assert world.send(NOW + DAY)[:2] == (0, [])
    assert len(world.mails()) == 2
    # Past the window their state goes; they are past telling, so nothing is sent again.
    assert world.send(NOW + 8 * DAY)[:2] == (0, [])
    assert os.listdir(world.state / "delivery-notices") == []


def test_an_old_link_record_without_the_notice_choice_still_loads(tmp_path):
    store = LinkStore(tmp_path)
    record = link("link-aaaaaaaa", NOW)
    data = json.loads(record.model_dump_json())
    del data["notify_downloaded"]
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "link-aaaaaaaa.json").write_text(json.dumps(data))
    assert store.get("link-aaaaaaaa") == record and record.notify_downloaded is False


def test_link_list_names_each_package_escaped(world):
    from exchange.cli.links import _package_line

    row = {"package": "CT\x1b[2J[bold].zip", "downloaded": False, "percent": 40, "tries": 1,
           "when": at(NOW), "from": "192.0.2.7 (web)"}  # fmt: skip
    assert _package_line(row) == "CT\\x1b[2J[bold].zip: partly (40%) 2026-12-04 12:00 from 192.0.2.7 (web)"
    assert _package_line({**row, "tries": 0}) == "CT\\x1b[2J[bold].zip: not downloaded"
    assert _package_line({**row, "downloaded": True}).endswith(": downloaded 2026-12-04 12:00 from 192.0.2.7 (web)")


def test_the_hourly_job_sends_the_follow_ups_after_the_trail_is_up_to_date_when_there_is_site_data():
    from exchange import paths
    from roles.templating import render

    cron = render("retention/cron.j2", policy=POLICY, site_path=paths.SITE, exchange=paths.EXCHANGE)
    (job,) = [line for line in cron.splitlines() if line.startswith(POLICY.retention.purge_schedule)]
    assert job.endswith(
        f"; {paths.EXCHANGE} trail ingest --quiet; [ ! -f {paths.SITE} ] || {paths.EXCHANGE} notify-delivery --quiet"
    )


def test_a_second_run_waits_for_the_first_so_nothing_goes_twice(world):
    import threading

    from exchange import locks
    from exchange.messaging.delivery_notices import LOCK

    world.store.save(link("link-aaaaaaaa", NOW - 6 * DAY))
    world.append(made("link-aaaaaaaa", "CT.zip", NOW - 5 * DAY))
    results = []
    with locks.held(LOCK, wait=True, folder=world.run):  # the first run, still sending
        second = threading.Thread(target=lambda: results.append(world.send()[:2]))
        second.start()
        second.join(timeout=1)
        assert second.is_alive() and world.mails() == []  # waits, sends nothing meanwhile
    second.join(timeout=30)
    assert results == [(1, [])] and len(world.mails()) == 1
