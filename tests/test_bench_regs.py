"""experiments.bench.regs: the CUDA lowering of every kernel of a path is captured on CPU (the
compile step needs the `triton` package, which is not a dependency: it runs by hand)."""

from experiments.bench.regs import capture_ttir
from pallas_kernels import delta_chunk, gla_chunk


def test_capture_ttir_gla_every_kernel_with_its_warps():
    mods = capture_ttir("gla", shape=(1, 128, 2, 64))
    names = {"gates", "h", "a", "o", "dh", "dv", "dqk", "dgate"}
    assert set(mods) == {f"lrnn_gla_chunk_{n}" for n in names}
    for name, (text, nw, ns) in mods.items():
        assert text.startswith(f"module @{name}") and "tt.func" in text
        assert nw >= 1 and ns >= 1
    # the per-kernel warps of gla_chunk.WARPS reach the compiler
    assert mods["lrnn_gla_chunk_h"][1] == gla_chunk.WARPS["sweep"]
    assert mods["lrnn_gla_chunk_dgate"][1] == gla_chunk.WARPS["dgate"]
    assert mods["lrnn_gla_chunk_a"][1] == 4


def test_capture_ttir_delta_every_kernel():
    mods = capture_ttir("delta", shape=(1, 128, 2, 64))
    names = {"wu", "state", "out", "dvn_local", "dstate", "grad_wy", "grad_qk"}
    assert set(mods) == {f"lrnn_delta_chunk_{n}" for n in names}
    # the W/U kernel runs with its own warps (delta_chunk.WARPS), the others with the default 4
    assert mods["lrnn_delta_chunk_wu"][1] == (delta_chunk.WARPS["wu"] or 4)
    assert mods["lrnn_delta_chunk_grad_qk"][1] == (delta_chunk.WARPS["grad_qk"] or 4)
