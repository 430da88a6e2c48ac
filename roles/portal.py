"""The secure web page: nginx with TLS in front of the portal service (scripts/exchange/portal).

The portal runs as its own system user that is in no exchange group and for which the
exchange folders do not exist (systemd InaccessiblePaths); it reads only its own file, the
page templates and, by name, the link token index. Every file it shows comes through the
user's own SFTP session.
"""

from __future__ import annotations

import hashlib
import ipaddress
import shlex

from pyinfra import host
from pyinfra.api import OperationError, deploy, operation
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import File
from pyinfra.facts.server import Arch, Command
from pyinfra.operations import files, systemd

from exchange import paths
from exchange.policy import LoadedPolicy
from exchange.portal.config import PortalConfig, portal_yaml
from roles.ops import config_file
from roles.service_user import service_account
from roles.settings import HostSettings, site_logo
from roles.templating import render
from roles.tools import source_digest

# nginx -t of the staged site alone, in place of the live sites (Debian's nginx.conf includes them).
NGINX_VALIDATE = (
    "sed -e 's#include /etc/nginx/sites-enabled/\\*;#include {path};#' "
    "-e 's#include /etc/nginx/conf.d/\\*.conf;##' /etc/nginx/nginx.conf > /etc/nginx/.imaging-exchange-check.conf"
    " && nginx -q -t -c /etc/nginx/.imaging-exchange-check.conf; rc=$?; rm -f /etc/nginx/.imaging-exchange-check.conf;"
    " [ $rc -eq 0 ]"  # a status, not `exit`: config_file's cleanup after a failed check must still run
)


@operation()
def nginx_installed():
    """nginx, installed without starting Debian's default site (port 80 may be taken)."""
    if "nginx" in host.get_fact(DebPackages):
        host.noop("nginx is installed")
        return
    yield "printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d"
    yield (
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nginx openssl;"
        " rc=$?; rm -f /usr/sbin/policy-rc.d; exit $rc"
    )
    yield "rm -f /etc/nginx/sites-enabled/default"


@operation()
def self_signed_certificate(certificate: str, key: str, server_name: str):
    """A certificate for `server_name` if there is none: for test hosts (host data `portal.self_signed`)."""
    if host.get_fact(File, path=certificate) and host.get_fact(File, path=key):
        host.noop(f"{certificate} exists")
        return
    try:
        san = f"IP:{ipaddress.ip_address(server_name)}"
    except ValueError:
        san = f"DNS:{server_name}"
    yield f"install -d -m 755 $(dirname {shlex.quote(certificate)}) $(dirname {shlex.quote(key)})"
    yield (
        f"(umask 077 && openssl req -x509 -newkey rsa:3072 -sha256 -nodes -days 825 -subj /CN={shlex.quote(server_name)}"
        f" -addext subjectAltName={shlex.quote(san)} -keyout {shlex.quote(key)} -out {shlex.quote(certificate)}"
        " 2>/dev/null) && chmod 644 " + shlex.quote(certificate)
    )


@operation()
def certificate_in_place(certificate: str, key: str):
    """The site's own certificate must be on the host before nginx is pointed at it."""
    missing = [path for path in (certificate, key) if not host.get_fact(File, path=path)]
    if missing:
        raise OperationError(
            f"portal: {', '.join(missing)} not on the host; place the site's certificate chain and key there "
            "(or set portal.self_signed on a test host)"
        )
    host.noop("the site's certificate and key are in place")
    yield from ()


@operation()
def token_files_readable(directory: str, group: str):
    """Link tokens written before the portal was deployed: readable by its group like new ones."""
    q, g = shlex.quote(directory), shlex.quote(group)
    find = f"find {q} -maxdepth 1 -type f ! -name '.*' \\( ! -group {g} -o ! -perm 0640 \\)"
    if not host.get_fact(Command, command=f"{find} -print 2>/dev/null | head -1 || true"):
        host.noop("every link token is readable by the portal")
        return
    yield f"{find} -exec chgrp {g} {{}} + -exec chmod 0640 {{}} +"


@deploy("Secure web page")
def portal(loaded_policy: LoadedPolicy, settings: HostSettings) -> None:
    policy = loaded_policy.policy
    web = settings.portal
    user = policy.portal.service_user
    nginx_installed(name="nginx (without its default site)")
    service_account(name=f"Service user {user} (no exchange group)", user=user)

    # The token index: the portal's group may pass and read a token by its name, never list.
    files.directory(name="Tool state: portal may pass", path=paths.STATE_DIR, user="root", group=user, mode="710")
    tokens = paths.LINK_TOKENS_DIR
    files.directory(name="Link tokens: portal reads by name", path=tokens, user="root", group=user, mode="2710")
    token_files_readable(name="Link tokens written before: group readable", directory=tokens, group=user)

    # The pages ship with the tools now; an earlier version installed them here.
    files.directory(name="No page templates of an earlier version", path=f"{paths.CONFIG_DIR}/portal", present=False)
    # The site's logo, served by the portal itself: root's file, anyone may read it (every page shows it).
    logo = site_logo(settings.site)
    if logo is not None:
        config_file(name="The site's logo for the web page", dest=paths.PORTAL_LOGO, content=logo.content)
    else:
        files.file(name="No logo on the web page", path=paths.PORTAL_LOGO, present=False)
    config = PortalConfig(
        site=settings.site.public(),
        sshd_host=settings.sshd_loopback_address,
        sshd_port=settings.sshd_port,
        logo=paths.PORTAL_LOGO if logo is not None else None,
    )
    content = portal_yaml(config)
    config_file(
        name="Portal configuration (checked with the policy and templates)",
        dest=paths.PORTAL_CONFIG,
        content=content,
        mode="640",
        group=user,
        validate=f"{paths.EXCHANGE} portal check {{path}} >/dev/null",
    )
    if web.self_signed:
        self_signed_certificate(
            name="Self-signed certificate (test host)",
            certificate=web.tls_certificate,
            key=web.tls_certificate_key,
            server_name=web.server_name,
        )
    else:
        certificate_in_place(
            name="The site's certificate is in place", certificate=web.tls_certificate, key=web.tls_certificate_key
        )
    config_file(
        name="nginx site (validated with nginx -t)",
        dest=paths.NGINX_SITE,
        content=render("webserver/nginx-site.conf.j2", portal=web, policy=policy, socket=paths.PORTAL_SOCKET),
        validate=NGINX_VALIDATE,
        apply="systemctl reload-or-restart nginx",
    )
    # Enabled only once written and checked: a link to a missing file would stop nginx starting.
    enabled = files.link(
        name="nginx site enabled (once written and checked)",
        path=paths.NGINX_ENABLED,
        target=paths.NGINX_SITE,
    )
    systemd.service(name="nginx serves the newly enabled site", service="nginx", restarted=True, _if=enabled.did_change)
    systemd.service(name="nginx running", service="nginx", running=True, enabled=True)

    # The unit names what the portal runs (the tools with their pages, the policy, its file, the logo):
    # any change restarts it.
    revision = hashlib.sha256(
        (source_digest(host.get_fact(Arch)) + loaded_policy.sha256 + content + (logo.version if logo else "")).encode()
    ).hexdigest()[:16]
    config_file(
        name="Portal service",
        dest=paths.PORTAL_UNIT,
        content=render(
            "webserver/imaging-exchange-portal.service.j2",
            user=user,
            runtime_dir=paths.PORTAL_RUNTIME_DIR,
            socket=paths.PORTAL_SOCKET,
            venv=paths.TOOLS_VENV,
            policy=policy,
            revision=revision,
        ),
        apply=f"systemctl daemon-reload && systemctl enable --quiet {paths.PORTAL_SERVICE} && systemctl restart {paths.PORTAL_SERVICE}",
    )
    systemd.service(name="Portal running", service=paths.PORTAL_SERVICE, running=True, enabled=True)
