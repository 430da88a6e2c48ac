"""Staff tools from a workstation, over SSH with sudo (Fabric):

    fab -H staff-jdoe@exchange01 link-issue --email patient@example.org --phone +31612345678 [--lang en] [--notify-downloaded]
    fab -H staff-jdoe@exchange01 link-list
    fab -H staff-jdoe@exchange01 link-resend link-k7m2p9qa
    fab -H staff-jdoe@exchange01 link-revoke link-k7m2p9qa
    fab -H staff-jdoe@exchange01 partner-credentials cardiology
    fab -H staff-jdoe@exchange01 package --to link-k7m2p9qa --paths /data/export/ct-thorax [--paths ...] [--label "CT thorax"]
    fab -H staff-jdoe@exchange01 package --to link-k7m2p9qa --accession A123 [--pacs main] [--study-uid ...] [--all]
    fab -H staff-jdoe@exchange01 pacs-echo main
    fab -H staff-jdoe@exchange01 pacs-find --accession A123 [--pacs main]
    fab -H staff-jdoe@exchange01 import /srv/exchange/partners/cardiology/upload/disc.zip --to-pacs main [--patient-id 1234567]

Each task runs the same `exchange` command on the server that staff may run there by hand
(members of exchange-staff may sudo `exchange` and nothing else). The server's host key must
already be in ~/.ssh/known_hosts: an unknown or changed key is refused, never added.
"""

from __future__ import annotations

import os
import shlex

from fabric import Connection, task
from invoke.exceptions import Exit
from paramiko import RejectPolicy


def _exchange(c: Connection, *args: str) -> None:
    # Fabric by itself trusts any host key; staff must reach the real server.
    c.client.load_system_host_keys()  # ~/.ssh/known_hosts
    for known_hosts in (c.ssh_config.get("userknownhostsfile") or "").split():
        if os.path.exists(os.path.expanduser(known_hosts)):
            c.client.load_host_keys(os.path.expanduser(known_hosts))
    c.client.set_missing_host_key_policy(RejectPolicy())
    c.sudo(shlex.join(["exchange", *args]), pty=False)


@task(
    help={
        "email": "the recipient's e-mail address (gets the link)",
        "phone": "the recipient's mobile number in E.164, e.g. +31612345678 (gets the password)",
        "lang": "nl or en",
        "note": "a note for staff, never sent",
        "days": "validity in days (default and maximum: the policy's)",
        "show-password": "print the password once, to read it out on the phone",
        "notify-downloaded": "e-mail the staff mailbox once all the link's packages were downloaded",
    }
)
def link_issue(c, email, phone, lang="nl", note="", days=0, show_password=False, notify_downloaded=False):
    """Issue a one-time link: link by e-mail, password by SMS."""
    args = ["link", "issue", "--email", email, "--phone", phone, "--lang", lang]
    if note:
        args += ["--note", note]
    if days:
        args += ["--days", str(days)]
    if show_password:
        args.append("--show-password")
    if notify_downloaded:
        args.append("--notify-downloaded")
    _exchange(c, *args)


@task(help={"json": "one JSON object per line"})
def link_list(c, json=False):
    """List the link accounts."""
    _exchange(c, "link", "list", *(["--json"] if json else []))


@task
def link_resend(c, account):
    """Send a link account a new password by SMS."""
    _exchange(c, "link", "resend", account)


@task
def link_revoke(c, account, discard_uploads=False):
    """End a link account's sessions and remove it; its uploads are kept for staff unless --discard-uploads."""
    _exchange(c, "link", "revoke", account, *(["--discard-uploads"] if discard_uploads else []))


@task
def partner_credentials(c, name):
    """A fresh password for a partner by SMS, a notice by e-mail."""
    _exchange(c, "partner", "credentials", name)


_STUDY_IN_PACS = {
    "accession": "retrieve the study of this accession number from PACS (instead of --paths)",
    "study-uid": "retrieve the study of this Study Instance UID from PACS",
    "patient-id": "retrieve this patient's studies from PACS (with --date)",
    "date": "with --patient-id: YYYY-MM-DD or YYYY-MM-DD..YYYY-MM-DD",
    "pacs": "the PACS node of the site data (default: the only or default one)",
}


def _study_in_pacs(accession: str, study_uid: str, patient_id: str, date: str, pacs: str) -> list[str]:
    named = {"--accession": accession, "--study-uid": study_uid, "--patient-id": patient_id, "--date": date}
    return [part for option, value in {**named, "--pacs": pacs}.items() if value for part in (option, value)]


@task(
    iterable=["paths"],
    help={
        "to": "the partner or link account whose download folder gets the zip",
        "paths": "a DICOM file or folder on the server, taken as given (commas and spaces belong to the name); "
        "repeat --paths for several",
        "label": "a title for the package and its file name",
        "viewer": "a viewer folder on the server (default: the site's)",
        "strict": "refuse non-DICOM files and duplicates instead of skipping them",
        "allow-multiple-patients": "allow images of more than one patient",
        **_STUDY_IN_PACS,
        "all": "retrieve every study that matches, into one package",
    },
)
def package(
    c, to, paths=None, label="", viewer="", strict=False, allow_multiple_patients=False,
    accession="", study_uid="", patient_id="", date="", pacs="", all=False,  # noqa: A002 (the CLI's --all)
):  # fmt: skip
    """Pack DICOM studies on the server, or a study retrieved from PACS, into one zip in an account's download folder."""
    from_pacs = _study_in_pacs(accession, study_uid, patient_id, date, pacs)
    if not paths and not from_pacs:
        raise Exit("package: name what to pack with --paths (once per file or folder), or --accession ...", code=2)
    if paths and from_pacs:
        raise Exit("package: --paths or a study in PACS (--accession ...), not both", code=2)
    args = ["package", "--to", to]
    if label:
        args += ["--label", label]
    if viewer:
        args += ["--viewer", viewer]
    if strict:
        args.append("--strict")
    if allow_multiple_patients:
        args.append("--allow-multiple-patients")
    if from_pacs:
        _exchange(c, *args, *from_pacs, *(["--all"] if all else []))
        return
    _exchange(c, *args, "--", *paths)  # after "--": a path is never read as an option


@task
def pacs_echo(c, name):
    """C-ECHO to a PACS node of the site data: does it answer, and does it know this exchange?"""
    _exchange(c, "pacs", "echo", name)


@task(help=_STUDY_IN_PACS)
def pacs_find(c, accession="", study_uid="", patient_id="", date="", pacs=""):
    """List the studies PACS has for an accession number, a study UID, or a patient."""
    _exchange(c, "pacs", "find", *_study_in_pacs(accession, study_uid, patient_id, date, pacs))


@task(
    name="import",
    help={
        "path": "the received upload on the server (a zip or a folder), taken as given",
        "to-pacs": "the PACS node of the site data to store it into",
        "patient-id": "file it under this local patient ID (name and birth date checked against the PACS)",
        "force-reconcile": "with --patient-id: file it even if name or birth date differ",
    },
)
def import_upload(c, path, to_pacs, patient_id="", force_reconcile=False):
    """Store a received upload into PACS (inspected first); moved to imported/ once all of it is there."""
    args = ["import", "--to-pacs", to_pacs]
    if patient_id:
        args += ["--patient-id", patient_id]
    if force_reconcile:
        args.append("--force-reconcile")
    _exchange(c, *args, "--", path)  # after "--": the path is never read as an option
