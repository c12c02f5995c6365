"""specdef-lite: SpecDef (spectral deformation against fine-tuning), its curvature, and the attacks on it.

Public names are imported lazily from their modules, so ``import specdef_lite`` stays fast and the
language-model path (transformers) is only imported when used. See README.md for the course map.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it (one idea per module)
_EXPORTS = {
    # the deformation (PAPER.md, "SpecDef")
    "SpecDefLinear": "deform", "specdef": "deform", "scale_only": "deform",
    "deformed_layers": "deform", "spectrum_ratio": "deform", "linear_weight": "deform",
    # the attacker (PAPER.md, "The limit")
    "fuse": "attacks", "inject": "attacks", "InjectedLinear": "attacks",
    "param_overhead": "attacks", "ParamOverhead": "attacks", "detect": "attacks", "detect_scores": "attacks",
    # curvature
    "as_operator": "operators", "HessianOperator": "operators", "LinearOperator": "operators",
    "hessian": "curvature", "hvp": "curvature", "loss_fn_of": "curvature", "select_params": "curvature",
    "flatten_params": "curvature", "unflatten_like": "curvature", "cross_block": "theorem3",
    "top_eigenvalues": "eigen", "lanczos": "eigen", "power_iteration": "eigen", "EigenResult": "eigen",
    "theorem3_bound": "theorem3", "theorem3_factors": "theorem3", "Theorem3Result": "theorem3",
    "hessian_trace": "trace", "TraceResult": "trace", "hutchinson": "trace", "hutch_plus_plus": "trace",
    "spectral_density": "density", "SpectralDensity": "density", "slq": "density",
    "spectrum_sweep": "spectrum", "SpectrumSweep": "spectrum", "spectrum_figure": "widgets.spectrum",
    # optimisation
    "make_optimizer": "optim", "Newton": "optim", "Sophia": "optim",
    "train": "training", "Trace": "training",
    # experiments: the attacker's best response is the unit of every "is it slowed?" comparison
    "best_response": "experiments.tuning", "slowdown": "experiments.best_response",
    "BestResponse": "experiments.best_response", "Slowdown": "experiments.best_response",
    "lr_sweep": "experiments.sweep", "Sweep": "experiments.sweep", "race": "experiments.sweep",
}

__all__ = sorted(_EXPORTS) + ["problems", "llm", "widgets", "precision", "exercises", "display", "experiments"]


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    if name in {"problems", "llm", "widgets", "precision", "exercises", "deform", "attacks", "display", "experiments"}:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
