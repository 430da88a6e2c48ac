"""The staff tools' data: transport credentials, recipients' addresses and token hashes."""

from exchange import paths
from exchange.policy import parse_policy
from tests.audit.catalogue import control

# Root only: the site file holds the SMTP and SMS credentials, the state the recipients'
# addresses and numbers and the link token hashes, the partner file the partners' contacts.
ROOT_ONLY = {
    paths.SITE: ("root", "root", 0o600),
    paths.PARTNERS: ("root", "root", 0o600),
    paths.STATE_DIR: ("root", "root", 0o700),
    paths.OUTBOX_DIR: ("root", "root", 0o700),
}
KINDS = {"f": "file", "d": "directory", "l": "symlink"}  # find -printf %y


def owner_and_mode(owner: str, group: str, mode: int, kind: str = "") -> str:
    return f"{owner}:{group} {mode:04o}{f' {kind}' if kind else ''}"


def as_auditor(host, path: str) -> str | None:
    item = host.file(path)
    return owner_and_mode(item.user, item.group, item.mode) if item.exists else None


def as_root(read, path: str) -> str:
    owner, group, mode, _ = read.stats(path)[path]
    return owner_and_mode(owner, group, int(mode, 8))


def token_files(read) -> dict[str, str]:
    """Each file in the token folder (named by its first twelve characters), which only root
    can list."""
    found = {}
    for line in read.privileged("token-files").splitlines():
        name, owner, group, mode, kind = line.split("|")
        found[f"{paths.LINK_TOKENS_DIR}/{name}..."] = owner_and_mode(owner, group, int(mode, 8), KINDS.get(kind, kind))
    return found


@control("TOOLS-01")
def test_credentials_and_recipient_data_are_root_only(host, read, policy, control):
    wanted = {path: owner_and_mode(*spec) for path, spec in ROOT_ONLY.items()}
    found = {path: as_auditor(host, path) for path in ROOT_ONLY}
    if host.file(paths.PORTAL_CONFIG).exists:
        # With the web page its group may pass to the link token folder and read a token by
        # name; it can list neither directory. The auditor cannot pass either: root reads them.
        portal = policy.portal.service_user
        tokens = token_files(read)
        wanted |= {
            paths.STATE_DIR: owner_and_mode("root", portal, 0o710),
            paths.PORTAL_CONFIG: owner_and_mode("root", portal, 0o640),
            paths.LINK_TOKENS_DIR: owner_and_mode("root", portal, 0o2710),
        } | {path: owner_and_mode("root", portal, 0o640, "file") for path in tokens}
        found |= {
            paths.PORTAL_CONFIG: as_auditor(host, paths.PORTAL_CONFIG),
            paths.LINK_TOKENS_DIR: as_root(read, paths.LINK_TOKENS_DIR),
        } | tokens
    # Not there is not checked: e.g. no outbox on a site that sends through SMTP and an SMS gateway.
    present = [path for path, seen in found.items() if seen is not None]
    control.verify({path: wanted[path] for path in present}, {path: found[path] for path in present})


@control("TOOLS-02")
def test_the_installed_policy_is_the_audited_one(host, policy, control):
    """The tools, the purge and the web page obey the policy installed on the server; the other
    controls compare the server with the audited policy. So the two must say the same (a
    retention of 30 days in the installed copy would otherwise keep files unnoticed)."""
    installed = host.file(paths.POLICY)
    found = parse_policy(installed.content_string, installed.path).model_dump() if installed.exists else None
    control.verify(policy.model_dump(), found)


@control("TOOLS-03")
def test_the_tools_locks_are_root_only(host, control):
    """A lock another account can open, it can hold (the purge skips for ever) or redirect."""
    control.verify({paths.TOOL_RUN_DIR: "root:root 0700"}, {paths.TOOL_RUN_DIR: as_auditor(host, paths.TOOL_RUN_DIR)})
