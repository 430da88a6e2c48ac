"""Every partner and link account: group, shell, chroot ownership and modes, folders, passwd entry."""

from tests.audit.catalogue import control


def accounts(read, policy):
    return [(name, "partner") for name in read.group_members(policy.accounts.partner_group)] + [
        (name, "link") for name in read.group_members(policy.accounts.link_group)
    ]


@control("ACC-01")
def test_groups_exist(host, policy, control):
    groups = [
        policy.accounts.partner_group,
        policy.accounts.link_group,
        policy.accounts.staff_group,
        policy.accounts.auditor_group,
    ]
    control.verify({g: True for g in groups}, {g: host.group(g).exists for g in groups})


@control("ACC-02")
def test_no_shell(host, read, policy, baseline, control):
    found = {name: host.user(name).shell for name, _ in accounts(read, policy)}
    control.verify({name: baseline.shell for name in found}, found)


@control("ACC-03")
def test_chroot_path_is_root_owned_and_closed(read, policy, baseline, control):
    on_the_way = []
    for name, kind in accounts(read, policy):
        parts = baseline.chroot(kind, name).strip("/").split("/")
        on_the_way += ["/" + "/".join(parts[:depth]) for depth in range(len(parts) + 1)]
    deviations = {}
    for path, (owner, _group, mode, _) in read.stats(*on_the_way).items():
        if owner != "root" or int(mode, 8) & 0o022:
            deviations[path] = f"{owner} {mode}"
    control.verify({}, deviations)


@control("ACC-04")
def test_folders(read, policy, baseline, control):
    wanted = {}
    for name, kind in accounts(read, policy):
        chroot = baseline.chroot(kind, name)
        for relative, want in baseline.chroot_folders(name).items():  # not the chroot itself: ACC-03
            wanted[f"{chroot}/{relative}"] = (*want, "directory")
    deviations = {}
    for path, (owner, group, mode, kind_) in read.stats(*wanted).items():
        got = (owner, group, mode.zfill(4), kind_)
        if got != wanted[path]:
            deviations[path] = " ".join(got)
    control.verify({}, deviations)


@control("ACC-05")
def test_tree(read, baseline, control):
    expected = {path: " ".join(want) for path, want in baseline.tree().items()}
    found = {
        path: f"{owner} {group} {mode.zfill(4)}" for path, (owner, group, mode, _) in read.stats(*expected).items()
    }
    control.verify(expected, found)


@control("ACC-06")
def test_home_is_the_own_chroot(host, read, policy, baseline, control):
    """sshd chroots each account to its passwd home (ChrootDirectory %h): a home pointed at
    another account's folder, or above the tree, opens that to it. ACC-03 checks the folders
    where they should be; this checks that sshd goes there."""
    expected, found = {}, {}
    for name, kind in accounts(read, policy):
        user = host.user(name)
        expected[name] = {"home": baseline.chroot(kind, name), "shell": baseline.shell}
        found[name] = {"home": user.home, "shell": user.shell}
    control.verify(expected, found)
