"""Reading YAML: a file or a text to a `ProxyConfig`, problems located by YAML line.

`load_config(path)` reads a file and `parse_config_text(text)` parses what it read:
PyYAML's safe loader with YAML 1.2 booleans, a line index of every key path (so that
`schema`'s problems carry their line) and the duplicate keys, which PyYAML would
silently let the last one win.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import yaml

from wsproxy.config.model import ProxyConfig
from wsproxy.config.schema import parse_config
from wsproxy.config.walker import in_file_order, join
from wsproxy.errors import ConfigError, ConfigProblem

# Public functions ---------------------------------------------------------------------


def load_config(
    path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None
) -> ProxyConfig:
    """Read, parse and validate the YAML file at `path`.

    Args:
        path: the configuration file.
        env: the variables `${NAME}` refers to; by default the process environment.

    Raises:
        ConfigError: the file is missing or unreadable, is not YAML, or is not a valid
            configuration. Problems carry the YAML line where one is known.
    """
    return parse_config_text(read_config_text(path), env=env)


def read_config_text(path: str | os.PathLike[str]) -> str:
    """The text of the configuration file at `path`.

    Raises:
        ConfigError: the file is missing or unreadable, or not UTF-8 text.
    """
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([ConfigProblem("", f"can't read {os.fspath(path)}: {reason}")]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigProblem("", f"{os.fspath(path)} is not UTF-8 text")]) from exc


def parse_config_text(text: str, *, env: Mapping[str, str] | None = None) -> ProxyConfig:
    """Parse and validate a configuration written in YAML, as `load_config` does a file.

    Raises:
        ConfigError: the text is not YAML or not a valid configuration.
    """
    raw, lines, duplicates = _load_yaml(text)
    try:
        # An empty document is an empty mapping: the error then says what is required.
        config = parse_config({} if raw is None else raw, lines=lines, env=env)
    except ConfigError as exc:
        raise ConfigError(in_file_order([*duplicates, *exc.problems])) from None
    if duplicates:
        raise ConfigError(duplicates)
    return config


# YAML with line numbers -----------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: `compression: off` stays the string "off"."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _load_yaml(text: str) -> tuple[object, dict[str, int], list[ConfigProblem]]:
    """The document in `text`, the line of each key path, and its duplicate keys."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}, []
        lines: dict[str, int] = {}
        duplicates: list[ConfigProblem] = []
        _index_lines(node, "", lines, duplicates, set())
        return loader.construct_document(node), lines, duplicates
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = None if mark is None else mark.line + 1
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([ConfigProblem("", f"not valid YAML: {reason}", line)]) from exc
    finally:
        loader.dispose()


def _index_lines(
    node: yaml.Node,
    path: str,
    lines: dict[str, int],
    duplicates: list[ConfigProblem],
    seen: set[int],
) -> None:
    if id(node) in seen:  # an alias: indexed where its anchor is, and never twice
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for key_node, value_node in node.value:
            key_path, line = join(path, str(key_node.value)), key_node.start_mark.line + 1
            if key_path in keys:
                message = f"duplicate key (first on line {lines[key_path]})"
                duplicates.append(ConfigProblem(key_path, message, line))
            keys.add(key_path)
            lines[key_path] = line
            _index_lines(value_node, key_path, lines, duplicates, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[f"{path}[{i}]"] = item.start_mark.line + 1
            _index_lines(item, f"{path}[{i}]", lines, duplicates, seen)
