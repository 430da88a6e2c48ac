"""The secure web page: its service holds no file privileges, TLS and headers as the policy
wants. Skipped on a host without the web page (SFTP only)."""

import json
import re
import shlex

import pytest

from exchange.policy import parse_policy

control = pytest.mark.control

NGINX_SITE = "/etc/nginx/sites-available/imaging-exchange"
SERVICE = "imaging-exchange-portal"


@pytest.fixture(scope="module")
def site_config(read):
    text = read.text(NGINX_SITE)
    if text is None:
        pytest.skip("no web page on this host")
    return text


@pytest.fixture(scope="module")
def https_address(site_config):
    listen = re.search(r"^\s*listen\s+(?:([\d.:\[\]a-f]+):)?(\d+)\s+ssl;", site_config, re.M)
    return (listen[1] or "127.0.0.1"), int(listen[2])


@control("PORTAL-01", reference="issue 7: the portal holds no file privileges of its own", source="portal.service_user")
def test_portal_service_cannot_reach_the_exchange_folders(host, policy, site_config, control):
    user = policy.portal.service_user
    unit = host.run(
        f"systemctl show {SERVICE} -p User -p InaccessiblePaths -p NoNewPrivileges -p ActiveState -p ProtectSystem"
    ).stdout
    shown = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line)
    control.verify(
        {"groups": [user], "User": user, "InaccessiblePaths": policy.accounts.root, "NoNewPrivileges": "yes",
         "ProtectSystem": "strict", "ActiveState": "active"},
        {"groups": host.run(f"id -Gn {user}").stdout.split(), "User": shown.get("User"),
         "InaccessiblePaths": policy.accounts.root if policy.accounts.root in [
             p.lstrip("-") for p in shown.get("InaccessiblePaths", "").split()] else shown.get("InaccessiblePaths"),
         "NoNewPrivileges": shown.get("NoNewPrivileges"),
         "ProtectSystem": shown.get("ProtectSystem"), "ActiveState": shown.get("ActiveState")},
    )  # fmt: skip


HSTS_MIN_SECONDS = 365 * 86400  # Mozilla's and the HSTS preload list's floor: a year


def hsts_max_age(header: str) -> int:
    match = re.search(r"max-age=(\d+)", header)
    return int(match[1]) if match else 0


@control("PORTAL-02", reference="Mozilla TLS intermediate; BSI TR-02102-2 (TLS 1.2 and 1.3 only)", source="portal")
def test_tls_12_and_13_only(host, https_address, control):
    address, port = https_address
    found = {}
    for version in ("tls1", "tls1_1", "tls1_2", "tls1_3"):
        # SECLEVEL=0: this client offers the old versions, so only the server can refuse them.
        result = host.run(
            f"openssl s_client -connect {address}:{port} -{version} -cipher 'DEFAULT:@SECLEVEL=0' -brief < /dev/null"
        )
        found[version] = "accepted" if result.rc == 0 else "refused"
    control.verify({"tls1": "refused", "tls1_1": "refused", "tls1_2": "accepted", "tls1_3": "accepted"}, found)


FETCH = """
import http.client, json, ssl, sys
context = ssl._create_unverified_context()  # the audit checks headers; the certificate is the site's
connection = http.client.HTTPSConnection(sys.argv[1], int(sys.argv[2]), context=context, timeout=20)
connection.request("GET", "/login")
response = connection.getresponse()
print(json.dumps({"status": response.status, "headers": [[k.lower(), v] for k, v in response.getheaders()]}))
"""


@control("PORTAL-03", reference="OWASP Secure Headers; issue 7 (CSP, HSTS, cookies, no caching)", source="portal")
def test_security_headers_and_cookies(host, https_address, control):
    address, port = https_address
    fetched = json.loads(host.run(f"python3 -c {shlex.quote(FETCH)} {address} {port}").stdout)
    headers = {}
    for name, value in fetched["headers"]:
        headers.setdefault(name, []).append(value)
    cookies = headers.get("set-cookie", [])
    control.verify(
        {"status": 200, "hsts": True, "csp": True, "frame": "DENY", "referrer": "no-referrer", "cache": "no-store",
         "cookies secure, httponly, samesite=strict": True, "server version hidden": True},
        {"status": fetched["status"],
         "hsts": hsts_max_age(headers.get("strict-transport-security", [""])[0]) >= HSTS_MIN_SECONDS,
         "csp": "default-src 'none'" in headers.get("content-security-policy", [""])[0],
         "frame": headers.get("x-frame-options", [None])[0], "referrer": headers.get("referrer-policy", [None])[0],
         "cache": headers.get("cache-control", [None])[0],
         "cookies secure, httponly, samesite=strict": bool(cookies) and all(
             "Secure" in c and "HttpOnly" in c and "SameSite=strict" in c for c in cookies),
         "server version hidden": "/" not in headers.get("server", [""])[0]},
    )  # fmt: skip


@control(
    "PORTAL-04",
    reference="issue 7: upload size and login rate limits in nginx",
    source="portal.upload_max_mb, portal.login_requests_per_minute",
)
def test_nginx_limits_follow_the_policy(policy, site_config, control):
    body = re.search(r"client_max_body_size\s+(\d+)m;", site_config)
    rate = re.search(r"zone=imaging_exchange_login:\S+\s+rate=(\d+)r/m;", site_config)
    control.verify(
        {
            "client_max_body_size_mb": policy.portal.upload_max_mb + 1,
            "login_posts_per_minute": policy.portal.login_requests_per_minute,
        },
        {
            "client_max_body_size_mb": int(body[1]) if body else None,
            "login_posts_per_minute": int(rate[1]) if rate else None,
        },
    )


@control(
    "PORTAL-05",
    reference="issue 7: session idle time, per-address login limit, session cap from the policy",
    source="portal.idle_minutes, portal.login_failures_per_ip, portal.login_failure_window_seconds, portal.max_sessions",
)
def test_the_running_portal_uses_this_policy(host, policy, site_config, control):
    """The portal reads these from the installed policy at start: the installed one must say the
    same, and the service must have started after the policy file was last written."""
    installed = host.file("/etc/imaging-exchange/policies.yaml")
    section = parse_policy(installed.content_string, installed.path).portal
    started = host.run(f"systemctl show {SERVICE} -p ActiveEnterTimestamp --value").stdout.strip()
    started_epoch = int(host.run(f"date -d {json.dumps(started)} +%s").stdout.strip() or 0) if started else 0
    control.verify(
        {"installed portal policy": policy.portal.model_dump(), "started after the policy was written": True},
        {"installed portal policy": section.model_dump(),
         "started after the policy was written": started_epoch >= int(installed.mtime.timestamp())},
    )  # fmt: skip
