"""The speed tooling's logic, on workloads small enough for the unit-test run (timings themselves are benchmarks)."""

import json
import math

import pytest
import torch

from bench.cli import main
from bench.peers import NETS, compare
from bench.speed import SpeedRow, check, load_baseline, measure, plan, save_baseline
from models import load_model
from samplers import SAMPLERS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def row(sampler="kar1", ratio=1.2, nfe=9.0, **kw) -> SpeedRow:
    base = dict(model="gmm-2d", sampler=sampler, nfe_budget=10, nfe=nfe, batch=8, device="cpu", threads=1)
    base.update(sampler_ms=12.0, model_ms=10.0, ratio=ratio, overhead=1 - 1 / ratio, spread=0.1)
    base.update(kw)
    return SpeedRow(**base)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_plan_fits_the_budget_and_records_every_model_call(sampler):
    model = load_model("gmm-2d")
    spec = SAMPLERS[sampler]
    budget = 40
    workload = plan(model, spec, budget, 4)
    assert workload.batch == (4 if not spec.chains else spec.resolve({})["outputs_per_chain"])
    assert workload.nfe <= budget
    if not spec.adaptive:
        assert workload.nfe == spec.declared_nfe(workload.steps)
        assert spec.declared_nfe(workload.steps + 1) > budget  # the largest step count that fits
    x0 = workload.run_sampler()
    assert torch.equal(x0, workload.run_sampler())  # the same seeds every pass


def test_dlg_workload_replays_its_classifier_calls_as_model_time():
    """DLG's noise-level classifier is a model evaluation like the denoiser's: recorded once, replayed with them."""
    model = load_model("gmm-2d")
    workload = plan(model, SAMPLERS["dlg+kar1"], 20, 16)
    h = workload.hyper
    chains = workload.batch // h["outputs_per_chain"]
    per_pass = 1 + h["burn_in_iters"] + h["settle_iters"] + h["outputs_per_chain"] * h["n_skip"]
    assert len(workload.classifier_inputs) == per_pass
    assert all(x.shape == (chains, *model.shape) for x in workload.classifier_inputs)
    calls = []
    workload.classifier.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    workload.run_model()
    assert calls == [chains] * per_pass
    calls.clear()
    workload.run_sampler()  # the sampler pass uses the same (resolved once) classifier
    assert calls == [chains] * per_pass
    (r,) = measure([workload], repeats=2)
    assert r.model_ms > 0 and 0 <= r.overhead < 1


def test_measure_times_sampler_and_replay():
    model = load_model("gmm-2d")
    workloads = [plan(model, SAMPLERS[name], 12, 8) for name in ("ddim", "em")]
    rows = measure(workloads, repeats=3)
    for r in rows:
        assert r.sampler_ms > 0 and r.model_ms > 0 and r.ratio > 0 and math.isfinite(r.overhead)
        assert r.threads == torch.get_num_threads() and r.nfe == 12


def test_gate_verdicts():
    baseline = {r.key: {**r.__dict__} for r in [row("kar1", 1.2), row("ddim", 1.1), row("em", 1.3)]}
    rows = [row("kar1", 1.2 * 1.29), row("ddim", 1.1 * 1.31), row("em", 1.3, nfe=10.0), row("rd", 1.4)]
    verdicts = {v.row.sampler: v for v in check(rows, baseline, tolerance=0.3)}
    assert verdicts["kar1"].status == "ok" and not verdicts["kar1"].failed
    assert verdicts["ddim"].status == "slower" and verdicts["ddim"].failed
    assert verdicts["em"].status == "nfe-changed" and verdicts["em"].failed
    assert verdicts["rd"].status == "new" and not verdicts["rd"].failed
    # another batch size, thread count or device is another workload
    assert row(batch=16).key != row().key and row(threads=2).key != row().key


def test_baseline_round_trip_merges_entries(tmp_path):
    path = tmp_path / "nested" / "baseline.json"
    assert load_baseline(path) == {}
    save_baseline(path, [row("kar1", 1.2), row("ddim", 1.1)])
    save_baseline(path, [row("kar1", 1.5)])
    entries = load_baseline(path)
    assert {e["sampler"]: e["ratio"] for e in entries.values()} == {"kar1": 1.5, "ddim": 1.1}
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a speed baseline"):
        load_baseline(path)


def test_speed_command_records_then_gates(tmp_path, capsys):
    baseline, out = tmp_path / "baseline.json", tmp_path / "rows.json"
    common = ["speed", "--model", "gmm-2d", "--samplers", "ddim", "kar1", "--nfe", "10", "--batch-size", "8"]
    # --force-update: the test run itself loads the machine; refusing under load is tested in test_jobs.py
    assert main([*common, "--repeats", "3", "--baseline", str(baseline), "--update-baseline", "--force-update"]) == 0
    assert {e["sampler"] for e in json.loads(baseline.read_text())["entries"]} == {"ddim", "kar1"}
    # a generous tolerance: this checks the plumbing, not the machine's noise
    code = main([*common, "--repeats", "3", "--baseline", str(baseline), "--tolerance", "5", "--json", str(out)])
    assert code == 0, capsys.readouterr()
    assert "ok" in capsys.readouterr().out
    assert [r["sampler"] for r in json.loads(out.read_text())["rows"]] == ["ddim", "kar1"]
    # an impossible overhead limit fails the run (a negative one is refused while parsing)
    assert main([*common, "--repeats", "1", "--baseline", str(baseline), "--max-overhead", "0"]) == 1
    capsys.readouterr()
    assert main([*common, "--repeats", "1", "--baseline", str(baseline), "--max-overhead", "-1"]) == 2
    assert "argument --max-overhead" in capsys.readouterr().err


def test_speed_command_rejects_bad_input(tmp_path, capsys):
    assert main(["speed", "--samplers", "nope", "--repeats", "1"]) == 2
    assert "unknown sampler" in capsys.readouterr().err
    assert main(["speed", "--baseline", str(tmp_path / "missing.json"), "--repeats", "1"]) == 2
    assert main(["speed", "--nfe", "0"]) == 2


@pytest.mark.parametrize("net", ["conv-8x8", "digits-vp"])
def test_peer_loops_reproduce_diffusers_schedulers(net):
    """ddim and kar1 against diffusers' DDIM, Euler and Heun schedulers: same images, same NFE."""
    rows = compare(NETS[net](), net, steps=4, batch=3, repeats=1)
    assert [(r.peer, r.ours, r.nfe) for r in rows] == [
        ("DDIMScheduler", "ddim", 4),
        ("EulerDiscreteScheduler", "ddim", 4),
        ("HeunDiscreteScheduler", "kar1", 7),
    ]
    assert all(r.max_rel_diff < 1e-5 for r in rows)
