"""LoRA inside ``llm.attack`` and ``specdef-lite attack --lora-rank R --lora-on {w_tilde,c,both}``.

Checked with numbers: the adapters' size is Σ r·(rows + cols) of the adapted matrices (C is out×out, W̃ out×in);
B = 0 at the start, so step 0 is the full model's loss; the cached prefix gives the full forward's losses; the
caller's model is left alone; every misuse is one ValueError (one line, exit status 2 from the shell).
"""
import os
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _tiny_llm import char_tokenizer, tiny  # noqa: E402

from specdef_lite import llm  # noqa: E402
from specdef_lite.llm import cli  # noqa: E402

# last block of the tiny Llama (hidden 32, 2 kv heads of 8, mlp 48), default targets v, o, down:
# C: 16×16, 32×32, 32×32 → r·(32 + 64 + 64);  W̃ = W: 16×32, 32×32, 32×48 → r·(48 + 64 + 80)
SIZES = {"c": 2 * 160, "w_tilde": 2 * 192, "both": 2 * 352}


@pytest.fixture(scope="module")
def models():
    model = tiny()
    return model, llm.lock(model, 1e3, 2, blocks=[-1])


@pytest.fixture(scope="module")
def task():
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(97, (12, 12), generator=g)  # train = one batch: every step sees it, so the loss falls
    return llm.TextTask("random", ("random",), 12, tokens[:4], tokens[4:8], tokens[8:])


KW = dict(steps=4, batch_size=4, eval_every=2, blocks=[-1], progress=False)


@pytest.mark.parametrize("on", ["w_tilde", "c", "both"])
def test_lora_on_each_place_of_the_pairs(models, task, on):
    model, locked = models
    before = {n: p.detach().clone() for n, p in locked.state_dict().items()}
    full = llm.attack(locked, task, lr=1e-3, **KW)
    r = llm.attack(locked, task, lr=1e-2, lora_rank=2, lora_on=on, **KW)
    assert r.trainable == SIZES[on] and r.adapter == f"r=2 on {dict(c='C', w_tilde='W̃', both='W̃ and C')[on]} of 3 layers"
    assert r.cached and not r.diverged
    assert r.losses[0] == pytest.approx(full.losses[0], rel=1e-6)  # B = 0: the locked model's own loss
    assert r.losses[-1] < r.losses[0] - 0.01  # the adapters do train
    slow = llm.attack(locked, task, lr=1e-2, lora_rank=2, lora_on=on, cache=False, **KW)
    assert slow.losses == pytest.approx(r.losses, rel=1e-5) and slow.eval_losses == pytest.approx(r.eval_losses, rel=1e-5)
    after = locked.state_dict()
    assert all(torch.equal(before[n], after[n]) for n in before) and not any("lora" in n for n in after)


def test_lora_on_a_plain_model_adapts_w(models, task):
    model, _ = models
    r = llm.attack(model, task, lr=1e-2, lora_rank=2, **KW)
    assert r.trainable == SIZES["w_tilde"] and r.adapter == "r=2 on W of 3 layers"
    assert r.losses[-1] < r.losses[0] - 0.01


BAD = {
    "lora_on without rank": (dict(lora_on="c"), True, "they need lora_rank"),
    "locked without lora_on": (dict(lora_rank=2), True, "choose where the adapter goes, lora_on"),
    "lora_on on a plain model": (dict(lora_rank=2, lora_on="c"), False, "leave lora_on unset"),
    "bad placement": (dict(lora_rank=2, lora_on="W"), True, "lora_on = 'w_tilde', 'c' or 'both'"),
    "target outside the blocks": (dict(lora_rank=2, lora_on="c", lora_targets=["model.layers.0.mlp.down_proj"]),
                                  True, "outside the trained blocks"),
}


@pytest.mark.parametrize("case", BAD)
def test_lora_misuse_is_a_clear_error(models, task, case):
    kw, locked, match = BAD[case]
    with pytest.raises(ValueError, match=match):
        llm.attack(models[1] if locked else models[0], task, lr=1e-3, **KW, **kw)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, models):
    root = tmp_path_factory.mktemp("lora_cli")
    model, locked = models
    llm.save(locked, root / "locked", char_tokenizer())
    llm.save(model, root / "plain", char_tokenizer())
    return root


SMALL = ["--steps", "2", "--seq-len", "16", "--batch-size", "2", "--heldout", "2", "--eval-every", "1",
         "--blocks", "-1", "--lr", "1e-2"]


def test_cli_lora_attack(folders, capsys):
    assert cli.main(["attack", str(folders / "locked"), *SMALL, "--lora-rank", "2", "--lora-on", "both"]) == 0
    out = capsys.readouterr().out
    assert "r=2 on W̃ and C of 3 layers" in out, out


CLI_BAD = {
    "--lora-rank 0": (["locked", "--lora-rank", "0"], "argument --lora-rank: expected a positive whole number, got '0'"),
    "--lora-on x": (["locked", "--lora-rank", "2", "--lora-on", "x"], "argument --lora-on: invalid choice: 'x'"),
    "--lora-on without rank": (["locked", "--lora-on", "c"], "give their rank with --lora-rank"),
    "locked without --lora-on": (["locked", "--lora-rank", "2"], "--lora-on = 'w_tilde', 'c' or 'both'"),
    "--lora-on on a plain model": (["plain", "--lora-rank", "2", "--lora-on", "c"], "drop --lora-on"),
    "with --inject": (["locked", "--lora-rank", "2", "--lora-on", "c", "--inject"], "two attacks: choose one"),
}


@pytest.mark.parametrize("case", CLI_BAD)
def test_cli_lora_bad_input_is_one_line_and_status_2(folders, capsys, case):
    argv, match = CLI_BAD[case]
    rc = cli.main(["attack", str(folders / argv[0]), *SMALL, *argv[1:]])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith("specdef-lite attack") and match in err[0], err[0]
