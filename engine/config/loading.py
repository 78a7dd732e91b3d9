"""Reading a YAML config against a schema, dotted command-line overrides, and writing the resolved config.

The schema of each task is its own (``engine/tasks/<task>/schema.py``); :mod:`engine.tasks.registry` picks it
by the config's ``task`` and calls :func:`config_from_containers` here. An unknown key or a value of the
wrong type stops with the file, the dotted key and (for typos) the closest valid key. Modules never import
the config: builders read it and pass plain arguments.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from models.errors import ConfigError


def read_yaml(path: str) -> Any:
    """The YAML file at ``path`` as an OmegaConf container; ConfigError naming the file when it is missing or
    not YAML."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path} (give the path of a YAML file, e.g. one under configs/)")
    try:
        return OmegaConf.load(path)
    except Exception as err:  # yaml errors come in several types
        raise ConfigError(f"{path}: not valid YAML: {err}") from err


def parse_overrides(overrides) -> Any:
    """Dotted ``key.sub=value`` strings as an OmegaConf container."""
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"overrides must look like key.sub=value; got {bad}")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot parse overrides {list(overrides)}: {err}") from None


def config_from_containers(schema: type, sources: list[tuple[str, Any]],
                           check_ranges: Callable[[Any], list[str]] = lambda cfg: []) -> Any:
    """Merge ``sources`` (``(name, container)`` pairs, later ones win) into the dataclass ``schema`` and return
    the instance. ``check_ranges(cfg)`` lists values out of range; any stops with one ConfigError naming the
    sources and every such value."""
    merged = OmegaConf.structured(schema)
    for source, container in sources:
        try:
            merged = OmegaConf.merge(merged, container)
        except OmegaConfBaseException as err:
            raise ConfigError(_explain(err, source, merged)) from None
    try:
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(_explain(err, "config", merged)) from None
    problems = check_ranges(cfg)
    if problems:
        where = " / ".join(s for s, _ in sources)
        raise ConfigError(f"{where}: {len(problems)} value{'s' if len(problems) > 1 else ''} out of range: "
                          + "; ".join(problems))
    return cfg


def config_to_dict(cfg: Any) -> dict:
    """Plain nested dict (str/int/float/bool/None/list) of a config: checkpoint- and JSON-safe."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def config_to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: Any, path: str) -> None:
    """The resolved config as YAML at ``path``, written to a temporary file and renamed."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(config_to_yaml(cfg))
    os.replace(tmp, path)


def _explain(err: OmegaConfBaseException, source: str, schema: Any) -> str:
    full_key = getattr(err, "full_key", None) or ""
    message = str(err).split("\n")[0]
    if isinstance(err, ConfigKeyError) and full_key:
        parent_key, _, key = full_key.rpartition(".")
        parent = OmegaConf.select(schema, parent_key) if parent_key else schema
        valid = list(parent.keys()) if parent is not None and OmegaConf.is_dict(parent) else []
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f"; did you mean {'.'.join(filter(None, [parent_key, close[0]]))!r}?" if close else ""
        return (f"{source}: unknown key {full_key!r}{hint} (valid keys"
                f"{' in ' + parent_key if parent_key else ''}: {', '.join(valid)})")
    if full_key:
        return f"{source}: {full_key}: {message}"
    return f"{source}: {message}"
