"""The harness defects of issue 16 (items 5-14), each with the input that reproduced it: gates that passed when they
should fail, tracebacks instead of one line, silently accepted input, misleading outputs, slow help."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import bench.report as report
from bench.cli import build_parser, main
from bench.metric_table import METRICS, is_score, tied
from bench.metrics import METRIC_NAMES, exact_metrics, weight_tv_floor
from bench.runner import read_records
from models import load_model

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINTS = ROOT / "models" / "checkpoints"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"scorebench {command}: error: "), err
    return err


def fake_run(path: Path, records: list[dict]) -> Path:
    path.mkdir(parents=True)
    with open(path / "records.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path


def cell(model: str, sampler: str, budget: int, status: str = "ok", ms: float = 2.0, **metrics) -> dict:
    r = {"model": model, "sampler": sampler, "nfe_budget": budget, "nfe": budget - 1, "n": 100, "status": status}
    if status == "ok":
        r |= {"ms_per_sample": ms, "wall_s": ms / 10, "metrics": metrics}
    else:
        r |= {"error": "RuntimeError: it broke", "metrics": {}}
    return r


BASE = [cell("m", "kar1", 10, fd_exact=1.0, precision_data=0.8), cell("m", "pc", 10, fd_exact=2.0, precision_data=0.7)]


# --- 6: compare ---------------------------------------------------------------------------------------------------


def test_compare_fails_on_nan_missing_and_failed_cells_unless_the_baseline_had_them(tmp_path, capsys):
    a = fake_run(tmp_path / "a", BASE)
    nan = fake_run(
        tmp_path / "nan", [cell("m", s, 10, fd_exact=math.nan, precision_data=math.nan) for s in ("kar1", "pc")]
    )
    assert main(["compare", str(a), str(nan)]) == 1  # the reproducing input: every metric of B is NaN
    out = capsys.readouterr().out
    assert "REGRESSION: 2 of 2 cells" in out and "no regression" not in out
    empty = fake_run(tmp_path / "empty", [cell("m", s, 10) for s in ("kar1", "pc")])  # ok, but no metrics at all
    assert main(["compare", str(a), str(empty)]) == 1
    failed = fake_run(tmp_path / "failed", [BASE[0], cell("m", "pc", 10, status="error")])
    assert main(["compare", str(a), str(failed)]) == 1
    diverged = fake_run(tmp_path / "diverged", [BASE[0], cell("m", "pc", 10, status="diverged")])
    assert main(["compare", str(failed), str(diverged)]) == 1  # failing differently is no excuse
    capsys.readouterr()
    # the same failure, or the same NaN, in the baseline is no regression; a cell that recovers is none either
    assert main(["compare", str(failed), str(failed)]) == 0
    assert main(["compare", str(nan), str(nan)]) == 0
    assert main(["compare", str(failed), str(a)]) == 0
    assert main(["compare", str(nan), str(a)]) == 0


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-0.1", "abc"])
def test_compare_refuses_a_tolerance_that_is_not_a_finite_non_negative_number(value, tmp_path, capsys):
    a = fake_run(tmp_path / "a", BASE)
    for flag in ("--metric-tol", "--metric-atol", "--speed-tol"):
        assert main(["compare", str(a), str(a), flag, value]) == 2
        assert flag in one_line_error(capsys, "compare")


def test_compare_direction_comes_from_the_metric_table(tmp_path, capsys):
    a = fake_run(tmp_path / "a", [cell("m", "kar1", 10, logp_gap=0.5, recall_data=0.5, mmd2_exact=0.001)])
    closer = fake_run(tmp_path / "b", [cell("m", "kar1", 10, logp_gap=-0.1, recall_data=0.9, mmd2_exact=-0.001)])
    assert main(["compare", str(a), str(closer)]) == 0  # closer to its target, higher recall, MMD at its floor
    assert main(["compare", str(closer), str(a)]) == 1


def test_compare_names_the_path_that_is_missing(tmp_path, capsys):
    a = fake_run(tmp_path / "a", BASE)
    assert main(["compare", str(a), "/nonexistent"]) == 2
    assert "/nonexistent: no such run directory" in one_line_error(capsys, "compare")
    assert main(["compare", str(a), str(tmp_path)]) == 2
    assert f"{tmp_path} is not a run directory" in one_line_error(capsys, "compare")


def test_compare_csv_into_a_missing_directory_is_one_line_before_comparing(tmp_path, capsys, monkeypatch):
    import bench.compare

    a = fake_run(tmp_path / "a", BASE)
    monkeypatch.setattr(bench.compare, "compare_runs", lambda *a, **k: pytest.fail("compared before the check"))
    assert main(["compare", str(a), str(a), "--csv", str(tmp_path / "no" / "such" / "dir.csv")]) == 2
    assert "directory" in one_line_error(capsys, "compare")


# --- 7: report on models with no ok cell, written atomically --------------------------------------------------------


def test_report_of_a_model_without_ok_cells_draws_what_exists_and_says_what_is_missing(tmp_path, capsys):
    records = [*BASE, cell("broken", "kar1", 10, status="error"), cell("broken", "pc", 10, status="diverged")]
    run = fake_run(tmp_path / "run", records)
    assert main(["report", str(run)]) == 0
    text = (run / "report.md").read_text()
    assert "## broken" in text and "No cell of this model finished ok (1 error, 1 diverged)" in text
    assert "Cells that did not finish ok" in text
    assert (run / "plots" / "m-nfe.png").exists() and not (run / "plots" / "broken-nfe.png").exists()
    assert len(pd.read_csv(run / "tables" / "records.csv")) == 4

    nothing_ok = fake_run(tmp_path / "none", records[2:])  # no ok cell anywhere: no timing column at all
    assert main(["report", str(nothing_ok)]) == 0
    assert "No cell of this model finished ok" in (nothing_ok / "report.md").read_text()


def test_report_files_go_through_one_atomic_writer():
    """Every report, table, plot and JSON file in bench/ is written through bench.files (temporary file + rename)."""
    direct = re.compile(r"\.write_text\(|\.write_bytes\(|\.savefig\(|\.to_csv\(\s*(?!index|float_format|\))|np\.savez")
    offenders = []
    for path in sorted((ROOT / "bench").glob("*.py")):
        if path.name == "files.py":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            # features.py writes a checkpoint into a temporary directory that is renamed whole
            if direct.search(line) and not (path.name == "features.py" and "tmp /" in line):
                if "with replacing(" not in "".join(path.read_text().splitlines()[max(0, i - 3) : i]):
                    offenders.append(f"{path.name}:{i}: {line.strip()}")
    assert not offenders, offenders


def test_ctrl_c_while_writing_the_report_is_one_line_and_leaves_files_whole(tmp_path, capsys, monkeypatch):
    from matplotlib.figure import Figure

    run = fake_run(tmp_path / "run", BASE)
    assert main(["report", str(run)]) == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    real = Figure.savefig

    def interrupted(fig, fname, **kwargs):  # half a PNG on disk, then Ctrl-C
        Path(fname).write_bytes(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", interrupted)
    capsys.readouterr()
    assert main(["report", str(run)]) == 130
    assert capsys.readouterr().err == "scorebench report: interrupted\n"
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert set(after) == set(before), "a temporary file was left behind"
    for path, data in before.items():
        if path.suffix == ".png":
            assert after[path] == data, path  # the old plot, whole
    monkeypatch.setattr(Figure, "savefig", real)


def test_ctrl_c_while_importing_is_one_line(monkeypatch, capsys):
    import bench.cli

    def interrupted(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench.cli.importlib, "import_module", interrupted)
    assert main(["list"]) == 130
    assert capsys.readouterr().err == "scorebench: interrupted\n"


def test_report_on_a_read_only_run_is_one_line(tmp_path, capsys, monkeypatch):
    import bench.files

    run = fake_run(tmp_path / "run", BASE)

    def refuse(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(bench.files.Path, "write_text", lambda self, text: refuse(self))
    assert main(["report", str(run)]) == 2
    assert "Permission denied" in one_line_error(capsys, "report")
    monkeypatch.undo()
    shutil.rmtree(run / "tables")
    write(run / "tables", "a file where the tables folder goes")
    assert main(["report", str(run)]) == 2
    one_line_error(capsys, "report")


# --- 8, 9, 5: one line and a non-zero exit ----------------------------------------------------------------------


@pytest.fixture
def bad_checkpoints(tmp_path) -> dict[str, Path]:
    """digits-ve with a shape its network cannot take, digits-vp with a DDPM process of T = 0."""
    out = {}
    for name, base, change in (
        ("shape", "digits-ve", lambda c: c.update(shape=[3, 8, 8])),
        ("t0", "digits-vp", lambda c: c["process"].update(T=0)),
    ):
        target = tmp_path / name
        shutil.copytree(CHECKPOINTS / base, target)
        config = json.loads((target / "config.json").read_text())
        change(config)
        write(target / "config.json", json.dumps(config))
        out[name] = target
    return out


def test_bad_checkpoint_configs_are_one_line_before_sampling(bad_checkpoints, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["sample", str(bad_checkpoints["shape"]), "--n", "2", "--nfe", "3", "--out", str(out)]) == 2
    assert "does not evaluate on samples of its shape [3, 8, 8]" in one_line_error(capsys, "sample")
    assert main(["sample", str(bad_checkpoints["t0"]), "--n", "2", "--nfe", "3", "--out", str(out)]) == 2
    assert "ZeroDivisionError" in one_line_error(capsys, "sample")
    assert not out.exists()
    suite = write(
        tmp_path / "s.toml",
        f'[suite]\nn_samples = 4\nbudgets = [5]\n[[models]]\nspec = "{bad_checkpoints["shape"]}"\n[samplers.kar1]\n',
    )
    assert main(["run", str(suite), "--out", str(tmp_path / "run")]) == 2
    assert "does not evaluate" in one_line_error(capsys, "run")
    assert not (tmp_path / "run").exists()  # no error cells, no report crash: nothing started


@pytest.mark.parametrize(
    "args",
    [
        ["sample", "gmm-2d", "--device", "tpu"],
        ["sample", "gmm-2d", "--device", "cuda:7"],
        ["speed", "--device", "tpu"],
        ["train", "score", "--device", "tpu", "--steps", "1"],
        ["run", "SUITE", "--device", "tpu"],
        ["run", "SUITE", "--device", "xla"],
    ],
)
def test_unknown_or_absent_devices_are_one_line(args, tmp_path, capsys):
    suite = write(
        tmp_path / "s.toml", '[suite]\nn_samples = 4\nbudgets = [5]\n[[models]]\nspec = "gmm-2d"\n[samplers.kar1]'
    )
    args = [str(suite) if a == "SUITE" else a for a in args]
    if args[0] == "run":
        args += ["--out", str(tmp_path / "run")]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "device" in err, err
    if torch.cuda.is_available() and "cuda:7" in args and torch.cuda.device_count() > 7:
        pytest.fail("this check needs a machine with fewer than 8 CUDA devices")


@pytest.mark.parametrize(
    "args, flag",
    [
        (["sample", "gmm-2d", "--batch-size", "-3"], "--batch-size"),
        (["sample", "gmm-2d", "--batch-size", "0"], "--batch-size"),
        (["sample", "gmm-2d", "--seed", "-1"], "--seed"),
        (["sample", "gmm-2d", "--n", "0"], "--n"),
        (["sample", "gmm-2d", "--nfe", "0"], "--nfe"),
        (["speed", "--threads", "-1"], "--threads"),
        (["speed", "--repeats", "0"], "--repeats"),
        (["speed", "--batch-size", "0"], "--batch-size"),
        (["run", "quick", "--threads", "0"], "--threads"),
        (["run", "quick", "--bootstrap", "-2"], "--bootstrap"),
        (["train", "score", "--seed", "-4"], "--seed"),
        (["train", "score", "--steps", "0"], "--steps"),
    ],
)
def test_bad_numbers_are_refused_while_parsing(args, flag, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"argument {flag}" in err and "--help" in err, err


def test_sample_checks_hyper_parameters_and_the_output_before_sampling(capsys, monkeypatch, tmp_path):
    import samplers

    monkeypatch.setattr(samplers, "sample", lambda *a, **k: pytest.fail("sampled before the checks"))
    assert main(["sample", "digits-ve", "--sampler", "ddim", "--hyper", "eta=abc"]) == 2
    assert "eta must be a number >= 0, got 'abc'" in one_line_error(capsys, "sample")
    assert main(["sample", "digits-ve", "--hyper", "no_such=1"]) == 2
    assert "has no hyper-parameter 'no_such'" in one_line_error(capsys, "sample")
    assert main(["sample", "digits-ve", "--out", str(tmp_path / "grid.xyz")]) == 2
    assert "unknown image extension '.xyz'" in one_line_error(capsys, "sample")


def test_sample_writes_a_jpeg_grid(tmp_path, capsys):
    out = tmp_path / "grid.jpg"
    assert main(["sample", "digits-vp", "--n", "4", "--nfe", "3", "--sampler", "ddim", "--out", str(out)]) == 0
    assert out.read_bytes()[:2] == b"\xff\xd8"


REFERENCE_SUITE = """
[suite]
n_samples = 8
budgets = [5]
[[models]]
spec = "gmm-2d"
metrics = ["fd_data"]
reference = "{reference}"
[samplers.kar1]
"""


def test_bad_reference_files_are_one_line(tmp_path, capsys):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 not a zip archive at all")
    text = tmp_path / "text.npz"
    text.write_text("plain text, not numpy")
    empty = tmp_path / "empty.npz"
    np.savez(empty)
    no_images = tmp_path / "no_images.npz"
    np.savez(no_images, images=np.zeros((0, 8, 8), np.uint8))
    for path, message in [
        (garbage, "is not a readable .npz archive"),
        (text, "is not a readable .npz archive"),
        (empty, "holds no arrays"),
        (no_images, "holds no images"),
    ]:
        suite = write(tmp_path / "s.toml", REFERENCE_SUITE.format(reference=path))
        assert main(["run", str(suite), "--out", str(tmp_path / "run")]) == 2
        assert message in one_line_error(capsys, "run"), path
        assert not (tmp_path / "run").exists()


def test_an_unused_reference_is_warned_about(tmp_path, capsys):
    images = tmp_path / "images.npz"
    np.savez(images, images=np.zeros((4, 8, 8), np.uint8))
    suite = write(
        tmp_path / "s.toml", '[suite]\nn_samples = 8\nbudgets = [5]\n[[models]]\nspec = "gmm-2d"\n[samplers.kar1]'
    )
    assert main(["run", str(suite), "--out", str(tmp_path / "run"), "--reference", str(images), "--no-report"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and f"--reference {images} is not used" in warnings[0]
    own = write(tmp_path / "own.toml", REFERENCE_SUITE.format(reference=images).replace('["fd_data"]', '["fd_exact"]'))
    assert main(["run", str(own), "--out", str(tmp_path / "run2"), "--no-report"]) == 0
    err = capsys.readouterr().err
    assert f"its reference {images} is not used: none of its metrics (fd_exact)" in err


def test_a_suite_beyond_the_machine_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    import bench.runner

    huge = write(
        tmp_path / "huge.toml",
        '[suite]\nn_samples = 100_000_000_000\nbatch_size = 500\nbudgets = [10]\n[[models]]\nspec = "gmm-2d"\n'
        "[samplers.kar1]\n",
    )
    assert main(["run", str(huge), "--out", str(tmp_path / "run")]) == 2
    err = one_line_error(capsys, "run")
    assert "of memory per cell" in err and "--yes-i-know" in err
    assert not (tmp_path / "run").exists()
    small = write(
        tmp_path / "small.toml", '[suite]\nn_samples = 8\nbudgets = [5]\n[[models]]\nspec = "gmm-2d"\n[samplers.kar1]'
    )
    monkeypatch.setattr(bench.runner, "MAX_HOURS", 1e-12)
    assert main(["run", str(small), "--out", str(tmp_path / "run")]) == 2
    assert "more than 1e-12 h" in one_line_error(capsys, "run")
    assert main(["run", str(small), "--out", str(tmp_path / "run"), "--yes-i-know", "--no-report"]) == 0


# --- 10: plots -----------------------------------------------------------------------------------------------------


def _frame(n_metrics: int = 6, outlier: float = 1e4) -> pd.DataFrame:
    rows = []
    for s, scale in (("kar1", 1.0), ("ddim", 1.3), ("em", 2.0), ("ald", outlier)):
        for budget in (10, 20, 50):
            row = {"model": "m", "sampler": s, "algorithm": s, "nfe_budget": budget, "nfe": budget, "status": "ok"}
            row |= {"ms_per_sample": budget / 10, "n": 100}
            for i in range(n_metrics):
                row["fd_exact" if i == 0 else f"m{i}"] = scale * (1 + i) / budget
            rows.append(row)
    return pd.DataFrame(rows)


@pytest.fixture
def figures(monkeypatch):
    """The Figures the report would save, kept instead of written."""
    kept = []
    monkeypatch.setattr(report, "save_figure", lambda fig, path, **kw: kept.append(fig))
    return kept


def test_metric_panels_wrap_into_a_grid_and_outliers_are_clipped_and_marked(figures):
    frame = _frame()
    metrics = ["fd_exact", *[f"m{i}" for i in range(1, 6)]]
    styles = report.sampler_styles(list(dict.fromkeys(frame["sampler"])), {})
    assert report.plot_nfe(frame, "m", metrics, styles, ["kar1", "ddim", "em", "ald"], Path("unused.png"))
    fig = figures[-1]
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 6
    rows = {round(ax.get_position().y0, 2) for ax in panels}
    assert len(rows) == 2, "six panels wrap into two rows of at most three"
    width, height = fig.get_size_inches()
    assert width / height < 2.5
    ax = panels[0]
    low, high = ax.get_ylim()
    assert high < 1e4 * 1 / 50 and high > 2.0 / 10  # ald's values are off the axis, every other one is on it
    edge = [c for c in ax.collections if len(c.get_offsets()) and np.allclose(c.get_offsets()[:, 1], high)]
    assert sum(len(c.get_offsets()) for c in edge) == 3, "one triangle per clipped point"
    assert "3 value(s) beyond the axis" in ax.get_title()


def test_no_clipping_when_every_value_is_in_the_bulk():
    assert report._bulk_limits([0.1, 0.12, 0.2, 0.3, 0.5], log=True) is None
    low, high = report._bulk_limits([0.1, 0.12, 0.2, 0.3, 0.5, 1e4], log=True)
    assert 0.5 < high < 1e4 and low <= 0.1


def test_scatter_grids_mark_samples_outside_their_axes():
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    pts = np.array([[0.0, 0.0], [0.5, -0.5], [40.0, 0.0], [0.0, -90.0], [np.nan, 1.0]])
    assert report._scatter_inside(ax, pts, ((-1, 1), (-1, 1))) == 3
    red = ax.collections[-1].get_offsets()
    assert np.allclose(red, [[1.0, 0.0], [0.0, -1.0]])  # drawn on the nearest edge


# --- 11: best tables and the metric table --------------------------------------------------------------------------


def test_the_metric_table_lists_exactly_the_metrics_that_exist():
    assert set(METRICS) == set(METRIC_NAMES)
    for m in METRICS.values():
        assert m.companion is None or m.companion in METRICS, m
    assert not is_score("n") and not is_score("fd_exact_lo") and not is_score("weight_tv_floor")
    assert not is_score("kd_digits_std") and is_score("recall_digits") and is_score("logp_gap")


def test_best_tables_rank_by_declared_direction_show_the_companion_and_flag_ties():
    rows = [
        # recall: ald covers everything with precision 0; the table says so beside it
        ("ald", 10, {"recall_data": 1.0, "precision_data": 0.0}),
        ("kar1", 10, {"recall_data": 0.7, "precision_data": 0.9}),
        # mmd2_exact: two negative estimates are noise around 0, a tie; not "the most negative wins"
        ("em", 9, {"mmd2_exact": -0.0001, "logp_gap": 2.0}),
        ("rd", 10, {"mmd2_exact": -0.002, "logp_gap": -0.1}),
        ("pc", 10, {"mmd2_exact": 0.01, "logp_gap": 0.5}),
    ]
    frame = pd.DataFrame(
        [
            {"model": "m", "sampler": s, "nfe_budget": 10, "nfe": nfe, "status": "ok", "ms_per_sample": 1.0, **v}
            for s, nfe, v in rows
        ]  # fmt: skip
    )
    best = report.best_table(frame, {"m": ["recall_data", "mmd2_exact", "logp_gap"]}).set_index("metric")
    assert best.loc["recall_data", "best_sampler"] == "ald"
    assert best.loc["recall_data", "companion"] == "precision_data 0"
    assert best.loc["mmd2_exact", "best_sampler"] == "em" and best.loc["mmd2_exact", "tied_with"] == "rd"
    assert best.loc["logp_gap", "best_sampler"] == "rd"  # |-0.1| is the closest to its target 0
    assert best.loc["logp_gap", "tied_with"] == ""


def test_ties_from_overlapping_intervals_and_noise_scales():
    a = {"fd_exact": 1.0, "fd_exact_lo": 0.8, "fd_exact_hi": 1.2}
    assert tied("fd_exact", a, {"fd_exact": 1.3, "fd_exact_lo": 1.1, "fd_exact_hi": 1.5})
    assert not tied("fd_exact", a, {"fd_exact": 1.5, "fd_exact_lo": 1.3, "fd_exact_hi": 1.7})
    assert tied("fd_exact", {"fd_exact": 1.0}, {"fd_exact": 1.01}) and not tied(
        "fd_exact", {"fd_exact": 1.0}, {"fd_exact": 1.1}
    )
    assert tied("weight_tv", {"weight_tv": 0.05, "weight_tv_floor": 0.04}, {"weight_tv": 0.08})
    assert not tied("weight_tv", {"weight_tv": 0.05, "weight_tv_floor": 0.01}, {"weight_tv": 0.08})


def test_weight_tv_of_exact_samples_sits_on_its_reported_floor():
    """The bias the issue measured (0.052 +- 0.003 at n=500 for a metric documented as 0 for exact samples): the
    record now carries the exact-sample floor, and exact samples land on it."""
    p = load_model("gmm-64d").mixture
    gen = torch.Generator().manual_seed(11)
    values = np.array([exact_metrics(p, p.sample(500, gen)[0], ["weight_tv"])["weight_tv"] for _ in range(40)])
    floor = weight_tv_floor(p, 500)
    error = values.std(ddof=1) / math.sqrt(len(values))
    assert values.mean() > 10 * error  # biased: far from 0
    assert abs(values.mean() - floor) < 3 * error, (values.mean(), floor, error)
    assert exact_metrics(p, p.sample(500, gen)[0], ["weight_tv"])["weight_tv_floor"] == pytest.approx(floor)


# --- 12, 13: DLG's total cost and the machine's load ----------------------------------------------------------------


def test_dlg_points_are_also_drawn_at_their_total_cost(figures):
    frame = _frame(1, outlier=3.0)
    dlg = frame[frame["sampler"] == "kar1"].assign(sampler="dlg+kar1", algorithm="dlg+kar1")
    dlg = dlg.assign(burn_in_nfe=7.4, classifier_evals=2.0, burn_in_classifier_evals=0.5)
    frame = pd.concat([frame, dlg], ignore_index=True)
    samplers = list(dict.fromkeys(frame["sampler"]))
    styles = report.sampler_styles(samplers, dict(zip(frame["sampler"], frame["algorithm"], strict=True)))
    assert report.plot_nfe(frame, "m", ["fd_exact"], styles, samplers, Path("unused.png"))
    ax = figures[-1].axes[0]
    xs = {round(float(x), 6) for line in ax.lines for x in line.get_xdata()}
    assert {10 + 9.9, 20 + 9.9, 50 + 9.9} <= xs
    labels = [t.get_text() for t in figures[-1].legends[0].get_texts()]
    assert any("total cost" in label for label in labels)


def test_cells_record_the_load_and_the_report_marks_loaded_timings(tmp_path, figures):
    suite = write(
        tmp_path / "s.toml", '[suite]\nn_samples = 8\nbudgets = [5]\n[[models]]\nspec = "gmm-2d"\n[samplers.kar1]'
    )
    assert main(["run", str(suite), "--out", str(tmp_path / "run"), "--no-report"]) == 0
    (record,) = read_records(tmp_path / "run")
    assert record["load_before"] >= 0 and record["load_after"] >= 0 and record["cpu_count"] >= 1

    records = [cell("m", s, b, ms=b / 10, fd_exact=1 / b) | {"cpu_count": 2} for s in ("kar1", "pc") for b in (10, 20)]
    records[0] |= {"load_before": 1.0, "load_after": 5.5}  # a busy machine during this cell
    records[1] |= {"load_before": 0.5, "load_after": 1.0}
    run = fake_run(tmp_path / "busy", records)
    report.write_report(run)
    text = (run / "report.md").read_text()
    assert "1 of 4 cells ran while the machine's load average (up to 5.5) exceeded its 2 cores" in text
    assert pd.read_csv(run / "tables" / "records.csv")["loaded"].tolist() == [True, False, False, False]
    pareto = figures[-1] if figures[-1].axes[0].get_xlabel().startswith("wall-clock") else figures[-2]
    hatched = [c for c in pareto.axes[0].collections if c.get_hatch()]
    assert len(hatched) == 1 and len(hatched[0].get_offsets()) == 1


# --- 14: README, --help ----------------------------------------------------------------------------------------------


def test_every_python_block_of_the_readme_runs_as_written(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})


def test_help_imports_no_torch_and_prints_no_doubled_defaults():
    heavy = "{'torch', 'models', 'samplers', 'pandas', 'matplotlib'}"
    code = f"import sys; from bench.cli import build_parser; build_parser(); print(sorted({heavy} & set(sys.modules)))"
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
    assert time.perf_counter() - start < 10  # torch alone takes 2-6 s to import here

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    helps = []
    for p in sub.choices.values():
        helps.append(p.format_help())
        for action in p._actions:
            if action.dest == "train_command":
                helps += [q.format_help() for q in action.choices.values()]
    for text in helps:
        flat = " ".join(text.split())
        assert "(default: None)" not in flat
        assert not re.search(r"\(default: [^)]*\)\s*\(default:", flat), flat


def test_speed_help_defaults_match_the_speed_module():
    import bench.cmd_speed as cmd
    import bench.speed as speed

    assert (cmd.DEFAULT_BASELINE, cmd.DEFAULT_TOLERANCE) == (speed.DEFAULT_BASELINE, speed.DEFAULT_TOLERANCE)
    assert (cmd.GATE_REPEATS, cmd.BASELINE_REPEATS) == (speed.GATE_REPEATS, speed.BASELINE_REPEATS)
