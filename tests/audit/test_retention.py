"""Retention: the purge job, no file past retention, no link account past its validity, and the
hourly delivery follow-ups."""

import datetime

from exchange import paths
from tests.audit.catalogue import control
from tests.audit.test_passwords import chage


@control("RET-01")
def test_purge_job(host, policy, control):
    cron = host.file(paths.PURGE_CRON)
    found = {"exists": cron.exists}
    if cron.exists:
        found.update(
            owner=cron.user,
            group=cron.group,
            mode=oct(cron.mode),
            # The purge first; the upload notices may follow it on the same line.
            entry=any(
                line.split(";")[0] == f"{policy.retention.purge_schedule} root /usr/local/bin/exchange purge --quiet"
                for line in cron.content_string.splitlines()
            ),
        )
    control.verify({"exists": True, "owner": "root", "group": "root", "mode": "0o644", "entry": True}, found)


@control("RET-02")
def test_no_file_older_than_retention(read, policy, control):
    old = read.privileged("old-files", str(policy.retention.days))
    control.verify([], sorted(filter(None, old.splitlines())))


@control("RET-03")
def test_no_folder_deeper_than_the_tools_walk(read, policy, control):
    deep = read.privileged("deep-folders", str(policy.accounts.max_folder_depth))
    control.verify([], sorted(filter(None, deep.splitlines())))


@control("LINK-01")
def test_no_link_account_past_validity(read, policy, control):
    today = datetime.date.today()
    # The account expiry day is the first day refused: the day after the validity ends.
    latest = today + datetime.timedelta(days=policy.links.validity_days + 1)
    wrong = {}
    links = read.group_members(policy.accounts.link_group)
    read.prefetch("chage", links)
    for name in links:
        expires = chage(read, name)["Account expires"]
        if expires == "never":
            wrong[name] = "never expires"
            continue
        day = datetime.datetime.strptime(expires, "%b %d, %Y").date()
        if day <= today:
            wrong[name] = f"expired {day}, still present"
        elif day > latest:
            wrong[name] = f"valid until {day}, beyond {policy.links.validity_days} days"
    control.verify({}, wrong)


@control("LINK-02")
def test_delivery_follow_ups_run_hourly_after_the_trail_ingest(host, policy, control):
    """The reminder and notices are judged from the trail: the job must bring it up to date first."""
    cron = host.file(paths.PURGE_CRON)
    job = ""
    if cron.exists:
        schedule = f"{policy.retention.purge_schedule} root "
        job = next((line for line in cron.content_string.splitlines() if line.startswith(schedule)), "")
    commands = [command.strip() for command in job.split(";")]
    ingest = f"{paths.EXCHANGE} trail ingest --quiet"
    follow_ups = f"[ ! -f {paths.SITE} ] || {paths.EXCHANGE} notify-delivery --quiet"
    found = {
        "trail ingest": ingest in commands,
        "notify-delivery where the site data is": follow_ups in commands,
        "after the ingest": ingest in commands
        and follow_ups in commands
        and commands.index(ingest) < commands.index(follow_ups),
    }
    control.verify(dict.fromkeys(found, True), found)
