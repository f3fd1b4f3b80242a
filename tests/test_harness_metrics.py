"""The metrics' options through the harness: reference data, Inception weights, bootstrap intervals, device."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_harness import write  # tests/ is on sys.path (pytest prepend import mode)

from bench import metrics as bench_metrics
from bench import runner
from bench.cli import main
from bench.fidelity import Reference
from bench.metrics import DEFAULT_METRICS
from bench.runner import read_records
from bench.suite import load_suite

# the exact model's default metrics (built-in reference), and a second model naming its own reference
SUITE = """
[suite]
seed = 5
n_samples = 32
batch_size = 16
budgets = [10, 20]

[[models]]
spec = "gmm-2d-ve"

[[models]]
spec = "gmm-2d-vp"
name = "vp"
metrics = ["fd_exact", "weight_tv"]
reference = "data/ref.npz"

[samplers.kar1]
"""
# a model whose metrics (FID) have no built-in reference: it needs --reference and Inception weights
NEEDS_REFERENCE = """
[suite]
n_samples = 8
budgets = [10]

[[models]]
spec = "gmm-2d-ve"

[[models]]
spec = "gmm-2d-vp"
name = "vp"
metrics = ["fid"]

[samplers.kar1]
"""


def reference_npz(path: Path, n: int = 12) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    images = np.random.default_rng(0).integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)
    np.savez(path, images=images)
    return path


def test_bootstrap_intervals_reach_records_and_report(tmp_path, monkeypatch):
    suite = write(tmp_path / "suite.toml", SUITE)
    reference_npz(tmp_path / "data" / "ref.npz")  # relative to the suite file, not to the working directory
    calls = []
    real = bench_metrics.compute_metrics

    def spy(model, samples, names=None, **options):
        calls.append((model.name, options))
        return real(model, samples, names, **options)

    monkeypatch.setattr(bench_metrics, "compute_metrics", spy)
    assert main(["run", str(suite), "--out", str(tmp_path / "run"), "--bootstrap", "4"]) == 0

    assert len(calls) == 4
    for name, options in calls:
        assert options["bootstrap"] == 4 and options["seed"] == 5 and options["device"] == torch.device("cpu")
        assert options["inception_weights"] is None
        if name == "gmm-2d-vp":  # the suite's reference, read once; the exact model keeps its built-in one
            assert isinstance(options["reference"], Reference) and options["reference"].n == 12
        else:
            assert options["reference"] is None

    records = read_records(tmp_path / "run")
    for r in records:
        assert r["status"] == "ok", r
        names = DEFAULT_METRICS["analytic"] if r["model"] == "gmm-2d-ve" else ("fd_exact", "weight_tv")
        counts = {"n", "n_ref"} if r["model"] == "gmm-2d-ve" else {"n"}
        intervals = {f"{m}_{end}" for m in names for end in ("lo", "hi")}
        assert set(r["metrics"]) == {*counts, *names, *intervals, "weight_tv_floor"}  # weight_tv's exact floor
        assert r["metrics"]["n"] == 32
        for m in names:  # (a recall of 1 in every half-sample has an interval of width 0)
            assert r["metrics"][f"{m}_lo"] <= r["metrics"][f"{m}_hi"], (m, r["metrics"])
        assert r["metrics"]["fd_exact_lo"] < r["metrics"]["fd_exact"] < r["metrics"]["fd_exact_hi"]

    run = tmp_path / "run"
    md = (run / "tables" / "vp.md").read_text()
    assert "### fd_exact@32 @ measured NFE" in md and "_lo" not in md and "_hi" not in md  # labelled with its count
    fd = {r["nfe_budget"]: r["metrics"] for r in records if r["model"] == "vp"}
    assert f"[{fd[10]['fd_exact_lo']:.3g}, {fd[10]['fd_exact_hi']:.3g}]" in md  # the interval beside its value
    per_model = pd.read_csv(run / "tables" / "gmm-2d-ve.csv")
    assert {"fd_exact", "fd_exact_lo", "fd_exact_hi"} <= set(per_model.columns) and "n_ref" not in per_model
    best = pd.read_csv(run / "tables" / "best.csv")
    assert set(best["metric"]) == {*DEFAULT_METRICS["analytic"], "fd_exact", "weight_tv"}
    assert (run / "plots" / "vp-nfe.png").read_bytes()[:4] == b"\x89PNG"

    # compare checks the metrics themselves, not their sample counts or interval bounds
    def altered(name: str, change) -> Path:
        other = tmp_path / name
        other.mkdir()
        lines = [json.dumps({**r, "metrics": change(dict(r["metrics"]))}) for r in records]
        (other / "records.jsonl").write_text("\n".join(lines) + "\n")
        return other

    wider = altered("wider", lambda m: {**m, "n": 2 * m["n"], "fd_exact_hi": 2 * m["fd_exact_hi"] + 1})
    assert main(["compare", str(run), str(wider)]) == 0
    worse = altered("worse", lambda m: {**m, "fd_exact": 2 * m["fd_exact"] + 1})
    assert main(["compare", str(run), str(worse)]) == 1


def test_reference_and_inception_weights_from_the_command_line(tmp_path, monkeypatch, capsys):
    suite = write(tmp_path / "suite.toml", NEEDS_REFERENCE)
    ref = reference_npz(tmp_path / "ref.npz")
    out = tmp_path / "out"
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(1)}, wrong)
    bad = {
        "need reference data: set its reference = PATH": [],
        "--reference missing.npz: no such file or directory": ["--reference", "missing.npz"],
        "--inception-weights nope.pth: no such file": ["--reference", str(ref), "--inception-weights", "nope.pth"],
        "not an Inception-v3 state dict": ["--reference", str(ref), "--inception-weights", str(wrong)],
        # refused while the arguments are parsed
        "argument --bootstrap: must be a non-negative integer": ["--reference", str(ref), "--bootstrap", "-1"],
    }
    for message, args in bad.items():  # each one line before any work, nothing written
        assert main(["run", str(suite), "--out", str(out), *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
        assert not out.exists()

    # --reference and --inception-weights go to the model whose metrics need them, and to no other
    weights = tmp_path / "inception.pth"
    torch.save({"Mixed_7c.branch_pool.conv.weight": torch.zeros(1)}, weights)
    s = load_suite(suite).with_metric_options(reference=ref, inception_weights=weights)
    models = runner.load_models(s, "cpu")
    metrics = runner.resolve_metrics(s, models)
    references = runner.resolve_references(s, models, metrics)
    assert references == {"gmm-2d-ve": None, "vp": str(ref.resolve())}
    inputs = runner.metric_inputs(s, models, metrics, references)
    assert inputs["gmm-2d-ve"] == {"reference": None, "inception_weights": None}
    assert inputs["vp"]["reference"].n == 12 and inputs["vp"]["inception_weights"] == weights.resolve()


@pytest.mark.parametrize("where", ["models", "suite"])
def test_missing_reference_or_weights_in_the_suite_is_one_line(where, tmp_path, capsys):
    if where == "models":
        text, message = SUITE, "[[models]] 'gmm-2d-vp' reference: "
    else:
        text = SUITE.replace("seed = 5", 'seed = 5\ninception_weights = "no/inception.pth"')
        reference_npz(tmp_path / "data" / "ref.npz")
        message = "[suite] inception_weights: "
    suite = write(tmp_path / "suite.toml", text)
    assert main(["run", str(suite), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("scorebench run: error: "), err
    assert f"{suite}: {message}" in err and "does not exist" in err, err
    assert not (tmp_path / "out").exists()
