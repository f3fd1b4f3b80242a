"""`scorebench run --jobs`: cells in worker processes, one writer, the same records; the thread choice; speed's
refusal to record a baseline on a loaded machine."""

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
from harness_helpers import TEST_SAMPLERS  # tests/ is on sys.path (pytest prepend import mode)

from bench.cli import main
from bench.runner import TIMING_FIELDS, read_records
from bench.threads import SMALL_SAMPLE, choose
from samplers import SAMPLERS

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

SMALL = """
[suite]
seed = 7
n_samples = 48
batch_size = 16
budgets = [6, 12]
[[models]]
spec = "gmm-2d-ve"
[[models]]
spec = "gmm-2d-vp"
[samplers.ddim]
[samplers.em]
[samplers.kar2]
[samplers.test_error]
budgets = [6]
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def by_cell(run: Path) -> dict[tuple, dict]:
    records = read_records(run)
    keys = [(r["model"], r["sampler"], r["nfe_budget"]) for r in records]
    assert len(keys) == len(set(keys)), "a cell was recorded twice"
    return dict(zip(keys, records, strict=True))


def assert_same_but_timing(a: Path, b: Path) -> None:
    """Same cells, each once; every field but the timing ones equal; the same kept samples."""
    ra, rb = by_cell(a), by_cell(b)
    assert set(ra) == set(rb)
    for key, r in ra.items():
        other = rb[key]
        differ = {k for k in set(r) | set(other) if r.get(k) != other.get(k)}
        assert differ <= TIMING_FIELDS, (key, differ - TIMING_FIELDS)
        if "samples_file" in r:
            np.testing.assert_array_equal(np.load(a / r["samples_file"])["x"], np.load(b / r["samples_file"])["x"])


def test_two_jobs_give_the_records_of_one(tmp_path, monkeypatch):
    monkeypatch.setitem(SAMPLERS, "test_error", TEST_SAMPLERS["test_error"])  # sent to the workers by reference
    suite = write(tmp_path / "small.toml", SMALL)
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["run", str(suite), "--out", str(one), "--jobs", "1", "--no-report"]) == 0
    assert main(["run", str(suite), "--out", str(two), "--jobs", "2"]) == 0
    assert_same_but_timing(one, two)
    records = by_cell(two)
    assert len(records) == 2 * (3 * 2 + 1)
    assert {r["jobs"] for r in records.values()} == {2} and {r["jobs"] for r in by_cell(one).values()} == {1}
    assert {r["threads"] for r in records.values()} == {1}  # 2-d mixtures: one thread per job
    assert records[("gmm-2d-vp", "test_error", 6)]["status"] == "error"
    assert all(r["status"] == "ok" for k, r in records.items() if k[1] != "test_error")
    env = json.loads((two / "env.json").read_text())[-1]
    assert env["parallelism"]["jobs"] == 2 and env["parallelism"]["threads"] == 1
    assert "--jobs" in env["parallelism"]["reason"] and "1 thread per job" in env["parallelism"]["reason"]
    assert env["torch_threads"] == 1
    # the report marks wall-clock measured beside other cells
    assert "ran 2 at a time" in (two / "report.md").read_text()
    assert "2 jobs" in (two / "tables" / "gmm-2d-ve.md").read_text()
    assert "ran 2 at a time" not in _report(one)
    for name in ("gmm-2d-ve", "gmm-2d-vp"):  # the tables list the cells in the suite's order, however they finished
        rows = [
            [line.split(",")[:2] for line in (run / "tables" / f"{name}.csv").read_text().splitlines()]
            for run in (one, two)
        ]
        assert rows[0] == rows[1] and len(rows[0]) == 1 + 7


def _report(run: Path) -> str:
    assert main(["report", str(run)]) == 0
    return (run / "report.md").read_text()


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_sigkill_during_a_two_job_run_resumes_with_nothing_lost_or_duplicated(tmp_path, monkeypatch):
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
[samplers.ddim]
budgets = [10, 20]
""",
    )
    reference = tmp_path / "reference"
    assert main(["run", str(suite), "--out", str(reference), "--jobs", "1", "--no-report"]) == 0
    total = len(read_records(reference))
    assert total == 8

    killed = tmp_path / "killed"
    args = ["run", str(suite), "--out", str(killed), "--jobs", "2", "--no-report"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "harness_helpers.py"), *args], cwd=ROOT, env=ENV)
    records = killed / "records.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if records.exists() and records.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.02)
    workers = _children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(workers) >= 2, "the run had no worker processes"
    done = len(read_records(killed))
    assert 2 <= done < total, f"the kill landed after {done} of {total} cells"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers), "worker processes outlived the killed run"
    assert len(read_records(killed)) == done  # nothing more was written after the kill
    with open(records, "a") as f:  # a record cut short by the kill
        f.write('{"model": "gmm-2d-vp", "sampler": "pc", "nfe_bu')

    assert main(["run", str(suite), "--out", str(killed), "--resume", "--jobs", "2", "--no-report"]) == 0
    assert_same_but_timing(reference, killed)
    assert records.read_bytes().endswith(b"}\n")
    sessions = json.loads((killed / "env.json").read_text())
    assert len(sessions) == 2 and sessions[-1]["parallelism"]["jobs"] == 2


def test_thread_choice(monkeypatch):
    monkeypatch.delenv("SCOREBENCH_JOBS", raising=False)
    small, large = SMALL_SAMPLE, 3 * 32 * 32
    assert choose(sample_size=small, cores=2, cells=50) == choose(sample_size=2, cores=2, cells=50)
    c = choose(sample_size=small, cores=2, cells=50)
    assert (c.jobs, c.threads) == (2, 1) and "1 thread per job" in c.reason
    c = choose(sample_size=large, cores=8, cells=2)  # two cells left: two jobs of four threads
    assert (c.jobs, c.threads) == (2, 4) and "2 cell(s)" in c.reason
    c = choose(sample_size=large, cores=8, cells=50, threads=2)
    assert (c.jobs, c.threads) == (4, 2)
    c = choose(sample_size=large, cores=8, cells=50, memory_jobs=3)
    assert (c.jobs, c.threads) == (3, 2) and "memory" in c.reason
    assert choose(sample_size=large, cores=2, jobs=1).threads == 2
    assert choose(sample_size=small, cores=2, jobs=1, threads=2).threads == 2  # honoured
    c = choose(device_type="cuda", sample_size=large, cores=4, jobs=4)
    assert c.jobs == 1 and "ignored" in c.reason
    assert choose(world=2, sample_size=small, cores=4, jobs=2).jobs == 1  # torchrun
    with pytest.raises(ValueError, match="exceeds the 2 usable cores"):
        choose(cores=2, jobs=2, threads=2)
    with pytest.raises(ValueError, match="exceeds the 4 usable cores"):
        choose(cores=4, jobs=2, threads=3)
    monkeypatch.setenv("SCOREBENCH_JOBS", "3")
    assert choose(cores=8, cells=50).jobs == 3 and choose(cores=8, jobs=2).jobs == 2  # --jobs wins


def test_jobs_and_threads_of_the_cli_are_recorded(tmp_path, monkeypatch):
    suite = write(
        tmp_path / "one.toml",
        '[suite]\nn_samples = 8\nbudgets = [4]\n[[models]]\nspec = "gmm-2d-ve"\n[samplers.ddim]\n',
    )
    monkeypatch.delenv("SCOREBENCH_JOBS", raising=False)
    assert main(["run", str(suite), "--out", str(tmp_path / "run"), "--threads", "2", "--no-report"]) == 0
    (record,) = read_records(tmp_path / "run")
    assert (record["jobs"], record["threads"]) == (1, 2)  # one cell: one job, the threads as given
    env = json.loads((tmp_path / "run" / "env.json").read_text())[-1]
    assert env["parallelism"]["threads"] == 2 and "--threads" in env["parallelism"]["reason"]
    assert env["parallelism"]["reason"].startswith("1 job(s) (default")
    monkeypatch.setenv("SCOREBENCH_JOBS", "x")
    assert main(["run", str(suite), "--out", str(tmp_path / "bad"), "--no-report"]) == 2


SPEED = ["speed", "--model", "gmm-2d", "--samplers", "ddim", "--nfe", "4", "--batch-size", "8", "--repeats", "1"]


def test_speed_refuses_to_update_a_baseline_under_load(tmp_path, monkeypatch, capsys):
    baseline = tmp_path / "baseline.json"
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "getloadavg", lambda: (0.6 * cores + 0.1, 0.0, 0.0))
    assert main([*SPEED, "--baseline", str(baseline), "--update-baseline"]) == 2
    err = capsys.readouterr().err.strip()
    assert "loaded" in err and "--force-update" in err and len(err.splitlines()) == 1
    assert not baseline.exists()
    assert main([*SPEED, "--baseline", str(baseline), "--update-baseline", "--force-update"]) == 0
    assert baseline.exists()
    baseline.unlink()
    monkeypatch.setattr(os, "getloadavg", lambda: (0.4 * cores, 0.0, 0.0))
    assert main([*SPEED, "--baseline", str(baseline), "--update-baseline"]) == 0
    entry = json.loads(baseline.read_text())["entries"][0]
    assert entry["threads"] == 1  # speed runs one thread


def test_a_sampler_only_this_process_knows_is_one_line_under_jobs(tmp_path, monkeypatch, capsys):
    spec = TEST_SAMPLERS["test_error"]
    local = type(spec)("test_local", spec.fn, "test", False, lambda steps, **_: steps, "test", "a lambda", min_steps=1)
    monkeypatch.setitem(SAMPLERS, "test_local", local)
    suite = write(
        tmp_path / "local.toml",
        '[suite]\nn_samples = 8\nbudgets = [4, 6]\n[[models]]\nspec = "gmm-2d-ve"\n[samplers.test_local]\n',
    )
    assert main(["run", str(suite), "--out", str(tmp_path / "run"), "--jobs", "2", "--no-report"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "'test_local' is registered in this process only" in err[-1] and "--jobs 1" in err[-1]
