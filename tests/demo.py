"""The main job, as staff do it, on the running demo host (`make demo`).

Issues a one-time link for a made-up patient, packs a small synthetic CT study into that
link account's download folder, and shows what the recipient gets: the e-mail (the link)
and the SMS (the password) from the host's outbox, the package over SFTP and on the web page,
and then the access trail of the patient and the link list with its delivery.
"""

from __future__ import annotations

import hashlib
import json
import re
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import unquote

import httpx

from exchange import paths
from tests.dicom_synth import ct_study
from tests.e2e.clients import issued_account, portal_form
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
    account = issued_account(issued)

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
    mail = run(f'cat "$(ls -t {paths.OUTBOX_DIR}/*.eml | head -1)"')
    print(mail)
    print("== the SMS (the password only):")
    sms = run(f'cat "$(ls -t {paths.OUTBOX_DIR}/*.sms | head -1)"')
    print(sms)
    print()
    print(run("exchange link list"))
    print(f"== what the recipient sees over SFTP (sftp -P {host.port} {account}@{host.hostname}, the SMS password):")
    print(run(f"ls -l /srv/exchange/links/{account}/download"))

    print("== and on the web page: the link, the SMS password, the download (as a browser does it)")
    link = re.search(re.escape(host.portal_url) + r"/l/[A-Za-z0-9_-]{43}", mail)[0]
    password = re.search(r"\b[A-Za-z2-9]{4}(?:-[A-Za-z2-9]{4}){3,}\b", json.loads(sms)["text"])[0]
    certificate = run(f"cat {paths.TLS_CERTIFICATE}")
    with httpx.Client(verify=ssl.create_default_context(cadata=certificate), follow_redirects=True) as web:
        files = portal_form(web, link, password=password)
        package = re.search(r'href="/files/download/([^"]+\.zip)"', files.text)[1]
        digest = hashlib.sha256()
        with web.stream("GET", f"{host.portal_url}/files/download/{package}") as download:
            for chunk in download.iter_bytes():
                digest.update(chunk)
    stored = run(f"cat /srv/exchange/links/{account}/download/*.zip.sha256").split()[0]
    if digest.hexdigest() != stored:
        sys.exit(f"the package downloaded from the web page differs from the one staff made ({package})")
    print(f"   logged in at {link[:40]}..., downloaded {unquote(package)}: SHA-256 matches its .sha256")
    print(f"   open the link yourself: {link}  (self-signed test certificate: the browser warns)")
    print()
    print("== the access trail: who saw the patient's images (exchange trail patient DEMO0001)")
    print(run("exchange trail patient DEMO0001"))
    print(run("exchange link list"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
