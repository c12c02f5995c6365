"""A hostile user's sweep: bad values for every argument of every public entry point, one line per outcome.

Not a test (pytest collects only ``test_*.py``); the assertions live in ``tests/test_robust_*.py``. Run it to
see what each input gets now, e.g. before and after a change, and paste the table into a report:

    .venv/bin/python tests/sweep_bad_inputs.py --json /tmp/now.json          # this checkout
    PYTHONPATH=/path/to/old/tree .venv/bin/python tests/sweep_bad_inputs.py --json /tmp/before.json
    .venv/bin/python tests/sweep_bad_inputs.py --table /tmp/before.json /tmp/now.json

Each case is run in this process unless it needs a fresh one (the CLI, memory, killed writes). An outcome is
``ok: <what came back>`` or ``<ExceptionType>: <first line of its message>``; the CLI's is its exit status,
how many lines it wrote to stderr, and whether they held a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

if __name__ == "__main__":
    import torch
    torch.set_num_threads(1)
    os.environ.setdefault("SPECDEF_LITE_HEADLESS", "1")


def _first(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:160] if msg else ''}"


def _describe(v) -> str:
    import torch
    from torch import nn
    if isinstance(v, nn.Module):
        params = list(v.parameters())
        finite = all(torch.isfinite(p).all() for p in params if p.is_floating_point())
        return f"ok: {type(v).__name__} ({'finite' if finite else 'NON-FINITE'} weights)"
    if isinstance(v, torch.Tensor):
        return f"ok: tensor{tuple(v.shape)} {'finite' if torch.isfinite(v).all() else 'NON-FINITE'}"
    s = repr(v)
    return "ok: " + (s[:150] + "…" if len(s) > 150 else s)


def run_case(fn) -> str:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = _describe(fn())
        except Exception as e:  # noqa: BLE001 - recording what a user would see
            out = _first(e)
    mine = [w for w in caught if "specdef" in str(w.category).lower() or "PrecisionWarning" in str(w.category)]
    if mine:
        out += f"  [warning: {str(mine[0].message)[:120]}]"
    return out


def run_sub(code: str, *, mem_gb: float | None = None, timeout: float = 300) -> str:
    """Run python code in a fresh process (optionally under an address-space limit); report how it ended."""
    pre = ""
    if mem_gb:
        pre = (f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({int(mem_gb * 2**30)}, "
               f"{int(mem_gb * 2**30)}))\n")
    p = subprocess.run([sys.executable, "-c", pre + code], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    err = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    if p.returncode == 0:
        return "ok: " + (p.stdout.strip().splitlines() or [""])[-1][:150]
    last = err[-1][:160] if err else f"killed (rc {p.returncode})"
    return f"rc {p.returncode}: {last}" + ("  [traceback]" if any("Traceback" in e for e in err) else "")


def run_cli(args: list[str], timeout: float = 600) -> str:
    p = subprocess.run([sys.executable, "-m", "specdef_lite.llm.cli", *args], capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    err = [ln for ln in p.stderr.strip().splitlines() if ln.strip() and not (ln.startswith("(") and ln.endswith(" s)"))]
    tb = any("Traceback" in e for e in err)
    shown = err[-1][:170] if err else (p.stdout.strip().splitlines() or [""])[-1][:170]
    return f"exit {p.returncode}, {len(err)} stderr line(s){' + TRACEBACK' if tb else ''}: {shown}"


# ------------------------------------------------------------------------------------------------ fixtures

def tiny_llama(seed=0, dtype=None):
    import torch
    import transformers
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=True, attn_implementation="eager")
    m = transformers.LlamaForCausalLM(cfg).eval()
    return m if dtype is None else m.to(dtype)


def make_folders(root: Path) -> dict[str, Path]:
    """Plain and locked tiny-Llama folders, and broken copies of them."""
    import shutil

    import torch
    from specdef_lite import llm
    f = {}
    base = tiny_llama()
    f["plain"] = root / "plain"
    base.save_pretrained(f["plain"])
    f["locked"] = root / "locked"
    llm.save(llm.lock(base, 100.0, k=2, blocks=[-1]), f["locked"])
    f["trunc"] = root / "trunc"
    shutil.copytree(f["locked"], f["trunc"])
    w = f["trunc"] / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    f["trunc_plain"] = root / "trunc_plain"
    shutil.copytree(f["plain"], f["trunc_plain"])
    w = f["trunc_plain"] / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    f["stale"] = root / "stale"  # plain weights + an old specdef.json (the reverse of a killed save)
    shutil.copytree(f["plain"], f["stale"])
    shutil.copy(f["locked"] / "specdef.json", f["stale"] / "specdef.json")
    f["nometa"] = root / "nometa"  # locked weights, specdef.json lost (what a killed save used to leave)
    shutil.copytree(f["locked"], f["nometa"])
    (f["nometa"] / "specdef.json").unlink()
    f["badjson"] = root / "badjson"
    shutil.copytree(f["locked"], f["badjson"])
    (f["badjson"] / "specdef.json").write_text('{"format": "specdef-lite/1", "deformed": {"x": {"alpha": Infinity')
    f["empty"] = root / "empty"
    f["empty"].mkdir()
    f["bf16"] = root / "bf16"
    tiny_llama(dtype=torch.bfloat16).save_pretrained(f["bf16"])
    f["file"] = root / "a_file.txt"
    f["file"].write_text("not a folder\n")
    return f


# ------------------------------------------------------------------------------------------------ cases

def library_cases(root: Path) -> list[tuple[str, str, object]]:
    import numpy as np
    import torch
    from torch import nn

    import specdef_lite as sl
    from specdef_lite import llm

    g = torch.Generator().manual_seed(0)

    def net(dtype=torch.float64):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)

    def fx(m, dtype=torch.float64):
        x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1), dtype=dtype)
        return m(x)

    def changed(a, b, dtype=torch.float64):
        with torch.no_grad():
            za, zb = fx(a, dtype).double(), fx(b, dtype).double()
        return f"max|Δf| = {float((za - zb).abs().max()):.3g}"

    class MyLinear(nn.Linear):
        def forward(self, x):
            return torch.relu(super().forward(x))

    cases: list[tuple[str, str, object]] = []
    S = "sl.specdef"
    for a in (0, -1.0, float("nan"), float("inf"), 1e300, 1e-300, "1e4", True, None, np.float32(100.0),
              np.int64(10), torch.tensor(100.0), torch.tensor([1.0, 2.0]), 1 + 2j):
        cases.append((S, f"alpha={a!r}", lambda a=a: sl.specdef(net(), a)))
    for k in (0, -1, 1.5, True, np.int64(1), 10 ** 9, "1", None):
        cases.append((S, f"k={k!r}", lambda k=k: sl.specdef(net(), 10.0, k)))
    for t in ("nope", [], ["0", "0"], 5, "1", "", ("0", "2"), {"0"}):
        cases.append((S, f"targets={t!r}", lambda t=t: sl.specdef(net(), 10.0, targets=t)))
    cases.append((S, "targets=predicate raising", lambda: sl.specdef(net(), 10.0, targets=lambda n, m: 1 / 0)))
    cases.append((S, "method='bogus'", lambda: sl.specdef(net(), 10.0, method="bogus")))
    cases.append((S, "compute_dtype='float64' (str)", lambda: sl.specdef(net(torch.float32), 10.0, compute_dtype="float64")))
    cases.append((S, "compute_dtype=torch.int32", lambda: sl.specdef(net(), 10.0, compute_dtype=torch.int32)))
    cases.append((S, "model=None", lambda: sl.specdef(None, 10.0)))
    cases.append((S, "model=a tensor", lambda: sl.specdef(torch.ones(3, 3), 10.0)))
    cases.append((S, "model without Linear (nn.ReLU)", lambda: sl.specdef(nn.ReLU(), 10.0)))

    def nan_net():
        m = net()
        with torch.no_grad():
            m[0].weight[0, 0] = float("nan")
        return m
    cases.append((S, "NaN weight", lambda: sl.specdef(nan_net(), 10.0)))

    def zero_net():
        m = net()
        with torch.no_grad():
            m[0].weight.zero_()
        return m
    cases.append((S, "all-zero weight (rank 0)", lambda: sl.specdef(zero_net(), 10.0)))
    cases.append((S, "float16 layer, alpha=1e6", lambda: (lambda m: changed(m, sl.specdef(m, 1e6), torch.float16))(
        net(torch.float16))))
    cases.append((S, "bfloat16 layer, alpha=1e4", lambda: (lambda m: changed(m, sl.specdef(m, 1e4), torch.bfloat16))(
        net(torch.bfloat16))))
    cases.append((S, "float32 layer, alpha=1e7", lambda: (lambda m: changed(m, sl.specdef(m, 1e7), torch.float32))(
        net(torch.float32))))
    cases.append((S, "float16, alpha=1e6, compute_dtype=float32", lambda: (lambda m: changed(
        m, sl.specdef(m, 1e6, compute_dtype=torch.float32), torch.float16))(net(torch.float16))))

    def subclass():
        m = net()
        m[2] = MyLinear(8, 3).double()
        return m
    cases.append((S, "Linear subclass with its own forward", lambda: (lambda m: changed(m, sl.specdef(m, 10.0)))(subclass())))

    def hooked():
        m = net()
        m[2].register_forward_hook(lambda mod, i, o: o * 2)
        return m
    cases.append((S, "Linear with a forward hook", lambda: (lambda m: changed(m, sl.specdef(m, 10.0)))(hooked())))

    def prehooked():
        m = net()
        m[2].register_forward_pre_hook(lambda mod, i: (i[0] * 3,))
        return m
    cases.append((S, "Linear with a forward pre-hook", lambda: (lambda m: changed(m, sl.specdef(m, 10.0)))(prehooked())))

    def mha_case():
        m = nn.MultiheadAttention(8, 2, batch_first=True).double().eval()
        x = torch.randn(2, 4, 8, generator=g, dtype=torch.float64)
        locked = sl.specdef(m, 10.0)
        return float((locked(x, x, x)[0] - m(x, x, x)[0]).abs().max())
    cases.append((S, "nn.MultiheadAttention", mha_case))

    def tel_case():
        m = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True).double().eval()
        x = torch.randn(2, 4, 8, generator=g, dtype=torch.float64)
        locked = sl.specdef(m, 10.0)
        with torch.no_grad():
            return float((locked(x) - m(x)).abs().max())
    cases.append((S, "nn.TransformerEncoderLayer", tel_case))

    def tel_linear1():
        m = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True).double().eval()
        x = torch.randn(2, 4, 8, generator=g, dtype=torch.float64)
        locked = sl.specdef(m, 10.0, targets=["linear1"])
        with torch.no_grad():
            return float((locked(x) - m(x)).abs().max())
    cases.append((S, "TransformerEncoderLayer, targets=['linear1']", tel_linear1))

    def aliased():
        lin = nn.Linear(6, 6).double()
        m = nn.Sequential(lin, nn.Tanh(), lin)
        locked = sl.specdef(m, 10.0)
        return f"deformed={sl.deformed_layers(locked)}, raw Linear left={[n for n, x in locked.named_modules(remove_duplicate=False) if type(x) is nn.Linear]}, {changed(m, locked)}"
    cases.append((S, "one Linear registered under two names", aliased))

    def parametrized():
        from torch.nn.utils import parametrizations
        m = net()
        parametrizations.weight_norm(m[2])
        return changed(m, sl.specdef(m, 10.0))
    cases.append((S, "weight_norm-parametrized Linear", parametrized))

    def lm_head_memory():
        return run_sub("import torch, specdef_lite as sl\nfrom torch import nn\n"
                       "m = nn.Linear(8, 40000)\nsl.specdef(m, 10.0)\nprint('locked')", mem_gb=3)
    cases.append((S, "Linear(8, 40000): C would be 40000² (12.8 GB f64), 3 GB limit", lm_head_memory))

    SO = "sl.scale_only"
    for a in (0, float("nan"), float("inf")):
        cases.append((SO, f"alpha={a!r}", lambda a=a: sl.scale_only(net(), a)))
    cases.append((SO, "float16, alpha=1e6", lambda: sl.scale_only(net(torch.float16), 1e6)))
    cases.append((SO, "Linear subclass with own forward", lambda: sl.scale_only(subclass(), 10.0)))

    def cast(dtype):
        locked = sl.specdef(net(), 1e5 if dtype == torch.float16 else 1e4)
        locked.to(dtype)
        return f"alpha after cast = {float(locked[0].alpha)!r}"
    cases.append(("SpecDefLinear cast", "locked at 1e5, .half()", lambda: cast(torch.float16)))
    cases.append(("SpecDefLinear cast", "locked at 1e4, .to(bfloat16)", lambda: cast(torch.bfloat16)))

    def input_dtype():
        return sl.specdef(net(), 10.0)(torch.ones(2, 6, dtype=torch.float32))
    cases.append(("SpecDefLinear forward", "float32 input to a float64 layer", input_dtype))
    cases.append(("SpecDefLinear forward", "wrong input width", lambda: sl.specdef(net(), 10.0)(torch.ones(2, 5, dtype=torch.float64))))

    F = "sl.fuse"
    cases.append((F, "model=None", lambda: sl.fuse(None)))
    cases.append((F, "plain model", lambda: sl.fuse(net())))
    cases.append((F, "injected twice", lambda: sl.fuse(sl.inject(sl.inject(sl.specdef(net(), 10.0))))))
    I = "sl.inject"

    def inject2():
        m = net()
        twice = sl.inject(sl.inject(sl.specdef(m, 10.0)))
        return changed(m, twice)
    cases.append((I, "inject(inject(locked)) then forward", inject2))
    cases.append((I, "plain model, targets=None", lambda: sl.inject(net())))
    cases.append((I, "targets=5", lambda: sl.inject(net(), targets=5)))
    cases.append((I, "targets='nope'", lambda: sl.inject(net(), targets="nope")))
    cases.append((I, "targets=['1'] (Tanh)", lambda: sl.inject(net(), targets=["1"])))
    cases.append((I, "model=None", lambda: sl.inject(None)))
    D = "sl.detect"
    cases.append((D, "NaN weight", lambda: sl.detect(nan_net())))
    cases.append((D, "gap=0", lambda: sl.detect(net(), gap=0)))
    cases.append((D, "gap=nan", lambda: sl.detect(sl.specdef(net(), 1e3), gap=float("nan"))))
    cases.append((D, "unit=2", lambda: sl.detect(sl.specdef(net(), 1e3), unit=2)))
    cases.append(("sl.param_overhead", "before has no parameters", lambda: sl.param_overhead(nn.ReLU(), net())))
    cases.append(("sl.deformed_layers", "model=None", lambda: sl.deformed_layers(None)))
    cases.append(("sl.spectrum_ratio", "name not in model", lambda: sl.spectrum_ratio(net(), sl.specdef(net(), 10.0), "9")))
    cases.append(("sl.spectrum_ratio", "rank-deficient W (zero singular values)", lambda: (lambda m: sl.spectrum_ratio(
        m, sl.specdef(m, 10.0, targets=["0"]), "0"))(_lowrank(net()))))

    # --- language models (tiny Llama folders)
    f = make_folders(root)
    L = "llm.load"
    cases.append((L, "path that does not exist (./no/such/dir)", lambda: llm.load(root / "no" / "such" / "dir")))
    cases.append((L, "relative name that does not exist ('not_here')", lambda: llm.load("not_here", tokenizer=False)))
    cases.append((L, "empty folder", lambda: llm.load(f["empty"])))
    cases.append((L, "a file, not a folder", lambda: llm.load(f["file"])))
    cases.append((L, "truncated model.safetensors (locked)", lambda: llm.load(f["trunc"])))
    cases.append((L, "truncated model.safetensors (plain)", lambda: llm.load(f["trunc_plain"])))
    cases.append((L, "plain weights + stale specdef.json", lambda: llm.load(f["stale"])))
    cases.append((L, "locked weights, specdef.json missing", lambda: llm.load(f["nometa"])))
    cases.append((L, "specdef.json not JSON", lambda: llm.load(f["badjson"])))
    cases.append((L, "folder without tokenizer", lambda: f"tokenizer = {llm.load(f['plain'])[1]!r}"[:120]))
    cases.append((L, "device='bogus'", lambda: llm.load(f["plain"], device="bogus", tokenizer=False)))
    cases.append((L, "device='cuda' (CPU-only torch)", lambda: llm.load(f["plain"], device="cuda", tokenizer=False)))
    cases.append((L, "device='cuda:7'", lambda: llm.load(f["plain"], device="cuda:7", tokenizer=False)))
    cases.append((L, "dtype='float16' (str)", lambda: llm.load(f["plain"], dtype="float16", tokenizer=False)))
    cases.append(("llm.resolve_device", "'bogus'", lambda: llm.resolve_device("bogus")))
    cases.append(("llm.resolve_device", "'cuda' without CUDA", lambda: llm.resolve_device("cuda")))
    cases.append(("llm.resolve_device", "None", lambda: llm.resolve_device(None)))

    LK = "llm.lock"
    cases.append((LK, "targets='(' (bad regex)", lambda: llm.lock(tiny_llama(), 10.0, targets="(")))
    cases.append((LK, "targets='lm_head' of a tied 97-vocab model", lambda: (lambda m: changed_llm(m, llm.lock(
        m, 10.0, targets="lm_head")))(tiny_llama(dtype=torch.float64))))
    cases.append((LK, "blocks=[99]", lambda: llm.lock(tiny_llama(), 10.0, blocks=[99])))
    cases.append((LK, "blocks=[]", lambda: llm.lock(tiny_llama(), 10.0, blocks=[])))
    cases.append((LK, "kinds=['nope']", lambda: llm.lock(tiny_llama(), 10.0, kinds=["nope"])))
    cases.append((LK, "targets=['model.norm'] (RMSNorm)", lambda: llm.lock(tiny_llama(), 10.0, targets=["model.norm"])))
    cases.append((LK, "bfloat16 model, alpha=1e4", lambda: (lambda m: changed_llm(m, llm.lock(m, 1e4, blocks=[-1])))(
        tiny_llama(dtype=torch.bfloat16))))
    cases.append((LK, "bfloat16 model, alpha=1e4, compute_dtype=float32", lambda: (lambda m: changed_llm(
        m, llm.lock(m, 1e4, blocks=[-1], compute_dtype=torch.float32)))(tiny_llama(dtype=torch.bfloat16))))
    cases.append((LK, "lm_head of a 49152-token vocabulary (3 GB limit)", lambda: run_sub(
        "import torch, transformers\nfrom specdef_lite import llm\n"
        "cfg = transformers.LlamaConfig(vocab_size=49152, hidden_size=16, intermediate_size=16, num_hidden_layers=1,"
        " num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)\n"
        "m = transformers.LlamaForCausalLM(cfg)\nllm.lock(m, 10.0, 1, targets='lm_head')\nprint('locked')", mem_gb=3)))

    LC = "llm.logit_change"

    def nan_model():
        m = tiny_llama()
        with torch.no_grad():
            m.lm_head.weight[0, 0] = float("nan")  # tied: the embedding row 0 too
        return m
    cases.append((LC, "other model gives NaN logits", lambda: llm.logit_change(tiny_llama(), nan_model(),
                                                                              torch.randint(97, (2, 8), generator=g))))
    cases.append((LC, "empty input_ids", lambda: llm.logit_change(tiny_llama(), tiny_llama(), torch.zeros(0, 8, dtype=torch.long))))
    cases.append((LC, "batch_size=0", lambda: llm.logit_change(tiny_llama(), tiny_llama(),
                                                               torch.randint(97, (2, 8), generator=g), batch_size=0)))

    SV = "llm.save"

    def save_half():
        m = llm.lock(tiny_llama(), 1e5, blocks=[-1]).half()
        out = root / "half_saved"
        llm.save(m, out)
        text = (out / "specdef.json").read_text()
        return f"wrote specdef.json; 'Infinity' in it: {'Infinity' in text}"
    cases.append((SV, "locked at 1e5 then .half()", save_half))

    def save_bf16():
        m = llm.lock(tiny_llama(), 1e4, blocks=[-1]).to(torch.bfloat16)
        out = root / "bf16_saved"
        llm.save(m, out)
        return f"wrote; alpha in specdef.json = {json.loads((out / 'specdef.json').read_text())['deformed']['model.layers.2.self_attn.v_proj']['alpha']}"
    cases.append((SV, "locked at 1e4 then .to(bfloat16)", save_bf16))
    cases.append((SV, "folder is an existing file", lambda: llm.save(llm.lock(tiny_llama(), 10.0, blocks=[-1]), f["file"])))
    cases.append((SV, "model without config (plain nn.Sequential)", lambda: llm.save(sl.specdef(net(), 10.0), root / "seq")))
    cases.append((SV, "kill -9 mid-write over a good output", lambda: killed_save(root)))
    cases.append(("llm.match_targets", "pattern='('", lambda: llm.match_targets(tiny_llama(), "(")))
    cases.append(("llm.match_targets", "pattern='' ", lambda: llm.match_targets(tiny_llama(), "")))
    cases.append(("llm.target_names", "blocks=[3] of 3", lambda: llm.target_names(tiny_llama(), blocks=[3])))
    cases.append(("llm.blocks_of", "nn.Linear (no ModuleList)", lambda: llm.blocks_of(nn.Linear(2, 2))))

    A = "llm.attack"

    def task():
        class Tok:
            def encode(self, text):
                return [min(ord(c), 96) for c in text]
        t = llm.shakespeare_task(Tok(), seq_len=16, heldout=2, utility=2)
        return t
    for kw in ({"eval_every": 0}, {"lr": float("nan")}, {"lr": -1e-5}, {"steps": 0}, {"batch_size": 0},
               {"blocks": [9]}, {"lr": float("inf")}):
        args = {"lr": 1e-3, "steps": 2, "batch_size": 2, "eval_every": 1, **kw}
        cases.append((A, ", ".join(f"{k}={v!r}" for k, v in kw.items()),
                      lambda args=args: llm.attack(tiny_llama(), task(), **args)))
    cases.append(("llm.shakespeare_task", "tokenizer=None", lambda: llm.shakespeare_task(None, seq_len=16)))
    cases.append(("llm.shakespeare_task", "vocabulary-1 tokenizer", lambda: llm.shakespeare_task(
        type("T", (), {"encode": lambda self, s: []})(), seq_len=16)))
    return cases


def _lowrank(m):
    import torch
    with torch.no_grad():
        u = m[0].weight[:, :1].clone()
        m[0].weight.copy_(u @ torch.ones(1, 6, dtype=u.dtype))  # (8, 1) @ (1, 6): rank one
    return m


def changed_llm(a, b):
    import torch
    ids = torch.randint(97, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        za, zb = a(ids).logits.double(), b(ids).logits.double()
    return f"relative logit change {float((zb - za).norm() / za.norm()):.3g}"


def killed_save(root: Path) -> str:
    """Save a locked model over a good output and SIGKILL the writer while it writes the weights."""
    code = f"""
import os, signal, sys, torch
sys.path.insert(0, {str(Path(__file__).parent)!r})
from sweep_bad_inputs import tiny_llama
from specdef_lite import llm
import safetensors.torch as st
real = st.save_model
def dying(model, filename, *a, **k):
    real(model, filename, *a, **k)
    with open(filename, "r+b") as fh:  # a partly written file, then the process is killed
        fh.truncate(os.path.getsize(filename) // 2)
    os.kill(os.getpid(), signal.SIGKILL)
st.save_model = dying
m = llm.lock(tiny_llama(seed=5), 10.0, k=1, blocks=[-1])
llm.save(m, {str(root / 'killed')!r})
"""
    import torch
    from specdef_lite import llm
    good = llm.lock(tiny_llama(seed=4), 100.0, k=2, blocks=[-1])
    llm.save(good, root / "killed")
    ids = torch.randint(97, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z0 = good(ids).logits
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    try:
        back, _ = llm.load(root / "killed", tokenizer=False)
        with torch.no_grad():
            z1 = back(ids).logits
        return (f"writer rc {p.returncode}; reload: {len(llm.deformed_layers(back))} deformed layers, "
                f"max|Δlogits| vs the good output = {float((z1 - z0).abs().max()):.3g}")
    except Exception as e:  # noqa: BLE001
        return f"writer rc {p.returncode}; reload: {_first(e)}"


def explorer_cases() -> list[tuple[str, str, object]]:
    import numpy as np

    from specdef_lite.optim import precision, problems
    from specdef_lite.course import widgets
    from specdef_lite.experiments.race import race_table
    from specdef_lite.experiments.tuning import lr_grid

    p = problems.teacher_student(width=4, n=16, seed=0)
    rt = race_table(p, [10.0, 100.0], {"sgd": lr_grid(1e-5, 1.0, 2)}, steps=60)
    vt = precision.vanishing_table(p.released, p.task, [1.0, 1e8], {"sgd": 0.3}, dtypes=["float32"])
    cases = []

    def after(make, bad: dict, good: dict):
        def run():
            e = make()
            try:
                e.set(**bad)
                first = "accepted"
            except Exception as ex:  # noqa: BLE001
                first = _first(ex)
            try:
                e.set(**good)
                e.static_figure()
                then = "later valid set()+static_figure() work"
            except Exception as ex:  # noqa: BLE001
                then = "later valid set() FAILS: " + _first(ex)
            return f"{first} | {then} | state {e.state()}"
        return run

    makers = {
        "ConditioningExplorer": (lambda: widgets.ConditioningExplorer(live=False), {"lr": 0.05}),
        "DeformationExplorer": (lambda: widgets.DeformationExplorer(p, alpha_max=1e2, per_decade=1, live=False),
                                {"alpha": 10.0}),
        "RaceExplorer": (lambda: widgets.RaceExplorer(rt, live=False), {"alpha": 100.0}),
        "PrecisionExplorer": (lambda: widgets.PrecisionExplorer(vt, live=False), {"alpha": 1.0}),
    }
    bads = {
        "ConditioningExplorer": [{"lr": 0}, {"lr": -1}, {"lr": float("nan")}, {"kappa": 0}, {"kappa": float("inf")},
                                 {"optimizer": "rmsprop"}, {"lr": "fast"}, {"nope": 1}],
        "DeformationExplorer": [{"alpha": 0}, {"alpha": float("nan")}, {"alpha": 1e12}, {"k": 0}, {"k": 99},
                                {"k": 1.5}, {"alpha": "big"}],
        "RaceExplorer": [{"optimizer": "rmsprop"}, {"lr": 0}, {"lr": float("nan")}, {"alpha": -1}, {"alpha": 1e9}],
        "PrecisionExplorer": [{"dtype": "int8"}, {"dtype": "float16"}, {"optimizer": "adam"}, {"alpha": 0},
                              {"alpha": float("inf")}],
    }
    for name, (make, good) in makers.items():
        for bad in bads[name]:
            cases.append((f"{name}.set", ", ".join(f"{k}={v!r}" for k, v in bad.items()), after(make, bad, good)))
    _ = np
    return cases


def exercise_cases() -> list[tuple[str, str, object]]:
    import numpy as np
    import torch

    from specdef_lite.course.exercises import check
    cases = []
    E = "exercises.check"
    cases.append((E, "05.smallest_update, 0.0, dtype=float32", lambda: str(check("05.smallest_update", 0.0, dtype="float32"))))
    cases.append((E, "05.smallest_update, 2**-24, dtype=float32", lambda: str(check("05.smallest_update", 2 ** -24, dtype="float32"))))
    cases.append((E, "05.smallest_update, -0.004", lambda: str(check("05.smallest_update", -0.004))))
    cases.append((E, "05.smallest_update, dtype='int8'", lambda: str(check("05.smallest_update", 0.004, dtype="int8"))))
    cases.append((E, "01.stable_step, -0.04", lambda: str(check("01.stable_step", -0.04))))
    cases.append((E, "01.stable_step, 0", lambda: str(check("01.stable_step", 0))))
    cases.append((E, "01.stable_step, True", lambda: str(check("01.stable_step", True))))
    cases.append((E, "01.stable_step, tensor([0.04, 0.04])", lambda: str(check("01.stable_step", torch.tensor([0.04, 0.04])))))
    cases.append((E, "01.stable_step, np.array([0.04])", lambda: str(check("01.stable_step", np.array([0.04])))))
    cases.append((E, "01.stable_step, lam_max=0", lambda: str(check("01.stable_step", 0.04, lam_max=0))))
    cases.append((E, "01.stable_step, lam_max=-50", lambda: str(check("01.stable_step", 0.04, lam_max=-50))))
    cases.append((E, "01.stable_step, bogus context kwarg", lambda: str(check("01.stable_step", 0.04, lammax=50))))
    cases.append((E, "02.sigma_after, inf", lambda: str(check("02.sigma_after", float("inf")))))
    cases.append((E, "02.sigma_after, alpha=0 context", lambda: str(check("02.sigma_after", 2.0, alpha=0))))
    cases.append((E, "03.max_stable_lr, '0.01' (str)", lambda: str(check("03.max_stable_lr", "0.01"))))
    cases.append((E, "03.max_stable_lr, -0.01", lambda: str(check("03.max_stable_lr", -0.01))))
    cases.append((E, "04.param_bill, 16384.5", lambda: str(check("04.param_bill", 16384.5))))
    cases.append((E, "04.param_bill, L=0", lambda: str(check("04.param_bill", 0, L=0))))
    cases.append((E, "unknown name", lambda: str(check("99.nope", 1))))
    cases.append((E, "name=None", lambda: str(check(None, 1))))
    return cases


def other_cases() -> list[tuple[str, str, object]]:
    """Entry points other helpers own (curvature, training, problems, precision): swept to report, not fixed here."""
    import torch

    import specdef_lite as sl
    from specdef_lite.optim import precision, problems
    model, task = problems.quadratic([1.0, 10.0], seed=0)
    toy = problems.teacher_student(width=4, n=16, seed=0)
    loss_fn, theta = sl.loss_fn_of(toy.released, toy.task)
    cases = [
        ("sl.make_optimizer", "name='bogus'", lambda: sl.make_optimizer("bogus", model.parameters(), 0.1)),
        ("sl.make_optimizer", "lr=nan", lambda: sl.make_optimizer("sgd", model.parameters(), float("nan"))),
        ("sl.train", "steps=-1", lambda: sl.train(model, task, "sgd", -1, lr=0.1)),
        ("sl.train", "lr=1e9 (divergence)", lambda: sl.train(problems.quadratic([1.0, 10.0], seed=0)[0], task, "sgd",
                                                             20, lr=1e9).diverged_at),
        ("sl.train", "optimizer='sgd' without lr", lambda: sl.train(model, task, "sgd", 5)),
        ("sl.lr_sweep", "lrs=[]", lambda: sl.lr_sweep(toy.released, toy.task, "sgd", [], 5, 0.1)),
        ("sl.hessian", "too many parameters", lambda: sl.hessian(loss_fn, theta, max_params=10)),
        ("sl.hessian", "per-sample (non-scalar) loss", lambda: sl.hessian(
            lambda p: (torch.func.functional_call(toy.released, p, (toy.task.inputs,)) - toy.task.targets) ** 2,
            theta).shape),
        ("sl.top_eigenvalues", "k=0", lambda: sl.top_eigenvalues(loss_fn, theta, k=0)),
        ("sl.top_eigenvalues", "method='bogus'", lambda: sl.top_eigenvalues(loss_fn, theta, method="bogus")),
        ("sl.select_params", "pattern matching nothing", lambda: sl.select_params(toy.released, "nope")),
        ("problems.quadratic", "eigenvalues=[]", lambda: problems.quadratic([])),
        ("problems.quadratic", "eigenvalues=[1, inf]", lambda: problems.quadratic([1.0, float("inf")])),
        ("problems.quadratic", "eigenvalues=[-1, 1]", lambda: problems.quadratic([-1.0, 1.0])),
        ("problems.teacher_student", "width=0", lambda: problems.teacher_student(width=0)),
        ("precision.smallest_update", "dtype='int8'", lambda: precision.smallest_update("int8")),
        ("precision.forward_error", "alpha=0", lambda: precision.forward_error(toy.released, 0.0, toy.task.inputs,
                                                                               "float32")),
        ("sl.theorem3_bound", "unknown layer names", lambda: sl.theorem3_bound(loss_fn, theta, "9", "8")),
    ]
    return cases


def cli_cases(root: Path) -> list[tuple[str, str, object]]:
    f = {k: root / k for k in ("plain", "locked", "trunc", "stale", "nometa", "badjson", "empty", "bf16")}
    f["file"] = root / "a_file.txt"
    C = "specdef-lite"
    out = str(root / "cli_out")
    cases = [
        (C, "inspect <no such folder ./nope/x>", lambda: run_cli(["inspect", str(root / "nope" / "x")])),
        (C, "inspect not_a_local_name", lambda: run_cli(["inspect", "not_a_local_name"])),
        (C, "inspect <empty folder>", lambda: run_cli(["inspect", str(f["empty"])])),
        (C, "inspect <a file>", lambda: run_cli(["inspect", str(f["file"])])),
        (C, "inspect <truncated safetensors>", lambda: run_cli(["inspect", str(f["trunc"])])),
        (C, "lock <truncated safetensors> out", lambda: run_cli(["lock", str(f["trunc"]), out])),
        (C, "fuse <truncated safetensors> out", lambda: run_cli(["fuse", str(f["trunc"]), out])),
        (C, "inspect <plain weights + stale specdef.json>", lambda: run_cli(["inspect", str(f["stale"])])),
        (C, "inspect <locked weights, no specdef.json>", lambda: run_cli(["inspect", str(f["nometa"])])),
        (C, "inspect <specdef.json not JSON>", lambda: run_cli(["inspect", str(f["badjson"])])),
        (C, "lock plain out --targets '('", lambda: run_cli(["lock", str(f["plain"]), out, "--targets", "("])),
        (C, "--device cuda inspect plain", lambda: run_cli(["--device", "cuda", "inspect", str(f["plain"])])),
        (C, "--device bogus inspect plain", lambda: run_cli(["--device", "bogus", "inspect", str(f["plain"])])),
        (C, "lock plain out --alpha nan", lambda: run_cli(["lock", str(f["plain"]), out, "--alpha", "nan"])),
        (C, "lock plain out --alpha 0", lambda: run_cli(["lock", str(f["plain"]), out, "--alpha", "0"])),
        (C, "lock plain out --alpha -5", lambda: run_cli(["lock", str(f["plain"]), out, "--alpha", "-5"])),
        (C, "lock plain out --alpha inf", lambda: run_cli(["lock", str(f["plain"]), out, "--alpha", "inf"])),
        (C, "lock plain out --alpha abc", lambda: run_cli(["lock", str(f["plain"]), out, "--alpha", "abc"])),
        (C, "lock plain out -k 0", lambda: run_cli(["lock", str(f["plain"]), out, "-k", "0"])),
        (C, "lock plain out -k 100 (> rank)", lambda: run_cli(["lock", str(f["plain"]), out, "-k", "100"])),
        (C, "lock plain out --check -1", lambda: run_cli(["lock", str(f["plain"]), out, "-k", "2", "--check", "-1"])),
        (C, "lock plain out --blocks 9", lambda: run_cli(["lock", str(f["plain"]), out, "-k", "2", "--blocks", "9"])),
        (C, "lock plain out --kinds nope", lambda: run_cli(["lock", str(f["plain"]), out, "-k", "2", "--kinds", "nope"])),
        (C, "lock plain out --alpha 1e300 --check 2", lambda: run_cli(["lock", str(f["plain"]), out, "-k", "2",
                                                                       "--alpha", "1e300", "--check", "2"])),
        (C, "lock <bf16 model> out (alpha 1e4) --check 2", lambda: run_cli(["lock", str(f["bf16"]), out, "-k", "2",
                                                                            "--check", "2"])),
        (C, "lock <bf16 model> out --compute-dtype float32 --check 2", lambda: run_cli(
            ["lock", str(f["bf16"]), out, "-k", "2", "--check", "2", "--compute-dtype", "float32"])),
        (C, "lock plain <a file as out>", lambda: run_cli(["lock", str(f["plain"]), str(f["file"]), "-k", "2"])),
        (C, "lock <locked> out (already locked)", lambda: run_cli(["lock", str(f["locked"]), out, "-k", "2"])),
        (C, "fuse <plain> out (nothing to fuse)", lambda: run_cli(["fuse", str(f["plain"]), out])),
        (C, "attack <plain, no tokenizer>", lambda: run_cli(["attack", str(f["plain"]), "--steps", "1"])),
        (C, "attack plain --eval-every 0", lambda: run_cli(["attack", str(f["plain"]), "--eval-every", "0"])),
        (C, "attack plain --lr 0", lambda: run_cli(["attack", str(f["plain"]), "--lr", "0"])),
        (C, "attack plain --steps 0", lambda: run_cli(["attack", str(f["plain"]), "--steps", "0"])),
        (C, "attack plain --seq-len 1", lambda: run_cli(["attack", str(f["plain"]), "--seq-len", "1"])),
        (C, "no command", lambda: run_cli([])),
        (C, "bogus command", lambda: run_cli(["bogus"])),
    ]
    return cases


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", help="write the outcomes here")
    ap.add_argument("--table", nargs=2, metavar=("BEFORE", "NOW"), help="print a Markdown table of two runs")
    ap.add_argument("--only", default="", help="run only groups containing this word (library, explorer, "
                                               "exercise, cli, others)")
    args = ap.parse_args()
    if args.table:
        before, now = (json.loads(Path(p).read_text()) for p in args.table)
        print("| entry point | input | before | now |\n|---|---|---|---|")
        for key, v in now.items():
            entry, inp = key.split(" ¦ ")
            b = before.get(key, "(not run)")
            print(f"| `{entry}` | {inp} | {b.replace('|', '/')} | {v.replace('|', '/')} |")
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        groups = [("library", library_cases), ("explorer", explorer_cases), ("exercise", exercise_cases),
                  ("cli", cli_cases), ("others", other_cases)]
        for gname, make in groups:
            if args.only and args.only not in gname:
                continue
            if gname == "cli" and not (root / "plain").exists():
                make_folders(root)
            cases = make(root) if make in (library_cases, cli_cases) else make()
            for entry, inp, fn in cases:
                out = run_case(fn)
                results[f"{entry} ¦ {inp}"] = out
                print(f"{entry:28s} {inp:55s} → {out}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
