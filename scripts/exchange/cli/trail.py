"""`exchange trail ...`: the access trail (NEN 7513)."""

from __future__ import annotations

from exchange.cli import base
from exchange.cli.trail_ingest import ingest_command
from exchange.cli.trail_verify import verify_command

trail_app = base.ExchangeApp(help="The access trail: who saw which patient's images, when, from where.")
trail_app.command("verify")(verify_command)
trail_app.command("ingest")(ingest_command)
