"""Two JAX processes on 127.0.0.1 (CPU, gloo collectives) run one sequence-sharded scan.

Each process (tests/_mp_worker.py) has 2 CPU devices; the time axis is split over all 4. The
result and the gradients, gathered across processes, must equal the single-process scan.
Every wait is bounded: the processes are killed after TIMEOUT_S, so a lost peer cannot hang
the test run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import lrnn.parallel as parallel

WORKER = Path(__file__).with_name("_mp_worker.py")
ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 180


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_sequence_sharded_scan():
    port = _free_port()
    procs = []
    for pid in range(2):
        env = dict(os.environ)
        env.update(
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(pid),
            LRNN_MP_LOCAL_DEVICES="2",
            PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER)], env=env, cwd=ROOT,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
        )
    outputs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=TIMEOUT_S)
            outputs.append(out)
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        for p in procs:
            p.communicate()
        pytest.fail(f"the two processes did not finish within {TIMEOUT_S} s")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    results = []
    for pid, (p, out) in enumerate(zip(procs, outputs)):
        lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
        assert p.returncode == 0 and lines, f"process {pid} (rc {p.returncode}):\n{out[-4000:]}"
        results.append(json.loads(lines[-1][len("RESULT "):]))
    for r in results:
        assert r["devices"] == 4 and r["ok"], r
        assert set(r["errors"]) == set(parallel.EXCHANGES), r


def test_initialize_from_env_single_process_is_a_no_op():
    assert parallel.initialize_from_env({}) is False


def test_initialize_from_env_rejects_partial_variables():
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES"):
        parallel.initialize_from_env({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234"})
    with pytest.raises(ValueError, match="must be integers"):
        parallel.initialize_from_env({
            "JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234", "JAX_NUM_PROCESSES": "two",
            "JAX_PROCESS_ID": "0",
        })


@pytest.mark.parametrize(
    "env, expect",
    [
        ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4",
          "JAX_PROCESS_ID": "3"},
         {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}),
        ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "gpu[1-2]", "SLURM_NTASKS": "2"}, {}),
        ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "gpu1", "SLURM_NTASKS": "1"}, None),
        ({"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"}, {}),
        ({"LRNN_DISTRIBUTED": "1"}, {}),
        ({"LRNN_DISTRIBUTED": "0"}, None),
    ],
)
def test_initialize_from_env_dispatch(monkeypatch, env, expect):
    """Which environments call jax.distributed.initialize, and with what (call recorded)."""
    calls = []
    monkeypatch.setattr(parallel.jax.distributed, "initialize",
                        lambda **kw: calls.append(kw))
    called = parallel.initialize_from_env(env, timeout_s=5)
    if expect is None:
        assert not called and not calls
    else:
        assert called and len(calls) == 1
        assert calls[0] == {**expect, "initialization_timeout": 5}
