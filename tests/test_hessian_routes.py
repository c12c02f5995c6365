"""The dense Hessian and every HVP route on normalisation and attention layers, against finite differences.

``torch.func.hessian`` (jacfwd over jacrev) returned an asymmetric, wrong H on Linear → LayerNorm → Linear
in torch 2.13 (‖H − Hᵀ‖/‖H‖ ≈ 0.06–0.12), so the dense route is checked here on every architecture the
course meets: symmetric to 1e-12 in float64, and equal column by column to central differences of the
gradient, a route that needs no second derivative at all.
"""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from specdef_lite.curvature.products import flatten_params, hessian, hvp, loss_fn_of
from specdef_lite.curvature.eigen import top_eigenvalues
from specdef_lite.curvature.operators import HessianOperator

F64 = torch.float64


class RMSNorm(nn.Module):
    """y = w ⊙ x / √(mean(x²) + ε), written out (Llama's form)."""

    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d, dtype=F64))

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


class AttentionBlock(nn.Module):
    """x (B, T, d) → LayerNorm → causal 2-head self-attention (eager softmax) → residual → RMSNorm → Linear."""

    def __init__(self, d=4, heads=2, out=3):
        super().__init__()
        self.heads = heads
        self.ln = nn.LayerNorm(d, dtype=F64)
        self.qkv = nn.Linear(d, 3 * d, dtype=F64)
        self.proj = nn.Linear(d, d, dtype=F64)
        self.rms = nn.RMSNorm(d, dtype=F64)
        self.head = nn.Linear(d, out, dtype=F64)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln(x)).split(d, dim=-1)  # (b, t, 3d) -> 3 × (b, t, d)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))  # (b, h, t, d/h)
        att = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)  # (b, h, t, t)
        att = att.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)  # (b, h, t, d/h) -> (b, t, d)
        return self.head(self.rms(x + self.proj(y)))


class Task:
    def __init__(self, X, Y, loss="mse"):
        self.X, self.Y, self.kind = X, Y, loss

    def loss(self, f):
        out = f(self.X)
        if self.kind == "mse_loss":  # torch's own, mean reduction: forward-over-reverse fails on it
            return F.mse_loss(out, self.Y)
        return (out - self.Y).pow(2).mean()


def perturbed(net, gen, scale=0.3):
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return net.eval()


def case(name, gen):
    if name == "layernorm":
        net = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 2)).double()
        X = torch.randn(10, 4, generator=gen, dtype=F64)
    elif name == "rmsnorm":
        net = nn.Sequential(nn.Linear(4, 6), RMSNorm(6), nn.Tanh(), nn.Linear(6, 2)).double()
        X = torch.randn(10, 4, generator=gen, dtype=F64)
    elif name == "attention":
        net = AttentionBlock()
        X = torch.randn(3, 5, 4, generator=gen, dtype=F64)
    net = perturbed(net, gen)
    with torch.no_grad():
        Y = torch.randn(net(X).shape, generator=gen, dtype=F64)
    return loss_fn_of(net, Task(X, Y))


def fd_hessian(loss_fn, theta):
    """Column j = (∇ℒ(θ + h e_j) − ∇ℒ(θ − h e_j)) / 2h: gradients only, no second derivative."""
    n = flatten_params(theta).numel()
    return torch.stack([hvp(loss_fn, theta, e, method="finite-difference") for e in torch.eye(n, dtype=F64)], 1)


ARCH = ["layernorm", "rmsnorm", "attention"]


@pytest.mark.parametrize("name", ARCH)
def test_dense_hessian_symmetric_and_equal_to_finite_differences(gen, name):
    loss_fn, theta = case(name, gen)
    H = hessian(loss_fn, theta)
    scale = float(H.norm())
    assert scale > 0
    assert float((H - H.T).norm()) <= 1e-12 * scale, "a Hessian is symmetric"
    H_fd = fd_hessian(loss_fn, theta)
    assert float((H - H_fd).norm()) <= 1e-7 * scale  # central differences in float64: ~1e-9 relative


@pytest.mark.parametrize("name", ARCH)
def test_every_hvp_route_agrees_with_the_dense_hessian(gen, name):
    loss_fn, theta = case(name, gen)
    H = hessian(loss_fn, theta)
    v = torch.randn(H.shape[0], generator=gen, dtype=F64)
    for method in ["auto", "double-backward", "forward-over-reverse"]:
        torch.testing.assert_close(hvp(loss_fn, theta, v, method=method), H @ v, rtol=1e-11, atol=1e-12)
    op = HessianOperator(loss_fn, theta)  # the kept gradient graph, many products
    for _ in range(2):
        torch.testing.assert_close(op.matvec(v), H @ v, rtol=1e-11, atol=1e-12)
    # central differences with step h: error ≈ h²|∇⁴ℒ[v,v,v]|/6 + ε|∇ℒ|/h, ~ε^{2/3} relative at h = ε^{1/3} where the
    # higher derivatives are O(1); the attention block's softmax makes them larger: measured ≤ 1e-8 relative over 9
    # weight draws × 3 architectures. Judged on the whole vector (an entry near 0 can be 2e-6 off), bound 3× that.
    fd, exact = hvp(loss_fn, theta, v, method="finite-difference"), H @ v
    assert float((fd - exact).norm()) <= 3e-8 * float(exact.norm())


def test_tiny_gpt2_dense_hessian_matches_finite_differences(gen):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=1, n_embd=4, n_head=2, vocab_size=7, n_positions=5, bos_token_id=0,
                                  eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                  attn_implementation="eager")
    torch.manual_seed(0)  # transformers initialises from the global RNG; weights are then overwritten
    model = perturbed(transformers.GPT2LMHeadModel(cfg).double(), gen, scale=0.5)
    ids = torch.randint(0, 7, (2, 5), generator=gen)

    class LM:  # next-token cross-entropy in float64 (transformers' own `labels=` loss upcasts to float32)
        def loss(self, f):
            logits = f(input_ids=ids).logits[:, :-1]  # (2, 4, vocab)
            return F.cross_entropy(logits.reshape(-1, 7), ids[:, 1:].reshape(-1))

    loss_fn, theta = loss_fn_of(model, LM(), params="transformer.h.0.*")  # the block: LayerNorms + attention + MLP
    H = hessian(loss_fn, theta)
    scale = float(H.norm())
    assert float((H - H.T).norm()) <= 1e-12 * scale
    assert float((H - fd_hessian(loss_fn, theta)).norm()) <= 1e-7 * scale


def test_non_scalar_loss_is_refused_everywhere(gen):
    net = nn.Linear(3, 1).double()
    X = torch.randn(16, 3, generator=gen, dtype=F64)

    class PerSample:
        def loss(self, f):
            return (f(X) - 1.0) ** 2  # (16, 1): one loss per sample

    loss_fn, theta = loss_fn_of(net, PerSample())
    v = torch.ones(4, dtype=F64)
    for call in (lambda: hessian(loss_fn, theta), lambda: HessianOperator(loss_fn, theta),
                 lambda: top_eigenvalues(loss_fn, theta)) + tuple(
            (lambda m=m: hvp(loss_fn, theta, v, method=m)) for m in ["auto", "double-backward",
                                                                      "forward-over-reverse", "finite-difference"]):
        with pytest.raises(ValueError, match=r"single number.*shape \(16, 1\).*\.mean\(\)"):
            call()


def test_auto_route_survives_mse_loss_where_forward_over_reverse_fails(gen):
    net = perturbed(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double(), gen)
    X, Y = torch.randn(8, 3, generator=gen, dtype=F64), torch.randn(8, 2, generator=gen, dtype=F64)
    loss_fn, theta = loss_fn_of(net, Task(X, Y, loss="mse_loss"))
    v = torch.randn(flatten_params(theta).numel(), generator=gen, dtype=F64)
    H = hessian(loss_fn, theta)
    with pytest.raises(RuntimeError, match="method='auto' falls back"):
        hvp(loss_fn, theta, v, method="forward-over-reverse")
    torch.testing.assert_close(hvp(loss_fn, theta, v), H @ v, rtol=1e-11, atol=1e-12)
    r = top_eigenvalues(loss_fn, theta, tol=1e-10)
    assert r.converged and r.values.item() == pytest.approx(float(torch.linalg.eigvalsh(H).abs().max()), rel=1e-9)


class Cube(torch.autograd.Function):
    """x³ with a backward that cannot be differentiated again (and no forward-mode rule)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 3

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * x * x * g


def test_auto_route_falls_back_to_finite_differences_instead_of_returning_zeros():
    x = {"x": torch.tensor([0.7, -0.4, 1.1], dtype=F64)}
    loss_fn = lambda p: Cube.apply(p["x"]).sin().sum()  # noqa: E731  ℒ = Σ sin(xᵢ³)
    t = x["x"]
    exact = torch.diag(6 * t * torch.cos(t ** 3) - 9 * t ** 4 * torch.sin(t ** 3))  # d²/dx² sin(x³)
    v = torch.tensor([1.0, 2.0, -1.0], dtype=F64)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        hvp(loss_fn, x, v, method="double-backward")
    with pytest.warns(RuntimeWarning) as record:
        torch.testing.assert_close(hvp(loss_fn, x, v), exact @ v, rtol=1e-8, atol=1e-8)
    said = [str(w.message) for w in record]
    assert any("'double-backward' failed" in s and "falling back to 'forward-over-reverse'" in s for s in said)
    assert any("'forward-over-reverse' failed" in s and "falling back to 'finite-difference'" in s for s in said)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        op = HessianOperator(loss_fn, x)
        torch.testing.assert_close(op.matvec(v), exact @ v, rtol=1e-8, atol=1e-8)
    assert op.route == "finite-difference"


def test_a_broken_graph_is_not_reported_as_zero_curvature():
    x = {"x": torch.tensor([0.7, -0.4, 1.1], dtype=F64)}
    with pytest.raises(RuntimeError, match="graph is broken"):
        hessian(lambda p: (p["x"].detach() ** 2).sum(), x)  # ℒ changes with θ, autograd sees no path
    torch.testing.assert_close(hessian(lambda p: (3.0 * p["x"]).sum(), x), torch.zeros(3, 3, dtype=F64))  # truly linear
