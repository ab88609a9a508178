"""lrnn.numerics: the comparison table, the CLI outputs and the notebook."""

import os
import runpy
import subprocess
import sys

import numpy as np
import pytest

from lrnn import numerics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_compare_table_rows_and_markdown():
    t = numerics.compare("gated_linear_attention", ["chunked"], [9],
                         ["float32", "bfloat16"], chunk_size=4, heads=1, dk=4, dv=4,
                         gate="key", progress=False)
    assert len(t.rows) == 2
    for r in t.rows:
        assert {"output", "final_state", "grad", "grad_q", "grad_gate"} <= set(r)
        tol = 1e-5 if r["dtype"] == "float32" else 2e-2
        assert r["output"] < tol and r["final_state"] < tol, r
        assert r["grad"] < tol, r
    md = t.markdown()
    assert "| chunked | bfloat16 | 9 |" in md and "gated_linear_attention" in md


def test_random_inputs_have_negative_eigenvalues():
    x = numerics.random_inputs("delta_product", length=64, n_h=2, seed=1)
    assert (x["gate"] < 0).any() and (x["beta"] > 1).any()
    np.testing.assert_allclose(np.linalg.norm(x["k"], axis=-1), 1.0)
    with pytest.raises(ValueError, match="op must be one of"):
        numerics.random_inputs("attention")


def test_cli_writes_csv_markdown_and_png(tmp_path):
    numerics.main(["--op", "linear_recurrence", "--lengths", "5,12", "--dtypes",
                   "float32", "--implementations", "sequential,chunked", "--chunk-size", "4",
                   "--dk", "3", "--out", str(tmp_path)])
    stem = tmp_path / "numerics_linear_recurrence"
    for ext in (".csv", ".md", ".png"):
        assert (stem.with_suffix(ext)).stat().st_size > 0, ext
    lines = (stem.with_suffix(".csv")).read_text().splitlines()
    assert lines[0].startswith("implementation,dtype,T,output")
    assert len(lines) == 1 + 2 * 2


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "lrnn.numerics", "--help"], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    assert "--lengths" in out.stdout and "--dtypes" in out.stdout


def test_notebook_runs(monkeypatch):
    monkeypatch.setenv("LRNN_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    ns = runpy.run_path(os.path.join(ROOT, "notebooks", "numerics.py"))
    assert ns["worst"] < 1e-5
    assert len(ns["table"].rows) == 2
