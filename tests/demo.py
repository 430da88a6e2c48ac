"""The main job, as staff do it, on the running demo host (`make demo`).

Issues a one-time link for a made-up patient, packs a small synthetic CT study into that
link account's download folder, and shows what the recipient gets: the e-mail (the link)
and the SMS (the password) from the host's outbox, and the package over SFTP.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.dicom_synth import ct_study
from tests.testhost import TestHostError, find


def main() -> int:
    host = find("testhost")
    if host is None:
        raise TestHostError("no demo host is running; `make demo` boots one")

    def run(command: str) -> str:
        result = host.ssh(command, check=False)
        if result.returncode != 0:
            sys.exit(f"`{command}` failed:\n{result.stderr}")
        return result.stdout

    print("== staff issue a one-time link (messages go to the host's outbox, not to anyone)")
    issued = run(
        "exchange link issue --email patient@example.org --phone +31612345678 --lang en --note 'demo: CT thorax'"
    )
    print(issued)
    account = re.search(r"issued (link-[a-z0-9]{8})", issued)[1]

    print("== staff pack a study (here: 40 synthetic CT images) into its download folder")
    with tempfile.TemporaryDirectory() as tmp:
        ct_study(Path(tmp) / "study", 40, patient_id="DEMO0001")
        tar = subprocess.run(["tar", "-C", str(Path(tmp) / "study"), "-c", "."], capture_output=True, check=True)
        subprocess.run(
            [*host.ssh_args(), "rm -rf /tmp/demo-study && mkdir /tmp/demo-study && tar -C /tmp/demo-study -x"],
            input=tar.stdout,
            check=True,
        )
    print(run(f"exchange package --to {account} /tmp/demo-study --label 'CT thorax'"))

    print("== the e-mail the patient gets (the link; the password is only in the SMS):")
    print(run('cat "$(ls -t /var/spool/imaging-exchange/outbox/*.eml | head -1)"'))
    print("== the SMS (the password only):")
    print(run('cat "$(ls -t /var/spool/imaging-exchange/outbox/*.sms | head -1)"'))
    print()
    print(run("exchange link list"))
    print(f"== what the recipient sees over SFTP (sftp -P {host.port} {account}@{host.hostname}, the SMS password):")
    print(run(f"ls -l /srv/exchange/links/{account}/download"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
