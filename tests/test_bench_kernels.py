"""experiments.bench.kernels' report writer (the timing itself runs on the GPU machine)."""

from experiments.bench import kernels


def _rows(ms):
    res = dict(fwd=ms, fwdbwd=3 * ms, peak=2**30)
    return [dict(op="gla", impl="pallas-chunk", shape=[8, 2048, 16, 128], res=res),
            dict(op="deltanet", impl="pallas", shape=[8, 2048, 16, 128], res=None)]


def test_report_is_a_section_of_results(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\nanalysis by hand\n")
    diag = {"copy": {"ms": 1.0, "tbps": 3.0}, "pallas": {"ms": 2.0, "tbps": 1.5}}
    meta = dict(device="test GPU", jax="0", date="today")
    fla = dict(torch="t", triton="tr", rows=[
        dict(op="gla", shape=[8, 2048, 16, 128], fwd=2.0, fwdbwd=4.0, peak=2**29)])
    kernels.write_results(str(path), _rows(1.0), fla, diag, meta)
    kernels.write_results(str(path), _rows(2.0), fla, diag, meta)  # replaces its section only
    text = path.read_text()
    assert text.startswith("# Results\n\nanalysis by hand\n")
    assert text.count("<!-- kernels begin -->") == 1 and text.count("# Kernel benchmark") == 1
    # fla / ours: fwd 2.0 / 2.0, fwd+bwd 4.0 / 6.0
    assert ("| gla | 8, 2048, 16, 128 | pallas-chunk | 2.000 | 6.000 | 2.000 | 4.000 | 1.00 | "
            "0.67 |") in text
    assert "| deltanet | 8, 2048, 16, 128 | pallas | failed |" in text
    assert "| pallas | 2.000 | 1.50 | 50% |" in text


def test_later_raw_rows_replace_earlier_ones():
    first = dict(meta=dict(date="09:00"), rows=_rows(1.0))
    again = dict(meta=dict(date="10:00"), rows=_rows(2.0)[:1])  # gla measured again
    rows = kernels.merge_rows([first, again])
    assert [(r["op"], r["res"] and r["res"]["fwd"]) for r in rows] == [("gla", 2.0),
                                                                        ("deltanet", None)]
    assert rows[0]["remeasured"] == "10:00" and "remeasured" not in rows[1]


def test_report_names_the_remeasuring_raws(tmp_path, monkeypatch):
    """`report` with more than two raws: the command line of the section says which rows the
    later raws measured again, and the table carries their numbers."""
    import json

    meta = dict(device="test GPU", jax="0", date="09:00")
    raws = {"a.json": dict(meta=meta, rows=_rows(1.0)), "b.json": dict(meta=meta, rows=[]),
            "c.json": dict(meta=dict(meta, date="10:00"), rows=_rows(2.0)[:1])}
    for name, raw in raws.items():
        (tmp_path / name).write_text(json.dumps(raw))
    out = tmp_path / "RESULTS.md"
    monkeypatch.setattr("sys.argv", ["kernels", "report", "--raw",
                                     ",".join(str(tmp_path / n) for n in raws),
                                     "--out", str(out)])
    kernels.main()
    text = out.read_text()
    assert ("the re-measured rows: `... kernels --no-chunked --no-diag --impls pallas --ops gla "
            "--shapes 0 --raw c.json`") in text
    assert "| gla | 8, 2048, 16, 128 | pallas-chunk (measured 10:00) | 2.000 | 6.000 |" in text
