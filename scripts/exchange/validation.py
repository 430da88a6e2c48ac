"""One wording for validation errors: `<where>: <key.path>: <what is wrong>`, a line each."""

from pathlib import Path

import yaml
from pydantic import ValidationError

# libyaml's loader where PyYAML has it (its wheels do): several times faster for every tool run.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str):
    """yaml.safe_load, with the C parser when there is one."""
    return yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader


def read_yaml_file(path: Path, what: str, error: type[Exception], missing: str | None = None):
    """The parsed YAML of `path`, or `error` with a message naming the file and what it holds.
    `missing`: the message for a file that is not there, if that needs its own advice."""
    try:
        return load_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if missing:
            raise error(f"{path}: {missing}") from None
        raise error(f"{path}: cannot read {what}: No such file or directory") from None
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not valid YAML: {exc}") from None


def describe(where: str, error: ValidationError, unknown: str = "unknown key", prefix: str = "") -> str:
    """`prefix` is put before every key path, for a model that sits inside a larger file."""
    lines = []
    for item in error.errors(include_url=False):
        key = prefix + ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            message = unknown
        elif item["type"] == "missing":
            message = "required key is missing"
        else:
            message = item["msg"].removeprefix("Value error, ")
            if not isinstance(item.get("input"), (dict, list, type(None))):
                message += f" (got {item['input']!r})"
        lines.append(f"{where}: {key}: {message}")
    return "\n".join(lines)
