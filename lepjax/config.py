"""Config files and command-line overrides.

A config file is a Python file with `get_config()` returning an `ml_collections.ConfigDict`.
Commands load one with `--config=configs/x.py` and override any key with
`--config.section.key=value`. Overrides are checked: an unknown key or a value of the wrong type
is an error that names the key and the closest valid keys. The resolved config is written as JSON
(`resolved_config.json`) next to a command's outputs.

This is the bottom layer: it imports no other lepjax module. Each section's defaults live beside
the function that reads it (e.g. `lepjax.models.model_section`, `lepjax.parallel.mesh_section`).
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import os
from collections.abc import Sequence
from typing import Any

from ml_collections import ConfigDict

from lepjax import files

RESOLVED_CONFIG = "resolved_config.json"


class ConfigError(ValueError):
    """A config file or override that cannot be applied."""


def check_choice(key: str, value: Any, choices: Sequence[Any]) -> None:
    """Refuse `value` for the dotted config `key` unless it is one of `choices`; the message
    names the closest valid values."""
    if value in choices:
        return
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=3, cutoff=0.4)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(f"config key {key!r} = {value!r} is not valid{hint} "
                      f"(valid values: {', '.join(str(c) for c in choices)})")


def load_file(path: str) -> ConfigDict:
    """Import a config file and call its `get_config()`."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"lepjax_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path!r} defines no get_config()")
    cfg = module.get_config()
    if not isinstance(cfg, ConfigDict):
        raise ConfigError(f"{path}: get_config() returned {type(cfg).__name__}, not a ConfigDict")
    return cfg


def _keys(cfg: ConfigDict, prefix: str = "") -> list[str]:
    out = []
    for k, v in cfg.items():
        out.append(prefix + k)
        if isinstance(v, ConfigDict):
            out.extend(_keys(v, prefix + k + "."))
    return out


def _unknown(root: ConfigDict, dotted: str, what: str = "key") -> ConfigError:
    close = difflib.get_close_matches(dotted, _keys(root), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    parent, _, _ = dotted.rpartition(".")
    node = root
    for part in parent.split(".") if parent else []:
        node = node[part]
    siblings = ", ".join(sorted(node.keys()))
    where = f"in section {parent!r}" if parent else "at top level"
    return ConfigError(f"unknown config {what} {dotted!r}{hint} (valid keys {where}: {siblings})")


_BOOLS = {"true": True, "1": True, "yes": True, "on": True,
          "false": False, "0": False, "no": False, "off": False}


def _literal(raw: str) -> Any:
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def _coerce(dotted: str, raw: Any, current: Any, field_type: type | None) -> Any:
    """Parse a command-line string to the type the key already holds."""
    if not isinstance(raw, str):
        return raw
    kind = field_type or (type(current) if current is not None else None)
    try:
        if kind is bool:
            return _BOOLS[raw.strip().lower()]
        if kind in (int, float, str):
            return kind(raw)
        if kind in (tuple, list):
            value = _literal(raw)
            if isinstance(value, str):
                value = [p.strip() for p in value.split(",") if p.strip()]
            elif not isinstance(value, (tuple, list)):
                value = [value]
            if current and type(current[0]) in (int, float, str):
                value = [type(current[0])(x) for x in value]
            return kind(value)
    except (ValueError, TypeError, KeyError):
        raise ConfigError(f"config key {dotted!r} expects a {kind.__name__}, got {raw!r}") from None
    return _literal(raw)


def override(cfg: ConfigDict, dotted: str, raw: Any) -> None:
    """Set `cfg.<dotted> = raw`, parsing strings to the existing value's type."""
    parts = dotted.split(".")
    node = cfg
    for i, part in enumerate(parts[:-1]):
        if part not in node or not isinstance(node[part], ConfigDict):
            raise _unknown(cfg, ".".join(parts[: i + 1]), "section")
        node = node[part]
    leaf = parts[-1]
    if leaf not in node:
        raise _unknown(cfg, dotted)
    current = node[leaf]
    if isinstance(current, ConfigDict):
        raise ConfigError(f"config key {dotted!r} is a section; set its keys "
                          f"({', '.join(_keys(current, dotted + '.'))})")
    field_type = None
    try:
        field_type = node.get_ref(leaf).get_type()
    except (AttributeError, KeyError, TypeError, ValueError):
        pass
    value = _coerce(dotted, raw, current, field_type)
    with node.unlocked():
        try:
            node[leaf] = value
        except TypeError as e:
            raise ConfigError(f"config key {dotted!r}: {e}") from None


def load(path: str | None, overrides: Sequence[tuple[str, Any]] = (),
         default: ConfigDict | None = None) -> ConfigDict:
    """Load `path` (or use `default`), apply (dotted_key, value) overrides, lock the result."""
    if path:
        cfg = load_file(path)
    elif default is not None:
        cfg = default
    else:
        raise ConfigError("no config given: pass --config=configs/<name>.py")
    for key, value in overrides:
        override(cfg, key, value)
    cfg.lock()
    return cfg


def split_overrides(argv: Sequence[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """Separate `--config.a.b=value` / `--config.a.b value` arguments from the rest."""
    overrides, rest = [], []
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("--config."):
            body = a[len("--config."):]
            if "=" in body:
                key, value = body.split("=", 1)
            elif i + 1 < len(args):
                key, value = body, args[i + 1]
                i += 1
            else:
                raise ConfigError(f"override {a} has no value")
            overrides.append((key, value))
        else:
            rest.append(a)
        i += 1
    return overrides, rest


def to_dict(cfg: ConfigDict) -> dict[str, Any]:
    """A JSON-serialisable dict of the config."""
    return json.loads(cfg.to_json_best_effort(sort_keys=True))


def _process_index() -> int:
    """This process's index in a multi-process JAX job (0 alone), without starting a backend."""
    import sys

    if "jax" not in sys.modules:
        return 0
    from jax._src import distributed

    return int(distributed.global_state.process_id or 0)


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def write_resolved(cfg: ConfigDict | dict, directory: str, name: str = RESOLVED_CONFIG) -> str:
    """Write the resolved config as JSON into `directory` (process 0 only); returns the path.

    A config already recorded there is never replaced: a launch with a different config is
    kept beside it as `resolved_config.<n>.json` (n = 1, 2, ...); the same config is not written
    twice. A record that a library wrote at the start of its run (no "command") is completed
    with the command line when the CLI records the same config after it.
    """
    data = to_dict(cfg) if isinstance(cfg, ConfigDict) else cfg
    blob = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False)
    bare = {k: v for k, v in data.items() if k != "command"}
    stem, ext = os.path.splitext(name)
    path = os.path.join(directory, name)
    n = 0
    while os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if text == blob:
            return path
        if "command" in data and _json_or_none(text) == bare:  # the same launch, with its command
            break
        n += 1
        path = os.path.join(directory, f"{stem}.{n}{ext}")
    if _process_index() == 0:
        os.makedirs(directory, exist_ok=True)
        with files.atomic_file(path) as f:
            f.write(blob)
    return path
