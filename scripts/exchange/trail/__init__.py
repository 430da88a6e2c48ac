"""The access trail (NEN 7513): who saw which patient's images, when, from where, kept for years.

The flow, one module each:
- record: one access record (event, time, account, acting person, access point, patients, outcome);
- events, logins, ingest: the audit log, the SFTP log and sshd's logins read from where the last
  run stopped, turned into records (a download of a package names the patients its
  package-made record, the manifest, names);
- chain, index, store: the records appended to one hash-chained, append-only file per month,
  indexed in SQLite beside it for the reports; verified, compressed after the month, kept for
  `audit.retention_years`;
- reports: `exchange trail patient|account|staff` as a table, JSON, CSV or HTML;
- delivery: whether a link's packages arrived, and the notices and reminders that follow.
"""
