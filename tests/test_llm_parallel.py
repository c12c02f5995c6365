"""``llm.attack`` under ``accelerate launch``: two CPU processes over gloo take the step one process takes.

g = (1/n) Σ_r ∇ℒ(x_r) over n equal slices x_r of the global batch is ∇ℒ(x) (equal tokens per row), so the
two-process loss curve equals the one-process curve with the same global batch to float32 rounding. Both sides
run as subprocesses of the same script (tests/_parallel_attack.py), so this process's threads and RNG are left
alone; the launcher is accelerate's own CLI (``python -m accelerate.commands.launch``), no network, no GPU.
"""
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytest.importorskip("peft")

SCRIPT = Path(__file__).with_name("_parallel_attack.py")
ROOT = SCRIPT.parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                               "MASTER_PORT", "ACCELERATE_USE_FSDP")}
    return env | {"OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf"), "CUDA_VISIBLE_DEVICES": "",
                  "SPECDEF_LITE_HEADLESS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
                  "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _finish(p: subprocess.Popen, timeout: float) -> str:
    """p's output; on a hang (processes that took different decisions wait on each other forever) the launcher
    gets SIGTERM, which torchrun passes on to the workers it started in their own sessions, and the test fails."""
    try:
        return p.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            out = p.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out = p.communicate()[0]
        pytest.fail(f"the run hung for {timeout} s and was killed:\n{out[-3000:]}")


@pytest.fixture(scope="module")
def curves(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("parallel")
    one, two = tmp / "one.json", tmp / "two.json"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port()), str(SCRIPT), str(two)]
    start = dict(env=_env(tmp), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    p2 = subprocess.Popen(launch, **start)
    p1 = subprocess.Popen([sys.executable, str(SCRIPT), str(one)], **start)
    out1, out2 = _finish(p1, 180), _finish(p2, 180)
    assert p1.returncode == 0, out1[-3000:]
    assert p2.returncode == 0, out2[-3000:]
    assert "process 0 of 2: done" in out2 and "process 1 of 2: done" in out2, out2[-3000:]
    return json.loads(one.read_text()), json.loads(two.read_text())


def test_two_processes_give_the_one_process_loss_curve(curves):
    one, two = curves
    runs = [k for k, v in one.items() if isinstance(v, dict)]
    assert len(runs) >= 5 and set(runs) == {k for k, v in two.items() if isinstance(v, dict)}
    for name in runs:
        a, b = one[name], two[name]
        assert (a["processes"], b["processes"]) == (1, 2), name
        assert a["cached"] == b["cached"] and a["adapter"] == b["adapter"], name
        assert a["diverged_at"] == b["diverged_at"], name
        assert len(a["losses"]) == len(b["losses"]) >= 2, name
        for key in ("losses", "eval_losses", "eval_top5"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (name, key)
    full = one["full, cached"]["eval_losses"]
    assert full[-1] < full[0] - 0.01  # the attack does learn (4.587 → 4.565 held out): the curves are not flat
    assert one["locked, stops at divergence"]["diverged_at"] is not None  # … and the stop is taken in both
    assert one["LoRA on C, cached"]["adapter"].startswith("r=2 on C")
    assert (one["best lr"], one["best steps"]) == (two["best lr"], two["best steps"])
