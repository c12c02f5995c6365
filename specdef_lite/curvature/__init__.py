"""Layer 2, the attacker's curvature: Hessian-vector products and what they reveal of ∇²ℒ.

| module | idea |
|---|---|
| ``products`` | ``hvp`` (three routes), the capped dense ``hessian``, flatten/unflatten of parameters |
| ``gradgraph`` | the gradient built once with its graph; each product one backward pass |
| ``operators`` | ``HessianOperator`` / ``LinearOperator``: H as a matrix-free operator |
| ``eigen`` | Lanczos with full reorthogonalisation (and restarts), power iteration |
| ``trace`` | tr(H) by Hutchinson and Hutch++ |
| ``density`` | the spectral density of H by stochastic Lanczos quadrature |
| ``spectrum`` | eigenvalues against α (a sweep over locks) |
| ``theorem3`` | the paper's lower bound on σ₁(∇²ℒ) from the cross block |
"""
