"""The local disposable test hosts (`make testhost`, or the test suite's own).

Lists every host running under $EXCHANGE_TESTHOST_DIR (default
/var/tmp/imaging-exchange/testhosts), with the admin key and pinned host keys that
tests/testhost.py made for it.
"""

from tests.testhost import running_hosts

testhosts = [
    (
        host.name,
        {
            "ssh_hostname": host.hostname,
            "ssh_port": host.port,
            "ssh_user": "root",
            "ssh_key": str(host.key),
            "ssh_known_hosts_file": str(host.known_hosts),
            "ssh_strict_host_key_checking": "yes",
            "admin_connects_as_root": True,
            "sshd_port": host.port,
            "sshd_listen_addresses": [host.hostname],
            "partners_file": "inventory/partners.yaml",
            "auditors": [
                {"name": "auditor", "public_keys": [host.auditor_key.with_suffix(".pub").read_text().strip()]}
            ],
        },
    )
    for host in running_hosts()
]
