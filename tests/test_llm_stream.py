"""The streaming lock: a sharded checkpoint is locked tensor by tensor with memory bounded by one layer's
work, and the result is the in-memory ``llm.lock`` bit for bit (same maths, same float64 calls).

The memory test runs the lock in a fresh subprocess and reads its peak resident set (``VmHWM``). A
Python process that has imported torch already holds ~240 MB (shared libraries), more than 40 % of a test
checkpoint of a few hundred MB, so the bound is asserted on the peak *above that baseline*, which the
subprocess measures itself after its imports and before locking; both numbers are printed (``-s``).
"""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")
from specdef_lite.llm import cli
from specdef_lite import deformed_layers, llm  # noqa: E402
from specdef_lite.llm.stream import is_sharded, stream_lock  # noqa: E402


def _random_init(model, gen):
    """N(0, 0.02²) matrices and unit norm weights from a local generator (the global RNG stays untouched)."""
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=gen) if p.ndim == 2 else p.fill_(1.0)
    model.tie_weights()  # to_empty gave tied weights separate storage
    return model


def llama_checkpoint(folder, gen, *, layers, hidden, ffn, vocab, tie, shard):
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                                   num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=64,
                                   tie_word_embeddings=tie)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(cfg)
    _random_init(model, gen).save_pretrained(folder, max_shard_size=shard)
    return folder


@pytest.fixture(scope="module")
def big_checkpoint(tmp_path_factory):
    """A random Llama of ~330 MB in float32 (4 blocks, hidden 512, untied vocabulary of 64000), in 40 MB shards:
    most bytes sit in the embeddings, which stream as raw copies, so the test stays quick."""
    gen = torch.Generator().manual_seed(7)
    folder = tmp_path_factory.mktemp("stream") / "llama"
    return llama_checkpoint(folder, gen, layers=4, hidden=512, ffn=1536, vocab=64000, tie=False, shard="40MB")


# VmHWM, the peak RSS of this process image: ru_maxrss would carry the forking parent's peak across exec
_CHILD = """
import json, re, sys, torch
torch.set_num_threads(1)
from specdef_lite.llm.stream import stream_lock
hwm = lambda: int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
base = hwm()
r = stream_lock(sys.argv[1], sys.argv[2], 1e4, 25, max_shard_size="64MB", progress=False)
peak = hwm()
print(json.dumps({"baseline_kib": base, "peak_kib": peak, "source": r.source_bytes, "shards": r.shards}))
"""


def test_stream_lock_memory_is_one_layer_and_result_is_the_in_memory_lock(big_checkpoint, tmp_path, gen):
    out = tmp_path / "locked"
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(big_checkpoint), str(out)], capture_output=True,
                          text=True, env={**os.environ, "SPECDEF_LITE_HEADLESS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    size = m["source"]
    work = (m["peak_kib"] - m["baseline_kib"]) * 1024
    print(f"\ncheckpoint {size / 1e6:.0f} MB; baseline (python + torch + specdef_lite) {m['baseline_kib'] / 1024:.0f} MiB; "
          f"peak {m['peak_kib'] / 1024:.0f} MiB; peak − baseline {work / 2**20:.0f} MiB = {work / size:.1%} of the checkpoint "
          f"(peak alone {m['peak_kib'] * 1024 / size:.1%})")
    assert size > 300e6
    assert work <= 0.4 * size, f"the lock held {work / 2**20:.0f} MiB above baseline: > 40 % of {size / 1e6:.0f} MB"
    assert m["shards"] > 1 and is_sharded(out)

    streamed, _ = llm.load(out, tokenizer=False)
    original, _ = llm.load(big_checkpoint, tokenizer=False)
    locked = llm.lock(original, 1e4, 25)  # same targets: the last three blocks' v/o/down projections
    assert deformed_layers(streamed) == deformed_layers(locked) and len(deformed_layers(locked)) == 9
    a, b = locked.state_dict(), streamed.state_dict()
    assert a.keys() == b.keys()
    assert [n for n in a if not torch.equal(a[n], b[n])] == []  # same maths: bit for bit
    ids = torch.randint(32000, (2, 16), generator=gen)
    with torch.no_grad():
        assert torch.equal(streamed(ids).logits, locked(ids).logits)


def tiny(arch, folder, gen):
    """A small float64 GPT-2 (Conv1D, W stored transposed) or tied Llama, saved in several shards."""
    if arch == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=97, n_positions=32, n_embd=24, n_layer=3, n_head=4)
        with torch.device("meta"):
            model = transformers.GPT2LMHeadModel(cfg)
        model = _random_init(model, gen).double()
        model.save_pretrained(folder, max_shard_size="20KB")
    else:
        llama_checkpoint(folder, gen, layers=3, hidden=32, ffn=48, vocab=97, tie=True, shard="20KB")
    return folder


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_stream_lock_matches_in_memory_lock_on_conv1d_and_tied_models(arch, tmp_path, gen):
    src = tiny(arch, tmp_path / "src", gen)
    assert is_sharded(src)
    r = stream_lock(src, tmp_path / "out", 1e3, 2, blocks=[0, -1], max_shard_size="10KB")
    original, _ = llm.load(src, tokenizer=False)
    locked = llm.lock(original, 1e3, 2, blocks=[0, -1])
    streamed, _ = llm.load(r.out, tokenizer=False)
    assert deformed_layers(locked) == deformed_layers(streamed) and set(r.deformed) == set(deformed_layers(locked))
    a, b = locked.state_dict(), streamed.state_dict()
    assert [n for n in a if not torch.equal(a[n], b[n])] == []
    ids = torch.randint(97, (2, 12), generator=gen)
    with torch.no_grad():
        assert torch.equal(streamed(ids).logits, locked(ids).logits)
    meta = llm.read_metadata(r.out)
    assert meta["deformed"] == {n: {"alpha": 1e3, "k": 2, "out": streamed.get_submodule(n).out_features,
                                    "in": streamed.get_submodule(n).in_features,
                                    "bias": streamed.get_submodule(n).bias is not None, "compute_dtype": None}
                                for n in r.deformed}


def test_stream_lock_refuses_bad_input_and_leaves_nothing_behind(tmp_path, gen):
    src = tiny("llama", tmp_path / "src", gen)
    with pytest.raises(ValueError, match="exceeds the rank bound"):  # fails mid-way: k > 32 on a 32-wide layer
        stream_lock(src, tmp_path / "out", 1e3, 40)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no out, no hidden temporary folder
    r = stream_lock(src, tmp_path / "locked", 1e3, 2)
    with pytest.raises(ValueError, match="already locked"):
        stream_lock(r.out, tmp_path / "again", 1e3, 2)
    with pytest.raises(ValueError, match="no 2-D weight"):
        stream_lock(src, tmp_path / "bad", 1e3, 2, targets=["model.layers.0.mlp"])
    with pytest.raises(ValueError, match="would replace the source folder"):
        stream_lock(src, tmp_path, 1e3, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["locked", "src"]


def test_stream_lock_replaces_an_existing_output_whole(tmp_path, gen):
    src = tiny("llama", tmp_path / "src", gen)
    out = tmp_path / "out"
    stream_lock(src, out, 1e3, 2, blocks=[-1], max_shard_size="10KB")
    (out / "NOTES.md").write_text("keep me")  # not a model file: carried over, as llm.save does
    r = stream_lock(src, out, 10.0, 1, blocks=[0])  # one file now: the old shards and index must go
    assert sorted(p.name for p in out.iterdir()) == ["NOTES.md", "config.json", "generation_config.json",
                                                     "model.safetensors", "specdef.json"]
    model, _ = llm.load(out, tokenizer=False)
    assert sorted(deformed_layers(model)) == sorted(r.deformed) and all(n.startswith("model.layers.0.") for n in r.deformed)
    assert {float(model.get_submodule(n).alpha) for n in r.deformed} == {10.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]  # nothing left beside it


def test_stream_lock_applies_the_in_memory_guards_before_writing(tmp_path, gen):
    src = tiny("llama", tmp_path / "src", gen)
    bf16 = tmp_path / "bf16"
    llm.load(src, tokenizer=False)[0].to(torch.bfloat16).save_pretrained(bf16, max_shard_size="20KB")
    with pytest.raises(ValueError, match=r"alpha=10000 in bfloat16 .* compute_dtype=torch.float32"):
        stream_lock(bf16, tmp_path / "out", 1e4, 2)  # c·α·ε ≈ 47: the function would be destroyed
    with pytest.raises(ValueError, match=r"float64, above the 1e-06 GB cap"):  # one C: 32×32 float64 = 8 kB
        stream_lock(src, tmp_path / "out", 1e3, 2, max_bytes=1000)
    # stored in float32: per block v (16×16), o and down (32×32 each): 3 × 2304 × 4 B = 27 648 B
    with pytest.raises(ValueError, match=r"9 compensations C together take 2.76e-05 GB, above the 1e-05 GB cap"):
        stream_lock(src, tmp_path / "out", 1e3, 2, max_bytes=10_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bf16", "src"]  # refused before a byte was written
    r = stream_lock(bf16, tmp_path / "out", 1e4, 2, blocks=[-1], compute_dtype="float32")
    assert r.error_estimate == pytest.approx(1.8 * 1e4 * torch.finfo(torch.float32).eps)
    streamed, _ = llm.load(r.out, tokenizer=False)
    original, _ = llm.load(bf16, tokenizer=False)
    locked = llm.lock(original, 1e4, 2, blocks=[-1], compute_dtype=torch.float32)
    a, b = locked.state_dict(), streamed.state_dict()
    assert [n for n in a if not torch.equal(a[n], b[n])] == []  # pairs in float32, the rest in bfloat16: bit for bit
    assert streamed.get_submodule(r.deformed[0]).C.dtype == torch.float32


@pytest.mark.parametrize("point", ["stream:tensor-written", "save:before-swap"])
def test_a_killed_streaming_lock_leaves_the_previous_output(tmp_path, gen, point):
    src = tiny("llama", tmp_path / "src", gen)
    out = tmp_path / "out"
    stream_lock(src, out, 1e3, 2, blocks=[-1], max_shard_size="10KB")
    before, _ = llm.load(out, tokenizer=False)
    code = f"from specdef_lite.llm.stream import stream_lock; stream_lock({str(src)!r}, {str(out)!r}, 10.0, 1, blocks=[0, 1])"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "SPECDEF_LITE_FAULT": point, "SPECDEF_LITE_HEADLESS": "1"})
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]  # killed mid-write (or just before the swap)
    assert any(q.name.startswith(".out.tmp-") for q in tmp_path.iterdir())  # the half-written lock, beside
    after, _ = llm.load(out, tokenizer=False)
    assert deformed_layers(after) == deformed_layers(before) and len(deformed_layers(after)) == 3
    ids = torch.randint(97, (2, 12), generator=gen)
    with torch.no_grad():
        assert torch.equal(after(ids).logits, before(ids).logits)
    stream_lock(src, out, 10.0, 1, blocks=[0, 1])  # the next lock clears what the killed one left
    assert sorted(q.name for q in tmp_path.iterdir()) == ["out", "src"]
    assert len(deformed_layers(llm.load(out, tokenizer=False)[0])) == 6


def test_cli_streams_a_sharded_folder(tmp_path, gen, capsys):
    src = tiny("llama", tmp_path / "src", gen)
    assert cli.main(["lock", str(src), str(tmp_path / "a"), "--alpha", "100", "-k", "2", "--blocks", "-1"]) == 0
    assert "streamed" in capsys.readouterr().out
    assert len(deformed_layers(llm.load(tmp_path / "a", tokenizer=False)[0])) == 3
    assert cli.main(["lock", str(src), str(tmp_path / "a"), "--alpha", "100", "-k", "2"]) == 0  # replaced, as lock does
    out = capsys.readouterr().out
    assert "no --check when streaming" in out and "c·α·ε = 2.1e-05" in out
    assert len(deformed_layers(llm.load(tmp_path / "a", tokenizer=False)[0])) == 9
    assert cli.main(["lock", str(src), str(tmp_path / "b"), "--stream", "--check", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--check loads the original and the locked model" in err[0]
    bf16 = tmp_path / "bf16"
    llm.load(src, tokenizer=False)[0].to(torch.bfloat16).save_pretrained(bf16, max_shard_size="20KB")
    capsys.readouterr()  # transformers' own "Writing model shards" bar is not the CLI's output
    assert cli.main(["lock", str(bf16), str(tmp_path / "c"), "--alpha", "1e4", "-k", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pass --compute-dtype float32" in err[0] and "max_error" not in err[0], err
    assert cli.main(["lock", str(bf16), str(tmp_path / "c"), "--alpha", "1e4", "-k", "2", "--max-gb", "1e-7",
                     "--compute-dtype", "float32"]) == 2  # precise enough: now the memory cap is what refuses
    assert "raise --max-gb" in capsys.readouterr().err
    assert cli.main(["lock", str(bf16), str(tmp_path / "c"), "--alpha", "1e4", "-k", "2", "--compute-dtype", "float32"]) == 0
    assert cli.main(["lock", str(bf16), str(tmp_path / "d"), "--alpha", "1e4", "-k", "2", "--max-error", "none"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "d" / "config.json").is_file() and "was not checked (--max-error none)" in out, out


def test_load_weights_is_strict_except_for_tied_names(tmp_path, gen):
    from specdef_lite.llm.shards import load_weights, read_weights
    src = tiny("llama", tmp_path / "src", gen)  # tied: lm_head.weight is not in the files
    model, _ = llm.load(src, tokenizer=False)
    state = read_weights(src)
    assert "lm_head.weight" not in state
    load_weights(model, state)  # the tied name is no error
    del state["model.norm.weight"]
    with pytest.raises(ValueError, match="missing.*model.norm.weight"):
        load_weights(model, state)
    with pytest.raises(ValueError, match="unexpected.*extra"):
        load_weights(model, {**read_weights(src), "extra": torch.zeros(1)})
