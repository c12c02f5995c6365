"""Nothing lost, nothing silently wrong on the language-model path: a killed save leaves the previous output, a
folder whose halves disagree is refused, NaN is never "no change", bad paths and devices get one clear sentence.

The fault tests kill a real ``llm.save`` with SIGKILL in a subprocess — at named points (``SPECDEF_LITE_FAULT``)
and once from outside while half of the new weights file is on disk — and check that the previous output loads and gives
the same logits, bit for bit.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
from specdef_lite.common import checkpoint
from specdef_lite import deformed_layers, llm  # noqa: E402

from _tiny_llm import tiny  # noqa: E402

TINY = f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\nfrom _tiny_llm import tiny\n"  # subprocesses
IDS = torch.randint(97, (2, 12), generator=torch.Generator().manual_seed(0))


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


def run_py(code: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", TINY + code], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def good(tmp_path):
    """A good locked output on disk and its logits."""
    model = llm.lock(tiny(seed=4), 100.0, k=2, blocks=[-1])
    out = tmp_path / "out"
    llm.save(model, out)
    return out, logits(model)


def assert_intact(out: Path, z0: torch.Tensor) -> None:
    back, _ = llm.load(out, tokenizer=False)
    assert deformed_layers(back) == ["model.layers.2.self_attn.v_proj", "model.layers.2.self_attn.o_proj",
                                     "model.layers.2.mlp.down_proj"]
    assert torch.equal(logits(back), z0)  # bit-identical: the previous output, untouched
    assert llm.read_metadata(out)["deformed"]["model.layers.2.mlp.down_proj"]["alpha"] == 100.0


SAVE_OVER = """
from specdef_lite import llm
llm.save(llm.lock(tiny(seed=5), 10.0, k=1, blocks=[-2, -1]), {out!r})
print("saved")
"""


@pytest.mark.parametrize("point", [pytest.param("save:config-written", marks=pytest.mark.slow), "save:weights-written",
                                   pytest.param("save:before-swap", marks=pytest.mark.slow)])
def test_a_save_killed_at_any_point_leaves_the_previous_output(good, point):
    out, z0 = good
    p = run_py(SAVE_OVER.format(out=str(out)), env={"SPECDEF_LITE_FAULT": point})
    assert p.returncode == -signal.SIGKILL and "saved" not in p.stdout, p.stderr[-2000:]
    assert_intact(out, z0)
    llm.save(llm.lock(tiny(seed=6), 10.0, blocks=[-1]), out)  # the next save cleans the dead writer's temp folder
    assert not [q.name for q in out.parent.iterdir() if q.name.startswith(".out.")]


def test_a_kill_between_two_renames_is_recovered(good):
    """Where the atomic exchange is missing the swap is two renames; a kill between them is undone on load."""
    out, z0 = good
    code = "from specdef_lite.common import checkpoint\ncheckpoint._exchange = lambda a, b: False\n" + SAVE_OVER
    p = run_py(code.format(out=str(out)), env={"SPECDEF_LITE_FAULT": "save:between-renames"})
    assert p.returncode == -signal.SIGKILL
    assert not out.exists()  # the window the exchange closes
    with pytest.warns(UserWarning, match="restored the previous output of an interrupted save"):
        assert_intact(out, z0)


def test_a_save_killed_from_outside_mid_write_leaves_the_previous_output(good):
    """SIGKILL from another process while half of the new weights file is on disk.

    The writer's safetensors call is slowed down to a stop half-way (it writes the real bytes, half of them,
    and waits), so the kill lands mid-write every time rather than racing a 50 ms write on a busy machine."""
    out, z0 = good
    code = """
import os, tempfile, time
import safetensors.torch as st
from specdef_lite import llm
real = st.save_model
def half_then_stall(model, filename, *a, **k):
    side = os.path.join(tempfile.mkdtemp(), "w.safetensors")
    real(model, side, *a, **k)
    data = open(side, "rb").read()
    with open(filename, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        print("half", filename, flush=True)
        time.sleep(120)
        f.write(data[len(data) // 2:])
st.save_model = half_then_stall
llm.save(llm.lock(tiny(seed=5), 10.0, k=1, blocks=[-2, -1]), {out!r})
print("saved", flush=True)
"""
    proc = subprocess.Popen([sys.executable, "-c", TINY + code.format(out=str(out))], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().split()
    assert line[:1] == ["half"], proc.communicate()[1][-2000:]
    partial = Path(line[1])
    assert partial.parent.name.startswith(".out.tmp-") and partial.stat().st_size > 0  # the new file, half written
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL and "saved" not in proc.communicate()[0]
    assert_intact(out, z0)


def test_saving_again_replaces_the_model_keeps_other_files_and_round_trips_exactly(good):
    out, _ = good
    (out / "notes.txt").write_text("mine\n")
    (out / "model.safetensors.index.json").write_text("{}")  # a stale file of an older, sharded save
    model = llm.lock(tiny(seed=7), 1e3, k=3, blocks=[-2])
    llm.save(model, out)
    assert (out / "notes.txt").read_text() == "mine\n" and not (out / "model.safetensors.index.json").exists()
    back, _ = llm.load(out, tokenizer=False)
    assert torch.equal(logits(back), logits(model))


# --------------------------------------------------------------------------- folders whose halves disagree

def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_folders_whose_weights_and_metadata_disagree_are_refused(good, tmp_path):
    out, _ = good
    plain = tmp_path / "plain"
    tiny().save_pretrained(plain)
    stale = _copy(plain, tmp_path / "stale")
    shutil.copy(out / "specdef.json", stale / "specdef.json")
    with pytest.raises(ValueError, match=r"lists the deformed layer .* holds no .*W_tilde.*different saves"):
        llm.load(stale)
    nometa = _copy(out, tmp_path / "nometa")
    (nometa / "specdef.json").unlink()
    with pytest.raises(ValueError, match=r"holds 3 deformed pairs .* but no specdef.json"):
        llm.load(nometa)  # used to load as a plain Llama whose locked layers were random
    other = tmp_path / "other"
    llm.save(llm.lock(tiny(seed=9), 100.0, k=2, blocks=[-1]), other)
    mixed = _copy(out, tmp_path / "mixed")
    shutil.copy(other / "specdef.json", mixed / "specdef.json")  # same layers and shapes, another save
    with pytest.raises(ValueError, match=r"specdef.json \(save .*\) and model.safetensors \(save .*\) come from "
                                         r"different saves"):
        llm.load(mixed)
    bad = _copy(out, tmp_path / "badjson")
    (bad / "specdef.json").write_text('{"deformed": {"x": {"alpha": Infinity')
    with pytest.raises(ValueError, match=r"specdef.json is not valid JSON"):
        llm.load(bad)
    for name in ("trunc", "trunc_plain"):
        t = _copy(out if name == "trunc" else plain, tmp_path / name)
        w = t / "model.safetensors"
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
        with pytest.raises(ValueError, match=r"model.safetensors is truncated: [\d,]+ bytes on disk, its header "
                                             r"promises [\d,]+"):
            llm.load(t)


def test_save_refuses_a_destroyed_pair_and_only_writes_strict_json(tmp_path):
    half = llm.lock(tiny(), 1e5, blocks=[-1]).half()
    assert float(half.model.layers[2].mlp.down_proj.alpha) == 1e5  # α survives the cast
    with pytest.raises(ValueError, match=r"stored in float16 at alpha=100000: .* nothing written"):
        llm.save(half, tmp_path / "half")
    assert not (tmp_path / "half").exists()
    bf = llm.lock(tiny(), 1e4, blocks=[-1]).to(torch.bfloat16)  # locked in float32, cast afterwards
    llm.save(bf, tmp_path / "bf", max_error=None)  # asked for explicitly: written, in strict JSON
    meta = json.loads((tmp_path / "bf" / "specdef.json").read_text(),
                      parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert {d["alpha"] for d in meta["deformed"].values()} == {1e4}  # not 9984
    with torch.no_grad():
        bf.model.layers[2].mlp.down_proj.W_tilde[0, 0] = float("inf")
    with pytest.raises(ValueError, match="holds NaN or inf"):
        llm.save(bf, tmp_path / "inf", max_error=None)


# --------------------------------------------------------------------------- loading, devices, checks

def test_paths_devices_and_tokenizers_get_clear_answers(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^no such folder: .*nope/x$"):
        llm.load(tmp_path / "nope" / "x")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        llm.load(str(tmp_path / "nope") + "/")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no config.json: not a saved model folder"):
        llm.load(tmp_path / "empty")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a model folder"):
        llm.load(tmp_path / "f.txt")
    with pytest.raises(ValueError, match="unknown device 'bogus'"):
        llm.resolve_device("bogus")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda' is not available"):
            llm.load(tmp_path / "empty", device="cuda")  # refused before the folder is even read
    plain = tmp_path / "plain"
    tiny().save_pretrained(plain)
    model, tok = llm.load(plain, dtype="float64")
    assert tok is None and model.dtype == torch.float64  # no tokenizer files: None, as documented
    gpt2 = tmp_path / "gpt2"
    transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=97, n_positions=32, n_embd=24, n_layer=2,
                                                         n_head=4)).save_pretrained(gpt2)
    assert llm.load(gpt2)[1] is None  # transformers alone builds a 1-token GPT2Tokenizer here


def test_nan_logits_are_never_reported_as_no_change():
    ref, broken = tiny(), tiny()
    with torch.no_grad():
        broken.lm_head.weight[0, 0] = float("nan")
    ch = llm.logit_change(ref, broken, IDS)
    assert ch.relative != ch.relative and ch.max_abs != ch.max_abs and not ch.finite  # NaN, not 0
    same = llm.logit_change(ref, tiny(), IDS)
    assert same.relative == 0.0 and same.max_abs == 0.0 and same.finite
    with pytest.raises(ValueError, match="non-empty"):
        llm.logit_change(ref, ref, IDS[:0])
    with pytest.raises(ValueError, match="batch_size must be a positive"):
        llm.logit_change(ref, ref, IDS, batch_size=0)


def test_lm_head_of_a_real_vocabulary_is_refused_before_allocating():
    model = tiny(vocab=49152, hidden=16, layers=1).to("meta")  # meta: even a missing guard allocates nothing
    with pytest.raises(ValueError, match=r"locking 'lm_head' builds its compensation C of 49,152×49,152 = 19.3 GB "
                                         r"in float64.*leave 'lm_head' out of targets"):
        llm.lock(model, 10.0, 1, targets="lm_head")


def test_target_patterns_and_blocks_are_checked():
    with pytest.raises(ValueError, match=r"targets pattern '\(' is not a valid regular expression"):
        llm.lock(tiny(), 10.0, targets="(")
    with pytest.raises(ValueError, match="non-empty"):
        llm.match_targets(tiny(), "")
    with pytest.raises(ValueError, match="block index must be a finite integer"):
        llm.target_names(tiny(), blocks=[1.5])


def test_checkpoint_writes_single_files_atomically(tmp_path):
    target = tmp_path / "a" / "curves.json"
    checkpoint.atomic_file(target, "[1]\n")
    checkpoint.atomic_file(target, "[2]\n")
    assert target.read_text() == "[2]\n" and [p.name for p in target.parent.iterdir()] == ["curves.json"]
    with pytest.raises(ValueError, match="is a folder"):
        checkpoint.atomic_file(tmp_path, "x")


_ADDER = """
import json, sys, time
from pathlib import Path
from specdef_lite.common import checkpoint
table, me = Path(sys.argv[1]), sys.argv[2]
for i in range(25):
    with checkpoint.exclusive(table):
        rows = json.loads(table.read_text()) if table.exists() else {}
        time.sleep(0.002)  # widen the read-modify-write window
        rows[f"{me}-{i}"] = i
        checkpoint.atomic_file(table, json.dumps(rows))
"""


def test_exclusive_lets_processes_add_to_one_table_without_losing_a_row(tmp_path):
    """Three processes read-modify-write one JSON table (as parallel test workers do): every row survives."""
    table = tmp_path / "times.json"
    procs = [subprocess.Popen([sys.executable, "-c", _ADDER, str(table), f"p{j}"]) for j in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    assert len(json.loads(table.read_text())) == 75
    assert sorted(p.name for p in tmp_path.iterdir()) == ["times.json", "times.json.lock"]


def _random_task(n=12, seq_len=8, vocab=97):
    tokens = torch.randint(vocab, (n, seq_len), generator=torch.Generator().manual_seed(0))
    return llm.TextTask("random", ("random",), seq_len, tokens[:8], tokens[8:10], tokens[10:])


@pytest.mark.parametrize("bad, says", [
    (dict(lr=float("inf")), "lr must be a positive finite number"),
    (dict(lr=float("nan")), "lr must be a positive finite number"),
    (dict(eval_every=0), "eval_every must be a positive finite integer"),
    (dict(steps=2.5), "steps must be a positive finite integer"),
    (dict(blocks=[9]), "block 9 out of range: the model has 3 blocks"),
    (dict(blocks=[-4]), "block -4 out of range"),
    (dict(blocks=[]), "blocks must be a non-empty list"),
])
def test_attack_refuses_what_it_cannot_run_in_one_sentence(bad, says):
    kw = dict(lr=1e-3, steps=2, batch_size=2, eval_every=1, progress=False) | bad
    with pytest.raises(ValueError, match=says):  # before: ZeroDivisionError, a silent wrap to block 0, a run at η = inf
        llm.attack(tiny(seed=1), _random_task(), **kw)


def test_shakespeare_task_names_a_missing_tokenizer():
    with pytest.raises(ValueError, match="tokenizer must have encode"):
        llm.shakespeare_task(None, "macbeth", seq_len=16)

