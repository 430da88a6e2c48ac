"""What every command shares: the app class with the one error handler, and how a command
gets root, the policy, the site data and the message templates, or a clear exit."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from exchange import untrusted
from exchange.errors import ExchangeError
from exchange.policy import Policy, PolicyError, load_policy
from exchange.site import Site

if TYPE_CHECKING:
    from exchange.messaging.messages import Messages


class ExchangeApp(typer.Typer):
    """Typer whose commands share one handler: an ExchangeError anywhere in a command ends it
    with its message, escaped, and its exit status; never a traceback."""

    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)

        def decorator(function: Callable) -> Callable:
            @functools.wraps(function)
            def run(*call_args, **call_kwargs):
                try:
                    return function(*call_args, **call_kwargs)
                except ExchangeError as error:
                    raise fail(error, error.status) from None

            register(run)
            return function

        return decorator


def policy_or_exit(path: Path | None = None, status: int = 2):
    """The policy, or exit with `status` and one line per problem. A file named on the command
    line is read with the rights of whoever runs `sudo exchange`."""
    from exchange.invoker import invoker

    try:
        return load_policy(path, invoker() if path is not None else None)
    except PolicyError as error:
        typer.echo(untrusted.printable_lines(error), err=True)
        raise typer.Exit(status) from None


def fail(message: object, status: int = 1) -> typer.Exit:
    # Messages quote what others named, escaped where it went in; no control character passes here either.
    typer.echo(untrusted.printable_lines(message), err=True)
    return typer.Exit(status)


def require_root(command: str) -> None:
    if os.geteuid() != 0:
        raise fail(f"exchange {command} must run as root: sudo exchange {command}", 2)


@dataclass(frozen=True)
class Tools:
    policy: Policy
    site: Site
    messages: Messages


def tools(command: str) -> Tools:
    """Root, the policy, the site data and the message templates, or a clear exit."""
    from exchange.invoker import invoker
    from exchange.messaging.messages import Messages
    from exchange.site import load_site

    require_root(command)
    policy = policy_or_exit().policy
    site = load_site(show_values=invoker() is None)  # root-only: its values are not staff's to read
    return Tools(policy, site, Messages(site))


ShowPassword = Annotated[
    bool,
    typer.Option("--show-password", help="Also print the password, once, to read it out on the phone. Never stored."),
]


def show_password(password: str) -> None:
    """What --show-password prints, once."""
    typer.echo(f"  password {password}   (read it out once; it is not stored anywhere)")


Quiet = Annotated[bool, typer.Option("--quiet", help="Print nothing but errors (for cron).")]
