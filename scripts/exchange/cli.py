"""`exchange`: the on-host tools, one command with subcommands."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from exchange import __version__
from exchange.policy import HOST_POLICY_PATH, POLICY_ENV, PolicyError, load_policy

app = typer.Typer(
    help="imaging-exchange: secure exchange of imaging studies over SFTP and the web.",
    no_args_is_help=True,
    add_completion=False,
)
policy_app = typer.Typer(help="Inspect the exchange policy.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")

PolicyOption = Annotated[
    Optional[Path],
    typer.Argument(help=f"Policy file (default: ${POLICY_ENV}, else {HOST_POLICY_PATH}).", show_default=False),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"exchange {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False,
) -> None:
    pass


@policy_app.command("check")
def policy_check(path: PolicyOption = None) -> None:
    """Validate a policy file; exit 1 with one line per problem."""
    try:
        loaded = load_policy(path)
    except PolicyError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1)
    typer.echo(f"{loaded.path}: valid (sha256 {loaded.sha256})")


@policy_app.command("show")
def policy_show(path: PolicyOption = None) -> None:
    """Print the effective policy, defaults included, as JSON."""
    try:
        loaded = load_policy(path)
    except PolicyError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1)
    typer.echo(loaded.policy.model_dump_json(indent=2))
