"""benchmarks.throughput: the earlier revision's predict and this code's runs over one folder, in one table."""

import json

from benchmarks import throughput


def test_baseline_and_this_code_on_one_folder(tmp_path):
    result = throughput.run("tiny", images=3, image_size=128, batch=2, workers=1, threads=1, out_dir=tmp_path)
    base = result["baseline"]
    assert base["code"] == throughput.BASELINE and base["images"] == 3 and base["images_per_s"] > 0
    assert [(r["batch_size"], r["workers"]) for r in result["rows"]] == [(1, 0), (1, 1), (2, 1)]
    for row in result["rows"]:
        assert row["images"] == 3
        assert abs(row["vs_baseline"] - row["images_per_s"] / base["images_per_s"]) < 1e-12
    saved = json.loads((tmp_path / "throughput.json").read_text())
    assert saved["baseline"]["images"] == 3
    table = (tmp_path / "throughput.md").read_text()
    assert f"| {throughput.BASELINE} (baseline) | 1 | 0 |" in table and table.count("| this code |") == 3


def test_without_baseline_the_table_says_so(tmp_path):
    result = throughput.run("tiny", images=2, image_size=64, batch=2, workers=1, threads=1, out_dir=tmp_path,
                            baseline=None)  # fmt: skip
    assert result["baseline"] is None and "vs_baseline" not in result["rows"][0]
    lines = throughput.table_lines(result)
    assert len(lines) == 5 and all(line.endswith("| - |") for line in lines[2:])
