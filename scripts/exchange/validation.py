"""One wording for validation errors: `<where>: <key.path>: <what is wrong>`, a line each."""

import yaml
from pydantic import ValidationError

# libyaml's loader where PyYAML has it (its wheels do): several times faster for every tool run.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str):
    """yaml.safe_load, with the C parser when there is one."""
    return yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader


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
