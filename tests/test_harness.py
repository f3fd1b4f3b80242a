"""The harness end to end: suites, `scorebench run` (records, resume, torchrun sharding), `report` and `compare`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from harness_helpers import TEST_SAMPLERS  # tests/ is on sys.path (pytest prepend import mode)

from bench.cli import main
from bench.distributed import batch_shard
from bench.metrics import DEFAULT_METRICS
from bench.runner import read_records
from bench.suite import load_suite, shipped_suites
from samplers import SAMPLERS

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
# what depends on the machine and the moment, not on the suite: timings, memory and the machine's load
TIMING = {
    "wall_s",
    "ms_per_sample",
    "metrics_s",
    "peak_mem_mb",
    "finished_at",
    "world_size",
    "load_before",
    "load_after",
}

# 2 models x (kar1, pc, ddim-eta1 at 2 budgets + rk45 at 1) = 14 cells; 3 batches of 16 so that 2 ranks get 2 + 1
TINY = """
[suite]
description = "a tiny suite for the tests"
seed = 7
n_samples = 48
batch_size = 16
budgets = [10, 20]

[[models]]
spec = "gmm-2d-ve"

[[models]]
spec = "gmm-2d-vp"
name = "vp"

[samplers.kar1]
[samplers.pc]
[samplers.pc.per_model.vp]
snr = 0.01
[samplers.rk45]
budgets = [45]
[samplers.ddim-eta1]
sampler = "ddim"
eta = 1.0
"""
TINY_CELLS = {
    (m, s, b)
    for m in ("gmm-2d-ve", "vp")
    for s, budgets in (("kar1", (10, 20)), ("pc", (10, 20)), ("rk45", (45,)), ("ddim-eta1", (10, 20)))
    for b in budgets
}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def comparable(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMING}


def assert_same_runs(a: Path, b: Path) -> None:
    """Same cells, each once, with the same numbers (timings aside) and the same kept samples."""
    ra, rb = read_records(a), read_records(b)
    keys_b = [(r["model"], r["sampler"], r["nfe_budget"]) for r in rb]
    assert len(keys_b) == len(set(keys_b)), "a cell was recorded twice"
    by_key = {(r["model"], r["sampler"], r["nfe_budget"]): r for r in rb}
    assert set(by_key) == {(r["model"], r["sampler"], r["nfe_budget"]) for r in ra}
    for r in ra:
        other = by_key[(r["model"], r["sampler"], r["nfe_budget"])]
        assert comparable(r) == comparable(other)
        if "samples_file" in r:
            np.testing.assert_array_equal(np.load(a / r["samples_file"])["x"], np.load(b / r["samples_file"])["x"])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny suite run once through the CLI (report included): (suite file, run directory)."""
    root = tmp_path_factory.mktemp("tiny")
    suite = write(root / "tiny.toml", TINY)
    threads = torch.get_num_threads()
    try:  # one thread: tiny batches run faster without the thread pool's start-up (and the records do not change)
        assert main(["run", str(suite), "--out", str(root / "run"), "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    return suite, root / "run"


# --- suites ---------------------------------------------------------------------------------------------------


def test_suite_maps_onto_dataclasses(tmp_path):
    suite = load_suite(write(tmp_path / "tiny.toml", TINY))
    assert suite.name == "tiny" and suite.seed == 7 and suite.device == "cpu"
    assert [m.name for m in suite.models] == ["gmm-2d-ve", "vp"]
    assert suite.models[1].spec == "gmm-2d-vp" and suite.models[1].n_batches == 3
    pc = next(s for s in suite.samplers if s.name == "pc")
    assert pc.hyper_for("vp") == {"snr": 0.01} and pc.hyper_for("gmm-2d-ve") == {}
    ddim = next(s for s in suite.samplers if s.name == "ddim-eta1")
    assert (ddim.sampler, ddim.hyper) == ("ddim", {"eta": 1.0})
    assert {c.key for c in suite.cells()} == TINY_CELLS
    suite.validate()
    assert {c.key for c in suite.select(samplers=["rk45"]).cells()} == {("gmm-2d-ve", "rk45", 45), ("vp", "rk45", 45)}


def test_sampler_budgets_override_per_model(tmp_path):
    text = TINY.replace("budgets = [45]", "budgets = [45]\nper_model.vp.budgets = [30, 60]")
    suite = load_suite(write(tmp_path / "tiny.toml", text))
    rk45 = {c.key for c in suite.cells() if c.sampler.name == "rk45"}
    assert rk45 == {("gmm-2d-ve", "rk45", 45), ("vp", "rk45", 30), ("vp", "rk45", 60)}
    assert next(s for s in suite.samplers if s.name == "rk45").hyper_for("vp") == {}


def test_shipped_suites_parse_and_name_known_samplers():
    suites = shipped_suites()
    cifar10 = {"cifar10-vp", "cifar10-ve", "cifar10-ncsnv2", "cifar10-ddim", "cifar10-edm"}
    assert {"quick", "digits", *cifar10} <= set(suites)
    for name in suites:
        suite = load_suite(name)
        for entry in suite.samplers:  # DLG's entries are checked once DLG is registered
            assert entry.sampler in SAMPLERS or entry.sampler.startswith("dlg+"), (name, entry.sampler)
    quick = load_suite("quick")
    assert {"dlg+kar1", "dlg+pf_euler", "dlg+rk45", "dlg+kar2", "dlg+rd", "dlg+em"} <= {s.name for s in quick.samplers}
    assert {"ald", "em", "rd", "pc", "pf_euler", "rk45", "ddim", "kar1", "kar2"} <= {s.name for s in quick.samplers}
    registered = [s.name for s in quick.samplers if s.sampler in SAMPLERS]
    quick.select(samplers=registered).validate()  # every budget fits every registered sampler of the suite


def test_batch_shard_splits_whole_batches():
    for n, batch, world in [(48, 16, 2), (50, 16, 3), (7, 3, 2), (5, 5, 1)]:
        shards = [batch_shard(n, batch, r, world) for r in range(world)]
        assert sorted(i for s in shards for i in s) == list(range(n))
        for shard in shards:  # cut into batch-size pieces, a shard gives back exactly the single-process batches
            pieces = [tuple(shard[i : i + batch]) for i in range(0, len(shard), batch)]
            assert all(p == tuple(range(p[0], p[0] + len(p))) and p[0] % batch == 0 for p in pieces)


# --- run, records, report -------------------------------------------------------------------------------------


def test_run_writes_records_tables_and_plots(tiny_run):
    _, run = tiny_run
    records = read_records(run)
    assert {(r["model"], r["sampler"], r["nfe_budget"]) for r in records} == TINY_CELLS and len(records) == 14
    for r in records:
        assert r["status"] == "ok", r
        assert r["n"] == 48 and r["seed"] == 7 and r["world_size"] == 1
        assert 0 < r["nfe"] <= r["nfe_budget"]
        if r["sampler"] != "rk45":  # fixed-step samplers: the measured NFE is the declared formula
            assert r["nfe"] == r["declared_nfe"]
        expected = {"n", "n_ref", "weight_tv_floor", *DEFAULT_METRICS["analytic"]}  # weight_tv's exact-sample floor
        assert set(r["metrics"]) == expected and r["metrics"]["n"] == 48
        assert all(np.isfinite(list(r["metrics"].values())))
        assert r["wall_s"] > 0 and r["ms_per_sample"] == pytest.approx(1000 * r["wall_s"] / 48)
        assert r["peak_mem_mb"] > 0
        assert (run / r["samples_file"]).exists()
    pc_vp = next(r for r in records if (r["model"], r["sampler"]) == ("vp", "pc"))
    assert pc_vp["hyper"]["snr"] == 0.01 and pc_vp["algorithm"] == "pc"
    assert next(r for r in records if r["sampler"] == "ddim-eta1")["hyper"]["eta"] == 1.0
    # more NFE, closer to the exact distribution: kar1 at 19 NFE beats kar1 at 9 on both models
    fd = {(r["model"], r["sampler"], r["nfe_budget"]): r["metrics"]["fd_exact"] for r in records}
    for model in ("vp", "gmm-2d-ve"):
        assert fd[(model, "kar1", 20)] < fd[(model, "kar1", 10)]

    suite = json.loads((run / "suite.json").read_text())
    assert [m["metrics"] for m in suite["models"]] == [list(DEFAULT_METRICS["analytic"])] * 2
    env = json.loads((run / "env.json").read_text())
    assert env[0]["device"] == "cpu" and env[0]["versions"]["torch"]

    import pandas as pd

    table = pd.read_csv(run / "tables" / "records.csv")
    assert len(table) == 14 and {"fd_exact", "weight_tv", "nfe", "ms_per_sample"} <= set(table.columns)
    best = pd.read_csv(run / "tables" / "best.csv")
    # per model and metric, one row per budget that some sampler ran: 10, 20, 45
    assert len(best) == 2 * len(DEFAULT_METRICS["analytic"]) * 3
    row = best[(best["model"] == "vp") & (best["metric"] == "fd_exact") & (best["nfe_budget"] == 10)].iloc[0]
    assert row["value"] == min(fd[("vp", s, 10)] for s in ("kar1", "pc", "ddim-eta1"))
    per_model = pd.read_csv(run / "tables" / "vp.csv")
    assert len(per_model) == 7 and set(per_model["sampler"]) == {"kar1", "pc", "rk45", "ddim-eta1"}
    markdown = (run / "tables" / "vp.md").read_text()
    assert "| kar1" in markdown and "NFE<=20" in markdown
    for png in ["plots/gmm-2d-ve-nfe.png", "plots/vp-pareto.png", "grids/vp.png", "grids/gmm-2d-ve.png"]:
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    report = (run / "report.md").read_text()
    assert "## gmm-2d-ve" in report and "## vp" in report and "plots/vp-nfe.png" in report


def test_diverged_and_failing_cells_are_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch, capsys):
    for name, spec in TEST_SAMPLERS.items():
        monkeypatch.setitem(SAMPLERS, name, spec)
    suite = write(
        tmp_path / "bad.toml",
        """
[suite]
n_samples = 8
budgets = [4]
[[models]]
spec = "gmm-2d-ve"
[samplers.test_nan]
[samplers.test_error]
[samplers.kar1]
""",
    )
    assert main(["run", str(suite), "--out", str(tmp_path / "run")]) == 0
    records = {r["sampler"]: r for r in read_records(tmp_path / "run")}
    assert records["test_nan"]["status"] == "diverged" and "1 of 8" in records["test_nan"]["error"]
    assert records["test_nan"]["nfe"] == 4 and records["test_nan"]["metrics"] == {}
    assert records["test_error"]["status"] == "error"
    assert records["test_error"]["error"] == "RuntimeError: this sampler always fails"
    assert records["kar1"]["status"] == "ok"
    assert "Cells that did not finish ok" in (tmp_path / "run" / "report.md").read_text()


def test_resume_after_sigkill_gives_the_uninterrupted_run(tmp_path, monkeypatch):
    monkeypatch.setitem(SAMPLERS, "test_slow", TEST_SAMPLERS["test_slow"])
    suite = write(
        tmp_path / "slow.toml",
        """
[suite]
seed = 3
n_samples = 32
batch_size = 16
budgets = [5, 9, 15, 21]
[[models]]
spec = "gmm-2d-vp"
[samplers.test_slow]
[samplers.pc]
budgets = [10, 20]
""",
    )
    reference = tmp_path / "reference"
    assert main(["run", str(suite), "--out", str(reference), "--no-report"]) == 0
    total = len(read_records(reference))
    assert total == 6

    killed = tmp_path / "killed"
    args = ["run", str(suite), "--out", str(killed), "--no-report"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "harness_helpers.py"), *args], cwd=ROOT, env=ENV)
    records = killed / "records.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if records.exists() and records.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(read_records(killed))
    assert 2 <= done < total, f"the kill landed after {done} of {total} cells"
    with open(records, "a") as f:  # a record cut short by the kill
        f.write('{"model": "gmm-2d-vp", "sampler": "pc", "nfe_bu')

    assert main(["run", str(suite), "--out", str(killed), "--no-report"]) == 2  # never overwritten by accident
    assert main(["run", str(suite), "--out", str(killed), "--resume", "--no-report"]) == 0
    assert_same_runs(reference, killed)
    assert records.read_bytes().endswith(b"}\n")
    assert len(json.loads((killed / "env.json").read_text())) == 2  # the start and the resume
    # resuming a finished run does nothing more
    assert main(["run", str(suite), "--out", str(killed), "--resume", "--no-report"]) == 0
    assert len(read_records(killed)) == total


def test_torchrun_two_processes_match_one(tiny_run, tmp_path):
    suite, single = tiny_run
    sharded = tmp_path / "sharded"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    cmd += ["-m", "bench", "run", str(suite), "--out", str(sharded), "--no-report"]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_runs(single, sharded)
    assert {r["world_size"] for r in read_records(sharded)} == {2}


def test_report_command_rewrites_the_report(tiny_run, tmp_path, capsys):
    _, run = tiny_run
    (run / "report.md").unlink()
    assert main(["report", str(run)]) == 0
    assert (run / "report.md").exists()
    assert main(["report", str(tmp_path / "nowhere")]) == 2


# --- compare --------------------------------------------------------------------------------------------------


def _fake_run(path: Path, cells: dict[tuple[str, str, int], tuple[str, float, float]]) -> Path:
    path.mkdir()
    with open(path / "records.jsonl", "w") as f:
        for (model, sampler, budget), (status, fd, ms) in cells.items():
            record = {"model": model, "sampler": sampler, "nfe_budget": budget, "nfe": budget - 1, "n": 100}
            record |= {"status": status, "ms_per_sample": ms, "metrics": {"fd_exact": fd, "precision": 0.8}}
            f.write(json.dumps(record) + "\n")
    return path


def test_compare_flags_worse_quality_slower_speed_and_lost_cells(tmp_path, capsys):
    base = {("m", "kar1", 10): ("ok", 1.0, 2.0), ("m", "kar1", 20): ("ok", 0.5, 4.0), ("m", "pc", 10): ("ok", 1.0, 2.0)}
    a = _fake_run(tmp_path / "a", base)
    assert main(["compare", str(a), str(a)]) == 0
    assert "no regression" in capsys.readouterr().out

    within = _fake_run(tmp_path / "within", {k: (s, fd * 1.04, ms * 1.2) for k, (s, fd, ms) in base.items()})
    assert main(["compare", str(a), str(within)]) == 0

    worse = _fake_run(tmp_path / "worse", {**base, ("m", "kar1", 10): ("ok", 1.2, 2.0)})
    assert main(["compare", str(a), str(worse)]) == 1
    assert main(["compare", str(a), str(worse), "--metric-tol", "0.25"]) == 0
    capsys.readouterr()

    slower = _fake_run(tmp_path / "slower", {**base, ("m", "pc", 10): ("ok", 1.0, 3.0)})
    assert main(["compare", str(a), str(slower)]) == 1
    assert "ms_per_sample" in capsys.readouterr().out
    assert main(["compare", str(a), str(slower), "--no-speed"]) == 0

    broken = _fake_run(tmp_path / "broken", {**base, ("m", "pc", 10): ("diverged", float("nan"), 2.0)})
    assert main(["compare", str(a), str(broken)]) == 1
    lost = _fake_run(tmp_path / "lost", {k: v for k, v in base.items() if k[1] != "pc"})
    assert main(["compare", str(a), str(lost)]) == 1
    assert "missing in B" in capsys.readouterr().out
    better = _fake_run(tmp_path / "better", {k: (s, fd / 2, ms / 2) for k, (s, fd, ms) in base.items()})
    assert main(["compare", str(a), str(better), "--csv", str(tmp_path / "diff.csv")]) == 0
    assert (tmp_path / "diff.csv").read_text().count("\n") == 1 + 3 * 3  # header + (2 metrics + speed) per cell


def test_compare_of_identical_runs_passes(tiny_run, capsys):
    _, run = tiny_run
    assert main(["compare", str(run), str(run)]) == 0


# --- bad input: one line naming the file and key, exit 2, nothing written --------------------------------------

BAD_INPUTS = {
    "malformed": ("[suite\nseed = 1", "malformed TOML"),
    "unknown suite key": (TINY.replace("seed = 7", "seeds = 7"), "unknown key 'seeds' in [suite]"),
    "unknown model key": (TINY.replace('name = "vp"', 'label = "vp"'), "unknown key 'label' in [[models]] #2"),
    "unknown hyper-parameter": (TINY.replace("snr = 0.01", "snrr = 0.01"), "[samplers.pc]: sampler 'pc' has no hyper"),
    "hyper-parameter of the wrong type": (TINY.replace("eta = 1.0", 'eta = "1.0"'), "eta must be a number >= 0"),
    "unknown model": (TINY.replace('spec = "gmm-2d-ve"', 'spec = "gmm-3d"'), "model 'gmm-3d' cannot be loaded"),
    "unknown sampler": (TINY + "\n[samplers.kar3]\n", "[samplers.kar3]: unknown sampler 'kar3'"),
    "budget below every step count": (
        TINY + "\n[samplers.ald]\nbudgets = [4]\n",
        "[samplers.ald] on model 'gmm-2d-ve': NFE budget 4 is below the minimum of sampler 'ald'",
    ),
    "missing checkpoint directory": (
        TINY.replace('spec = "gmm-2d-ve"', 'spec = "/no/such/checkpoint"'),
        "model '/no/such/checkpoint' cannot be loaded",
    ),
    "missing diffusers checkpoint": (
        TINY.replace('spec = "gmm-2d-ve"', 'spec = "diffusers:/no/such/unet"'),
        "model 'diffusers:/no/such/unet' cannot be loaded",
    ),
    "unknown metric": (
        TINY.replace('name = "vp"', 'name = "vp"\nmetrics = ["fid_exact"]'),
        "unknown metric 'fid_exact'",
    ),
    "bad budgets": (TINY.replace("budgets = [10, 20]", "budgets = [10, -2]"), "[suite] budgets must be a positive"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_suite_is_one_line_and_nothing_is_written(case, tmp_path, capsys):
    text, message = BAD_INPUTS[case]
    suite = write(tmp_path / "suite.toml", text)
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("scorebench run: error: "), err
    assert message in err and str(suite) in err, err
    assert not out.exists()


def test_unknown_suite_name(capsys):
    assert main(["run", "no-such-suite"]) == 2
    assert "unknown suite 'no-such-suite'" in capsys.readouterr().err


def test_unwritable_or_occupied_output(tmp_path, capsys):
    suite = write(tmp_path / "tiny.toml", TINY)
    blocker = write(tmp_path / "file", "not a directory")
    assert main(["run", str(suite), "--out", str(blocker / "run")]) == 2
    assert "cannot write to output directory" in capsys.readouterr().err
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    write(occupied / "notes.txt", "mine")
    assert main(["run", str(suite), "--out", str(occupied)]) == 2
    assert "is not a scorebench run directory" in capsys.readouterr().err
    assert [p.name for p in occupied.iterdir()] == ["notes.txt"]


def test_resume_refuses_a_different_suite(tiny_run, tmp_path, capsys):
    _, run = tiny_run
    other = write(tmp_path / "tiny.toml", TINY.replace("n_samples = 48", "n_samples = 32"))
    before = (run / "records.jsonl").read_bytes()
    assert main(["run", str(other), "--out", str(run), "--resume"]) == 2
    assert "the suite differs from the one it was started with (in models)" in capsys.readouterr().err
    assert (run / "records.jsonl").read_bytes() == before


def test_dlg_variants_are_drawn_next_to_their_integrator():
    from bench.report import _ordered, sampler_styles

    names = ["kar1", "rk45", "dlg+kar1", "dlg+rk45", "ddim-eta1", "dlg+em", "em"]
    algorithms = {**{n: n for n in names}, "ddim-eta1": "ddim"}
    assert _ordered(names, algorithms) == ["kar1", "dlg+kar1", "rk45", "dlg+rk45", "ddim-eta1", "em", "dlg+em"]
    styles = sampler_styles(names, algorithms)
    for dlg, base in [("dlg+kar1", "kar1"), ("dlg+rk45", "rk45"), ("dlg+em", "em")]:
        assert styles[dlg]["color"] == styles[base]["color"]
        assert (styles[dlg]["linestyle"], styles[base]["linestyle"]) == ("--", "-")
    plain = [styles[n]["color"] for n in names if not n.startswith("dlg+")]
    assert len(set(plain)) == len(plain)
