"""Base system: the Debian packages every concern relies on, and security updates."""

from pyinfra.api import deploy
from pyinfra.operations import apt, files

from roles.settings import HostSettings
from roles.templating import rendered

PACKAGES = [
    "ca-certificates",
    "cron",  # runs the retention purge
    "sudo",  # staff and auditor get narrow sudo rules
    "tzdata",
    "unattended-upgrades",
]


@deploy("Base system")
def base(settings: HostSettings) -> None:
    apt.packages(
        name="Install base packages",
        packages=PACKAGES,
        update=True,
        cache_time=settings.apt_cache_time,
        no_recommends=True,
    )
    files.put(
        name="Configure automatic security updates",
        src=rendered("base/20auto-upgrades.j2", settings=settings),
        dest="/etc/apt/apt.conf.d/20auto-upgrades",
        mode="644",
    )
    files.put(
        name="Configure when updates may reboot",
        src=rendered("base/52imaging-exchange-unattended-upgrades.j2", settings=settings),
        dest="/etc/apt/apt.conf.d/52imaging-exchange-unattended-upgrades",
        mode="644",
    )
