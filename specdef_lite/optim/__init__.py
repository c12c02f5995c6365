"""Layer 3, the attacker's training: optimizers, the training loop, the toy tasks, finite precision.

| module | idea |
|---|---|
| ``optimizers`` | ``make_optimizer``: the registry of SGD, Adam, Newton, Sophia, Muon+Adam |
| ``contract`` | what they share: a valid lr, ``step(closure)`` with the loss's graph |
| ``newton`` | saddle-free damped Newton, exact or by conjugate gradient on HVPs; ``NewtonInfo`` |
| ``sophia`` | Sophia-H: clipped diagonal-Hessian momentum, h from Hutchinson's u ⊙ (Hu) |
| ``muon`` | ``MuonAdam``: Muon on the matrices, Adam on the rest |
| ``training`` | ``train`` → ``Trace`` (losses, divergence, steps to τ) |
| ``problems`` | the toy tasks (quadratic, regression, teacher–student) and the ``Task`` they share |
| ``precision`` | whether an update survives rounding of α-sized weights (float32, bfloat16) |
"""
