"""``implementation="auto"``: the committed rule is what the committed measurements give, it
picks the measured-fastest implementation at every measured point, and the ops resolve it."""

import glob
import json
import re
from pathlib import Path

import jax.numpy as jnp
import pytest

from experiments.bench import auto as bench
from lrnn.ops import _auto
from lrnn.ops._auto_table import TABLE
from lrnn.ops._common import resolve_implementation

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted(glob.glob(str(ROOT / "benchmarks" / "auto" / "*.json")))
ALL = ("sequential", "scan", "chunked", "pallas")


def test_committed_table_is_derived_from_the_committed_measurements():
    assert FILES, "benchmarks/auto/*.json missing"
    assert bench.render_table(bench.derive(FILES)) == (ROOT / "lrnn/ops/_auto_table.py"
                                                       ).read_text()


def test_auto_is_within_10_percent_of_the_fastest_at_every_measured_point():
    # every point the rule uses: not superseded (benchmarks/auto/superseded.txt), not measured
    # again in a later file
    points = bench.current_points(FILES)
    assert len(points) >= 40
    backend = {Path(f).name: json.loads(Path(f).read_text())["meta"]["backend"] for f in FILES}
    for name, p in points:
        dims = {k: p[k] for k in ("B", "T", "H", "dk", "n_h")}
        pick = _auto.choose(p["family"], dims, jnp.dtype(p["dtype"]), tuple(p["ms"]),
                            backend[name])
        assert p["ms"][pick] <= 1.1 * min(p["ms"].values()), (name, p, pick)


def test_superseded_measurements_are_left_out(tmp_path):
    rec = lambda fam, ms: dict(family=fam, dtype="float32", B=4, T=8, H=1, dk=4, n_h=1, ms=ms,
                               ranking=sorted(ms, key=ms.get))
    meta = dict(backend="gpu", device="x", jax="0", date="d")
    for name, pts in (("a.json", [rec("delta", {"pallas": 1.0, "chunked": 2.0}),
                                  rec("gla", {"pallas": 1.0, "chunked": 2.0})]),
                      ("b.json", [rec("gla", {"pallas": 3.0, "chunked": 2.0})])):
        (tmp_path / name).write_text(json.dumps(dict(meta=meta, points=pts)))
    files = sorted(str(f) for f in tmp_path.glob("*.json"))
    (tmp_path / "superseded.txt").write_text("# why\na.json delta float32  # changed\n")
    got = [(n, p["family"], p["ranking"][0]) for n, p in bench.current_points(files)]
    assert got == [("b.json", "gla", "chunked")]  # a's delta superseded, a's gla re-measured
    assert [p["family"] for p in bench.derive(files)["gpu"]["points"]] == ["gla"]
    # an implementation's time only: the point stays with the others
    (tmp_path / "superseded.txt").write_text("a.json delta float32 pallas\n")
    got = {n: p for n, p in bench.current_points(files)}
    assert got["a.json"]["ms"] == {"chunked": 2.0} and got["a.json"]["ranking"] == ["chunked"]
    for bad in ("a.json delta\n", "a.json delta float32 fused\n"):
        (tmp_path / "superseded.txt").write_text(bad)
        with pytest.raises(ValueError, match="expected 'file family dtype"):
            bench.current_points(files)


def test_nearest_point_and_fallbacks():
    table = {"gpu": {"points": [
        dict(family="delta", dtype="float32", B=256, T=40, H=4, dk=32, n_h=1,
             ranking=["chunked", "pallas"]),
        dict(family="delta", dtype="float32", B=8, T=4096, H=16, dk=128, n_h=1,
             ranking=["pallas", "chunked"]),
    ]}}
    orig = dict(TABLE)
    try:
        TABLE.clear()
        TABLE.update(table)
        near_short = dict(B=200, T=48, H=4, dk=32, n_h=1)
        near_long = dict(B=4, T=8192, H=16, dk=128, n_h=1)
        assert _auto.choose("delta", near_short, jnp.float32, ALL, "gpu") == "chunked"
        assert _auto.choose("delta", near_long, jnp.float32, ALL, "gpu") == "pallas"
        # bf16 has no points here: the float32 ones stand in
        assert _auto.choose("delta", near_long, jnp.bfloat16, ALL, "gpu") == "pallas"
        # the best is not available: the next in the ranking
        assert _auto.choose("delta", near_long, jnp.float32, ALL[:3], "gpu") == "chunked"
        # no measurements for this backend or family: the XLA chunked form
        assert _auto.choose("delta", near_long, jnp.float32, ALL, "tpu") == "chunked"
        assert _auto.choose("gla", near_long, jnp.float32, ALL, "gpu") == "chunked"
    finally:
        TABLE.clear()
        TABLE.update(orig)


def test_ops_resolve_auto_by_their_shapes():
    dims = dict(B=2, T=16, H=2, dk=8, n_h=1)
    got = resolve_implementation("auto", "delta_rule", "delta_product", family="delta",
                                 dims=dims, dtype=jnp.float32)
    assert got in ("sequential", "scan", "chunked")  # no Pallas on the CPU
    assert resolve_implementation("auto", "x", None) == "chunked"  # no shapes given
    with pytest.raises(ValueError, match="implementation must be one of"):
        resolve_implementation("fast", "delta_rule", "delta_product")


def test_benchmark_measures_and_resumes(tmp_path):
    out = tmp_path / "m.json"
    pts = [p for p in bench._grid("smoke") if p["family"] == "linear_recurrence"][:1]
    data = bench.measure(pts, out, reps=1, budget_s=0)
    (rec,) = data["points"]
    assert set(rec["ms"]) == {"sequential", "scan", "chunked"} and rec["backend"] == "cpu"
    assert rec["ranking"] == sorted(rec["ms"], key=rec["ms"].get)
    assert json.loads(out.read_text())["meta"]["metric"] == "fwd+bwd ms, median"
    again = bench.measure(pts, out, reps=1, budget_s=0)  # nothing left to measure
    assert again["points"] == data["points"]
    table = bench.derive([out])
    assert table["cpu"]["points"][0]["ranking"] == rec["ranking"]


def test_train_step_profiler_smoke():
    from experiments.bench import train_step

    text = "HloModule m\n\nENTRY %main {\n  %a = f32[2] fusion(%p), kind=kLoop\n" \
           "  %b = f32[2] custom-call(%a)\n  ROOT %t = (f32[2]) tuple(%b)\n}\n"
    assert train_step.count_kernels(text) == {"total": 2, "fusion": 1, "custom-call": 1}
    rec = train_step.bench_one("parity", "deltanet", "chunked", "tiny", steps=2, loop_steps=0,
                               seeds=2, parts=False)
    assert rec["seeds"] == 2 and rec["step"] > 0 and rec["kernels"]["total"] > 0


def test_benchmark_compiles_ahead_in_workers(tmp_path, capsys):
    out, cache = tmp_path / "m.json", tmp_path / "cache"
    # the selective scan has an input without the batch axis (A [D, N])
    pts = [next(p for p in bench._grid("smoke") if p["family"] == fam)
           for fam in ("linear_recurrence", "selective")]
    data = bench.measure(pts, out, reps=1, budget_s=0, impls=("scan",), workers=1,
                         cache_dir=cache)
    for rec in data["points"]:
        assert set(rec["ms"]) == {"scan"} and rec["ranking"] == ["scan"]
    printed = capsys.readouterr().out
    assert "precompile: " in printed and "2 of 2 compiles (0 failed" in printed, printed
    # the timing phase's compile of fwd + bwd is loaded from what the worker compiled
    hits = re.search(r"timing: .*; (\d+) of \d+ compiles loaded from the cache", printed)
    assert hits and int(hits[1]) >= 1, printed
    assert any(f.name.startswith("jit_") for f in cache.iterdir())
    assert bench.measure(pts, out, reps=1, budget_s=0, workers=1)["points"] == data["points"]


def test_what_the_grid_does_not_time_is_recorded_with_its_reason():
    big = dict(family="delta", dtype="float32", B=512, T=32, H=16, dk=128, n_h=1)
    small = dict(big, B=2, H=4, dk=32)
    skipped = bench._skipped_at(big, seq_max=16)
    assert "scan" in skipped and "GiB of dense transitions" in skipped["scan"]
    assert "sequential" in skipped and "T = 16" in skipped["sequential"]
    assert "scan" in bench._impls_at(small) and "chunked" in bench._impls_at(big)
    # the diagonal families' scan is never skipped for its size
    assert "scan" in bench._impls_at(dict(big, family="linear_recurrence"))
