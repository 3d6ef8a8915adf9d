"""Structured-config plumbing shared by every entry point (``train.py``, ``train_ag.py``, ``infer.py``).

A Hydra config is merged into a dataclass schema so that a wrong type (``optim.lr=abc``) or a
missing value fails at start-up with a ``ValueError`` naming the key, and checkpoints store the
resolved config as plain Python containers (no DictConfig objects).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf, SCMode

__all__ = ["merge_into_schema", "to_plain_dict", "check_cli_overrides", "config_groups"]


def _if_null(value: Any, default: Any) -> Any:
    return default if value in (None, "") else value


# ``${if_null:${run_dir},outputs/...}`` in the trainers' ``hydra.run.dir``: Hydra's run dir *is*
# ``run_dir`` when one is given, so no second, empty dated folder appears.
OmegaConf.register_new_resolver("if_null", _if_null, replace=True)


def merge_into_schema(schema: type, cfg: Any, what: str) -> DictConfig:
    """Merge ``cfg`` (DictConfig or dict; its ``hydra`` node dropped) into the dataclass ``schema``.

    Args:
        schema: the dataclass describing every key and its type.
        cfg: the composed config.
        what: how to name this config in messages (``"EDTN config"``).
    Returns:
        a typed DictConfig.
    Raises:
        ValueError: naming the first key whose value does not fit, or every key left without one.
    """
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    cfg = {k: v for k, v in dict(cfg).items() if k != "hydra"}
    try:
        typed = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        missing = sorted(OmegaConf.missing_keys(typed))
    except Exception as exc:  # omegaconf's ValidationError / ConfigKeyError carry full_key
        key = getattr(exc, "full_key", None)
        raise ValueError(f"invalid {what} value at key {key!r}: {exc}") from exc
    if missing:
        raise ValueError(f"{what} keys without a value: {', '.join(missing)}")
    return typed


def to_plain_dict(cfg: DictConfig) -> dict:
    """Resolved config as plain Python containers (what goes into checkpoints)."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True,
                                  structured_config_mode=SCMode.DICT)


def _schema_keys(node: Any, prefix: str = "") -> list[str]:
    """Every dotted key path of a structured config (``smoothing.method``, ...)."""
    keys = []
    for key in node.keys():
        path = f"{prefix}{key}"
        keys.append(path)
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none():
            keys += _schema_keys(child, f"{path}.")
    return keys


def check_cli_overrides(schema: type, args: Sequence[str], groups: Sequence[str] = (),
                        what: str = "config") -> None:
    """Check ``key=value`` command-line overrides against a dataclass schema *before* Hydra runs.

    Hydra answers an unknown key with "To append to your config use +key=value", which invites a
    typo (``mouth_gan=2``) into the config. This check names the unknown key and the closest real
    ones instead, and type-checks each value (``batch_size=1.5`` for an int, ``fps=abc`` for a
    float) with the key's name in the message.

    Args:
        schema: the dataclass of the primary config.
        args: the command-line arguments (``sys.argv[1:]``); flags (``--cfg job``, ``-m``) and
            Hydra's own keys (``hydra.*``) are left to Hydra, as are ``+``/``~``/``++`` overrides,
            sweeps and interpolations.
        groups: names of config groups (``experiment``, ``model`` ...): their values are options,
            checked by Hydra.
        what: how to name the config in messages.
    Raises:
        ValueError: one line naming the first bad key.
    """
    import difflib

    from hydra.core.override_parser.overrides_parser import OverridesParser

    candidates = [a for a in args if "=" in a and not a.startswith("-")]
    if not candidates:
        return
    try:
        overrides = OverridesParser.create().parse_overrides(candidates)
    except Exception:  # noqa: BLE001 - a syntax error: let Hydra report it in its own words
        return
    typed = OmegaConf.structured(schema)
    known = _schema_keys(typed)
    for override in overrides:
        key = override.key_or_group
        if (key.startswith("hydra.") or key == "hydra" or "/" in key or key in groups or override.is_add()
                or override.is_delete() or override.is_force_add() or override.is_sweep_override()):
            continue
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            raise ValueError(f"unknown {what} key {key!r}{hint}; see the keys with --cfg job")
        value = override.value()
        if isinstance(value, str) and "${" in value:
            continue
        try:
            OmegaConf.update(typed, key, value, merge=True)
        except Exception as exc:  # omegaconf ValidationError: the value does not fit the type
            reason = str(exc).splitlines()[0]
            raise ValueError(f"invalid {what} value {key}={override.input_line.split('=', 1)[1]}: "
                             f"{reason}") from None


def config_groups(config_dir: str | os.PathLike) -> list[str]:
    """Names of the config groups of a Hydra config folder (its sub-folders)."""
    return sorted(p.name for p in Path(config_dir).iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
