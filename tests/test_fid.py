"""FID the way the papers computed it (issue 17): reference statistics files in every published layout, the EDM
seed-set protocol, sample-count labels and protocol warnings, features gathered across torchrun processes.

The feature space is the shipped digits classifier's (128-d), not Inception (0.25 s per image here): the file layouts
and the arithmetic are the same for any extractor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import linalg

from bench import report
from bench.cli import main
from bench.data import load_dataset
from bench.features import checkpoint_dir, images_to_unit, load_classifier
from bench.fidelity import make_reference, to_uint8
from bench.metrics import compute_metrics
from bench.protocol import combine_seed_sets, count_text, metric_label
from bench.runner import read_records
from bench.suite import load_suite

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
DIGITS = SimpleNamespace(name="digits-data", dataset="digits", data_range=(-1.0, 1.0), shape=(1, 8, 8))
TIMING = {"wall_s", "ms_per_sample", "metrics_s", "peak_mem_mb", "finished_at", "world_size", "load_before",
          "load_after"}  # fmt: skip


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def features(x: torch.Tensor) -> np.ndarray:
    """The digits classifier's features of images in [-1, 1], computed here (float64), not through the harness."""
    net, config = load_classifier(checkpoint_dir("digits"))
    with torch.no_grad():
        return net.features(images_to_unit(to_uint8(x, (-1, 1)), config["image_size"])).double().numpy()


def moments(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return f.mean(0), np.cov(f, rowvar=False)


def frechet(mu1, c1, mu2, c2) -> float:
    """||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)), float64, scipy's matrix square root."""
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * linalg.sqrtm(c1 @ c2).real))


def nhwc3(x: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1] as an ADM batch stores them: uint8 [N, H, W, 3]."""
    return to_uint8(x, (-1, 1)).permute(0, 2, 3, 1).expand(-1, -1, -1, 3).contiguous().numpy()


# --- every layout: FD against the file equals the closed form from the same features --------------------------------
def write_layout(layout: str, path: Path, train: torch.Tensor) -> tuple[np.ndarray, np.ndarray, int | None]:
    """A reference file of `layout` made from training digits; returns the (mu, sigma) FD must use and n_ref."""
    f = features(train)
    mu, sigma = moments(f)
    if layout == "edm":  # EDM fid.py ref: np.savez, float64 statistics
        np.savez(path, mu=mu, sigma=sigma)
        return mu, sigma, None
    if layout == "pytorch-fid":  # --save-stats: compressed, a float32 mean is read as float64
        np.savez_compressed(path, mu=mu.astype(np.float32), sigma=sigma)
        return mu.astype(np.float32).astype(np.float64), sigma, None
    if layout == "score_sde":  # assets/stats/cifar10_stats.npz: the reference features themselves (float32)
        pool = f.astype(np.float32)
        np.savez_compressed(path, pool_3=pool, logits=np.zeros((len(pool), 10), np.float32))
        return *moments(pool.astype(np.float64)), len(pool)
    if layout == "adm":  # a reference batch: statistics of the whole set, a subset of images for KD/precision/recall
        subset = train[:300]
        rng = np.random.default_rng(0)
        np.savez(path, arr_0=nhwc3(subset), mu=mu, sigma=sigma, mu_s=rng.random(7), sigma_s=np.eye(7))
        return mu, sigma, len(subset)
    if layout == "adm-images-only":  # a batch without statistics: they come from its images
        subset = train[:400]
        np.savez(path, arr_0=nhwc3(subset))
        return *moments(features(subset)), len(subset)
    raise AssertionError(layout)


LAYOUTS = ["edm", "pytorch-fid", "score_sde", "adm", "adm-images-only"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fd_against_a_stats_file_is_the_closed_form(layout, digits, cache, tmp_path):
    mu_ref, sigma_ref, n_ref = write_layout(layout, tmp_path / "ref.npz", digits.train)
    x = digits.heldout  # 359 samples, 128-d features: a well-conditioned covariance
    names = ("fd_digits",) if layout in ("edm", "pytorch-fid") else ("fd_digits", "kd_digits", "precision_digits")
    values = compute_metrics(DIGITS, x, names, reference=f"stats:{tmp_path / 'ref.npz'}", cache_dir=cache)
    expected = frechet(*moments(features(x)), mu_ref, sigma_ref)
    assert values["fd_digits"] == pytest.approx(expected, rel=1e-6, abs=0)
    assert 0 < values["fd_digits"] < 10  # held-out digits against training digits
    assert values.get("n_ref") == (None if n_ref is None else float(n_ref))
    if "kd_digits" in names:
        assert abs(values["kd_digits"]) < 0.05 and values["precision_digits"] > 0.5
    other = compute_metrics(DIGITS, x[:200], ("fd_digits",), reference=f"stats:{tmp_path / 'ref.npz'}", cache_dir=cache)
    assert other["fd_digits"] == pytest.approx(frechet(*moments(features(x[:200])), mu_ref, sigma_ref), rel=1e-6)


def test_reference_records_say_what_the_file_is(digits, tmp_path):
    write_layout("adm", tmp_path / "ref.npz", digits.train)
    ref = make_reference(f"stats:{tmp_path / 'ref.npz'}")
    info = ref.identity()
    assert info["kind"] == "adm-batch" and info["n"] == 300 and info["path"] == str((tmp_path / "ref.npz").resolve())
    import hashlib

    assert info["sha256"] == hashlib.sha256((tmp_path / "ref.npz").read_bytes()).hexdigest()
    assert ref.stats[0].dtype == np.float64 and ref.data.shape == (300, 3, 8, 8)


# --- bad files: one line each ----------------------------------------------------------------------------------------
def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


def test_bad_statistics_files_are_one_line_value_errors(digits, cache, tmp_path):
    x = digits.heldout
    f = features(digits.train)
    wrong_dim = tmp_path / "inception.npz"
    np.savez(wrong_dim, mu=np.zeros(64), sigma=np.eye(64))
    with pytest.raises(ValueError) as err:
        compute_metrics(DIGITS, x, ["fd_digits"], reference=f"stats:{wrong_dim}", cache_dir=cache)
    assert "holds statistics of 64-d features, but the digits features (scorebench-digits) are 128-d" in one_line(err)

    full = tmp_path / "full.npz"
    np.savez(full, mu=f.mean(0), sigma=np.cov(f, rowvar=False))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(ValueError) as err:
        make_reference(f"stats:{truncated}")
    assert str(truncated) in one_line(err) and ("truncated" in str(err.value) or "not a readable" in str(err.value))

    floats = tmp_path / "float-batch.npz"
    np.savez(floats, arr_0=nhwc3(digits.train[:50]).astype(np.float32), mu=f.mean(0), sigma=np.cov(f, rowvar=False))
    with pytest.raises(ValueError) as err:
        make_reference(f"stats:{floats}")
    assert "must hold uint8 images, got arr_0 of dtype float32" in one_line(err)

    bad_sigma = tmp_path / "sigma.npz"
    np.savez(bad_sigma, mu=np.zeros(128), sigma=np.zeros((128, 64)))
    with pytest.raises(ValueError) as err:
        make_reference(f"stats:{bad_sigma}")
    assert "sigma must be [d, d]" in one_line(err)

    with pytest.raises(ValueError) as err:  # statistics alone carry no features for KD
        compute_metrics(DIGITS, x, ["fd_digits", "kd_digits"], reference=f"stats:{full}", cache_dir=cache)
    assert "holds FD statistics only (mu, sigma): kd_digits need reference images or features" in one_line(err)

    with pytest.raises(ValueError) as err:  # a statistics file given as images
        make_reference(full)
    assert f"pass it as stats:{full}" in one_line(err)

    unknown = tmp_path / "unknown.npz"
    np.savez(unknown, something=np.zeros(3))
    with pytest.raises(ValueError) as err:
        make_reference(f"stats:{unknown}")
    assert "expected `mu` and `sigma`" in one_line(err)


DIGITS_SUITE = """
[suite]
seed = 11
n_samples = {n}
batch_size = 16
budgets = [6]
fid_seed_sets = {sets}
keep_samples = 8

[[models]]
spec = "digits-vp"
metrics = {metrics}
reference = "{reference}"

[samplers.kar1]
"""


def digits_suite(path: Path, reference: str, n: int = 40, sets: int = 1, metrics: str = '["fd_digits"]') -> Path:
    path.write_text(DIGITS_SUITE.format(n=n, sets=sets, metrics=metrics, reference=reference))
    return path


def test_bad_statistics_files_stop_a_run_in_one_line_before_any_work(digits, tmp_path, capsys):
    f = features(digits.train)
    np.savez(tmp_path / "inception.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    np.savez(tmp_path / "full.npz", mu=f.mean(0), sigma=np.cov(f, rowvar=False))
    (tmp_path / "truncated.npz").write_bytes((tmp_path / "full.npz").read_bytes()[:5000])
    np.savez(tmp_path / "floats.npz", arr_0=np.zeros((20, 8, 8, 3), np.float64))
    cases = {
        "inception.npz": "holds statistics of 2048-d features, but the digits features",
        "truncated.npz": "truncated.npz",
        "floats.npz": "must hold uint8 images, got arr_0 of dtype float64",
    }
    for name, message in cases.items():
        suite = digits_suite(tmp_path / "s.toml", f"stats:{name}")  # relative to the suite file
        assert main(["run", str(suite), "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
        assert not (tmp_path / "run").exists()
    # listed metrics a statistics file cannot give: one line; defaulted ones are dropped with a warning
    suite = digits_suite(tmp_path / "s.toml", "stats:full.npz", metrics='["fd_digits", "kd_digits"]')
    assert main(["run", str(suite), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds FD statistics only (mu, sigma): kd_digits need reference" in err
    # and on the command line: --reference stats:PATH must exist
    assert main(["run", str(suite), "--out", str(tmp_path / "run"), "--reference", "stats:nowhere.npz"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--reference stats:nowhere.npz: no such file or directory" in err


def test_a_statistics_only_reference_leaves_out_defaulted_metrics_it_cannot_give(digits, tmp_path, capsys):
    f = features(digits.train)
    np.savez(tmp_path / "edm.npz", mu=f.mean(0), sigma=np.cov(f, rowvar=False))
    text = DIGITS_SUITE.format(n=24, sets=1, metrics="[]", reference="stats:edm.npz").replace("metrics = []\n", "")
    (tmp_path / "s.toml").write_text(text)
    env = ["--out", str(tmp_path / "run"), "--threads", "1", "--no-report"]
    assert main(["run", str(tmp_path / "s.toml"), *env]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert (
        len(err) == 1
        and "holds FD statistics only (mu, sigma): leaving out kd_digits, precision_digits, recall" in err[0]
    )
    (record,) = read_records(tmp_path / "run")
    assert set(record["metrics"]) == {"n", "fd_digits"} and record["reference"]["kind"] == "mu-sigma"
    assert record["labels"] == {"fd_digits": "fd_digits@24"}


def test_stats_references_resolve_relative_to_the_suite_and_on_the_command_line(tmp_path):
    (tmp_path / "refs").mkdir()
    np.savez(tmp_path / "refs" / "r.npz", mu=np.zeros(3), sigma=np.eye(3))
    suite = load_suite(digits_suite(tmp_path / "s.toml", "stats:refs/r.npz"))
    assert suite.models[0].reference == f"stats:{(tmp_path / 'refs' / 'r.npz').resolve()}"
    suite.validate()
    cli = suite.with_metric_options(reference=f"stats:{tmp_path / 'refs' / 'r.npz'}")
    assert cli.reference == f"stats:{(tmp_path / 'refs' / 'r.npz').resolve()}"


# --- the EDM protocol: seed sets --------------------------------------------------------------------------------------
def test_seed_sets_are_disjoint_reproducible_and_report_min_and_mean(digits, tmp_path, monkeypatch):
    monkeypatch.setenv("SCOREBENCH_CACHE", str(tmp_path / "cache"))
    write_layout("score_sde", tmp_path / "pool.npz", digits.train)
    metrics = '["fd_digits", "kd_digits", "precision_digits"]'
    three = digits_suite(tmp_path / "three.toml", "stats:pool.npz", n=40, sets=3, metrics=metrics)
    assert main(["run", str(three), "--out", str(tmp_path / "three"), "--threads", "1"]) == 0
    (record,) = read_records(tmp_path / "three")
    assert record["status"] == "ok" and record["n"] == 40 and record["seed_sets"] == 3
    ranges = record["seed_ranges"]
    assert ranges == [[0, 40], [40, 80], [80, 120]]  # disjoint, consecutive: EDM's 0-49999, 50000-99999, ...
    per_set = [s["fd_digits"] for s in record["set_metrics"]]
    assert len(set(per_set)) == 3  # different samples, different values
    m = record["metrics"]
    assert m["fd_digits"] == min(per_set) and m["fd_digits_mean"] == pytest.approx(np.mean(per_set), rel=1e-12)
    assert m["precision_digits"] == max(s["precision_digits"] for s in record["set_metrics"])
    assert record["labels"]["fd_digits"] == "fd_digits@40 (min of 3 seed sets)"
    assert record["reference"]["kind"] == "pool-3" and record["reference"]["extractors"]["digits"].startswith(
        "scorebench-digits:"
    )

    # set 0 is seeds 0..39: a run of one set draws the same samples (per-sample seeds); a rerun gives the same numbers
    one = digits_suite(tmp_path / "one.toml", "stats:pool.npz", n=40, sets=1, metrics=metrics)
    assert main(["run", str(one), "--out", str(tmp_path / "one"), "--threads", "1", "--no-report"]) == 0
    (single,) = read_records(tmp_path / "one")
    assert single["metrics"]["fd_digits"] == pytest.approx(record["set_metrics"][0]["fd_digits"], rel=1e-5)
    assert single["labels"]["fd_digits"] == "fd_digits@40" and "set_metrics" not in single
    assert main(["run", str(three), "--out", str(tmp_path / "again"), "--threads", "1", "--no-report"]) == 0
    (again,) = read_records(tmp_path / "again")
    assert {k: v for k, v in again.items() if k not in TIMING} == {k: v for k, v in record.items() if k not in TIMING}

    # the report labels every value with its count and protocol
    md = (tmp_path / "three" / "report.md").read_text()
    assert "### fd_digits@40 (min of 3 seed sets) @ measured NFE" in md
    assert "minimum over 3 disjoint seed sets" in md and f"(mean {m['fd_digits_mean']:.3g})" in md
    best = pd.read_csv(tmp_path / "three" / "tables" / "best.csv")
    assert set(best["label"]) == {
        "fd_digits@40 (min of 3 seed sets)",
        "kd_digits@40 (min of 3 seed sets)",
        "precision_digits@40 (max of 3 seed sets)",
    }


def test_combining_seed_sets_takes_each_metric_in_its_direction():
    sets = [
        {"n": 10.0, "fid": 3.0, "fid_lo": 2.5, "fid_hi": 3.5, "recall": 0.5, "kid": 0.2, "kid_std": 0.01},
        {"n": 10.0, "fid": 2.0, "fid_lo": 1.5, "fid_hi": 2.5, "recall": 0.7, "kid": 0.3, "kid_std": 0.02},
    ]
    out = combine_seed_sets(sets)
    assert (out["fid"], out["fid_lo"], out["fid_hi"], out["fid_mean"]) == (2.0, 1.5, 2.5, 2.5)
    assert (out["recall"], out["recall_mean"]) == (0.7, pytest.approx(0.6))
    assert (out["kid"], out["kid_std"]) == (0.2, 0.01)  # kid's noise scale travels with its set
    assert count_text(50000) == "50k" and count_text(1500) == "1.5k" and count_text(48) == "48"
    assert metric_label("fid", 50000) == "fid@50k"


# --- labels and warnings: no comparison mixes counts or references silently ----------------------------------------
def fake_records(path: Path, rows: list[dict]) -> Path:
    path.mkdir()
    with open(path / "records.jsonl", "w") as f:
        for r in rows:
            base = {
                "model": "m",
                "sampler": "kar1",
                "nfe_budget": 35,
                "nfe": 35.0,
                "status": "ok",
                "ms_per_sample": 1.0,
            }
            f.write(json.dumps({**base, **r}) + "\n")
    return path


def fid_cell(n: int, fid: float, sha: str | None = None, **fields) -> dict:
    """A record's fields: n samples, its FID and (sha given) the reference it was computed against."""
    out = {"n": n, "metrics": {"n": float(n), "fid": fid}, **fields}
    return out if sha is None else {**out, "reference": ref(sha)}


def ref(sha: str) -> dict:
    return {"kind": "mu-sigma", "label": "stats", "sha256": sha, "extractors": {"inception": "inception-v3-compat:ab"}}


def test_best_tables_never_rank_a_1k_fid_against_a_50k_one(tmp_path, capsys):
    run = fake_records(
        tmp_path / "run",
        [
            fid_cell(1000, 9.0, "a", sampler="kar1"),
            fid_cell(50000, 4.0, "a", sampler="ddim"),
            fid_cell(50000, 5.0, "a", sampler="em"),
            fid_cell(50000, 3.0, "b", sampler="pc"),
        ],
    )
    frame = report.records_frame(read_records(run))
    best = report.best_table(frame, {"m": ["fid"]})
    by_label = {(r["label"], r["best_sampler"]): r["runner_up"] for _, r in best.iterrows()}
    # the 1k cell is alone; the two 50k cells against reference a are ranked together; reference b apart
    assert by_label == {("fid@1k", "kar1"): "", ("fid@50k", "ddim"): "em (5)", ("fid@50k", "pc"): ""}
    warnings = report.protocol_warnings(frame, {"m": ["fid"]})
    assert len(warnings) == 1 and "sample counts differ (1k vs 50k)" in warnings[0]
    assert "references differ" in warnings[0]

    report.write_report(run)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(err) == 1 and "m: fid values were measured under different protocols" in err[0]
    md = (run / "report.md").read_text()
    assert "**warning: m: fid values were measured under different protocols" in md
    assert "### fid@1k/50k @ measured NFE" in md


def test_compare_warns_and_does_not_compare_across_counts_or_references(tmp_path, capsys):
    a = fake_records(tmp_path / "a", [fid_cell(50000, 3.0, "a")])
    fewer = fake_records(tmp_path / "fewer", [fid_cell(1000, 30.0, "a")])
    assert main(["compare", str(a), str(fewer)]) == 0  # not a regression: not comparable
    out = capsys.readouterr()
    warnings = [line for line in out.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "sample counts differ (50k vs 1k)" in warnings[0]
    assert "not comparable" in out.out and "fid@50k vs fid@1k" in out.out

    other = fake_records(tmp_path / "other", [fid_cell(50000, 9.0, "b")])
    assert main(["compare", str(a), str(other)]) == 0
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "references differ" in err

    same = fake_records(tmp_path / "same", [fid_cell(50000, 9.0, "a")])
    assert main(["compare", str(a), str(same)]) == 1  # same protocol: a real regression
    assert "warning:" not in capsys.readouterr().err


def test_published_numbers_from_another_count_are_flagged(tmp_path, capsys):
    run = fake_records(tmp_path / "run", [fid_cell(2000, 30.0)])
    published = {
        "model": "m",
        "sampler": "kar1",
        "nfe": 35,
        "metric": "fid",
        "value": 1.97,
        "source": "EDM",
        "n": 50000,
    }
    (run / "suite.json").write_text(json.dumps({"name": "x", "models": [{"name": "m", "metrics": ["fid"]}],
                                                "published": [published]}))  # fmt: skip
    report.write_report(run)
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "fid@50k vs fid@2k" in err
    table = pd.read_csv(run / "tables" / "published.csv")
    assert table.loc[0, "published n"] == "50k" and table.loc[0, "n"] == "2k"
    assert "**warning: 1 published number(s) come from another sample count" in (run / "report.md").read_text()


def test_shipped_suites_give_the_published_sample_counts():
    for name in ("cifar10-ve", "cifar10-vp", "cifar10-edm", "cifar10-ddim"):
        assert {p.n for p in load_suite(name).published} == {50000}, name


# --- torchrun: features gathered across ranks give the single-process metrics ----------------------------------------
TORCHRUN_SUITE = """
[suite]
seed = 4
n_samples = 32
batch_size = 8
budgets = [6]

[[models]]
spec = "digits-vp"
metrics = ["fd_digits", "kd_digits", "precision_digits", "recall_digits"]
reference = "stats:pool.npz"
fid_seed_sets = 2

[[models]]
spec = "digits-ve"
metrics = ["fd_digits"]
reference = "stats:edm.npz"

[[models]]
spec = "gmm-2d-ve"

[samplers.kar1]
"""


def test_torchrun_two_processes_gather_features_to_the_single_process_metrics(digits, tmp_path):
    write_layout("score_sde", tmp_path / "pool.npz", digits.train)
    write_layout("edm", tmp_path / "edm.npz", digits.train)
    suite = tmp_path / "suite.toml"
    suite.write_text(TORCHRUN_SUITE)
    env = {**ENV, "SCOREBENCH_CACHE": str(tmp_path / "cache")}
    single = tmp_path / "single"
    proc = subprocess.run([sys.executable, "-m", "bench", "run", str(suite), "--out", str(single), "--no-report"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    sharded = tmp_path / "sharded"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    cmd += ["-m", "bench", "run", str(suite), "--out", str(sharded), "--no-report"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    a = {r["model"]: r for r in read_records(single)}
    b = {r["model"]: r for r in read_records(sharded)}
    assert set(a) == set(b) == {"digits-vp", "digits-ve", "gmm-2d-ve"}
    for model, ra in a.items():
        rb = b[model]
        assert ra["status"] == rb["status"] == "ok", (ra, rb)
        assert (ra["world_size"], rb["world_size"]) == (1, 2)
        assert {k: v for k, v in ra.items() if k not in TIMING} == {k: v for k, v in rb.items() if k not in TIMING}
        np.testing.assert_array_equal(
            np.load(single / ra["samples_file"])["x"], np.load(sharded / rb["samples_file"])["x"]
        )
    assert len(a["digits-vp"]["set_metrics"]) == 2 and a["digits-ve"]["reference"]["kind"] == "mu-sigma"
