"""The course's experiments: sweeps that answer its questions, each returning a frozen result.

One idea per module. Explorers (``specdef_lite.course.widgets``), exercise checkers and notebooks only read
these results; ``plots`` draws them as static figures. The unit of every "is the attacker slowed?"
comparison is the attacker's best response (``best_response``, ``slowdown``).

| module | idea |
|---|---|
| ``best_response`` | η* = argmin_η T(τ; η) over a self-extending grid; ``slowdown`` (the core, model-agnostic) |
| ``tuning`` | ``best_response`` on the toy path (over ``training.train``), ``lr_grid``, ``tracking_grid`` |
| ``sweep`` | ``lr_sweep`` (a fixed grid), ``race`` (several optimizers once) |
| ``first_look`` | the lock keeps f, and costs GD's best response steps and λ_max ∝ α² (notebook 00) |
| ``kappa`` | steps to τ against κ on a quadratic (notebook 01) |
| ``descent`` | the iterates θ_t of GD / Adam / Newton on a 2-D quadratic (01's explorer) |
| ``deformation`` | spectrum, function and σ₁(∇²ℒ) against α (notebook 02) |
| ``families`` | the eigenvalues a lock throws out (k·m, ∝ α²) and pulls in (k·n, ∝ 1/α²) (notebook 02) |
| ``race`` | every optimizer's best response against every lock (notebook 03) |
| ``attack`` | locked vs fused vs injected, each at its best response (notebook 04) |
| ``bill`` | the parameters injection adds, counted (notebook 04) |
| ``low_precision`` | the attack trained in float32 / bfloat16 (notebook 05) |
| ``lora_attack`` | LoRA adapters on W̃, on C, on both or on the fused layer, each at its best response |
| ``slope``, ``grid`` | the log–log slope; log grids of α |
| ``plots``, ``text`` | static figures of these results; numbers as the prose writes them |
"""
from __future__ import annotations

import importlib

from .best_response import BestResponse, Outcome, Slowdown, search, slowdown

_EXPORTS = {
    "best_response": "tuning", "outcome": "tuning", "lr_grid": "tuning", "around": "tuning",
    "tracking_grid": "tuning", "LABELS": "tuning",
    "Sweep": "sweep", "Race": "sweep", "lr_sweep": "sweep", "race": "sweep",
    "KappaSweep": "kappa", "steps_vs_kappa": "kappa", "gd_rate": "kappa", "gd_theory_steps": "kappa",
    "best_fixed_step_steps": "kappa",
    "Path": "descent", "descent_path": "descent", "quadratic_arrays": "descent",
    "DeformationSweep": "deformation", "DeformationPoint": "deformation", "deformation_sweep": "deformation",
    "SpectrumFamilies": "families", "spectrum_families": "families", "pulled_curvature": "families",
    "RaceTable": "race", "race_table": "race",
    "AttackTable": "attack", "attack_table": "attack",
    "ParameterBill": "bill", "parameter_bill": "bill", "FirstLook": "first_look", "first_look": "first_look",
    "PrecisionRun": "low_precision", "precision_attack": "low_precision", "AttackerLrs": "low_precision",
    "attacker_lrs": "low_precision", "vanishing_at": "low_precision", "param_names": "low_precision",
    "LoraAttacks": "lora_attack", "LoraRun": "lora_attack", "lora_attacks": "lora_attack",
    "loglog_slope": "slope", "log_grid": "grid", "nearest": "grid", "snap": "grid",
}

__all__ = ["Outcome", "BestResponse", "search", "Slowdown", "slowdown", "plots", "text", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    if name in ("plots", "text"):
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
