"""Virtual CPU devices for the multi-device benchmarks, requested before JAX starts.

Imported by ``experiments.bench.multigpu`` / ``multigpu_train`` ahead of ``jax``: it reads
``--cpu-devices N`` from the command line (default 4) and adds
``--xla_force_host_platform_device_count=N`` to ``XLA_FLAGS`` unless a count is set there.
Only the CPU backend reads the flag; on GPUs it changes nothing.
"""

import os
import sys


def request_cpu_devices(argv=None, default: int = 4) -> None:
    argv = sys.argv if argv is None else argv
    n = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--cpu-devices"), default)
    if not str(n).isdigit() or int(n) < 1:
        return  # not a device count: the script's argparse reports it
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
