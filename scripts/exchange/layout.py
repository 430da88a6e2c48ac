"""The exchange tree: where each partner and link account lives, and every folder's owner and
mode, all derived from the policy (accounts.root, its groups and folder names)."""

from __future__ import annotations

import grp
from dataclasses import dataclass

from exchange import paths
from exchange.policy import Policy


@dataclass(frozen=True)
class Layout:
    """Paths, owners and modes of the exchange tree, all derived from the policy."""

    policy: Policy

    @property
    def root(self) -> str:
        return self.policy.accounts.root

    def kind_dir(self, kind: str) -> str:
        return f"{self.root}/{'partners' if kind == 'partner' else 'links'}"

    def chroot(self, kind: str, name: str) -> str:
        return f"{self.kind_dir(kind)}/{name}"

    def group(self, kind: str) -> str:
        accounts = self.policy.accounts
        return accounts.partner_group if kind == "partner" else accounts.link_group

    def kind_of(self, name: str) -> str | None:
        """ "partner" or "link" if `name` is an exchange account on this host, else None."""
        for kind in ("partner", "link"):
            try:
                if name in grp.getgrnam(self.group(kind)).gr_mem:
                    return kind
            except KeyError:
                continue
        return None

    def skeleton(self, name: str) -> dict[str, tuple[str, str, str]]:
        """Relative path in the chroot -> (owner, group, mode).

        sshd requires the chroot itself root-owned and not group/other writable. Other
        partners never reach it (each is chrooted to its own); other local users cannot
        pass the 0750 kind directory, so the chroot's "other" bits reach its account only.
        """
        staff = self.policy.accounts.staff_group
        return {
            "": ("root", "root", "0755"),
            # Staff write (setgid keeps group staff); the account reads through "other".
            self.policy.accounts.download_folder: ("root", staff, "2775"),
            # The account writes; setgid hands every upload to staff to read.
            self.policy.accounts.upload_folder: (name, staff, "2770"),
            # Holds the /dev/log socket rsyslog listens on, so internal-sftp can log.
            "dev": ("root", "root", "0755"),
        }

    def ended_links_dir(self) -> str:
        """Where the uploads of a link account whose time ended wait for staff (one folder per
        account), under the same retention as everything else."""
        return f"{self.root}/{paths.ENDED_LINKS}"

    def contact_sheets_dir(self) -> str:
        """Where the upload notices keep their contact sheets (policy notices.upload_contact_sheets),
        one folder per account, for staff, under the same retention as everything else."""
        return f"{self.root}/{paths.CONTACT_SHEETS}"

    def pacs_retrieve_dir(self) -> str:
        """Root's own (0700): a study retrieved from PACS waits here until it is packaged, on the
        tree's disk (a study may be gigabytes), out of every account's and staff's reach."""
        return f"{self.root}/{paths.PACS_RETRIEVE}"

    def imported_dir(self) -> str:
        """Where an upload imported into PACS (`exchange import`) is moved, one folder per account,
        for staff to see what went in, under the same retention as everything else."""
        return f"{self.root}/{paths.IMPORTED}"

    def tree_dirs(self) -> dict[str, tuple[str, str, str]]:
        staff = self.policy.accounts.staff_group
        return {
            self.root: ("root", "root", "0755"),
            self.kind_dir("partner"): ("root", staff, "0750"),
            self.kind_dir("link"): ("root", staff, "0750"),
            self.ended_links_dir(): ("root", staff, "2750"),
            self.contact_sheets_dir(): ("root", staff, "2750"),
            self.pacs_retrieve_dir(): ("root", "root", "0700"),
            self.imported_dir(): ("root", staff, "2750"),
        }

    def observe_params(self, names: list[str]) -> dict:
        accounts = self.policy.accounts
        return {
            "groups": [accounts.partner_group, accounts.link_group, accounts.staff_group],
            "partner_group": accounts.partner_group,
            "link_group": accounts.link_group,
            "download_folder": accounts.download_folder,
            "upload_folder": accounts.upload_folder,
            "names": sorted(names),
            "dirs": sorted(self.tree_dirs()),
            "keys_dir": paths.AUTHORIZED_KEYS_DIR,
            "log_socket_dir": paths.LOG_SOCKETS_DIR,
        }
