"""The course's exercise checkers, one section per notebook; each recomputes its truth with the library."""
from __future__ import annotations

from .feedback import Feedback, as_number, compare, exercise, unanswered


def _near(a: float, b: float, rtol: float = 0.02) -> bool:
    """|a − b| ≤ rtol·|b|: the answer is recognisably b (a known wrong turn)."""
    return abs(a - b) <= rtol * abs(b)


# --- 01_conditioning ------------------------------------------------------------------------------------


@exercise("01.stable_step", "Gradient descent on a quadratic whose Hessian has largest eigenvalue λ_max: "
                            "what is the largest learning rate η that still converges?")
def _stable_step(answer, lam_max: float = 50.0, eigenvalues=None) -> Feedback:
    """η_max = 2/λ_max, with λ_max recomputed by Lanczos on the quadratic's Hessian.

    Example:
        >>> bool(_stable_step(0.04, lam_max=50.0)), bool(_stable_step(0.02, lam_max=50.0))
        (True, False)
    """
    if (missing := unanswered("01.stable_step", answer)) is not None:
        return missing
    from ..curvature.eigen import top_eigenvalues
    from ..lock.guards import real_number
    from ..optim.problems import quadratic
    if eigenvalues is None:  # λ_max is the question's: a positive finite number, the top of the quadratic
        lam_max = real_number("lam_max", lam_max)
        lam = [min(1.0, lam_max), lam_max]
    else:
        lam = [float(x) for x in eigenvalues]
    _, task = quadratic(lam, seed=0)
    top = float(top_eigenvalues(task.A, which="LA").values[0])  # λ_max of ∇²ℒ = A
    expected = 2.0 / top
    a = as_number(answer)
    if a <= 0:
        wrong = ("A learning rate must be positive: η = 0 never moves, and a negative η steps uphill, multiplying "
                 f"the stiffest direction by |1 − ηλ_max| = {abs(1 - a * top):.3g} ≥ 1 every step (it grows: GD "
                 "diverges)." if a < 0 else "η = 0 never moves: |1 − ηλ_max| = 1, so nothing shrinks.")
    elif _near(a, 1.0 / top):
        wrong = (f"{a:.3g} = 1/λ_max is the descent-lemma step (it guarantees the loss falls every step). "
                 f"GD still converges up to twice that: |1 − ηλ_max| < 1 ⟺ η < 2/λ_max.")
    elif a > expected:
        wrong = (f"At η = {a:.3g} the stiffest direction is multiplied by |1 − ηλ_max| = {abs(1 - a * top):.3g} > 1 "
                 f"every step, so it grows and GD diverges.")
    else:
        wrong = (f"That step is stable (|1 − ηλ_max| = {abs(1 - a * top):.3g} < 1) but not the largest: "
                 f"the edge is where 1 − ηλ_max = −1.")
    right = (f"1 − ηλ_max = −1 at η = 2/λ_max = {expected:.4g}: beyond it the stiffest direction flips sign and "
             f"grows each step.")
    return compare("01.stable_step", answer, expected, rtol=0.02, right=right, wrong=wrong)


@exercise("01.kappa_steps", "GD at η = 1/λ_max reaches the target τ in N steps on a quadratic with condition "
                            "number κ. How many times as many steps does it need when κ is multiplied by `factor`?")
def _kappa_steps(answer, kappa: float = 10.0, factor: float = 10.0, tau: float = 1e-8, seed: int = 0) -> Feedback:
    """The ratio T(factor·κ)/T(κ), measured by running GD (``steps_vs_kappa``) on both quadratics."""
    if (missing := unanswered("01.kappa_steps", answer)) is not None:
        return missing
    from ..experiments.kappa import steps_vs_kappa
    hi = float(kappa) * float(factor)
    sw = steps_vs_kappa([kappa, hi], tau=tau, max_steps=int(60 * hi + 1000), seed=seed, adam_lrs=None, newton=False,
                        gd_best=False)
    s = sw.steps["GD"]
    expected = float(s[1] / s[0])
    a = as_number(answer)
    if _near(a, float(factor) ** 0.5, 0.1):
        wrong = ("√κ is what momentum (heavy ball, Nesterov) achieves; plain GD pays the full κ: the flat "
                 "direction shrinks by only 1 − 1/κ per step.")
    elif _near(a, float(factor) ** 2, 0.1):
        wrong = "That is κ² — too pessimistic: the flat direction shrinks by 1 − 1/κ per step, so steps ∝ κ."
    else:
        wrong = (f"At η = 1/λ_max the flat direction shrinks by 1 − 1/κ per step, so T ≈ (κ/2)·ln(ℒ_flat/τ) grows "
                 f"linearly in κ: measured {int(s[0])} → {int(s[1])} steps.")
    right = f"Linear in κ: measured {int(s[0])} → {int(s[1])} steps (×{expected:.2f})."
    return compare("01.kappa_steps", answer, expected, rtol=0.15, right=right, wrong=wrong)


# --- 02_spectral_deformation ----------------------------------------------------------------------------

@exercise("02.sigma_after", "A layer's weight W has top singular value σ₁(W). SpecDef deforms it with strength α "
                            "(k = 1). What is σ₁(W̃), the top singular value of the deformed weight?")
def _sigma_after(answer, sigma1: float = 2.0, alpha: float = 100.0, k: int = 1, sigma=None) -> Feedback:
    """σ₁(W̃), recomputed by locking W = diag(σ) with ``specdef`` and taking the SVD of its W̃.

    ``sigma`` (optional) lists all singular values of W; by default σ = (σ₁, σ₁/2, σ₁/4).

    Example:
        >>> bool(_sigma_after(200.0, sigma1=2.0, alpha=100.0)), bool(_sigma_after(2.0, sigma1=2.0, alpha=100.0))
        (True, False)
    """
    if (missing := unanswered("02.sigma_after", answer)) is not None:
        return missing
    import torch

    from ..lock.deform import specdef
    s = [float(sigma1), sigma1 / 2, sigma1 / 4] if sigma is None else [float(x) for x in sigma]
    layer = torch.nn.Linear(len(s), len(s), bias=False, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.diag(torch.tensor(s, dtype=torch.float64)))  # (n, n), singular values s
    locked = specdef(layer, float(alpha), k=int(k))
    expected = float(torch.linalg.svdvals(locked.W_tilde.detach())[0])
    s1, a = max(s), as_number(answer)
    if _near(a, s1):
        wrong = ("σ₁(W) is what the pair computes, C·W̃ = W. The stored weight W̃ alone carries the factor α; "
                 "C undoes it afterwards.")
    elif _near(a, alpha ** 2 * s1):
        wrong = "α² is how the *curvature* grows; the weight's singular value is multiplied by α once."
    elif _near(a, s1 / alpha):
        wrong = "1/α is C's factor along U_k (the compensation), not W̃'s."
    else:
        wrong = f"W̃ = U·diag(α,…,α,1,…,1)·Σ·Vᵀ multiplies the top-{k} singular values by α."
    right = f"σ₁(W̃) = α·σ₁(W) = {expected:.6g}; C = I − (1 − 1/α)U_kU_kᵀ brings C·W̃ back to W."
    return compare("02.sigma_after", answer, expected, rtol=1e-3, right=right, wrong=wrong)


@exercise("02.hessian_growth", "On the toy network, α is multiplied by 10 (say from 10³ to 10⁴). By what factor "
                               "does σ₁(∇²ℒ), the top curvature of the attacker's loss, grow?")
def _hessian_growth(answer, alpha: float = 1e3, k: int = 1, seed: int = 0) -> Feedback:
    """σ₁(∇²ℒ)(10α) / σ₁(∇²ℒ)(α), measured by Lanczos on the locked ``teacher_student`` network."""
    if (missing := unanswered("02.hessian_growth", answer)) is not None:
        return missing
    from ..experiments.deformation import deformation_sweep
    from ..optim.problems import teacher_student
    sw = deformation_sweep(teacher_student(seed=seed), [float(alpha), 10.0 * alpha], k=k)
    expected = float(sw.sigma1_H[1] / sw.sigma1_H[0])
    a = as_number(answer)
    if _near(a, 10.0, 0.1):
        wrong = ("×10 is how Theorem 3's *lower bound* grows (linear in α). The measured curvature grows like α²: "
                 "the curvature with respect to C scales with ‖W̃h‖², and W̃h is α times longer along U_k.")
    elif _near(a, 1.0, 0.1):
        wrong = ("The function does not change, but its parameterisation does: the loss is much steeper in the new "
                 "parameters (W̃, C).")
    else:
        wrong = "Look at the slope of σ₁(∇²ℒ) against α on log-log axes in the explorer."
    right = (f"Measured ×{expected:.4g} (σ₁ = {sw.sigma1_H[0]:.3g} → {sw.sigma1_H[1]:.3g}): σ₁(∇²ℒ) ∝ α², so the "
             f"largest stable GD step falls 100-fold.")
    return compare("02.hessian_growth", answer, expected, rtol=0.1, right=right, wrong=wrong)


# --- 03_optimizer_race ----------------------------------------------------------------------------------


@exercise("03.max_stable_lr", "On the toy network locked at strength α (α ≥ 10), gradient descent is stable up to "
                              "η_max. Multiply α by 10: by what factor does η_max change? (η_max(10α) / η_max(α))")
def _max_stable_lr(answer, alpha: float = 100.0, width: int = 8, k: int = 1, seed: int = 0) -> Feedback:
    """η_max = 2/σ₁(∇²ℒ): the factor is σ₁(H at α)/σ₁(H at 10α), both measured by Lanczos on the locked toy.

    Example:
        >>> bool(_max_stable_lr(0.01)), bool(_max_stable_lr(0.1))
        (True, False)
    """
    if (missing := unanswered("03.max_stable_lr", answer)) is not None:
        return missing
    from ..curvature.eigen import top_eigenvalues
    from ..curvature.products import loss_fn_of
    from ..lock.deform import specdef
    from ..optim.problems import teacher_student
    toy = teacher_student(width=width, seed=seed)
    sigma = []
    for a in (float(alpha), 10.0 * float(alpha)):
        loss_fn, theta = loss_fn_of(specdef(toy.released, a, k=k), toy.task)
        sigma.append(abs(float(top_eigenvalues(loss_fn, theta).values[0])))
    expected = sigma[0] / sigma[1]
    a = as_number(answer)
    if a >= 1:
        wrong = (f"A stiffer loss needs a *smaller* step: σ₁(∇²ℒ) went from {sigma[0]:.3g} to {sigma[1]:.3g}, so "
                 f"η_max = 2/σ₁ shrinks. Answer with a factor below 1.")
    elif abs(a - 0.1) <= 0.03:
        wrong = ("0.1 would be a 1/α law — that is how Adam's best η falls. GD is capped by 2/σ₁(∇²ℒ), and σ₁ "
                 f"grows like α² here: it went from {sigma[0]:.3g} to {sigma[1]:.3g}.")
    else:
        wrong = f"σ₁(∇²ℒ) went from {sigma[0]:.3g} to {sigma[1]:.3g} when α went ×10; η_max = 2/σ₁ follows it."
    right = (f"σ₁(∇²ℒ) grew from {sigma[0]:.3g} to {sigma[1]:.3g} (×{sigma[1] / sigma[0]:.3g} ≈ 10²): the curvature "
             f"along C's stiff column grows like ‖W̃x‖² ∝ α², so η_max = 2/σ₁ falls like 1/α².")
    return compare("03.max_stable_lr", answer, expected, rtol=0.25, right=right, wrong=wrong)


# --- 04_attacker_view -----------------------------------------------------------------------------------

@exercise("04.param_bill", "An attacker injects a trainable layer, initialised to the identity, after each of the "
                           "L locked layers of a network whose layers are d×d. How many parameters does that add?")
def _param_bill(answer, L: int = 4, d: int = 64, k: int = 1) -> Feedback:
    """The bill counted on real models: ``param_overhead(lock(f), inject(lock(f))).added`` for an MLP with L
    square d×d layers, all locked (``experiments.bill.parameter_bill``).

    Example:
        >>> bool(_param_bill(4 * 64 ** 2)), bool(_param_bill(64 ** 2))
        (True, False)
    """
    if (missing := unanswered("04.param_bill", answer)) is not None:
        return missing
    from ..experiments.bill import parameter_bill
    L, d = int(L), int(d)
    expected = int(parameter_bill([d], [L], k=k).added[0, 0])
    a = as_number(answer)
    if a == L * d:
        wrong = "Each injected layer is a full d×d matrix D (it must be able to express any change (I + E)), not a vector of d."
    elif a == d * d and L > 1:
        wrong = f"That is one injected layer; the attacker needs one after each of the L = {L} locked layers."
    elif a == 2 * expected:
        wrong = "The attacker adds only D (d×d) per layer; the C matrices were already added by the defender."
    else:
        wrong = "Count one d×d matrix D per locked layer (no bias: the layer's own bias stays)."
    right = (f"L·d² = {L}·{d}² = {expected}: one d×d matrix per locked layer — as many parameters as the locked "
             f"layers already hold, so the bill grows linearly with the model.")
    return compare("04.param_bill", answer, float(expected), rtol=0.0, right=right, wrong=wrong)


# --- 05_precision ---------------------------------------------------------------------------------------

@exercise("05.smallest_update", "A weight stored in `dtype` equals 1.0. What is the smallest update Δ > 0 for which "
                                "fl(1 + Δ) ≠ 1, i.e. the update survives rounding?")
def _smallest_update(answer, dtype: str = "bfloat16") -> Feedback:
    """min{Δ > 0 : fl(1 + fl(Δ)) ≠ 1}: the smallest number of the format above u = 2⁻ᵖ (``precision.smallest_update``).

    Exactly u is a tie (1 + u lies halfway between 1 and 1 + ε) and rounds to even, back to 1; so is any real
    Δ that rounds to u in the format. Right: an answer that, stored in the format, is the first number above u,
    u(1 + 2u) — the smallest update that survives (so 0.003937 is right for bfloat16's 0.00393677…).

    Example:
        >>> [bool(_smallest_update(a)) for a in (2 ** -8 + 2 ** -15, 0.003937, 2 ** -8, 2 ** -8 * 1.001, 2 ** -7)]
        [True, True, False, False, False]
    """
    if (missing := unanswered("05.smallest_update", answer)) is not None:
        return missing
    import torch
    from ..optim.precision import as_dtype, smallest_update, vanishes
    dt = as_dtype(dtype)
    threshold = smallest_update(dtype, 1.0)                 # the smallest real Δ that survives: just above u + u²
    eps = float(torch.finfo(dt).eps)
    u = eps / 2
    expected = u * (1 + eps)                                # the first number of the format above u
    a = as_number(answer)
    one = torch.ones((), dtype=torch.float64)
    survives = a > 0 and not bool(vanishes(one, torch.tensor(float(a), dtype=torch.float64), dt))
    ok = survives and float(torch.tensor(float(a), dtype=torch.float64).to(dt)) == expected
    p = round(-torch.log2(torch.tensor(u)).item())
    right = (f"The first {dtype} number above u = 2^-{p}: u(1 + 2u) = 2^-{p} + 2^-{2 * p - 1} ≈ {expected:.6g}. Exactly u is a "
             f"tie — 1 + u lies halfway between 1 and the next number 1 + ε — and rounds to even, back to 1; a real Δ is "
             f"rounded to {dtype} first, so every Δ above {threshold:.6g} becomes this number and survives.")
    if a <= 0:
        wrong = (f"The question asks for an update Δ > 0; 1 + {a:.3g} {'is 1 itself' if a == 0 else 'moves down, not up'}."
                 f" The smallest positive update that survives is just above half the gap ε = {eps:.3g} from 1 to the "
                 f"next {dtype} number.")
    elif abs(a - eps) <= 0.05 * eps:
        wrong = (f"ε = {eps:.3g} is the gap from 1 to the next {dtype} number. Rounding goes to the *nearest* "
                 f"number, so anything past half the gap already rounds up.")
    elif not survives and float(torch.tensor(a, dtype=torch.float64).to(dt)) == u:
        wrong = (f"{a:.6g} is stored in {dtype} as u = ε/2 = 2^-{p}, and 1 + u lies exactly halfway between 1 and "
                 f"1 + ε: a tie, which rounds to even — back to 1. The answer is the next {dtype} number above u.")
    elif not survives:
        wrong = f"1 + {a:.3g} is nearer to 1 than to the next {dtype} number, 1 + ε = 1 + {eps:.3g}, so it rounds back to 1."
    else:
        wrong = f"Smaller updates survive too: the threshold is half the gap ε = {eps:.3g} from 1 to the next number."
    return Feedback("05.smallest_update", ok, answer, float(f"{expected:.6g}"), right if ok else wrong)

