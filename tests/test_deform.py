"""SpecDef preserves the function exactly, scales the top-k spectrum by α, and rejects bad input."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from specdef_lite import SpecDefLinear, deformed_layers, scale_only, specdef, spectrum_ratio

F64 = torch.float64


def mlp(gen, sizes, bias=True, dtype=F64):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = nn.Linear(a, b, bias=bias, dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=gen, dtype=dtype) / math.sqrt(a))
            if bias:
                lin.bias.copy_(torch.randn(b, generator=gen, dtype=dtype) * 0.1)
        layers += [lin, nn.Tanh()] if i < len(sizes) - 2 else [lin]
    return nn.Sequential(*layers)


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("alpha", [1.0, 10.0, 1e3, 1e4])
@pytest.mark.parametrize("shape", [(5, 9), (9, 5), (7, 7)])  # m<n, m>n, m=n
@pytest.mark.parametrize("bias", [True, False])
def test_lock_preserves_function_float64(gen, alpha, shape, bias):
    n, m = shape
    net = mlp(gen, [n, m, 3], bias=bias)
    locked = specdef(net, alpha, k=2)
    x = torch.randn(64, n, generator=gen, dtype=F64)
    with torch.no_grad():
        assert rel(locked(x), net(x)) <= 1e-9
    for name in deformed_layers(locked):
        layer = locked.get_submodule(name)
        W = net.get_submodule(name).weight
        CW = layer.C.detach() @ layer.W_tilde.detach()
        assert rel(CW, W.detach()) <= 50 * alpha * 2.2e-16  # C·W̃ = W to float64 rounding (grows like α·ε)


@pytest.mark.parametrize("seed", range(5))
def test_random_shapes_and_spectrum(seed):
    g = torch.Generator().manual_seed(seed)
    m, n = (int(v) for v in torch.randint(2, 30, (2,), generator=g))
    k = int(torch.randint(1, min(m, n) + 1, (1,), generator=g))
    alpha = float(10 ** (4 * torch.rand(1, generator=g)))
    net = nn.Sequential(nn.Linear(n, m, dtype=F64))
    locked = specdef(net, alpha, k=k)
    ratio = spectrum_ratio(net, locked, "0")
    np.testing.assert_allclose(ratio[:k].numpy(), alpha, rtol=1e-9)  # σᵢ(W̃) = α σᵢ(W), i ≤ k
    np.testing.assert_allclose(ratio[k:].numpy(), 1.0, rtol=1e-9)
    x = torch.randn(32, n, generator=g, dtype=F64)
    with torch.no_grad():
        assert rel(locked(x), net(x)) <= 1e-9


def test_compensation_closed_form(gen):
    net = nn.Linear(6, 8, dtype=F64)
    alpha, k = 50.0, 3
    layer = specdef(net, alpha, k=k)
    C = layer.C.detach()
    U = torch.linalg.svd(net.weight.detach())[0][:, :k]
    expected = torch.eye(8, dtype=F64) - (1 - 1 / alpha) * U @ U.T
    torch.testing.assert_close(C, expected, rtol=0, atol=1e-13)
    s = torch.linalg.svdvals(C)
    np.testing.assert_allclose(sorted(s.numpy())[:k], 1 / alpha, rtol=1e-10)


def test_input_model_untouched_and_dtype_device_kept(gen):
    net = mlp(gen, [4, 6, 2], dtype=torch.float32)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    locked = specdef(net, 1e3, k=1)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(isinstance(net[i], nn.Linear) for i in (0, 2))
    for p in locked.parameters():
        assert p.dtype == torch.float32 and p.device == net[0].weight.device
    assert deformed_layers(locked) == ["0", "2"] and deformed_layers(net) == []


def test_targets_by_name_list_and_predicate(gen):
    net = mlp(gen, [4, 6, 6, 2])
    assert deformed_layers(specdef(net, 10.0, targets="2")) == ["2"]
    assert deformed_layers(specdef(net, 10.0, targets=["0", "4"])) == ["0", "4"]
    pred = specdef(net, 10.0, targets=lambda name, m: isinstance(m, nn.Linear) and m.out_features == 6)
    assert deformed_layers(pred) == ["0", "2"]
    nested = nn.Sequential(nn.Sequential(nn.Linear(3, 3, dtype=F64)), nn.Linear(3, 1, dtype=F64))
    assert deformed_layers(specdef(nested, 5.0, targets="0.0")) == ["0.0"]
    assert isinstance(specdef(nn.Linear(3, 2, dtype=F64), 2.0), SpecDefLinear)  # the model itself


def test_lowrank_method_is_exact_lock(gen):
    net = nn.Linear(120, 80, dtype=F64)
    locked = specdef(net, 1e4, k=4, method="lowrank")
    CW = locked.C.detach() @ locked.W_tilde.detach()
    assert rel(CW, net.weight.detach()) <= 1e-11  # exact for any orthonormal U_k
    ratio = spectrum_ratio(net, locked, "")
    # a flat Gaussian spectrum has tiny gaps, so a partial SVD lands within ~0.5 % of α (measured)
    np.testing.assert_allclose(ratio[:4].numpy(), 1e4, rtol=2e-2)


def test_float32_error_grows_like_alpha_eps(gen):
    """Measured law: float32 forward error ≈ c·α·ε with c ≈ 0.65 here; we assert 0.1 ≤ c ≤ 5 and slope ≈ 1."""
    eps = torch.finfo(torch.float32).eps
    net64 = nn.Linear(64, 48, dtype=F64)
    x = torch.randn(256, 64, generator=gen, dtype=F64)
    with torch.no_grad():
        ref = net64(x)
        net32 = nn.Linear(64, 48).float()
        net32.load_state_dict({k: v.float() for k, v in net64.state_dict().items()})
        ref = net32.double()(x)  # reference: the float32 weights, evaluated exactly
        net32 = net32.float()
        alphas = [1e2, 1e3, 1e4, 1e5, 1e6]
        errs = [rel(specdef(net32, a, k=4)(x.float()).double(), ref) for a in alphas]
        consts = [e / (a * eps) for e, a in zip(errs, alphas)]
        assert all(0.1 <= c <= 5 for c in consts), consts
        slope = np.polyfit(np.log10(alphas), np.log10(errs), 1)[0]
        assert 0.9 <= slope <= 1.1, slope
        # compute_dtype=float64 stores and computes the pair in float64: the α-dependence disappears
        err64 = rel(specdef(net32, 1e6, k=4, compute_dtype=F64)(x.float()).double(), ref)
        assert err64 <= 10 * eps


def test_scale_only_breaks_the_function(gen):
    net = mlp(gen, [5, 8, 3])
    x = torch.randn(64, 5, generator=gen, dtype=F64)
    with torch.no_grad():
        errs = [rel(scale_only(net, a, k=1)(x), net(x)) for a in (1.0, 10.0, 100.0, 1000.0)]
    assert errs[0] <= 1e-12
    assert errs[1] > 1e-2 and errs[1] < errs[2] < errs[3]  # error grows with α


@pytest.mark.parametrize("alpha,match", [(0.0, "alpha must be > 0"), (-1.0, "alpha must be > 0"),
                                         (float("inf"), "finite"), (float("nan"), "finite"),
                                         ("big", "positive finite number")])
def test_bad_alpha(gen, alpha, match):
    with pytest.raises(ValueError, match=match):
        specdef(mlp(gen, [3, 3]), alpha)


def test_bad_k_and_rank(gen):
    net = mlp(gen, [4, 6, 2])
    with pytest.raises(ValueError, match="k must be >= 1"):
        specdef(net, 10.0, k=0)
    with pytest.raises(ValueError, match="rank bound"):
        specdef(net, 10.0, k=3, targets="2")  # layer "2" is 2×6
    low = nn.Linear(5, 5, bias=False, dtype=F64)
    with torch.no_grad():
        low.weight.copy_(torch.outer(torch.arange(1.0, 6.0, dtype=F64), torch.ones(5, dtype=F64)))  # rank 1
    with pytest.raises(ValueError, match=r"numerical rank \(1\)"):
        specdef(low, 10.0, k=2)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        specdef(net, 10.0, k=1.5)


def test_bad_targets(gen):
    net = mlp(gen, [4, 6, 2])
    with pytest.raises(ValueError, match="'9' not found.*linear layers are: 0, 2"):
        specdef(net, 10.0, targets="9")
    with pytest.raises(ValueError, match="'1' is a Tanh, not a linear layer"):
        specdef(net, 10.0, targets=["1"])
    with pytest.raises(ValueError, match="already deformed"):
        specdef(specdef(net, 10.0, targets="0"), 10.0, targets="0")
    with pytest.raises(ValueError, match="no nn.Linear"):
        specdef(nn.Sequential(nn.Tanh()), 10.0)
    with pytest.raises(ValueError, match="predicate matched no module"):
        specdef(net, 10.0, targets=lambda n, m: False)
    with pytest.raises(ValueError, match="method must be"):
        specdef(net, 10.0, method="qr")


def test_non_finite_weights(gen):
    net = mlp(gen, [4, 6, 2])
    with torch.no_grad():
        net[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite weights"):
        specdef(net, 10.0, targets="0")


def test_deformed_layer_trains(gen):
    """W̃ and C are ordinary trainable weights of the released model."""
    locked = specdef(mlp(gen, [3, 4, 1]), 10.0)
    x = torch.randn(8, 3, generator=gen, dtype=F64)
    locked(x).sum().backward()
    layer = locked[0]
    assert layer.W_tilde.grad is not None and layer.C.grad is not None
    assert float(layer.alpha) == 10.0 and int(layer.k) == 1
