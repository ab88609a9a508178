"""Smoke test of the structure table that `make demo` prints (small T, one repeat)."""

from experiments import structures


def test_structure_table_runs_and_scan_matches_sequential():
    rows = structures.table(T=40, n=8, repeats=1)
    assert {r["structure"] for r in rows} == set(structures.STRUCTURES)
    for r in rows:
        # f32: scan and the sequential loop agree to rounding; bf16: one output rounding
        limit = 1e-5 if r["dtype"] == "float32" else 2**-8
        assert r["err_scan"] < limit and r["err_sequential"] < limit, r
        assert r["ms_scan"] > 0 and r["ms_sequential"] > 0
    assert "| structure |" in structures.format_table(rows)
