"""No command deletes or corrupts what it did not write: checkpoint outputs, --force, two writers, file names."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cli import main
from bench.runner import MARKER, read_records, slug
from models.loaders import load_native, save_native
from models.unet import UNet

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

SUITE = """
[suite]
seed = 1
n_samples = 8
batch_size = 8
budgets = [5]
[[models]]
spec = "gmm-2d-ve"
[samplers.ddim]
"""


def user_files(root: Path) -> dict[str, str]:
    """A user's own files, including directories named like a run's outputs."""
    files = {"notes.txt": "mine", "plots/figure.png": "my plot", "samples/data.npz": "my data"}
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return files


def assert_intact(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        assert (root / name).read_text() == text, f"{name} was changed or deleted"


# --- checkpoint outputs -------------------------------------------------------------------------------------------


TRAIN = [["train", "score", "--process", "ve"], ["train", "classifier", "--data", "digits"], ["train", "features"]]


@pytest.mark.parametrize("command", TRAIN)
def test_train_refuses_a_foreign_directory_before_training(command, tmp_path, capsys, monkeypatch):
    files = user_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    assert main([*command, "--out", ".", "--steps" if command[1] != "features" else "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "refusing to replace" in err and len(err.splitlines()) == 1
    assert time.monotonic() - start < 10  # refused up front, not after training
    assert_intact(tmp_path, files)


def test_checkpoint_directory_is_replaced_only_when_it_is_ours(tmp_path):
    net = UNet(channels=8, channel_mult=(1,), attention=False)
    config = {
        "arch": "unet",
        "arch_kwargs": {"channels": 8, "channel_mult": [1], "attention": False},
        "process": {"name": "ve", "sigma_min": 0.01, "sigma_max": 5},
        "prediction": "score",
        "conditioning": "sigma",
        "shape": [1, 8, 8],
    }
    target = save_native(tmp_path / "ckpt", net, config)
    (target / "samples.png").write_bytes(b"a figure the training wrote")
    save_native(target, net, config)  # a checkpoint of ours (and its figures) may be replaced
    assert load_native(target).shape == (1, 8, 8)
    (target / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds files a scorebench-checkpoint directory does not"):
        save_native(target, net, config)
    assert (target / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary directory left behind


# --- run directories ------------------------------------------------------------------------------------------------


def test_force_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
    suite = tmp_path / "s.toml"
    suite.write_text(SUITE)
    out = tmp_path / "out"
    out.mkdir()
    files = user_files(out)
    assert main(["run", str(suite), "--out", str(out), "--force"]) == 2
    assert "not a scorebench run directory" in capsys.readouterr().err
    assert_intact(out, files)
    assert not (out / MARKER).exists()
    assert main(["run", str(suite), "--out", str(out), "--resume"]) == 2
    assert_intact(out, files)


def test_force_in_a_run_directory_removes_only_what_the_run_wrote(tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text(SUITE)
    out = tmp_path / "run"
    assert main(["run", str(suite), "--out", str(out), "--no-report"]) == 0
    (out / "notes.txt").write_text("mine")
    assert main(["run", str(suite), "--out", str(out), "--force", "--no-report"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert len(read_records(out)) == 1


HOLDER = """
import sys, time
from pathlib import Path
from bench.runner import lock_run_dir
lock_run_dir(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_writer_is_refused_naming_the_holder_and_sigkill_frees_the_lock(tmp_path, capsys):
    suite = tmp_path / "s.toml"
    suite.write_text(SUITE)
    out = tmp_path / "run"
    assert main(["run", str(suite), "--out", str(out), "--no-report"]) == 0
    capsys.readouterr()
    before = (out / "records.jsonl").read_bytes()
    env_before = (out / "env.json").read_text()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for flags in (["--resume"], ["--force"]):
            assert main(["run", str(suite), "--out", str(out), "--no-report", *flags]) == 2
            err = capsys.readouterr().err.strip()
            assert f"in use by process {holder.pid}" in err and len(err.splitlines()) == 1
        assert (out / "records.jsonl").read_bytes() == before
        assert (out / "env.json").read_text() == env_before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert main(["run", str(suite), "--out", str(out), "--no-report", "--force"]) == 0  # the kill freed the lock
    assert len(read_records(out)) == 1


def test_duplicate_records_are_reported_not_fatal(tmp_path, capsys):
    suite = tmp_path / "s.toml"
    suite.write_text(SUITE)
    out = tmp_path / "run"
    assert main(["run", str(suite), "--out", str(out), "--no-report"]) == 0
    records = out / "records.jsonl"
    line = records.read_text().splitlines()[0]
    later = json.loads(line)
    later["wall_s"] = 123.0
    records.write_text(line + "\n" + json.dumps(later) + "\n")
    kept = read_records(out)
    assert len(kept) == 1 and kept[0]["wall_s"] == 123.0
    assert "1 duplicate record" in capsys.readouterr().err
    assert main(["report", str(out)]) == 0
    assert main(["run", str(suite), "--out", str(out), "--resume", "--no-report"]) == 0


# --- file names -----------------------------------------------------------------------------------------------------


def test_slugs_are_unique_and_stay_in_their_directory():
    names = ["m/1", "m 1", "m_1", "..", ".", "../../etc", "gmm-2d-ve", "dlg+kar1", ""]
    slugs = [slug(n) for n in names]
    assert len(set(slugs)) == len(names)
    assert slug("gmm-2d-ve") == "gmm-2d-ve" and slug("dlg+kar1") == "dlg+kar1"
    for s in slugs:
        assert s and "/" not in s and not s.startswith(".")


def test_models_whose_names_clean_up_alike_keep_their_own_files(tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text(
        SUITE.replace(
            'spec = "gmm-2d-ve"\n',
            'spec = "gmm-2d-ve"\nname = "m/1"\n[[models]]\nspec = "gmm-2d-vp"\nname = "m 1"\n'
            '[[models]]\nspec = "gmm-2d-ve"\nname = ".."\n',
        )
    )
    out = tmp_path / "run"
    assert main(["run", str(suite), "--out", str(out)]) == 0
    records = read_records(out)
    files = [r["samples_file"] for r in records]
    assert len(set(files)) == 3
    for f in files:
        assert (out / f).resolve().is_relative_to(out.resolve())
    plots = list((out / "plots").glob("*-nfe.png"))
    assert len(plots) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "s.toml"]
