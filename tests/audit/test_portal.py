"""The secure web page: its service holds no file privileges, TLS and headers as the policy
wants. Skipped on a host without the web page (SFTP only)."""

import json
import re
import shlex

import pytest

from exchange import paths
from exchange.policy import parse_policy
from tests.audit.catalogue import control
from tests.audit.nginxconf import (
    Config,
    Directive,
    in_effect,
    location_for,
    size_bytes,
    tls_servers,
    zone_rates_per_minute,
)

# The portal's routes (scripts/exchange/portal/app.py, Portal.routes): uploads, and the forms that take a password.
UPLOAD = "/files/upload"
PASSWORD_FORMS = {"/login": "/login", "/l/<token>": "/l/" + "A" * 43, "/password": "/password"}
NGINX_DEFAULT_BODY_SIZE = "1m"
# Where a transfer or a login holds a connection: each route's location must limit them per address.
CONNECTION_ROUTES = {"/files/download/<name>": "/files/download/x.zip", UPLOAD: UPLOAD, **PASSWORD_FORMS}


@pytest.fixture(scope="module")
def site_config(read):
    text = read.text(paths.NGINX_SITE)
    if text is None:
        pytest.skip("no web page on this host")
    return text


@pytest.fixture(scope="module")
def https_address(site_config):
    listen = re.search(r"^\s*listen\s+(?:([\d.:\[\]a-f]+):)?(\d+)\s+ssl;", site_config, re.M)
    return (listen[1] or "127.0.0.1"), int(listen[2])


@control("PORTAL-01")
def test_portal_service_cannot_reach_the_exchange_folders(host, policy, site_config, control):
    user = policy.portal.service_user
    unit = host.run(
        f"systemctl show {paths.PORTAL_SERVICE} -p User -p InaccessiblePaths -p NoNewPrivileges -p ActiveState -p ProtectSystem"
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


@control("PORTAL-02")
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
connection.request("GET", "/login", headers={"Accept-Encoding": "gzip, deflate, br"})  # as browsers ask
response = connection.getresponse()
print(json.dumps({"status": response.status, "headers": [[k.lower(), v] for k, v in response.getheaders()]}))
"""


@control("PORTAL-03")
def test_security_headers_and_cookies(host, https_address, control):
    address, port = https_address
    fetched = json.loads(host.run(f"python3 -c {shlex.quote(FETCH)} {address} {port}").stdout)
    headers = {}
    for name, value in fetched["headers"]:
        headers.setdefault(name, []).append(value)
    cookies = headers.get("set-cookie", [])
    control.verify(
        {"status": 200, "hsts": True, "csp": True, "frame": "DENY", "referrer": "no-referrer", "cache": "no-store",
         "cookies secure, httponly, samesite=strict": True, "server version hidden": True, "compressed": None},
        {"status": fetched["status"],
         "hsts": hsts_max_age(headers.get("strict-transport-security", [""])[0]) >= HSTS_MIN_SECONDS,
         "csp": "default-src 'none'" in headers.get("content-security-policy", [""])[0],
         "frame": headers.get("x-frame-options", [None])[0], "referrer": headers.get("referrer-policy", [None])[0],
         "cache": headers.get("cache-control", [None])[0],
         "cookies secure, httponly, samesite=strict": bool(cookies) and all(
             "Secure" in c and "HttpOnly" in c and "SameSite=strict" in c for c in cookies),
         "server version hidden": "/" not in headers.get("server", [""])[0],
         # BREACH: a compressed page's length gives its CSRF token (or a link's) away by guesses.
         "compressed": headers.get("content-encoding", [None])[0]},
    )  # fmt: skip


@pytest.fixture(scope="module")
def running_nginx(read, site_config):
    """The configuration nginx loads (`nginx -T`, as root: it reads the TLS key)."""
    return Config.from_dump(read.privileged("nginx")).main()


def applying_to(main: Directive, port: int, path: str) -> list[Directive]:
    """The blocks whose directives apply to a request for `path` on the TLS server at `port`,
    innermost first: its location, the server, http. The first such server is nginx's default."""
    servers = tls_servers(main, port)
    if not servers:
        return []
    return [level for level in (location_for(servers[0], path), servers[0], *main.all("http")[:1]) if level]


def body_size_mb(levels: list[Directive]) -> float | None:
    if not levels:
        return None
    sizes = in_effect("client_max_body_size", *levels) or [[NGINX_DEFAULT_BODY_SIZE]]
    megabytes = size_bytes(sizes[-1][0]) / (1 << 20)
    return int(megabytes) if megabytes.is_integer() else megabytes


def posts_per_minute(main: Directive, levels: list[Directive]) -> int | None:
    """The strictest request rate limit on these blocks, per minute; None without any."""
    rates = {name: rate for http in main.all("http") for name, rate in zone_rates_per_minute(http).items()}
    zones = [
        dict(arg.split("=", 1) for arg in args if "=" in arg).get("zone") for args in in_effect("limit_req", *levels)
    ]
    limits = [rates[zone] for zone in zones if zone in rates]
    return min(limits) if limits else None


def connections_per_address(main: Directive, levels: list[Directive]) -> int | None:
    """The strictest limit on open connections from one address on these blocks; None without."""
    zones = {
        zone.args[1].split("=", 1)[1].split(":")[0]: zone.args[0]
        for http in main.all("http")
        for zone in http.all("limit_conn_zone")
        if len(zone.args) > 1 and zone.args[1].startswith("zone=")
    }
    limits = [int(args[1]) for args in in_effect("limit_conn", *levels) if zones.get(args[0]) == "$binary_remote_addr"]
    return min(limits) if limits else None


@control("PORTAL-04")
def test_nginx_limits_follow_the_policy(policy, running_nginx, https_address, control):
    """Read from what nginx loads, for the location nginx picks for each route: a limit in the
    site file means nothing if nginx runs another file, or a location overrides it."""
    _, port = https_address
    control.verify(
        {
            f"client_max_body_size_mb {UPLOAD}": policy.portal.upload_max_mb + 1,  # + the form around the file
            "login_posts_per_minute": {form: policy.portal.login_requests_per_minute for form in PASSWORD_FORMS},
            "connections_per_address": dict.fromkeys(CONNECTION_ROUTES, policy.portal.connections_per_address),
        },
        {
            f"client_max_body_size_mb {UPLOAD}": body_size_mb(applying_to(running_nginx, port, UPLOAD)),
            "login_posts_per_minute": {
                form: posts_per_minute(running_nginx, applying_to(running_nginx, port, path))
                for form, path in PASSWORD_FORMS.items()
            },
            "connections_per_address": {
                route: connections_per_address(running_nginx, applying_to(running_nginx, port, path))
                for route, path in CONNECTION_ROUTES.items()
            },
        },
    )


@control("PORTAL-05")
def test_the_running_portal_uses_this_policy(host, policy, site_config, control):
    """The portal reads these from the installed policy at start: the installed one must say the
    same, and the service must have started after the policy file was last written."""
    installed = host.file(paths.POLICY)
    section = parse_policy(installed.content_string, installed.path).portal
    started = host.run(f"systemctl show {paths.PORTAL_SERVICE} -p ActiveEnterTimestamp --value").stdout.strip()
    started_epoch = int(host.run(f"date -d {json.dumps(started)} +%s").stdout.strip() or 0) if started else 0
    control.verify(
        {"installed portal policy": policy.portal.model_dump(), "started after the policy was written": True},
        {"installed portal policy": section.model_dump(),
         "started after the policy was written": started_epoch >= int(installed.mtime.timestamp())},
    )  # fmt: skip


# Variables that hold a request's own URL (a link page's holds its token) or where it came from.
URL_VARIABLES = re.compile(
    r"\$(request|request_uri|uri|document_uri|args|query_string|http_referer|request_body|arg_\w+)\b"
)
QUIET_ENOUGH = ("crit", "alert", "emerg")  # nginx adds the request line to every error it logs


def _log_formats(http: Directive) -> dict[str, str]:
    """log_format name -> its text; nginx's built-in `combined` holds the whole request line."""
    formats = {"combined": '$remote_addr - $remote_user [$time_local] "$request" $status'}
    formats.update({d.args[0]: " ".join(d.args[1:]) for d in http.all("log_format")})
    return formats


def _masked(http: Directive, variable: str) -> bool:
    """A map variable that shows a link page's URL as a constant."""
    for mapping in http.all("map"):
        if mapping.args[1:] == [f"${variable}"]:
            return any(entry.name == "~^/l/" and "$" not in " ".join(entry.args) for entry in mapping.block or [])
    return False


def _leaks(http: Directive, levels: list[Directive]) -> list[str]:
    """What in the access logs in effect at `levels` could write a link's token."""
    formats, leaks = _log_formats(http), []
    for args in in_effect("access_log", *levels) or [["/var/log/nginx/access.log", "combined"]]:
        if args[0] == "off":
            continue
        text = formats.get(args[1] if len(args) > 1 else "combined", "(unknown format)")
        leaks += [f"{args[0]}: ${m[1]}" for m in URL_VARIABLES.finditer(text)]
        leaks += [
            f"{args[0]}: ${name} (not masked)"
            for name in re.findall(r"\$(imaging_exchange_\w+)", text)
            if not _masked(http, name)
        ]
    return leaks


def _error_levels(levels: list[Directive]) -> list[str]:
    """The level of each error log in effect; without one, nginx's default (error)."""
    return [args[1] if len(args) > 1 else "error" for args in in_effect("error_log", *levels) or [["-"]]]


@control("PORTAL-06")
def test_no_link_token_reaches_an_nginx_log(running_nginx, https_address, control):
    _, port = https_address
    http = running_nginx.all("http")[0]
    link_page = applying_to(running_nginx, port, "/l/" + "A" * 43)
    name = tls_servers(running_nginx, port)[0].all("server_name")[0].args
    redirects = [s for s in http.all("server") if s.all("server_name") and s.all("server_name")[0].args == name]
    plain_http = [s for s in redirects if not any("ssl" in listen.args for listen in s.all("listen"))]
    error_levels = {
        "link pages": _error_levels(link_page),
        **{f"plain http {s.all('listen')[0].args[0]}": _error_levels([s, http]) for s in plain_http},
    }
    control.verify(
        {"access log of link pages": [], "plain http access logs": [], "error logs at": "crit or quieter"},
        {
            "access log of link pages": _leaks(http, link_page),
            "plain http access logs": [leak for s in plain_http for leak in _leaks(http, [s, http])],
            "error logs at": "crit or quieter"
            if all(level in QUIET_ENOUGH for levels in error_levels.values() for level in levels)
            else error_levels,
        },
    )
