"""Reproduction runs: published numbers carried by a suite into the report, and --preset upstream."""

from __future__ import annotations

import pytest

from bench.cli import main
from bench.runner import read_records

SUITE = """
[suite]
seed = 2
n_samples = 64
batch_size = 64
budgets = [10]
[[models]]
spec = "gmm-2d-ve"
name = "g"
metrics = ["fd_exact"]
[samplers.kar1]
[samplers.pc]
[samplers."pc-sde"]
sampler = "pc"
preset = "score_sde"
[[published]]
model = "g"
sampler = "pc-sde"
nfe = 10
metric = "fd_exact"
value = 0.123
preset = "score_sde"
source = "a paper, Table 9"
[[published]]
model = "g"
sampler = "kar1"
nfe = 1000
metric = "fd_exact"
value = 0.05
source = "another paper"
"""


def test_the_report_prints_published_numbers_next_to_the_measured_ones(tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text(SUITE)
    out = tmp_path / "run"
    assert main(["run", str(suite), "--out", str(out)]) == 0
    records = {r["sampler"]: r for r in read_records(out)}
    table = (out / "tables" / "published.md").read_text()
    assert "a paper, Table 9" in table and "0.123" in table
    measured = records["pc-sde"]["metrics"]["fd_exact"]
    assert f"{measured:.3g}"[:4] in table  # the measured value of the same cell
    assert records["pc-sde"]["hyper"]["preset"] == "score_sde"
    assert "Published and measured" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('model = "g"\nsampler = "pc-sde"', 'model = "h"\nsampler = "pc-sde"'), "unknown model 'h'"),
        (("value = 0.123", 'value = "x"'), "needs value"),
        (('source = "another paper"', 'source = "another paper"\ncolour = 3'), "colour"),
    ],
)
def test_a_bad_published_entry_is_one_line(change, message, tmp_path, capsys):
    suite = tmp_path / "s.toml"
    suite.write_text(SUITE.replace(*change))
    assert main(["run", str(suite), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_preset_upstream_gives_each_sampler_its_upstream_algorithm(tmp_path, capsys):
    suite = tmp_path / "s.toml"
    suite.write_text(
        SUITE.replace('[samplers."pc-sde"]\nsampler = "pc"\npreset = "score_sde"\n', "[samplers.ald]\n").split(
            "[[published]]"
        )[0]
    )
    out = tmp_path / "run"
    assert main(["run", str(suite), "--out", str(out), "--no-report", "--preset", "upstream"]) == 0
    presets = {r["sampler"]: r["hyper"].get("preset") for r in read_records(out)}
    assert presets == {"kar1": None, "pc": "score_sde", "ald": "ncsnv2"}
    assert main(["run", str(suite), "--out", str(tmp_path / "x"), "--preset", "dmcmc"]) == 2
    assert "no sampler of suite" in capsys.readouterr().err
