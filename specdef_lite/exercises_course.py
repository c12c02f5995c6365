"""The course's exercise checkers, one section per notebook; each recomputes its truth with the library."""
from __future__ import annotations

from .exercises import Feedback, compare, exercise  # noqa: F401

# --- 01_conditioning ------------------------------------------------------------------------------------

# --- 02_spectral_deformation ----------------------------------------------------------------------------

# --- 03_optimizer_race ----------------------------------------------------------------------------------

# --- 04_attacker_view -----------------------------------------------------------------------------------

# --- 05_precision ---------------------------------------------------------------------------------------
