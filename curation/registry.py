"""Registration by config class: steps and readers are found from the class of their recipe model, never by name."""

from __future__ import annotations

from typing import Any


def register_by_config(registry: dict[type[Any], Any], cls: type[Any]) -> type[Any] | None:
    """Record ``cls`` under the ``config`` it declares itself (inherited ones do not count); the config, or None.
    A config implemented by two classes is a bug, caught when the second class is defined."""
    config = cls.__dict__.get("config")
    if config is None:
        return None
    if config in registry:
        raise TypeError(f"{config.__name__} is implemented twice: {registry[config].__name__}, {cls.__name__}")
    registry[config] = cls
    return config
