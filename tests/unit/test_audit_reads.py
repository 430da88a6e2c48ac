"""How the audit suite reads what the system tools print: `nginx -T` (PORTAL-04) and
`sudo -l -U` (SUDO-02)."""

import pytest

from exchange.policy import load_policy
from roles import REPO
from roles.settings import PortalSettings
from roles.templating import render
from tests.audit.nginxconf import Config, NginxConfigError, location_for, tls_servers
from tests.audit.test_logging_and_sudo import sudo_rights
from tests.audit.test_portal import (
    PASSWORD_FORMS,
    UPLOAD,
    _error_levels,
    _leaks,
    applying_to,
    body_size_mb,
    connections_per_address,
    posts_per_minute,
)

POLICY = load_policy(REPO / "policies.yaml").policy

# Debian 12's nginx.conf, shortened; nginx -T prints every file it read under such a header.
NGINX_CONF = """# configuration file /etc/nginx/nginx.conf:
user www-data;
include /etc/nginx/modules-enabled/*.conf;
events {
\tworker_connections 768;
\t# multi_accept on;
}
http {
\tinclude /etc/nginx/mime.types;
\tssl_protocols TLSv1 TLSv1.1 TLSv1.2 TLSv1.3; # Dropping SSLv3, ref: POODLE
\tinclude /etc/nginx/conf.d/*.conf;
\tinclude /etc/nginx/sites-enabled/*;
}
#mail {
#\tserver {
#\t\tlisten     localhost:110;
#\t}
#}

# configuration file /etc/nginx/mime.types:
types {
    text/html                                        html htm shtml;
}

"""


def site(**changes: str) -> str:
    """The site file as the deploy renders it, with text replaced (drift)."""
    web = PortalSettings(server_name="exchange.hospital.example", listen_addresses=["127.0.0.1"], listen_port=3202)
    text = render("webserver/nginx-site.conf.j2", portal=web, policy=POLICY, socket="/run/x.sock")
    for old, new in changes.items():
        assert old in text
        text = text.replace(old, new)
    return text


def dump(*files: tuple[str, str]) -> Config:
    return Config.from_dump(NGINX_CONF + "".join(f"# configuration file {path}:\n{text}\n" for path, text in files))


def limits(config: Config) -> dict:
    main = config.main()
    return {
        "upload_mb": body_size_mb(applying_to(main, 3202, UPLOAD)),
        "logins": {
            form: posts_per_minute(main, applying_to(main, 3202, path)) for form, path in PASSWORD_FORMS.items()
        },
    }


ENABLED = "/etc/nginx/sites-enabled/imaging-exchange"
AS_DEPLOYED = {
    "upload_mb": POLICY.portal.upload_max_mb + 1,
    "logins": dict.fromkeys(PASSWORD_FORMS, POLICY.portal.login_requests_per_minute),
}


def test_the_deployed_site_has_the_policys_limits():
    assert limits(dump((ENABLED, site()))) == AS_DEPLOYED


@pytest.mark.parametrize(
    "changes, found",
    [
        # A location that sets its own size overrides the server's for the uploads it serves.
        (
            {"    location / {\n": "    location / {\n        client_max_body_size 10m;\n"},
            {**AS_DEPLOYED, "upload_mb": 10},
        ),
        # Without a size anywhere nginx takes its default, 1 MB.
        ({f"client_max_body_size {POLICY.portal.upload_max_mb + 1}m;": ""}, {**AS_DEPLOYED, "upload_mb": 1}),
        # Login forms under the general limit only (20 per second).
        (
            {"limit_req zone=imaging_exchange_login burst=10 nodelay;": ""},
            {**AS_DEPLOYED, "logins": dict.fromkeys(PASSWORD_FORMS, 1200)},
        ),
        # The password change no longer in the login location.
        (
            {"^/(login|password)$": "^/(login)$"},
            {**AS_DEPLOYED, "logins": {"/login": 30, "/l/<token>": 30, "/password": 1200}},
        ),
    ],
)
def test_what_nginx_runs_decides(changes, found):
    assert limits(dump((ENABLED, site(**changes)))) == found


def test_connections_per_address_are_read_where_nginx_applies_them():
    deployed = dump((ENABLED, site())).main()
    assert (
        connections_per_address(deployed, applying_to(deployed, 3202, UPLOAD)) == POLICY.portal.connections_per_address
    )
    line = f"    limit_conn imaging_exchange_conn {POLICY.portal.connections_per_address};\n"
    unlimited = dump((ENABLED, site(**{line: ""}))).main()
    assert connections_per_address(unlimited, applying_to(unlimited, 3202, "/files/download/x.zip")) is None


def token_leaks(config: Config) -> dict:
    """PORTAL-06's reading: what could write a link's token in the access log, and the error log level."""
    main = config.main()
    levels = applying_to(main, 3202, "/l/" + "A" * 43)
    return {"access": _leaks(main.all("http")[0], levels), "errors": _error_levels(levels)}


@pytest.mark.parametrize(
    "changes, found",
    [
        ({}, {"access": [], "errors": ["crit"]}),
        # nginx's own format: the request line, token and all.
        (
            {"access_log /var/log/nginx/access.log imaging_exchange;": ""},
            {"access": ["/var/log/nginx/access.log: $request"], "errors": ["crit"]},
        ),
        (
            {"    ~^/l/    /l/[token];\n": ""},
            {"access": ["/var/log/nginx/access.log: $imaging_exchange_logged_uri (not masked)"], "errors": ["crit"]},
        ),
        (
            {"$imaging_exchange_logged_uri": "$request_uri"},
            {"access": ["/var/log/nginx/access.log: $request_uri"], "errors": ["crit"]},
        ),
        (
            {"        error_log /var/log/nginx/error.log crit;  # its URL holds the link's token\n": ""},
            {"access": [], "errors": ["error"]},
        ),
    ],
)
def test_a_link_token_in_the_nginx_logs_is_found(changes, found):
    assert token_leaks(dump((ENABLED, site(**changes)))) == found


def test_included_files_count_where_they_are_included():
    # A file in conf.d, included before the sites, sets the http-wide default; the site's own
    # server setting still wins, and a file nginx never included counts for nothing.
    wide = ("/etc/nginx/conf.d/uploads.conf", "client_max_body_size 1g;\n")
    unused = ("/etc/nginx/conf.d/old/uploads.conf", "client_max_body_size 2g;\n")
    assert limits(dump(wide, unused, (ENABLED, site()))) == AS_DEPLOYED
    size = f"client_max_body_size {POLICY.portal.upload_max_mb + 1}m;"
    assert limits(dump(wide, unused, (ENABLED, site(**{size: ""}))))["upload_mb"] == 1024


def test_another_tls_server_first_on_the_port_is_the_one_that_answers():
    other = "server {\n    listen 127.0.0.1:3202 ssl;\n    location / { return 404; }\n}\n"
    found = limits(dump(("/etc/nginx/conf.d/a.conf", other), (ENABLED, site())))
    assert found == {"upload_mb": 1, "logins": dict.fromkeys(PASSWORD_FORMS, None)}


def test_no_tls_server_on_the_port_finds_nothing():
    assert limits(dump((ENABLED, site(**{"3202 ssl;": "3203 ssl;"})))) == {
        "upload_mb": None,
        "logins": dict.fromkeys(PASSWORD_FORMS, None),
    }


def test_location_choice_follows_nginx():
    text = """server {
        listen 443 ssl;
        location = /exact { }
        location /files/ { }
        location ^~ /static/ { }
        location ~* \\.ZIP$ { }
        location ~ ^/files/d { }
        location / { }
    }"""
    (server,) = tls_servers(dump(("/etc/nginx/sites-enabled/x", text)).main(), 443)

    def chosen(path: str) -> list[str]:
        return location_for(server, path).args

    assert chosen("/exact") == ["=", "/exact"]
    assert chosen("/exact/more") == ["/"]
    assert chosen("/static/a.zip") == ["^~", "/static/"]  # ^~: no regular expression is tried
    assert chosen("/files/a.zip") == ["~*", "\\.ZIP$"]  # the first matching expression beats a prefix
    assert chosen("/files/download") == ["~", "^/files/d"]
    assert chosen("/files/x") == ["/files/"]  # the longest prefix


def test_quotes_comments_and_variables_are_read_as_nginx_reads_them():
    text = (
        'server { listen 443 ssl; # a comment { with a brace\n add_header X "a;b{c}" always;'
        " return 301 https://${host}$request_uri; }"
    )
    (server,) = tls_servers(dump(("/etc/nginx/sites-enabled/x", text)).main(), 443)
    assert server.all("add_header")[0].args == ["X", "a;b{c}", "always"]
    assert server.all("return")[0].args == ["301", "https://${host}$request_uri"]


@pytest.mark.parametrize("text", ["server { listen 443 ssl;", "}", "server { listen 443 ssl; } stray"])
def test_a_broken_dump_is_an_error(text):
    with pytest.raises(NginxConfigError):
        dump(("/etc/nginx/sites-enabled/x", text)).main()
    with pytest.raises(NginxConfigError, match="no '# configuration file'"):
        Config.from_dump("nginx: [emerg] unknown directive")


# `sudo -l -U NAME` in the C locale, as Debian 12's sudo 1.9.13 prints it.
NOT_ALLOWED = "User alice-clinic is not allowed to run sudo on exchange01.\n"
AUDITOR = """Matching Defaults entries for auditor on exchange01:
    env_reset, mail_badpass, secure_path=/usr/local/sbin\\:/usr/local/bin\\:/usr/sbin\\:/usr/bin\\:/sbin\\:/bin, use_pty, !lecture

User auditor may run the following commands on exchange01:
    (root) NOPASSWD: /usr/local/bin/exchange audit-read *
"""
GRANTED = """Matching Defaults entries for bob-hospital on exchange01:
    env_reset, mail_badpass, use_pty

Runas and Command-specific defaults for bob-hospital:
    Defaults!/usr/bin/true !requiretty

User bob-hospital may run the following commands on exchange01:
    (root) NOPASSWD: /usr/bin/true, /usr/bin/false
    (ALL : ALL) /usr/bin/whoami
"""


def test_sudo_rights_are_the_listed_commands_only():
    assert sudo_rights(NOT_ALLOWED) == []
    assert sudo_rights(AUDITOR) == ["(root) NOPASSWD: /usr/local/bin/exchange audit-read *"]
    assert sudo_rights(GRANTED) == ["(ALL : ALL) /usr/bin/whoami", "(root) NOPASSWD: /usr/bin/true, /usr/bin/false"]
