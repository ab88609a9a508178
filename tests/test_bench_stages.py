"""experiments.bench.stages: the sweep knobs and the stage filter (CPU smoke test; the timings
themselves mean something only on the GPU machine)."""

import json

from experiments.bench import stages
from pallas_kernels import delta_chunk


def test_knob_sets_module_settings(monkeypatch):
    monkeypatch.setitem(delta_chunk.WARPS, "wu", 2)
    setter, values = stages._knob("delta_chunk.WARPS.wu=0,8")
    assert values == [0, 8]
    setter(8)
    assert delta_chunk.WARPS["wu"] == 8
    setter(0)  # 0: the kernel's default (None)
    assert delta_chunk.WARPS["wu"] is None
    setter, values = stages._knob("delta_chunk.WU_BLOCKS=1,0")
    try:
        setter(0)
        assert delta_chunk.WU_BLOCKS[0] is False
    finally:
        delta_chunk.WU_BLOCKS[0] = True


def test_only_times_the_named_stages(tmp_path, monkeypatch):
    out = tmp_path / "st.json"
    monkeypatch.setitem(delta_chunk.WARPS, "wu", delta_chunk.WARPS["wu"])
    monkeypatch.setattr("sys.argv", [
        "stages", "--interpret", "--op", "delta-chunk", "--shape", "1,32,1,16", "--chunks", "16",
        "--block-v", "16", "--reps", "1", "--only", "wu", "--knob", "delta_chunk.WARPS.wu=2,4",
        "--json", str(out)])
    stages.main()
    results = json.loads(out.read_text())["results"]
    assert [r["knobs"] for r in results] == [{"delta_chunk.WARPS.wu": 2},
                                              {"delta_chunk.WARPS.wu": 4}]
    assert all(set(r["res"]) == {"wu", "sum"} for r in results), results
