"""Layer 1, the lock and its attacks: W = C·W̃ with W̃ = (I + (α−1)U_kU_kᵀ)W, and what an attacker does to it.

| module | idea |
|---|---|
| ``deform`` | ``specdef`` / ``scale_only``: replace a linear layer by C·W̃ (``SpecDefLinear``), exact in float64 |
| ``lowrank`` | the top-k singular subspace by block Krylov (the lock's only SVD) |
| ``targets`` | which modules can be locked faithfully (a plain ``nn.Linear`` / ``Conv1D`` in use) |
| ``guards`` | input checks and the forward-error estimate c·α·ε before a lock is built |
| ``attacks`` | ``fuse`` (W = C·W̃, exact), ``inject`` (a trainable D = I after each pair), the bill, ``detect`` |
| ``lora`` | LoRA adapters (peft) on W̃, on C, on both, or on the fused layer |
"""
