"""One wording for validation errors: `<where>: <key.path>: <what is wrong>`, a line each.

A message quotes a value from the file only where whoever reads the message may read the file:
a root-only file (site.yaml holds the transports' credentials) read for someone behind sudo is
described by its keys alone. YAML errors never quote the file's lines, only where they are.
"""

from pathlib import Path

import yaml
from pydantic import ValidationError

from exchange.invoker import Invoker, read_named

# libyaml's loader where PyYAML has it (its wheels do): several times faster for every tool run.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str):
    """yaml.safe_load, with the C parser when there is one."""
    return yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader


def yaml_problem(exc: yaml.YAMLError) -> str:
    """Where and what, never the offending line itself."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return f"{where}not valid YAML: {getattr(exc, 'problem', None) or 'cannot be parsed'}"


def read_yaml_file(
    path: Path, what: str, error: type[Exception], missing: str | None = None, who: Invoker | None = None
):
    """The parsed YAML of `path` (read with `who`'s rights), or `error` with a message naming the
    file and what it holds. `missing`: the message for a file that is not there, if that needs
    its own advice."""
    try:
        return load_yaml(read_named(path, who).decode("utf-8"))
    except FileNotFoundError:
        if missing:
            raise error(f"{path}: {missing}") from None
        raise error(f"{path}: cannot read {what}: No such file or directory") from None
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: {yaml_problem(exc)}") from None


def describe(
    where: str, error: ValidationError, unknown: str = "unknown key", prefix: str = "", show_values: bool = True
) -> str:
    """`prefix` is put before every key path, for a model that sits inside a larger file;
    `show_values`: whether the reader of the message may see the file's values."""
    lines = []
    for item in error.errors(include_url=False):
        key = prefix + ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            message = unknown
        elif item["type"] == "missing":
            message = "required key is missing"
        else:
            message = item["msg"].removeprefix("Value error, ")
            if show_values and not isinstance(item.get("input"), (dict, list, type(None))):
                message += f" (got {item['input']!r})"
        lines.append(f"{where}: {key}: {message}")
    return "\n".join(lines)
