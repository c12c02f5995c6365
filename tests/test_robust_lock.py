"""Nothing silently wrong when locking: a lock that rounding would destroy, a C too big to build, or a layer that is
linear in type but not in use is refused with a sentence that says why; what can be locked is locked exactly.

The precision law (guards.FORWARD_ERROR_C): relative forward error ≈ c·α·ε of the format the pairs live in.
"""
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import specdef_lite as sl
from _nets import mlp as seeded_mlp
from specdef_lite.lock.attacks import InjectedLinear
from specdef_lite.lock.deform import PrecisionWarning, forward_error_estimate

F64 = torch.float64


def mlp(gen, dtype=F64, sizes=(6, 8, 3)):
    return seeded_mlp(gen, sizes).to(dtype)  # built in float64, then cast: every dtype holds the same numbers


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def inputs(gen, n=64, d=6, dtype=F64):
    return torch.randn(n, d, generator=gen, dtype=F64).to(dtype)


# --------------------------------------------------------------------------- precision: c·α·ε

@pytest.mark.parametrize("dtype,alpha", [(torch.float16, 1e6), (torch.bfloat16, 1e4), (torch.float32, 1e7),
                                         (F64, 1e300), (F64, 1e-300)])
def test_a_lock_that_rounding_destroys_is_refused_with_the_way_out(gen, dtype, alpha):
    net = mlp(gen, dtype)
    before = [p.clone() for p in net.parameters()]
    with pytest.raises(ValueError, match=r"would change the model's outputs by about .*above max_error=0\.5: "
                                         r"pass compute_dtype=torch\.float\d\d .* or lock with alpha [<>]="):
        sl.specdef(net, alpha)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))  # the input model is untouched


@pytest.mark.parametrize("alpha", [1e3, 1e4, 1e5])
def test_estimate_bounds_the_measured_float32_error(gen, alpha):
    """On a random layer the error sits below the SmolLM2-measured estimate (c = 1.8) and within 30× of it."""
    net = mlp(gen, torch.float32)
    x = inputs(gen, 256, dtype=torch.float32)
    with torch.no_grad():
        err = rel(sl.specdef(net, alpha, k=2)(x), net(x))
    est = forward_error_estimate(alpha, torch.float32)
    assert est / 30 <= err <= est, (err, est)


@pytest.mark.parametrize("dtype,alpha", [(torch.bfloat16, 10.0), (torch.bfloat16, 100.0), (torch.float16, 10.0),
                                         (torch.float16, 100.0)])
def test_estimate_bounds_the_measured_half_precision_error(gen, dtype, alpha):
    """Measured here (5 seeds): 0.15–0.54·α·ε in both half formats; the estimate uses 0.6."""
    net = mlp(gen, dtype)
    x = inputs(gen, 256, dtype=dtype)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", PrecisionWarning)
        err = rel(sl.specdef(net, alpha, k=2)(x), net(x))
    est = forward_error_estimate(alpha, dtype)
    assert est / 30 <= err <= est, (err, est)


def test_compute_dtype_is_the_way_out_for_a_bfloat16_model(gen):
    net = mlp(gen, torch.bfloat16)
    x = inputs(gen, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="in bfloat16"):
        sl.specdef(net, 1e4)
    locked = sl.specdef(net, 1e4, compute_dtype=torch.float32)  # α·ε32 ≈ 1e-3: only the bf16 output rounding stays
    assert locked[0].W_tilde.dtype == torch.float32
    with torch.no_grad():
        out, ref = locked(x), net(x)
    assert out.dtype == torch.bfloat16 and rel(out, ref) < 2e-2


def test_a_lock_between_the_limits_warns_and_max_error_none_studies_it(gen):
    net = mlp(gen, torch.float32)
    with pytest.warns(PrecisionWarning, match=r"about 0\.21 .*compute_dtype=torch\.float64"):
        locked = sl.specdef(net, 1e6)  # 1.8·1e6·1.2e-7 = 0.21: above a tenth of max_error, below it
    assert sl.deformed_layers(locked) == ["0", "2"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrecisionWarning)
        sl.specdef(net, 1e4)  # 2e-3: quiet
        studied = sl.specdef(mlp(gen, torch.bfloat16), 1e4, max_error=None)  # notebook 05's study: allowed
    assert studied[0].W_tilde.dtype == torch.bfloat16


def test_float16_warns_about_its_range(gen):
    with pytest.warns(PrecisionWarning, match="float16 overflows beyond 65504"):
        sl.specdef(mlp(gen, torch.float16), 10.0)


def test_overflow_is_refused_whatever_max_error(gen):
    net = mlp(gen, torch.float16)
    with pytest.raises(ValueError, match=r"W̃ reaches .* beyond the largest float16 number"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", PrecisionWarning)
        sl.specdef(net, 1e6, max_error=None)
    with pytest.raises(ValueError, match="beyond the largest float16 number"):
        sl.scale_only(net, 1e6)  # the ablation used to return inf weights


def test_alpha_survives_dtype_casts_and_a_compute_dtype_pair_keeps_its_dtype(gen):
    locked = sl.specdef(mlp(gen), 1e5)
    locked.half()
    assert float(locked[0].alpha) == 1e5 and locked[0].alpha.dtype == F64  # was inf
    locked = sl.specdef(mlp(gen), 1e4).to(torch.bfloat16)
    assert float(locked[0].alpha) == 1e4 and int(locked[0].k) == 1  # was 9984
    assert locked[0].W_tilde.dtype == torch.bfloat16  # without compute_dtype the pair follows the cast
    net = mlp(gen, torch.float32)
    x = inputs(gen, dtype=torch.float32)
    kept = sl.specdef(net, 1e6, compute_dtype=F64).to(torch.bfloat16)
    assert kept[0].W_tilde.dtype == F64 and kept[0].C.dtype == F64 and kept[0].bias.dtype == torch.bfloat16
    with torch.no_grad():
        assert rel(kept(x.bfloat16()), net.bfloat16()(x.bfloat16())) < 2e-2  # bf16 rounding, not α·ε_bf16 ≈ 2e3


# --------------------------------------------------------------------------- size of C

def test_memory_guard_refuses_a_vocabulary_sized_C_before_allocating():
    head = nn.Linear(16, 49152, device="meta")  # meta: nothing is ever allocated, so only the guard can answer
    with pytest.raises(ValueError, match=r"compensation C of 49,152×49,152 = 19\.3 GB in float64, above the "
                                         r"4\.29 GB cap: leave '' out of targets .* or raise max_bytes"):
        sl.specdef(head, 10.0)


def test_memory_guard_counts_every_stored_C():
    heads = nn.Sequential(*[nn.Linear(4, 12000, device="meta") for _ in range(3)])  # 0.58 GB of float32 C each
    with pytest.raises(ValueError, match=r"the 3 compensations C together take 1\.73 GB, above the 1\.5 GB cap"):
        sl.specdef(heads, 10.0, max_bytes=1.5e9)


# --------------------------------------------------------------------------- layers linear in type, not in use

class OwnForward(nn.Linear):
    def forward(self, x):
        return torch.relu(super().forward(x))


class PlainSubclass(nn.Linear):
    pass


def _with(gen, make):
    net = mlp(gen)
    make(net)
    return net


UNFAITHFUL = {
    "subclass with its own forward": (lambda n: n.__setitem__(2, OwnForward(8, 3, dtype=F64)),
                                      "OwnForward subclasses nn.Linear with its own forward"),
    "forward hook": (lambda n: n[2].register_forward_hook(lambda m, i, o: 2 * o), "it has forward hooks"),
    "forward pre-hook": (lambda n: n[2].register_forward_pre_hook(lambda m, i: (3 * i[0],)), "forward pre hooks"),
    "backward hook": (lambda n: n[2].register_full_backward_hook(lambda m, gi, go: gi), "backward hooks"),
    "parametrized weight": (lambda n: torch.nn.utils.parametrizations.weight_norm(n[2]), "parametrized"),
}


@pytest.mark.parametrize("case", UNFAITHFUL)
def test_layers_that_a_lock_would_change_are_refused(gen, case):
    make, why = UNFAITHFUL[case]
    net = _with(gen, make)
    with pytest.raises(ValueError, match=rf"cannot lock faithfully .*'2': .*{why}.*Pass targets="):
        sl.specdef(net, 10.0)
    with pytest.raises(ValueError, match="Leave it out of targets"):
        sl.specdef(net, 10.0, targets=["2"])
    locked = sl.specdef(net, 10.0, targets=["0"])  # the other layers still lock, exactly
    x = inputs(gen)
    with torch.no_grad():
        assert rel(locked(x), net(x)) < 1e-12


def test_a_subclass_without_its_own_forward_locks_exactly(gen):
    net = _with(gen, lambda n: n.__setitem__(2, PlainSubclass(8, 3, dtype=F64)))
    x = inputs(gen)
    with torch.no_grad():
        assert rel(sl.specdef(net, 1e3)(x), net(x)) < 1e-12


@pytest.mark.parametrize("targets,where", [(None, "'out_proj': its parent MultiheadAttention reads its weight"),
                                           (["linear1"], "'linear1': its parent TransformerEncoderLayer reads")])
def test_torch_attention_and_transformer_layers_are_refused(targets, where):
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True).double().eval()
    with pytest.raises(ValueError, match=where if targets else "'self_attn.out_proj': its parent MultiheadAttention"):
        sl.specdef(layer, 10.0, targets=targets)
    with pytest.raises(ValueError, match=where):
        sl.specdef(layer.self_attn if targets is None else layer, 10.0, targets=targets)


def test_a_linear_under_two_names_is_locked_and_fused_under_both(gen):
    lin = nn.Linear(6, 6, dtype=F64)
    with torch.no_grad():  # weights from the test's generator: nn.Linear's own draw depends on what ran before
        lin.weight.copy_(torch.randn(6, 6, generator=gen, dtype=F64) / 6 ** 0.5)
        lin.bias.copy_(torch.randn(6, generator=gen, dtype=F64) / 6 ** 0.5)
    net = nn.Sequential(lin, nn.Tanh(), lin)
    x = inputs(gen)
    # the law: each locked layer changes the output by ~c·α·ε (forward_error_estimate); two in series, with margin
    tol = 10 * forward_error_estimate(1e3, F64)
    for targets in (None, ["2"]):
        locked = sl.specdef(net, 1e3, targets=targets)
        assert locked[0] is locked[2] and isinstance(locked[0], sl.SpecDefLinear)  # no raw copy left behind
        with torch.no_grad():
            assert rel(locked(x), net(x)) < tol
        fused = sl.fuse(locked)
        assert fused[0] is fused[2] and type(fused[0]) is nn.Linear
        assert float((fused[0].weight - lin.weight).detach().abs().max()) < 1e-12


def test_inject_twice_stacks_faithfully_and_fuses_back(gen):
    net = mlp(gen)
    locked = sl.specdef(net, 1e3)
    twice = sl.inject(sl.inject(locked))
    x = inputs(gen)
    with torch.no_grad():
        assert rel(twice(x), net(x)) < 1e-12  # used to crash at forward
    assert isinstance(twice[0], InjectedLinear) and isinstance(twice[0].inner, InjectedLinear)
    trainable = [n for n, p in twice.named_parameters() if p.requires_grad]
    assert trainable == ["0.D", "2.D"]  # the first injection's D is frozen like the released weights
    fused = sl.fuse(twice)
    for i in (0, 2):
        assert float((fused[i].weight - net[i].weight).detach().abs().max()) < 1e-10


# --------------------------------------------------------------------------- argument types

def test_numpy_and_tensor_scalars_are_numbers_and_wrong_types_are_named(gen):
    net = mlp(gen)
    a = sl.specdef(net, 100.0, k=1)
    for alpha, k in ((np.float32(100.0), np.int64(1)), (torch.tensor(100.0), torch.tensor(1))):
        b = sl.specdef(net, alpha, k=k)
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got NoneType"):
        sl.specdef(None, 10.0)
    with pytest.raises(TypeError, match="targets must be None, a module name"):
        sl.specdef(net, 10.0, targets=5)
    with pytest.raises(ValueError, match="compute_dtype must be one of float64, float32"):
        sl.specdef(net, 10.0, compute_dtype=torch.int32)
    assert sl.specdef(net.float(), 10.0, compute_dtype="float64")[0].W_tilde.dtype == F64
    dup = sl.specdef(mlp(gen), 10.0, targets=["0", "0"])  # a name given twice is one layer
    assert sl.deformed_layers(dup) == ["0"]


def test_attacker_tools_refuse_undefined_answers(gen):
    net = mlp(gen)
    with torch.no_grad():
        net[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"parameter '0.weight' holds NaN or inf"):
        sl.detect(net)
    with pytest.raises(ValueError, match="gap must be"):
        sl.detect(mlp(gen), gap=float("nan"))
    with pytest.raises(ValueError, match=r"unit must be a fraction in \(0, 1\]"):
        sl.detect(mlp(gen), unit=2)
    with pytest.raises(ValueError, match="no parameters"):
        sl.param_overhead(nn.Tanh(), mlp(gen))
    with pytest.raises(ValueError, match="layer '9' not found in the original model"):
        sl.spectrum_ratio(mlp(gen), sl.specdef(mlp(gen), 10.0), "9")
