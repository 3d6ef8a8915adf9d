"""Structured-config plumbing shared by ``train.py`` and ``train_ag.py``.

A Hydra config is merged into a dataclass schema so that a wrong type (``optim.lr=abc``) or a
missing value fails at start-up with a ``ValueError`` naming the key, and checkpoints store the
resolved config as plain Python containers (no DictConfig objects).
"""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf, SCMode

__all__ = ["merge_into_schema", "to_plain_dict"]


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
