"""The one-command benchmark suite (python -m ldlm_jax.bench) on its micro setting.

Runs every section once through the CLI entry point with tiny shapes and one repeat (the figures
mean nothing; the machinery is what is tested): the JSON's schema, that each row's ours /
reference / ratio follow from the timings kept in the row, the printed table, and that an unknown
section name is a readable usage error. Offline (conftest), compiles with most optimisations off.
"""

import json
import statistics

import pytest

from ldlm_jax.bench import __main__ as cli
from ldlm_jax.bench import suite

MACHINE_KEYS = {
    "date",
    "platform",
    "python",
    "cpu_count",
    "load_average",
    "load_average_end",
    "backend",
    "device_kind",
    "device_count",
    "jax",
    "torch",
    "torch_device",
}


# conftest.py: compile with most XLA optimisations off (behaviour, not speed).
FAST_COMPILE = True


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "micro.json"
    code = cli.main(["--micro", "--no-progress", "--out", str(out)])
    with open(out) as f:
        return code, json.load(f)


def _expected(unit, work, seconds):
    if unit == "ms":
        return 1e3 * statistics.median(seconds)
    return work / statistics.median(seconds) / suite.RATE_UNITS[unit]


def test_micro_run_writes_the_report(micro):
    code, report = micro
    assert code == 0, report["errors"]
    assert report["schema"] == suite.SCHEMA and report["mode"] == "micro"
    assert report["errors"] == {}
    assert report["sections"] == list(suite.SECTIONS)
    assert set(report["machine"]) >= MACHINE_KEYS
    assert report["machine"]["cpu_count"] >= 1 and report["wall_s"] > 0
    assert report["command"].startswith("python -m ldlm_jax.bench --micro")
    assert set(report["section_seconds"]) == set(suite.SECTIONS)
    by_section = {}
    for row in report["rows"]:
        assert set(row) == set(suite.ROW_KEYS)
        by_section.setdefault(row["section"], []).append(row)
    assert set(by_section) == set(suite.SECTIONS)
    units = {r["unit"] for r in report["rows"]}
    assert {"tok/s", "seq/s", "ms", "GFLOP/s"} <= units
    assert any("MFU" in r["figure"] for r in by_section["train_step"])
    assert {"lm_forward", "train_step", "sampler", "scaling_train"} <= set(report["details"])
    # conftest's 8 CPU devices: the sampler's B = 2 rows shard over 2 and time one device too.
    pairs = [r for r in report["details"]["sampler"] if r["batch"] == 2]
    assert pairs and all(r["jax_devices"] == 2 for r in pairs)
    assert all(r["max_abs_diff_devices"] < 1e-5 for r in pairs)
    figures = " | ".join(row["figure"] for row in by_section["sampler"])
    assert "B=2, 2 steps on 2 CPU devices" in figures and "B=2, 2 steps on 1 CPU device" in figures


def test_ratios_follow_from_the_measured_times(micro):
    _, report = micro
    compared = 0
    for row in report["rows"]:
        assert row["ours_seconds"] and min(row["ours_seconds"]) > 0
        ours = _expected(row["unit"], row["ours_work"], row["ours_seconds"])
        assert row["ours"] == pytest.approx(ours, rel=1e-9)
        if row["reference_seconds"] is None:
            continue
        compared += 1
        ref = _expected(row["unit"], row["reference_work"], row["reference_seconds"])
        assert row["reference"] == pytest.approx(ref, rel=1e-9)
        expected = ref / ours if row["better"] == "lower" else ours / ref
        assert row["ratio"] == pytest.approx(expected, rel=1e-9)
    assert compared >= 6
    # The sampler's two sides got the same injected noise and the same weights.
    for r in report["details"]["sampler"]:
        assert r["noise"] == "injected" and r["max_abs_diff_z0"] < 1e-3


def test_make_row_computes_ratios_from_timings():
    rate = suite.make_row("s", "rate", "tok/s", [2.0, 1.0, 9.0], 100, reference_seconds=[4.0])
    assert (rate["ours"], rate["reference"], rate["ratio"]) == (50.0, 25.0, 2.0)
    slow = suite.make_row("s", "latency", "ms", [0.3], reference_seconds=[0.1, 0.2])
    assert slow["ours"] == pytest.approx(300.0) and slow["ratio"] == pytest.approx(0.5)
    mfu = suite.make_row("s", "mfu", "GFLOP/s", [2.0], 4e9, reference_value=8.0)
    assert mfu["ratio"] == pytest.approx(0.25) and mfu["reference_seconds"] is None
    alone = suite.make_row("s", "alone", "seq/s", [0.5], 2)
    assert alone["ours"] == 4.0 and alone["ratio"] is None
    table = suite.format_table([rate, slow, alone])
    assert "rate" in table and "2.00" in table and "-" in table.splitlines()[-1]
    with pytest.raises(ValueError, match="unknown unit"):
        suite.make_row("s", "x", "furlongs", [1.0])


def test_unknown_section_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--micro", "--only", "lm_forward,warp_drive"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown section(s) ['warp_drive']" in err and "lm_forward, train_step" in err
    assert suite.parse_sections("data,lm_forward") == ("lm_forward", "data")
    with pytest.raises(ValueError, match="choose from"):
        suite.parse_sections(",")


def test_bad_cpu_devices_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--micro", "--only", "data", "--cpu-devices", "none"])
    assert exit_info.value.code == 2
    assert "--cpu-devices must be 'auto' or an integer >= 1, got 'none'" in capsys.readouterr().err
