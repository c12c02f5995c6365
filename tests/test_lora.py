"""LoRA through peft on locked layers: where the adapter sits decides whether it feels the lock.

The maths (specdef_lite/lock/lora.py), checked with numbers:
  * an adapter starts at B = 0: the function is unchanged, bit for bit, and only A, B train;
  * on W̃: C(W̃ + BA) = W + (CB)A, so ℒ_W̃(A, B) = ℒ_W(A, C·B) — the undefended adapter seen through C
    (‖C‖ = 1): its curvature is never above the undefended adapter's, whatever α;
  * on C: (C + BA)W̃ = W + B(AW̃), so ℒ_C(A, B) = ℒ_W(A·W̃, B) — an undefended adapter whose A is
    multiplied by W̃, α times larger along U_k: its curvature grows like α² (log-log slope 2);
  * on the fused layer: the undefended attack, step for step.
"""
import math

import pytest
import torch

pytest.importorskip("peft")
from specdef_lite.optim import problems
from specdef_lite import specdef, train  # noqa: E402
from specdef_lite.experiments.lora_attack import ATTACKS, lora_attacks, start_curvature  # noqa: E402
from specdef_lite.lock.lora import adapter_params, adapter_size, lora  # noqa: E402

LAYERS = ["0", "2"]


@pytest.fixture(scope="module")
def toy():
    p = problems.teacher_student(seed=0)
    return p, specdef(p.released, 1e3, 1, targets=LAYERS)


def _named(model, part):
    """{"0.lora_B.default.weight": parameter, …} of a peft model (prefix dropped)."""
    return {n.removeprefix("base_model.model."): q for n, q in model.named_parameters() if part in n}


@pytest.mark.parametrize("on, size", [("w_tilde", 2 * (8 + 16) + 2 * (16 + 16)), ("c", 2 * 2 * (16 + 16)),
                                      ("both", 2 * (8 + 16) + 2 * (16 + 16) + 2 * 2 * (16 + 16)), ("weight", None)])
def test_adapter_starts_at_the_same_function_and_only_it_trains(toy, on, size):
    p, locked = toy
    base = p.released if on == "weight" else locked
    m = lora(base, 2, on, LAYERS)
    x = p.task.inputs
    assert torch.equal(m(x), base(x))  # B = 0: W̃ + 0·A and C + 0·A are W̃ and C exactly
    trainable = [n for n, q in m.named_parameters() if q.requires_grad]
    assert trainable == adapter_params(m) and len(trainable) == 2 * (4 if on == "both" else 2)
    assert adapter_size(m) == (size if size is not None else 2 * (8 + 16) + 2 * (16 + 16))
    before = {n: q.detach().clone() for n, q in m.named_parameters()}
    train(m, p.task, "adam", 3, lr=1e-4)
    assert all(torch.equal(q, before[n]) != q.requires_grad for n, q in m.named_parameters())  # adapters alone moved


def test_bad_placements_are_refused(toy):
    p, locked = toy
    with pytest.raises(ValueError, match="SpecDefLinear, not an nn.Linear.*fuse it first"):
        lora(locked, 2, "weight", ["0"])
    with pytest.raises(ValueError, match="not a locked SpecDefLinear"):
        lora(p.released, 2, "c", ["0"])
    with pytest.raises(ValueError, match="no deformed layer"):
        lora(p.released, 2, "w_tilde")
    with pytest.raises(ValueError, match="positive integer"):
        lora(locked, 0, "c")
    with pytest.raises(ValueError, match="on must be one of"):
        lora(locked, 2, "W")
    with pytest.raises(ValueError, match="not found"):
        lora(locked, 2, "c", ["7"])


def _set(model, values):
    with torch.no_grad():
        for n, q in _named(model, ".lora_").items():
            if n in values:
                q.copy_(values[n])


def test_adapter_on_w_tilde_is_the_plain_adapter_through_C_and_on_C_reads_W_tilde_x(toy, gen):
    p, locked = toy
    plain, plain_c = lora(p.released, 2, "weight", LAYERS), lora(p.released, 2, "weight", LAYERS)
    on_w, on_c = lora(locked, 2, "w_tilde", LAYERS), lora(locked, 2, "c", LAYERS)
    for name in LAYERS:
        layer = locked.get_submodule(name)
        C, W_tilde = layer.C.detach(), layer.W_tilde.detach()
        A = _named(on_w, ".lora_A.")[f"{name}.lora_A.default.weight"].detach()  # (r, in)
        assert torch.equal(A, _named(plain, ".lora_A.")[f"{name}.lora_A.default.weight"])  # same seed, same A
        A_c = _named(on_c, ".lora_A.")[f"{name}.lora_A.default.weight"].detach()  # (r, out)
        B = torch.randn(16, 2, generator=gen, dtype=torch.float64)  # (out, r)
        _set(on_w, {f"{name}.lora_B.default.weight": B})  # W̃ + BA …
        _set(plain, {f"{name}.lora_B.default.weight": C @ B})  # … ≡ W + (CB)A
        _set(on_c, {f"{name}.lora_B.default.weight": B})  # C + BA …
        _set(plain_c, {f"{name}.lora_A.default.weight": A_c @ W_tilde,  # … ≡ W + B(AW̃): (r,out)@(out,in)
                       f"{name}.lora_B.default.weight": B})
    x = p.task.inputs
    assert torch.allclose(on_w(x), plain(x), rtol=1e-9, atol=1e-12)
    assert torch.allclose(on_c(x), plain_c(x), rtol=1e-9, atol=1e-11)
    assert not torch.allclose(on_c(x), p.released(x), rtol=1e-3)  # the adapters did change the function


def test_curvature_on_C_grows_like_alpha_squared_and_on_w_tilde_never_exceeds_the_plain_adapter(toy):
    p, _ = toy
    plain = start_curvature(lora(p.released, 2, "weight", LAYERS), p.task)
    on_c, on_w = {}, {}
    for alpha in (1e2, 1e3, 1e4):
        locked = specdef(p.released, alpha, 1, targets=LAYERS)
        on_c[alpha] = start_curvature(lora(locked, 2, "c", LAYERS), p.task)
        on_w[alpha] = start_curvature(lora(locked, 2, "w_tilde", LAYERS), p.task)
        assert on_w[alpha] <= plain * (1 + 1e-8)  # ρ(TᵀHT) ≤ ‖T‖² ρ(H), ‖C‖ = 1
    slopes = [math.log10(on_c[b] / on_c[a]) for a, b in ((1e2, 1e3), (1e3, 1e4))]
    assert abs(slopes[-1] - 2) < 0.01 and abs(slopes[0] - 2) < 0.1, slopes  # (c₀ + (α−1)c₁)² → α²
    assert on_c[1e4] > 1e6 * plain


def test_lora_attacks_table_at_small_sizes():
    attacks = [a for a in ATTACKS if a not in {("locked", "full"), ("locked", "both")}]  # the slow ones
    res = lora_attacks(alpha=1e3, r=2, lrs=(1e-4, 1e-3, 1e-2, 1e-1), budget=250, attacks=attacks, max_params=400)
    steps = {(x.model, x.placement): x.response for x in res.runs}
    for placement in ("full", "weight"):  # the fused model is the undefended one: same attack, same steps
        assert steps["fused", placement].best_steps == steps["original", placement].best_steps is not None
        assert steps["fused", placement].best_lr == steps["original", placement].best_lr
    plain, on_c, on_w = steps["original", "weight"], steps["locked", "c"], steps["locked", "w_tilde"]
    assert on_c.lower_bound > 5 * plain.best_steps  # the adapter on C feels the α-stiff curvature …
    assert on_c.best is None or on_c.best_lr < plain.best_lr  # … and needs a smaller step
    assert on_w.best_steps is not None and on_w.best_lr >= plain.best_lr  # on W̃: no stiffness at all
    curv = {(x.model, x.placement): x.curvature for x in res.runs}
    assert curv["locked", "c"] > 1e3 * curv["original", "weight"]
    assert curv["locked", "w_tilde"] <= curv["original", "weight"] * (1 + 1e-8)
    assert curv["original", "full"] is None  # 433 trained parameters > max_params: not formed
    assert [(x.model, x.placement) for x in res.runs] == attacks and len(res.rows()) == len(attacks)


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft → transformers
def test_lora_on_a_locked_transformers_model_merges_back_into_specdef_layers(gen):
    transformers = pytest.importorskip("transformers")
    from specdef_lite import deformed_layers, llm
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=True, attn_implementation="eager")
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(cfg)
    model = model.to_empty(device="cpu").double().eval()
    with torch.no_grad():
        for q in model.parameters():
            q.normal_(0.0, 0.1, generator=gen) if q.ndim == 2 else q.fill_(1.0)
    model.tie_weights()
    locked = llm.lock(model, 1e3, 2, blocks=[-1])
    attacked = lora(locked, 2, "both")  # default targets: every deformed layer
    ids = torch.randint(97, (2, 8), generator=gen)
    assert torch.equal(attacked(ids).logits, locked(ids).logits)
    pairs = [locked.get_submodule(n) for n in deformed_layers(locked)]
    assert adapter_size(attacked) == sum(2 * (m.in_features + m.out_features) + 2 * (2 * m.out_features) for m in pairs)
    with torch.no_grad():
        for n, q in attacked.named_parameters():
            if ".lora_B." in n:
                q.normal_(0.0, 1e-3, generator=gen)
    moved = attacked(ids).logits
    merged = attacked.merge_and_unload()  # W̃ + BA and C + BA written back: a locked model again
    assert deformed_layers(merged) == deformed_layers(locked)
    assert torch.allclose(merged(ids).logits, moved, rtol=1e-9, atol=1e-9)
    assert not torch.allclose(moved, locked(ids).logits, atol=1e-6)
