"""The attacker's tools: fuse is exact, injection preserves f and its curvature is α-free, the bill is linear."""
import dataclasses

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian

from specdef_lite import (InjectedLinear, SpecDefLinear, deformed_layers, detect, detect_scores, fuse, inject,
                          param_overhead, specdef)

F64 = torch.float64
EPS = torch.finfo(F64).eps


def net_of(gen, width=8, depth=3, d_in=4):
    layers, a = [], d_in
    for _ in range(depth):
        lin = nn.Linear(a, width, dtype=F64)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(width, a, generator=gen, dtype=F64) / a ** 0.5)
        layers += [lin, nn.Tanh()]
        a = width
    return nn.Sequential(*layers, nn.Linear(a, 1, dtype=F64))


def test_fuse_restores_original_weights(gen):
    """C·W̃ multiplied in float64 gives W back up to the rounding of the stored W̃ (α times larger): c·α·ε, c < 10."""
    net = net_of(gen)
    for alpha in (10.0, 1e4):
        back = fuse(specdef(net, alpha, k=3, targets=["0", "2", "4"]))
        assert deformed_layers(back) == []
        for (n1, p1), (n2, p2) in zip(net.named_parameters(), back.named_parameters()):
            assert n1 == n2 and p2.dtype == F64
            assert float((p1 - p2).detach().abs().max() / p1.detach().abs().max()) <= 10 * alpha * EPS


def test_fused_model_equals_the_original_to_float64_rounding(gen):
    net = net_of(gen)
    back = fuse(specdef(net, 10.0, k=3, targets=["0", "2", "4"]))
    x = torch.randn(64, 4, generator=gen, dtype=F64)
    with torch.no_grad():
        y, y_back = net(x), back(x)
    assert torch.allclose(y_back, y, rtol=1e-12, atol=1e-12 * float(y.abs().max()))


def test_fuse_without_pairs_is_an_error(gen):
    with pytest.raises(ValueError, match="no deformed"):
        fuse(net_of(gen))


def test_inject_preserves_function_and_freezes_released(gen):
    """D starts at I exactly, so D·h = h in floating point: the injected model computes the locked one bit for bit."""
    net = net_of(gen)
    locked = specdef(net, 1e3, k=2, targets=["2", "4"])
    attacked = inject(locked)
    x = torch.randn(32, 4, generator=gen, dtype=F64)
    with torch.no_grad():
        assert torch.equal(attacked(x), locked(x))
        torch.testing.assert_close(attacked(x), net(x), rtol=1e-9, atol=1e-12)
    for name in ("2", "4"):
        assert torch.equal(attacked[int(name)].D, torch.eye(8, dtype=F64))
    trainable = [n for n, p in attacked.named_parameters() if p.requires_grad]
    assert trainable == ["2.D", "4.D"]
    assert isinstance(attacked[2], InjectedLinear)
    assert all(p.requires_grad for p in locked.parameters())  # the released copy is untouched


def test_inject_wraps_a_layer_registered_twice_once_and_a_bare_locked_layer():
    shared = nn.Linear(3, 3, dtype=F64)
    net = nn.Sequential(shared, nn.Tanh())
    net.add_module("again", shared)
    attacked = inject(specdef(net, 10.0, targets=["0"]), targets=["0", "again"])
    assert attacked[0] is attacked.again and isinstance(attacked[0].inner, SpecDefLinear)
    bare = inject(specdef(nn.Linear(4, 3, dtype=F64), 10.0))
    assert isinstance(bare, InjectedLinear) and [n for n, p in bare.named_parameters() if p.requires_grad] == ["D"]


def _injected_hessian(model, x, y):
    params = {n: p.detach() for n, p in model.named_parameters() if n.endswith(".D")}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not n.endswith(".D")}

    def loss(p):
        return ((functional_call(model, {**frozen, **p}, (x,)) - y) ** 2).mean()
    H = hessian(loss)(params)
    names = list(params)
    n = sum(params[k].numel() for k in names)
    return torch.cat([torch.cat([H[a][b].reshape(params[a].numel(), params[b].numel()) for b in names], 1)
                      for a in names], 0).reshape(n, n)


def test_injected_curvature_does_not_depend_on_alpha(gen):
    """The Ds see the undefended model's activations, so their Hessian is the same for every α."""
    net = net_of(gen, width=5, depth=2)
    x = torch.randn(40, 4, generator=gen, dtype=F64)
    y = torch.randn(40, 1, generator=gen, dtype=F64)
    H_ref = _injected_hessian(inject(net, targets=["0", "2"]), x, y)
    lam_ref = torch.linalg.eigvalsh(H_ref)[-1]
    for alpha in (10.0, 1e3, 1e4):
        H = _injected_hessian(inject(specdef(net, alpha, targets=["0", "2"])), x, y)
        torch.testing.assert_close(H, H_ref, rtol=1e-6, atol=1e-9 * alpha)
        assert abs(torch.linalg.eigvalsh(H)[-1] / lam_ref - 1) < 1e-6


def test_param_bill_is_linear_in_depth_and_quadratic_per_layer(gen):
    added = []
    for depth in (1, 2, 4, 8):
        net = net_of(gen, width=16, depth=depth)
        bill = param_overhead(net, inject(specdef(net, 10.0, targets=[str(2 * i) for i in range(depth)])))
        added.append(bill.added)
        assert bill.trainable_after == depth * 16 * 16
    assert added == [2 * 256 * d for d in (1, 2, 4, 8)]  # C and D: one 16×16 each per deformed layer


def test_inject_bad_input(gen):
    net = net_of(gen)
    with pytest.raises(ValueError, match="no deformed layer"):
        inject(net)
    with pytest.raises(ValueError, match="not found"):
        inject(net, targets=["99"])
    with pytest.raises(ValueError, match="Tanh, not a linear layer"):
        inject(net, targets=["1"])


def test_fuse_after_inject_gives_one_linear_per_layer(gen):
    net = net_of(gen)
    attacked = inject(specdef(net, 100.0, targets=["2"]))
    with torch.no_grad():
        attacked[2].D.mul_(1.5)
    merged = fuse(attacked)
    x = torch.randn(8, 4, generator=gen, dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(merged(x), attacked(x), rtol=1e-10, atol=1e-12)
    assert isinstance(merged[2], nn.Linear)


def test_detect_finds_pairs_blind(gen):
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        net = net_of(g, width=12, depth=4)
        assert detect(net) == []  # no false positives on plain random layers
        locked = specdef(net, 1e3, k=2, targets=["2", "6"])
        assert detect(locked) == ["2", "6"]
        renamed = nn.Sequential(*[m for m in locked])  # names carry no information either way
        assert detect(renamed) == ["2", "6"]


def test_detect_fails_at_small_alpha(gen):
    """Documented failure mode: a weak lock (α below the gap threshold) hides in the natural spectrum."""
    net = net_of(gen, width=12, depth=2)
    assert detect(specdef(net, 5.0, targets=["2"])) == []


def test_detect_scores_read_the_lock_spectra(gen):
    """C = I − (1 − 1/α)U_kU_kᵀ: m − k singular values at 1 and k at 1/α; W̃'s top gap is ≥ α σ_k/σ_1 · … ≫ 1."""
    net = net_of(gen, width=12, depth=2)
    scores = detect_scores(specdef(net, 1e3, k=2, targets=["2"]))
    C, W_tilde = scores["2.C"], scores["2.W_tilde"]
    assert C.shape == (12, 12) and C.unit == 10 / 12
    assert abs(C.sigma_min * 1e3 - 1) < 1e-9
    assert W_tilde.gap > 20 and scores["0.weight"].gap < 20
    assert [s.name for s in scores] == list(scores.names) == ["0.weight", "2.W_tilde", "2.C"]  # the 1×12 read-out
    # has one singular value, so no spectrum: it is left out
    with pytest.raises(dataclasses.FrozenInstanceError):
        C.gap = 0.0
