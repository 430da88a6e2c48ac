"""Where the server keeps what is not the exchange tree itself (the policy names that tree and
its groups). Standard library only, no environment lookups: roles and tools import the same
names, so the deploy makes exactly the places the tools use.
"""

# The tools' locks: root only (0700), so no other account can take, hold or redirect them.
TOOL_RUN_DIR = "/run/imaging-exchange"
PURGE_LOCK = "purge.lock"  # in TOOL_RUN_DIR
ACCOUNT_LOCK = "accounts.lock"  # in TOOL_RUN_DIR

# The one way into the audit log: rsyslog's socket here stamps every record with the sender's
# uid, which the kernel vouches for. Root, and the web page's service group, may reach it.
AUDIT_SOCKET_DIR = "/run/imaging-exchange-audit"
AUDIT_SOCKET = f"{AUDIT_SOCKET_DIR}/log"

LOG_DIR = "/var/log/imaging-exchange"
AUDIT_LOG = f"{LOG_DIR}/audit.log"
SFTP_LOG = f"{LOG_DIR}/sftp.log"  # internal-sftp, every line stamped account=<name>

# systemd-tmpfiles makes the run folders at every boot (/run is empty then).
TOOLS_TMPFILES = "/etc/tmpfiles.d/imaging-exchange.conf"
AUDIT_TMPFILES = "/etc/tmpfiles.d/imaging-exchange-audit.conf"
