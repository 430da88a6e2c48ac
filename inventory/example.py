"""An example site: copy to inventory/<site>.py and run `pyinfra inventory/<site>.py deploy.py`.

Host data keys the deploy reads are declared, with defaults and meaning, in
roles/settings.py (HostSettings); `ssh_*` keys are pyinfra's connection settings and
`_*` keys pyinfra's own. The policy (passwords, retention, sshd crypto, ...) is not
here: it is policies.yaml.
"""

import os

# A group is (hosts, group data); each host may add or override data of its own.
exchange_servers = (
    [
        # sshd on loopback too: the web page logs every user in through it.
        ("exchange01.radiology.example.org", {"sshd_listen_addresses": ["10.20.30.40", "127.0.0.1"]}),
    ],
    {
        # How the admin's pyinfra reaches the servers: a named admin account with a key, sudo.
        "ssh_user": "deploy-admin",
        "ssh_key": "~/.ssh/id_ed25519",
        "_sudo": True,
        # HostSettings (roles/settings.py)
        "apt_cache_time": 3600,
        "automatic_security_updates": True,
        "automatic_reboot_time": "04:30",
        "sshd_port": 22,
        "admin_connects_as_root": False,
        "ssh_admin_groups": ["sudo"],  # deploy-admin must be in one of these, or the deploy stops
        # fail2ban bans addresses that fail logins (policies.yaml source_bans); false only where the
        # host cannot set firewall rules, and the audit (BAN-01) checks that it cannot.
        "source_bans": True,
        "partners_file": "inventory/partners.yaml",
        # Key-login accounts; each list is the whole group: whoever is dropped is locked, then removed.
        "staff": [{"name": "staff-jdoe", "public_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI... jdoe@ws12"]}],
        "auditors": [{"name": "audit-jdoe", "public_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI... jdoe@audit"]}],
        # The secure web page (roles/portal.py): nginx with the site's own certificate.
        "portal": {
            "server_name": "beelden.radiology.example.org",  # the host name of site.portal_url
            "listen_port": 443,
            "http_redirect_port": 80,
            "tls_certificate": "/etc/ssl/imaging-exchange/portal.crt",  # full chain, placed by the hospital's PKI
            "tls_certificate_key": "/etc/ssl/imaging-exchange/portal.key",
        },
        # Site data (scripts/exchange/site.py): names, contacts and transports in every message.
        # Secrets come from the admin's environment (or a vault), never from this file.
        "site": {
            "institution": {"nl": "het Voorbeeldziekenhuis", "en": "Example Hospital"},  # as in a sentence
            "department": {"nl": "afdeling Radiologie", "en": "Department of Radiology"},
            "portal_url": "https://beelden.radiology.example.org",
            "contact": {
                "email": "beelduitwisseling@radiology.example.org",
                "phone": "012-345 6789",
                "hours": {"nl": "op werkdagen 8:30-17:00", "en": "weekdays 8:30-17:00"},
                # Urgent cases outside office hours only: the switchboard puts callers through
                # to the radiographer on duty. Leave it out if the site offers no such line.
                "urgent_phone": "012-345 0000",
            },
            # The CD viewer in every package: viewer_dir on the server holds windows_viewer at its
            # root (copy the viewer bundle there once; `exchange package` refuses a folder without it).
            "windows_viewer": "run_cdviewer.exe",
            "viewer_dir": "/srv/imaging-exchange-viewer",
            "timezone": "Europe/Amsterdam",  # the times in messages and on the web page (the default)
            # The web page's look: the hospital's logo (a PNG or JPEG in this checkout; the deploy copies
            # it to the server) and its colour, which must read well against white.
            # "logo": "inventory/logo.png",
            "accent_colour": "#005a8c",
            # "sftp_port": 22,  # what partners put in their SFTP client; default: sshd_port
            # The hospital's PACS (docs/admins.md#pacs-nodes): staff package studies straight from it.
            "dicom": {
                "ae_title": "IMAGINGEXCH",  # the PACS knows this AE, the server and retrieve_port
                "retrieve_port": 11112,
                "pacs": {"main": {"ae_title": "PACS01", "host": "pacs01.radiology.example.org", "port": 104}},
            },
            "staff_mailbox": "radiologie-balie@radiology.example.org",
            "staff_language": "nl",
            "email": {
                "transport": "smtp",
                "host": "smtp-relay.radiology.example.org",
                "port": 587,
                "security": "starttls",
                "username": "imaging-exchange",
                "password": os.environ.get("EXCHANGE_SMTP_PASSWORD"),
                "sender": "no-reply@radiology.example.org",
            },
            "sms": {
                "transport": "http",
                "url": "https://sms-gateway.example.net/v1/messages",
                "headers": {"Authorization": f"Bearer {os.environ.get('EXCHANGE_SMS_TOKEN', '')}"},
                "sender": "Radiologie",
                "fields": {"to": "recipient", "text": "body", "sender": "originator"},
            },
        },
    },
)
