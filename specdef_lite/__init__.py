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
    "SpecDefLinear": "lock.deform", "specdef": "lock.deform", "scale_only": "lock.deform",
    "deformed_layers": "lock.deform", "spectrum_ratio": "lock.deform", "linear_weight": "lock.deform",
    # the attacker (PAPER.md, "The limit")
    "fuse": "lock.attacks", "inject": "lock.attacks", "InjectedLinear": "lock.attacks",
    "param_overhead": "lock.attacks", "ParamOverhead": "lock.attacks", "detect": "lock.attacks", "detect_scores": "lock.attacks",
    "DetectScores": "lock.attacks", "WeightScore": "lock.attacks",
    # curvature
    "as_operator": "curvature.operators", "HessianOperator": "curvature.operators", "LinearOperator": "curvature.operators",
    "hessian": "curvature.products", "hvp": "curvature.products", "loss_fn_of": "curvature.products", "select_params": "curvature.products",
    "flatten_params": "curvature.products", "unflatten_like": "curvature.products", "cross_block": "curvature.theorem3",
    "top_eigenvalues": "curvature.eigen", "lanczos": "curvature.eigen", "power_iteration": "curvature.eigen", "EigenResult": "curvature.eigen",
    "theorem3_bound": "curvature.theorem3", "theorem3_factors": "curvature.theorem3", "Theorem3Result": "curvature.theorem3",
    "hessian_trace": "curvature.trace", "TraceResult": "curvature.trace", "hutchinson": "curvature.trace", "hutch_plus_plus": "curvature.trace",
    "spectral_density": "curvature.density", "SpectralDensity": "curvature.density", "slq": "curvature.density",
    "spectrum_sweep": "curvature.spectrum", "SpectrumSweep": "curvature.spectrum", "spectrum_figure": "course.widgets.spectrum",
    # optimisation
    "make_optimizer": "optim.optimizers", "Newton": "optim.newton", "Sophia": "optim.sophia",
    "train": "optim.training", "Trace": "optim.training",
    # experiments: the attacker's best response is the unit of every "is it slowed?" comparison
    "best_response": "experiments.tuning", "slowdown": "experiments.best_response",
    "BestResponse": "experiments.best_response", "Slowdown": "experiments.best_response",
    "lr_sweep": "experiments.sweep", "Sweep": "experiments.sweep", "race": "experiments.sweep",
}

# modules users reach as sl.<name> (where each lives now: ARCHITECTURE.md)
_MODULES = {
    "problems": "optim.problems", "precision": "optim.precision", "deform": "lock.deform", "attacks": "lock.attacks",
    "llm": "llm", "widgets": "course.widgets", "exercises": "course.exercises", "display": "common.display",
    "experiments": "experiments",
}

__all__ = sorted(_EXPORTS) + ["problems", "llm", "widgets", "precision", "exercises", "display", "experiments"]


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{_MODULES[name]}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
