"""Explorers for the course: one call in a notebook shows one (a FigureWidget live, a static slider headless).

Each explorer lives in its own module and is imported on first use.
"""
from __future__ import annotations

import importlib

from ...experiments.grid import log_grid, nearest, snap
from ._base import Explorer
from .controls import alpha_slider

_EXPORTS = {
    "ConditioningExplorer": "conditioning",   # 01: GD on a 2-D quadratic, κ, 2/λ_max
    "DeformationExplorer": "deformation",     # 02: spectra, function preserved, σ₁(H) vs α
    "RaceExplorer": "race",                   # 03: optimizers vs α
    "AttackerExplorer": "attacker",           # 04: defender vs attacker
    "PrecisionExplorer": "precision",         # 05: vanishing updates in float32/bf16
}

__all__ = ["Explorer", "alpha_slider", "log_grid", "nearest", "snap", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
