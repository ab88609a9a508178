"""The demo (``make demo``) and the expressivity notebook, run with tiny configurations."""

import os
import runpy
from pathlib import Path

import numpy as np

from experiments import demo

ROOT = Path(__file__).resolve().parents[1]


def test_demo_small(tmp_path, capsys):
    # The structures table has its own tests; here only the parity part (it prints a table).
    results = demo.main(small=True, out=tmp_path, structures=False)
    text = capsys.readouterr().out
    assert "| eigenvalues |" in text and "[-1, 1] (signed)" in text
    assert (tmp_path / "parity.png").stat().st_size > 0
    assert set(results) == {"unit", "signed"}
    for res in results.values():
        assert res["lengths"] == list(range(3, 25))
        assert np.all((np.asarray(res["accuracy"]) >= 0) & (np.asarray(res["accuracy"]) <= 1))


def test_expressivity_notebook_small(monkeypatch, tmp_path):
    monkeypatch.setenv("LRNN_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(tmp_path)
    import matplotlib

    matplotlib.use("Agg")
    ns = runpy.run_path(str(ROOT / "notebooks" / "expressivity.py"), run_name="__main__")
    assert set(ns["accuracy"]) == {(m, e) for m in ("diagonal", "deltanet")
                                   for e in ("unit", "signed")}
    # unit models never produce negative eigenvalues; signed ones may
    for (_model, eigen), e in ns["eig"].items():
        if eigen == "unit":
            assert min(e[0].min(), e[1].min()) >= 0.0
    assert os.environ["LRNN_NOTEBOOK_SMALL"] == "1"


def test_state_tracking_notebook_small(monkeypatch, tmp_path):
    monkeypatch.setenv("LRNN_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(tmp_path)
    import matplotlib

    matplotlib.use("Agg")
    ns = runpy.run_path(str(ROOT / "notebooks" / "state_tracking.py"), run_name="__main__")
    assert set(ns["results"]) == {("s3", 1, "unit"), ("s3", 2, "signed")}
    for r in ns["results"].values():
        seq = np.asarray(r["sequence_accuracy"])
        assert (np.diff(seq) <= 1e-12).all()  # a prefix-correct fraction never grows
        assert r["sequences"] == 8
