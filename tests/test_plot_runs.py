"""experiments.plot_runs: curves of several runs and their table."""

import json

import pytest

from experiments import plot_runs


def _run(d, steps, acc, lr, evaluated):
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model": "plstm", "lr": lr, "steps": steps}))
    with open(d / "metrics.jsonl", "w") as fh:
        for i, a in enumerate(acc):
            fh.write(json.dumps({"step": (i + 1) * 10, "loss": 1.0 - a, "accuracy": a}) + "\n")
    if evaluated:
        (d / "eval.json").write_text(json.dumps({"lengths": [96, 192],
                                                 "accuracy": [0.9, 0.75]}))
    return d


def test_table_and_plot(tmp_path):
    a = _run(tmp_path / "a", 30, [0.5, 0.6, 0.8], 3e-4, True)
    b = _run(tmp_path / "b", 50, [0.5, 0.5], 1e-3, False)
    rows = plot_runs.summarise_runs([a, b])
    assert [r["steps_logged"] for r in rows] == [30, 20]
    table = plot_runs.markdown_table(rows)
    assert "| a | plstm | 0.0003 | 30 / 30 | 0.200 | 0.800 | 96: 0.900, 192: 0.750 |" in table
    assert "| b | plstm | 0.001 | 20 / 50 | 0.500 | 0.500 | not evaluated |" in table
    out = tmp_path / "fig" / "c.png"
    assert plot_runs.main([str(a), str(b), "--out", str(out), "--smooth", "2",
                           "--table", str(tmp_path / "t.md")]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "t.md").read_text() == table
    assert plot_runs._smooth([1.0, 3.0, 5.0], 2) == [1.0, 2.0, 4.0]


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl not found"):
        plot_runs.load_curve(tmp_path)
    with pytest.raises(ValueError, match="no 'gradnorm' records"):
        plot_runs.plot([_run(tmp_path / "a", 10, [0.5], 1e-3, False)], tmp_path / "x.png",
                       metric="gradnorm")
    with pytest.raises(SystemExit):
        plot_runs.main([str(tmp_path / "missing"), "--out", str(tmp_path / "y.png")])
