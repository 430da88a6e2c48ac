"""Uploads a client made private (OpenSSH `put` of a 0600 file, `mkdir` with mode 0) are opened
to the staff group by the upload notice job, and nothing else is touched."""

import os
import stat
import time
from pathlib import Path

from exchange import templates
from exchange.layout import Layout
from exchange.messaging import notices
from exchange.messaging.messages import Messages
from exchange.policy import load_policy
from exchange.site import parse_site
from roles import REPO
from tests.sites import outbox_site

DEPTH = load_policy(REPO / "policies.yaml").policy.accounts.max_folder_depth


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def private_uploads(upload: Path, outside: Path) -> dict[str, Path]:
    """What a client can leave behind, and what root-run code must never follow out of it."""
    upload.mkdir(parents=True, mode=0o770)
    outside.mkdir()
    secret = outside / "secret.key"
    secret.write_text("key")
    secret.chmod(0o600)
    (outside / "private").mkdir(mode=0o700)
    made = {"file": upload / "scan.dcm", "folder": upload / "closed", "inner": upload / "closed" / "letter.pdf"}
    made["file"].write_text("DICM")
    made["folder"].mkdir()
    made["inner"].write_text("letter")
    made["deeper"] = upload / "closed" / "series"
    made["deeper"].mkdir()
    (made["deeper"] / "im1.dcm").write_text("DICM")
    made["hidden"] = upload / ".upload-1.partial"
    made["hidden"].write_text("half")
    for path in (made["file"], made["inner"], made["deeper"] / "im1.dcm", made["hidden"]):
        path.chmod(0o600)
    made["deeper"].chmod(0o700)
    made["folder"].chmod(0o000)  # paramiko mkdir(mode=0), after root put things in it
    (upload / "escape").symlink_to(secret)
    (upload / "escape-dir").symlink_to(outside / "private")
    os.link(secret, upload / "second-name.key")  # a second name of a file elsewhere
    return made


def test_private_uploads_become_group_readable_and_nothing_else_changes(tmp_path):
    upload, outside = tmp_path / "upload", tmp_path / "outside"
    made = private_uploads(upload, outside)
    upload.chmod(0o2770)
    assert notices.open_to_staff(upload, DEPTH) == 6  # four files, two folders
    assert mode(made["file"]) == mode(made["inner"]) == mode(made["hidden"]) == 0o640
    assert mode(made["deeper"] / "im1.dcm") == 0o640
    assert mode(made["folder"]) == 0o050 and mode(made["deeper"]) == 0o750  # listable, nothing more
    assert mode(upload) == 0o2770  # the deploy's
    # Symlinks are neither followed nor changed; a file with a second name elsewhere is left alone.
    assert mode(outside / "secret.key") == 0o600 and mode(outside / "private") == 0o700
    assert os.path.islink(upload / "escape") and os.path.islink(upload / "escape-dir")
    assert notices.open_to_staff(upload, DEPTH) == 0  # nothing left to change


def test_the_upload_notice_job_opens_uploads_to_staff_before_it_announces_them(tmp_path):
    policy = load_policy(REPO / "policies.yaml").policy
    accounts = policy.accounts.model_copy(update={"root": str(tmp_path / "srv")})
    layout = Layout(policy.model_copy(update={"accounts": accounts}))
    upload = Path(layout.chroot("partner", "alice")) / "upload"
    made = private_uploads(upload, tmp_path / "outside")
    Path(layout.kind_dir("link")).mkdir()
    settled = time.time() - 600
    for path in (made["file"], made["inner"]):
        os.utime(path, (settled, settled))
    site = parse_site(outbox_site() | {"outbox_dir": str(tmp_path / "outbox")}, "test")
    sent, failures = notices.notify_uploads(
        layout.policy, site, Messages(site, templates.MESSAGES), out=lambda line: None,
        state_dir=tmp_path / "state",
    )  # fmt: skip
    assert (sent, failures) == (1, [])
    assert mode(made["file"]) == mode(made["inner"]) == 0o640 and mode(made["folder"]) == 0o050
    assert mode(tmp_path / "outside" / "secret.key") == 0o600
