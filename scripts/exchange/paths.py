"""The server's layout: every path and name the deploy makes and the tools, the web page and
the audit use, in one place. Standard library only, and no environment lookups: roles, tools
and audit import the same names, so the deploy makes exactly the places the tools use and the
audit checks (an admin's environment cannot change what is deployed).

The exchange tree itself and its groups are the policy's (`accounts.root`); what lies in it
is `exchange.layout.Layout`.
"""

# -- the exchange tree ------------------------------------------------------------------------
DEFAULT_EXCHANGE_ROOT = "/srv/exchange"  # the policy's accounts.root unless it names another
ENDED_LINKS = "ended-links"  # in the tree: uploads of ended link accounts, held for staff
CONTACT_SHEETS = "contact-sheets"  # in the tree: the upload notices' contact sheets, for staff
PACS_RETRIEVE = "pacs-retrieve"  # in the tree, root's: a study from PACS waits here until packaged
IMPORTED = "imported"  # in the tree: uploads imported into PACS (exchange import), held for staff

# -- configuration the deploy installs (root's, read by the tools) ---------------------------
CONFIG_DIR = "/etc/imaging-exchange"
POLICY = f"{CONFIG_DIR}/policies.yaml"  # what the tools, the purge and the web page obey
SITE = f"{CONFIG_DIR}/site.yaml"  # names, contacts, transports and their credentials: root only
PARTNERS = f"{CONFIG_DIR}/partners.yaml"  # partner contacts: root only
PORTAL_CONFIG = f"{CONFIG_DIR}/portal.yaml"
PORTAL_LOGO = f"{CONFIG_DIR}/portal-logo"  # the site's logo (PNG or JPEG), which the web page serves
LOG_SOCKETS_DIR = f"{CONFIG_DIR}/log-sockets"  # one rsyslog input per chroot (its /dev/log)
SOURCE_BANS_OFF = f"{CONFIG_DIR}/source-bans-off"  # root's marker: bans are off by host data
TLS_DIR = "/etc/ssl/imaging-exchange"
TLS_CERTIFICATE = f"{TLS_DIR}/portal.crt"
TLS_CERTIFICATE_KEY = f"{TLS_DIR}/portal.key"

# -- the tools --------------------------------------------------------------------------------
TOOLS_PREFIX = "/opt/imaging-exchange"
TOOLS_VENV = f"{TOOLS_PREFIX}/venv"
TOOLS_WHEELS = f"{TOOLS_PREFIX}/wheels"
EXCHANGE = "/usr/local/bin/exchange"  # the one command staff may sudo
AUDIT_READ = f"{EXCHANGE} audit-read"  # the one command auditors may sudo
STAFF_SUDOERS = "/etc/sudoers.d/imaging-exchange-staff"
AUDITOR_SUDOERS = "/etc/sudoers.d/imaging-exchange-auditor"
PURGE_CRON = "/etc/cron.d/imaging-exchange-purge"

# -- the tools' state: root only --------------------------------------------------------------
STATE_DIR = "/var/lib/imaging-exchange"  # the web page's group may pass (0710) to the token index
LINK_RECORDS = "links"  # in STATE_DIR: one record per link account
LINK_TOKENS = "link-tokens"  # in STATE_DIR: token hash -> account, readable by the web page
LINK_TOKENS_DIR = f"{STATE_DIR}/{LINK_TOKENS}"
LINK_RECORDS_DIR = f"{STATE_DIR}/{LINK_RECORDS}"
EXPIRY_NOTICES = "expiry-notices"  # in STATE_DIR: which password-expiry notices went out
UPLOAD_NOTICES = "upload-notices"  # in STATE_DIR: which uploads staff were told about
DELIVERY_NOTICES = "delivery-notices"  # in STATE_DIR: which delivery notices and reminders went out
DEPLOY_STATE_DIR = "/var/lib/imaging-exchange-deploy"
APPLY_PENDING_DIR = f"{DEPLOY_STATE_DIR}/apply-pending"  # changes written but not yet applied
OUTBOX_DIR = "/var/spool/imaging-exchange/outbox"  # the outbox transport's default folder

# The tools' locks: root only (0700), so no other account can take, hold or redirect them.
TOOL_RUN_DIR = "/run/imaging-exchange"
PURGE_LOCK = "purge.lock"  # in TOOL_RUN_DIR
ACCOUNT_LOCK = "accounts.lock"  # in TOOL_RUN_DIR
PACS_RETRIEVE_LOCK = "pacs-retrieve.lock"  # in TOOL_RUN_DIR: one retrieve at a time (one retrieve port)
PACS_IMPORT_LOCK = "pacs-import.lock"  # in TOOL_RUN_DIR: one import into PACS at a time (none sent twice)
TRAIL_LOCK = "trail.lock"  # in TOOL_RUN_DIR: one writer of the access trail at a time

# -- the access trail (exchange.trail): root only, kept for years, never under the purge ------
TRAIL_DIR = "/var/lib/imaging-exchange-trail"  # 0700: YYYY-MM.jsonl (append-only), ended months .jsonl.gz
TRAIL_INDEX = "index.sqlite"  # in TRAIL_DIR: the index beside the chained files, rebuilt from them if lost

# -- logs -------------------------------------------------------------------------------------
# The one way into the audit log: rsyslog's socket here stamps every record with the sender's
# uid, which the kernel vouches for. Root, and the web page's service group, may reach it.
AUDIT_SOCKET_DIR = "/run/imaging-exchange-audit"
AUDIT_SOCKET = f"{AUDIT_SOCKET_DIR}/log"
LOG_DIR = "/var/log/imaging-exchange"
AUDIT_LOG = f"{LOG_DIR}/audit.log"
SFTP_LOG = f"{LOG_DIR}/sftp.log"  # internal-sftp, every line stamped account=<name> uid=<sender's>
LOGINS_LOG = f"{LOG_DIR}/logins.log"  # sshd's accepted logins: account, address, port, key or password
RSYSLOG_CONF = "/etc/rsyslog.d/30-imaging-exchange.conf"
LOGROTATE_CONF = "/etc/logrotate.d/imaging-exchange"

# systemd-tmpfiles makes the run folders at every boot (/run is empty then).
TOOLS_TMPFILES = "/etc/tmpfiles.d/imaging-exchange.conf"
AUDIT_TMPFILES = "/etc/tmpfiles.d/imaging-exchange-audit.conf"

# -- the web page -----------------------------------------------------------------------------
PORTAL_SERVICE = "imaging-exchange-portal"
PORTAL_UNIT = f"/etc/systemd/system/{PORTAL_SERVICE}.service"
PORTAL_RUNTIME_DIR = PORTAL_SERVICE  # systemd's RuntimeDirectory=, under /run
PORTAL_SOCKET = f"/run/{PORTAL_RUNTIME_DIR}/portal.sock"
NGINX_SITE = "/etc/nginx/sites-available/imaging-exchange"
NGINX_ENABLED = "/etc/nginx/sites-enabled/imaging-exchange"

# -- SSH --------------------------------------------------------------------------------------
SSHD_CONFIG = "/etc/ssh/sshd_config"
SSH_HOST_KEYS = {"ed25519": "/etc/ssh/ssh_host_ed25519_key", "rsa": "/etc/ssh/ssh_host_rsa_key"}  # the only two
AUTHORIZED_KEYS_DIR = "/etc/ssh/authorized_keys"  # root-owned: a partner cannot change its own keys
NOLOGIN = "/usr/sbin/nologin"  # the shell of every SFTP account

# -- passwords --------------------------------------------------------------------------------
# Not Debian's /run/faillock: a lockout survives a reboot. `faillock` itself does not read
# faillock.conf on Debian 12, so it must always be called with `--dir FAILLOCK_DIR`.
FAILLOCK_DIR = "/var/lib/faillock"

# -- names ------------------------------------------------------------------------------------
UNIX_NAME = r"^[a-z_][a-z0-9_-]{0,31}$"  # what Debian's useradd accepts, and what we look up
PARTNER_NAME = r"^[a-z][a-z0-9-]{1,30}[a-z0-9]$"
LINK_ACCOUNT_PREFIX = "link-"  # partner names may not start with it
LINK_ID_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # read out on the phone without look-alikes
LINK_ID_LENGTH = 8
LINK_ACCOUNT_NAME = rf"^{LINK_ACCOUNT_PREFIX}[{LINK_ID_ALPHABET}]{{{LINK_ID_LENGTH}}}$"
AUDIT_TAG = "imaging-exchange"  # the syslog tag of every audit record
