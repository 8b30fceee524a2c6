"""Distillation losses, one per file, each registered under its ``--distill`` name.

Every module of this package is imported here, so a new method is one new file with a
``@register("name")`` class: no list to edit, no branch in the training loop.
"""
from __future__ import annotations

import importlib
import pkgutil

from helper.errors import ConfigError

from .base import Batch, BuildContext, Distiller, Outputs, refuse

DISTILLERS: dict = {}


def register(name: str):
    """Class decorator: make ``cls`` available as ``--distill name``."""
    def deco(cls):
        if name in DISTILLERS and DISTILLERS[name] is not cls:
            raise RuntimeError(f"--distill {name} registered twice: {DISTILLERS[name]} and {cls}")
        DISTILLERS[name] = cls
        cls.name = name
        return cls
    return deco


def get_distiller_class(name: str):
    try:
        return DISTILLERS[name]
    except KeyError:
        raise ConfigError(f"unknown --distill {name!r}; choose one of: {', '.join(sorted(DISTILLERS))}") from None


def build_distiller(name: str, ctx: BuildContext) -> Distiller:
    return get_distiller_class(name)(ctx)


for _m in pkgutil.iter_modules(__path__):
    if _m.name not in ("base",):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["Batch", "BuildContext", "Distiller", "Outputs", "DISTILLERS", "register", "build_distiller",
           "get_distiller_class", "refuse"]
