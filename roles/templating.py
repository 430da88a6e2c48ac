"""Render templates/ with jinja2. Roles and tests render through here, so what the
tests check is exactly what the deploy writes."""

from functools import cache
from io import StringIO

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from roles import REPO

TEMPLATES = REPO / "templates"


@cache
def _environment() -> Environment:
    # StrictUndefined: a missing variable is an error, never an empty string in a config file.
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


def render(name: str, **context) -> str:
    return _environment().get_template(name).render(**context)


def rendered(name: str, **context) -> StringIO:
    """A rendered template as a file object for pyinfra's files.put."""
    return StringIO(render(name, **context))
