"""The effective configuration as data and as TOML, secrets and URL credentials masked."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tradeguard.config._rules import MASK, Rule, mask_url
from tradeguard.config._schema import Config, _rules, _sections


def _shown(rule: Rule, value: Any) -> Any:
    if rule.secret and value:
        return MASK
    if rule.url and value:
        return mask_url(value)
    if isinstance(value, dict):
        return dict(value)
    return list(value) if isinstance(value, tuple) else value


def masked(cfg: Config) -> dict[str, dict[str, Any]]:
    """The effective configuration as plain data, secrets and URL credentials masked."""
    out: dict[str, dict[str, Any]] = {}
    for section, cls in _sections().items():
        values = getattr(cfg, section)
        out[section] = {name: _shown(rule, getattr(values, name))
                        for name, rule in _rules(cls).items()}
    return out


def render_toml(data: Mapping[str, Mapping[str, Any]]) -> str:
    """Render plain config data as TOML text (for check-config)."""
    lines: list[str] = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        for key_name, value in values.items():
            lines.append(f"{key_name} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_toml_value(str(k))} = {_toml_value(v)}"
                               for k, v in value.items()) + "}"
    return '"' + "".join(_toml_char(c) for c in str(value)) + '"'


def _toml_char(char: str) -> str:
    """A character as TOML allows it in a basic string (no raw controls or DEL)."""
    if char in '"\\':
        return "\\" + char
    if (char < " " and char != "\t") or char == "\x7f":
        return f"\\u{ord(char):04x}"
    return char
