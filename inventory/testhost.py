"""The local disposable test hosts (`make testhost`, or the test suite's own).

Lists every host running under $EXCHANGE_TESTHOST_DIR (default
/var/tmp/imaging-exchange/testhosts), with the admin key and pinned host keys that
tests/testhost.py made for it.
"""

from tests.testhost import running_hosts

# Messages go to the host's outbox (/var/spool/imaging-exchange/outbox), not to anyone.
DEMO_SITE = {
    "institution": {"nl": "het Voorbeeldziekenhuis", "en": "Example Hospital"},
    "department": {"nl": "afdeling Radiologie", "en": "Department of Radiology"},
    "portal_url": "https://exchange.example.test",
    "contact": {
        "email": "imaging-exchange@hospital.example",
        "phone": "012-345 6789",
        "hours": {"nl": "op werkdagen 8:30-17:00", "en": "weekdays 8:30-17:00"},
    },
    "windows_viewer": "run_cdviewer.exe",
    "staff_mailbox": "radiology-desk@hospital.example",
    "email": {"transport": "outbox", "sender": "no-reply@hospital.example"},
    "sms": {"transport": "outbox"},
}

testhosts = [
    (host.name, {**host.host_data(), "partners_file": "inventory/partners.yaml", "site": DEMO_SITE})
    for host in running_hosts()
]
