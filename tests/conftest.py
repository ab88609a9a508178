"""Test configuration: 8 CPU host devices, set before JAX initialises its backends."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")
# Older jax reads the device count from XLA_FLAGS; newer from jax_num_cpu_devices.
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

# Tests use tiny shapes: compile time dominates, so skip LLVM's expensive optimisations (about
# 40% less CPU for the suite; numerics are unchanged within every stated tolerance). Only on
# the CPU platform: the GPU tests (JAX_PLATFORMS=cuda pytest -m gpu) compile as users do.
_CPU_FLAGS = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")
for _flag in _CPU_FLAGS if os.environ["JAX_PLATFORMS"] == "cpu" else ():
    if _flag.split("=")[0] not in os.environ["XLA_FLAGS"]:
        os.environ["XLA_FLAGS"] += " " + _flag

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
