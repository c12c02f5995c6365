"""Layer 3, the attacker's training: optimizers, the training loop, the toy tasks, finite precision.

| module | idea |
|---|---|
| ``optimizers`` | ``make_optimizer``: SGD, Adam, saddle-free Newton, Sophia-H, Muon+Adam |
| ``training`` | ``train`` → ``Trace`` (losses, divergence, steps to τ) |
| ``problems`` | the toy tasks (quadratic, regression, teacher–student) and the ``Task`` they share |
| ``precision`` | whether an update survives rounding of α-sized weights (float32, bfloat16) |
"""
