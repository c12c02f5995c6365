"""``specdef-lite``: every user error is one line on stderr with exit status 2 and no traceback; a lock that
changed the logits too much (or made them NaN) is not written; an interrupted lock leaves the old output."""
import json
import math
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")
from specdef_lite.llm import cli
from specdef_lite import llm  # noqa: E402


def tiny(seed=0, vocab=97, dtype=torch.float32):
    with torch.random.fork_rng(devices=[]):  # transformers initialises from the global RNG; leave it as found
        torch.manual_seed(seed)
        cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                       tie_word_embeddings=True, attn_implementation="eager")
        return transformers.LlamaForCausalLM(cfg).eval().to(dtype)


def char_tokenizer():
    """A 96-token character tokenizer built in code (no download): printable ASCII and [UNK]."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    vocab = {chr(i): i - 32 for i in range(32, 127)} | {"[UNK]": 95}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    f = {"root": root}
    f["plain"] = root / "plain"
    tiny().save_pretrained(f["plain"])
    f["bf16"] = root / "bf16"
    tiny(dtype=torch.bfloat16).save_pretrained(f["bf16"])
    f["tok"] = root / "with_tokenizer"
    tiny().save_pretrained(f["tok"])
    char_tokenizer().save_pretrained(f["tok"])
    f["nan"] = root / "nan_weights"  # a model whose loss is NaN from the start: a diverged run to write out
    broken = tiny()
    with torch.no_grad():
        broken.model.layers[2].mlp.down_proj.weight[0, 0] = float("nan")
    broken.save_pretrained(f["nan"])
    char_tokenizer().save_pretrained(f["nan"])
    f["locked"] = root / "locked"
    llm.save(llm.lock(tiny(), 100.0, k=2, blocks=[-1]), f["locked"])
    f["trunc"] = root / "trunc"
    shutil.copytree(f["locked"], f["trunc"])
    w = f["trunc"] / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    f["stale"] = root / "stale"
    shutil.copytree(f["plain"], f["stale"])
    shutil.copy(f["locked"] / "specdef.json", f["stale"] / "specdef.json")
    return f


def one_line_error(capsys, argv, match):
    rc = cli.main([str(a) for a in argv])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith("specdef-lite") and match in err[0], err[0]


ERRORS = {
    "no such folder": (lambda f: ["inspect", f["root"] / "nope" / "x"], "error: no such folder:"),
    "a file": (lambda f: ["inspect", f["locked"] / "specdef.json"], "is a file, not a model folder"),
    "truncated weights": (lambda f: ["lock", f["trunc"], f["root"] / "o1"], "model.safetensors is truncated"),
    "truncated weights (fuse)": (lambda f: ["fuse", f["trunc"], f["root"] / "o1"], "is truncated"),
    "stale specdef.json": (lambda f: ["inspect", f["stale"]], "come from different saves"),
    "bad --targets regex": (lambda f: ["lock", f["plain"], f["root"] / "o1", "--targets", "("],
                            "targets pattern '(' is not a valid regular expression"),
    "--device bogus": (lambda f: ["--device", "bogus", "inspect", f["plain"]], "unknown device 'bogus'"),
    "--eval-every 0": (lambda f: ["attack", f["tok"], "--eval-every", "0"],
                       "argument --eval-every: expected a positive whole number, got '0'"),
    "--alpha nan": (lambda f: ["lock", f["plain"], f["root"] / "o1", "--alpha", "nan"],
                    "argument --alpha: expected a positive finite number"),
    "-k 0": (lambda f: ["lock", f["plain"], f["root"] / "o1", "-k", "0"], "argument -k"),
    "--check -1": (lambda f: ["lock", f["plain"], f["root"] / "o1", "--check", "-1"], "argument --check"),
    "--lr inf": (lambda f: ["attack", f["tok"], "--lr", "inf"], "argument --lr"),
    "unknown command": (lambda f: ["bogus"], "invalid choice: 'bogus'"),
    "out is a file": (lambda f: ["lock", f["plain"], f["locked"] / "config.json", "-k", "2"],
                      "exists and is a file, not a folder"),
    "attack without tokenizer": (lambda f: ["attack", f["plain"], "--steps", "1"],
                                 "has no tokenizer (no tokenizer.json"),
    "attack --blocks 9": (lambda f: ["attack", f["tok"], "--steps", "1", "--blocks", "9"],
                          "--blocks 9 is out of range: the model has 3 blocks"),
    "alpha 1e300": (lambda f: ["lock", f["plain"], f["root"] / "o2", "-k", "2", "--alpha", "1e300"],
                    "would change the model's outputs by about"),
    "bf16 at the default alpha": (lambda f: ["lock", f["bf16"], f["root"] / "o2", "-k", "2"],
                                  "in bfloat16 would change the model's outputs by about 47 (relative"),
}


@pytest.mark.parametrize("case", ERRORS)
def test_user_errors_get_one_line_and_exit_status_2(folders, capsys, case):
    argv, match = ERRORS[case]
    one_line_error(capsys, argv(folders), match)
    assert not (folders["root"] / "o1").exists() and not (folders["root"] / "o2").exists()  # nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(folders, capsys):
    one_line_error(capsys, ["--device", "cuda", "inspect", folders["plain"]], "device 'cuda' is not available")


def test_the_refusal_names_the_cli_flag_and_the_flag_works(folders, capsys, tmp_path):
    one_line_error(capsys, ["lock", folders["bf16"], tmp_path / "o", "-k", "2"], "--compute-dtype float32")
    assert cli.main(["lock", str(folders["bf16"]), str(tmp_path / "o"), "-k", "2", "--compute-dtype", "float32",
                     "--check", "2"]) == 0
    out = capsys.readouterr().out
    rel = float(out.split("logit change: relative ")[1].split(",")[0])
    assert rel < 2e-2  # bf16 output rounding only (without the flag the estimate was 47)
    back, _ = llm.load(tmp_path / "o", tokenizer=False)
    layer = back.get_submodule(llm.deformed_layers(back)[0])
    assert layer.W_tilde.dtype == torch.float32 and layer.compute_dtype == torch.float32


def test_a_lock_whose_logits_are_not_finite_is_not_written(folders, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(llm, "logit_change", lambda *a, **k: llm.LogitChange(math.nan, math.nan))
    one_line_error(capsys, ["lock", folders["plain"], tmp_path / "o", "-k", "2"],
                   "the locked model's logits are not finite")
    assert not (tmp_path / "o").exists()
    monkeypatch.setattr(llm, "logit_change", lambda *a, **k: llm.LogitChange(0.7, 3.0))
    one_line_error(capsys, ["lock", folders["plain"], tmp_path / "o", "-k", "2"], "above --max-error 0.5")


def test_an_interrupt_is_one_line_and_exit_130(folders, capsys, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(llm, "load", interrupted)
    assert cli.main(["inspect", str(folders["plain"])]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted; nothing was written" in err[0]


def test_attack_writes_strict_json(folders, capsys, tmp_path):
    curves = tmp_path / "curves.json"
    args = ["--steps", "2", "--seq-len", "16", "--batch-size", "2", "--heldout", "2", "--eval-every", "1",
            "--blocks", "-1", "--json", str(curves)]
    assert cli.main(["attack", str(folders["nan"]), "--lr", "1e-3", *args]) == 0
    assert "DIVERGED at step 0" in capsys.readouterr().out
    data = json.loads(curves.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    run = data["runs"][0]
    assert run["diverged_at"] == 0 and run["losses"] == [None] and run["eval_losses"][0] is None  # NaN → null
    assert cli.main(["attack", str(folders["tok"]), "--lr", "1e-3", *args]) == 0  # replaces the file whole
    capsys.readouterr()
    run = json.loads(curves.read_text())["runs"][0]
    assert run["diverged_at"] is None and all(math.isfinite(v) for v in run["losses"] + run["eval_losses"])
    one_line_error(capsys, ["attack", folders["tok"], "--steps", "1", "--json", tmp_path], "a folder, not a file")


def test_a_killed_cli_lock_leaves_the_previous_output(folders, tmp_path):
    out = tmp_path / "out"
    assert cli.main(["lock", str(folders["plain"]), str(out), "-k", "2", "--alpha", "100", "--blocks", "-1"]) == 0
    before, _ = llm.load(out, tokenizer=False)
    p = subprocess.run([sys.executable, "-m", "specdef_lite.llm.cli", "lock", str(folders["plain"]), str(out), "-k", "1",
                        "--alpha", "10", "--blocks", "-2", "-1"], capture_output=True, text=True,
                       env={**os.environ, "SPECDEF_LITE_FAULT": "save:weights-written"}, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    after, _ = llm.load(out, tokenizer=False)
    ids = torch.randint(97, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(after(ids).logits, before(ids).logits)
    assert llm.deformed_layers(after) == llm.deformed_layers(before) and len(llm.deformed_layers(after)) == 3
