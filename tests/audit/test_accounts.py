"""Every partner and link account: group, shell, chroot ownership and modes, folders, passwd entry."""

import pytest

from exchange import paths

control = pytest.mark.control


def accounts(read, policy):
    return [(name, "partner") for name in read.group_members(policy.accounts.partner_group)] + [
        (name, "link") for name in read.group_members(policy.accounts.link_group)
    ]


def stat(read, path):
    out = read.privileged("stat", path).strip()
    _, owner, group, mode, kind = out.split("|")
    return owner, group, mode, kind


@control(
    "ACC-01",
    reference="this project: groups",
    source="accounts.partner_group, accounts.link_group, accounts.staff_group, accounts.auditor_group",
)
def test_groups_exist(host, policy, control):
    groups = [
        policy.accounts.partner_group,
        policy.accounts.link_group,
        policy.accounts.staff_group,
        policy.accounts.auditor_group,
    ]
    control.verify({g: True for g in groups}, {g: host.group(g).exists for g in groups})


@control(
    "ACC-02",
    reference="this project: no shell for exchange accounts",
    source="accounts.partner_group, accounts.link_group",
)
def test_no_shell(host, read, policy, control):
    found = {name: host.user(name).shell for name, _ in accounts(read, policy)}
    control.verify({name: paths.NOLOGIN for name in found}, found)


@control("ACC-03", reference="sshd_config(5) ChrootDirectory; this project: isolation", source="accounts.root")
def test_chroot_path_is_root_owned_and_closed(read, policy, layout, control):
    deviations = {}
    for name, kind in accounts(read, policy):
        chroot = layout.chroot(kind, name)
        parts = chroot.strip("/").split("/")
        for depth in range(len(parts) + 1):
            path = "/" + "/".join(parts[:depth])
            owner, _group, mode, _ = stat(read, path)
            if owner != "root" or int(mode, 8) & 0o022:
                deviations[path] = f"{owner} {mode}"
    control.verify({}, deviations)


@control(
    "ACC-04",
    reference="this project: download/upload folders",
    source="accounts.download_folder, accounts.upload_folder, accounts.staff_group",
)
def test_folders(read, policy, layout, control):
    deviations = {}
    for name, kind in accounts(read, policy):
        chroot = layout.chroot(kind, name)
        for relative, want in layout.skeleton(name).items():
            if not relative:
                continue  # the chroot itself: ACC-03
            path = f"{chroot}/{relative}"
            owner, group, mode, kind_ = stat(read, path)
            got = (owner, group, mode.zfill(4), kind_)
            if got != (*want, "directory"):
                deviations[path] = " ".join(got)
    control.verify({}, deviations)


@control("ACC-05", reference="this project: the exchange tree", source="accounts.root, accounts.staff_group")
def test_tree(read, layout, control):
    expected = {path: " ".join(want) for path, want in layout.tree_dirs().items()}
    found = {}
    for path in expected:
        owner, group, mode, _ = stat(read, path)
        found[path] = f"{owner} {group} {mode.zfill(4)}"
    control.verify(expected, found)


@control(
    "ACC-06",
    reference="sshd_config(5) ChrootDirectory %h; this project: isolation",
    source="accounts.root, accounts.partner_group, accounts.link_group",
)
def test_home_is_the_own_chroot(host, read, policy, layout, control):
    """sshd chroots each account to its passwd home (ChrootDirectory %h): a home pointed at
    another account's folder, or above the tree, opens that to it. ACC-03 checks the folders
    where they should be; this checks that sshd goes there."""
    expected, found = {}, {}
    for name, kind in accounts(read, policy):
        user = host.user(name)
        expected[name] = {"home": layout.chroot(kind, name), "shell": paths.NOLOGIN}
        found[name] = {"home": user.home, "shell": user.shell}
    control.verify(expected, found)
