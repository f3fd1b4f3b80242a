"""Sampler speed: the time a sampler spends outside model evaluations, and a regression gate on it.

Absolute seconds drift between runs and machines, so the gate compares ratios measured side by side in one run. For
every (model, sampler) workload, one untimed pass records the model inputs the sampler produces; then the sampler
itself and a replay of exactly those model evaluations (same batch, same NFE, nothing else) are timed, interleaved:

    ratio = sampler time / model-only time            overhead = 1 - model-only time / sampler time

Model evaluations are those of the denoiser and, for DLG, of its noise-level classifier (a network like the
denoiser, booked as classifier evaluations; for analytic models the exact posterior over the level grid): both are
recorded and replayed, so the overhead is what the sampler's own code costs.

Each repeat times the sampler and the replay back to back (in alternating order), so both see the same load; the
ratio is the median over repeats of these paired ratios. On a loaded machine this is markedly steadier than ratios
of minimum times (results/benchmarks/README.md has the measurements). On the CPU the clock is the process's CPU
time, which does not count time the OS gave to other processes (torch runs single-threaded by default here); on
CUDA it is wall-clock with the device synchronised around every timed pass.

A workload fails the gate when its ratio exceeds the baseline's by more than the tolerance, or when its measured NFE
differs from the baseline's. Baselines are JSON files (results/benchmarks/speed_baseline.json for this repository).
"""

from __future__ import annotations

import gc
import json
import math
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from models import CountingDenoiser, Denoiser, load_model
from models.noise_classifier import NoiseClassifier, classifier_for
from samplers import SAMPLERS, SamplerSpec, make_schedule, steps_for_budget
from samplers.api import TOLERANCES, draw_batch, synchronize

from .files import write_json
from .threads import set_torch_threads

__all__ = [
    "DEFAULT_BASELINE",
    "DEFAULT_TOLERANCE",
    "GATE_REPEATS",
    "BASELINE_REPEATS",
    "SpeedRow",
    "Verdict",
    "Workload",
    "check",
    "format_rows",
    "format_verdicts",
    "load_baseline",
    "measure",
    "plan",
    "run_gate",
    "save_baseline",
]

DEFAULT_BASELINE = Path("results/benchmarks/speed_baseline.json")
# Gate tolerance on the ratio: a workload fails above baseline * (1 + tolerance). On a loaded 2-core machine unchanged
# code measured 0.92-1.18x its baseline and a 1.5x slowdown of one sampler 1.35-1.56x (results/benchmarks/README.md).
DEFAULT_TOLERANCE = 0.25
GATE_REPEATS, BASELINE_REPEATS = 11, 31  # timed pairs per workload: checking, and recording a baseline
RECORD_LIMIT_BYTES = 1 << 30  # model inputs kept for the replay; beyond this the last kept input is reused


class _Recorder(CountingDenoiser):
    """Counts evaluations and keeps (x, sigma) of every call, for the model-only replay."""

    def __init__(self, inner: Denoiser):
        super().__init__(inner)
        self.inputs: list[tuple[Tensor, Tensor]] = []
        self._bytes = 0

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        if self._bytes < RECORD_LIMIT_BYTES or not self.inputs:
            self.inputs.append((x.clone(), sigma.clone()))
            self._bytes += x.numel() * x.element_size()
        else:
            self.inputs.append((self.inputs[-1][0], sigma.clone()))
        return super().forward(x, sigma)


class _CallTimer(CountingDenoiser):
    """Times every model call (CPU clock) inside a sampling pass: the pass's time spent in model evaluations.
    A counter like the one `sample` wraps models in, so samplers see the same model attributes and bookkeeping."""

    def __init__(self, inner: Denoiser, clock: Callable[[], float]):
        super().__init__(inner)
        self.clock, self.seconds = clock, 0.0

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        start = self.clock()
        out = super().forward(x, sigma)
        self.seconds += self.clock() - start
        return out


class _ClassifierCalls(NoiseClassifier):
    """A noise-level classifier that keeps its inputs (for the replay) or times its calls (inside a sampler pass)."""

    def __init__(self, inner: NoiseClassifier, clock: Callable[[], float] | None = None):
        super().__init__(inner.sigmas)
        self.inner, self.clock, self.seconds = inner, clock, 0.0
        self.inputs: list[Tensor] = []

    def log_posterior(self, x: Tensor) -> Tensor:
        if self.clock is None:
            self.inputs.append(x.clone())
            return self.inner(x)
        start = self.clock()
        out = self.inner(x)
        self.seconds += self.clock() - start
        return out


@dataclass(eq=False)
class Workload:
    """One sampler on one model at a fixed NFE budget and batch, with everything needed to time it."""

    model_name: str
    model: Denoiser
    spec: SamplerSpec
    nfe_budget: int
    batch: int
    sigmas: Tensor
    hyper: dict[str, Any]
    steps: int | None  # noise levels (None for adaptive samplers)
    nfe: float  # measured evaluations per sample
    inputs: list[tuple[Tensor, Tensor]] = field(repr=False)  # the model inputs of one pass
    seed: int = 0
    classifier_inputs: list[Tensor] = field(default_factory=list, repr=False)  # DLG's classifier inputs in one pass

    @property
    def device(self) -> torch.device:
        return self.sigmas.device

    @property
    def classifier(self) -> NoiseClassifier | None:
        """DLG's noise-level classifier, resolved once by `plan` and passed in the hyper-parameters."""
        return self.hyper.get("classifier") if self.spec.chains else None

    def run_sampler(self, model: Denoiser | None = None, classifier: NoiseClassifier | None = None) -> Tensor:
        model = self.model if model is None else model
        hyper = self.hyper if classifier is None else {**self.hyper, "classifier": classifier}
        return draw_batch(model, self.spec, self.sigmas, list(range(self.batch)), seed=self.seed, hyper=hyper)

    def run_model(self) -> None:
        model = self.model
        for x, sigma in self.inputs:
            model(x, sigma)
        for x in self.classifier_inputs:
            self.classifier(x)


def _record(
    model: Denoiser, spec: SamplerSpec, sigmas: Tensor, batch: int, hyper: dict, seed: int
) -> tuple[_Recorder, list[Tensor]]:
    """One untimed pass: the model's inputs, and the classifier's if hyper holds one."""
    recorder = _Recorder(model)
    classifier = hyper.get("classifier")
    if isinstance(classifier, NoiseClassifier):
        classifier = _ClassifierCalls(classifier)
        hyper = {**hyper, "classifier": classifier}
    with torch.no_grad():
        draw_batch(recorder, spec, sigmas, list(range(batch)), seed=seed, hyper=hyper)
    return recorder, classifier.inputs if isinstance(classifier, _ClassifierCalls) else []


def plan(
    model: Denoiser,
    spec: SamplerSpec,
    nfe: int,
    batch: int,
    *,
    model_name: str | None = None,
    seed: int = 0,
    hyper: dict[str, Any] | None = None,
) -> Workload:
    """Fit `spec` into the NFE budget (largest step count; loosest-first tolerance sweep if adaptive) and record the
    model inputs of one pass. `spec` need not be registered: a test may pass a modified one. A chain sampler's batch
    is rounded up to whole chains (the workload's `batch` says how many rows it runs)."""
    if batch < 1:
        raise ValueError(f"batch size must be positive, got {batch}")
    device = model.device
    resolved = spec.resolve(hyper or {})
    if spec.chains:  # a chain sampler (DLG) runs whole chains: round the batch up to a multiple of their length
        group = int(resolved["outputs_per_chain"])
        batch = -(-batch // group) * group
        resolved["classifier"] = classifier_for(model, resolved["classifier"], resolved["n_levels"])
    if not spec.adaptive:
        steps: int | None = steps_for_budget(spec, nfe, resolved)
        sigmas = make_schedule(spec.schedule, model, steps).to(device)
        recorder, classifier_inputs = _record(model, spec, sigmas, batch, resolved, seed)
    else:
        steps, sigmas, recorder = None, make_schedule(spec.schedule, model, 2).to(device), None
        classifier_inputs = []
        given = "rtol" in (hyper or {}) or "atol" in (hyper or {})
        for tol in [None] if given else TOLERANCES:
            trial = resolved if tol is None else {**resolved, "rtol": tol, "atol": tol}
            attempt, attempt_inputs = _record(model, spec, sigmas, batch, trial, seed)
            if attempt.evals / batch > nfe:
                break
            recorder, classifier_inputs, resolved = attempt, attempt_inputs, trial
        if recorder is None:
            raise ValueError(f"{spec.name} cannot meet an NFE budget of {nfe} on {model_name or model.name}")
    measured = recorder.evals / batch
    if measured > nfe:
        raise ValueError(f"{spec.name} took {measured:g} NFE per sample, over the budget of {nfe}")
    return Workload(
        model_name or model.name,
        model,
        spec,
        nfe,
        batch,
        sigmas,
        resolved,
        steps,
        measured,
        recorder.inputs,
        seed,
        classifier_inputs,
    )


@dataclass(frozen=True)
class SpeedRow:
    model: str
    sampler: str
    nfe_budget: int
    nfe: float
    batch: int
    device: str
    threads: int  # torch CPU threads (0 on CUDA)
    sampler_ms: float  # median over repeats of one sampling pass
    model_ms: float  # median over repeats of the replayed model (and classifier) evaluations alone
    ratio: float  # median over repeats of (sampler time / model-only time), each pair timed back to back: gated
    # share of a sampling pass spent outside model evaluations: on the CPU measured directly (each model call in the
    # pass is timed), on CUDA estimated as 1 - 1 / ratio (timing single calls there would need a sync per call)
    overhead: float
    spread: float  # (max - min) / median of the per-repeat ratios: how noisy this run was

    @property
    def key(self) -> str:
        return baseline_key(self.model, self.sampler, self.nfe_budget, self.batch, self.device, self.threads)


def baseline_key(model: str, sampler: str, nfe_budget: int, batch: int, device: str, threads: int) -> str:
    """Ratios are comparable only for the same workload on the same kind of device and CPU thread count."""
    where = "cuda" if torch.device(device).type == "cuda" else f"cpu x{threads}"
    return f"{model}|{sampler}|nfe={nfe_budget}|batch={batch}|{where}"


def _clock(device: torch.device) -> Callable[[], float]:
    return time.perf_counter if device.type == "cuda" else time.process_time


def _timed(fn: Callable[[], Any], device: torch.device, clock: Callable[[], float]) -> float:
    synchronize(device)
    start = clock()
    fn()
    synchronize(device)
    return clock() - start


def measure(workloads: Sequence[Workload], repeats: int = GATE_REPEATS, progress: Callable[[int], None] | None = None):
    """Time every workload's sampler and model-only replay, interleaved, `repeats` times; one SpeedRow each.

    Order alternates between repeats (sampler first, then replay first) so that slow drifts hit both alike. On the
    CPU the sampler pass also times each of its model calls (a clock read around each: ~1 us against ~1 ms calls).
    `progress(n)` is called after each timed pair.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be positive, got {repeats}")
    times: dict[int, tuple[list[float], list[float], list[float]]] = {id(w): ([], [], []) for w in workloads}
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()  # no collector pauses inside a timed pass
    try:
        with torch.no_grad():
            for w in workloads:  # warm-up, untimed
                w.run_sampler()
                w.run_model()
            for r in range(repeats):
                for w in workloads:
                    clock = _clock(w.device)
                    sampler_t, model_t, inside_t = times[id(w)]
                    timer = _CallTimer(w.model, clock) if w.device.type == "cpu" else None
                    clf_timer = _ClassifierCalls(w.classifier, clock) if timer and w.classifier else None

                    def sampler_pass(w=w, timer=timer, clf_timer=clf_timer):
                        w.run_sampler(timer, clf_timer)

                    if r % 2 == 1:
                        model_t.append(_timed(w.run_model, w.device, clock))
                    sampler_t.append(_timed(sampler_pass, w.device, clock))
                    inside = timer.seconds + (clf_timer.seconds if clf_timer else 0.0) if timer else math.nan
                    inside_t.append(inside)
                    if r % 2 == 0:
                        model_t.append(_timed(w.run_model, w.device, clock))
                    if progress is not None:
                        progress(1)
    finally:
        if was_enabled:
            gc.enable()
    rows = []
    for w in workloads:
        sampler_t, model_t, inside_t = times[id(w)]
        pairs = sorted(a / b for a, b in zip(sampler_t, model_t, strict=True))
        ratio = statistics.median(pairs)
        if w.device.type == "cpu":
            overhead = statistics.median(1 - inside / total for inside, total in zip(inside_t, sampler_t, strict=True))
        else:
            overhead = 1 - 1 / ratio
        rows.append(
            SpeedRow(
                model=w.model_name,
                sampler=w.spec.name,
                nfe_budget=w.nfe_budget,
                nfe=w.nfe,
                batch=w.batch,
                device=w.device.type,
                threads=torch.get_num_threads() if w.device.type == "cpu" else 0,
                sampler_ms=1e3 * statistics.median(sampler_t),
                model_ms=1e3 * statistics.median(model_t),
                ratio=ratio,
                overhead=overhead,
                spread=(pairs[-1] - pairs[0]) / ratio,
            )
        )
    return rows


# --- the gate ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    row: SpeedRow
    baseline: dict[str, Any] | None  # the baseline entry, if any
    limit: float | None  # the largest ratio that passes
    status: str  # "ok", "slower", "nfe-changed" or "new" (no baseline entry)

    @property
    def failed(self) -> bool:
        return self.status in ("slower", "nfe-changed")


def load_baseline(path: str | Path) -> dict[str, dict[str, Any]]:
    """Baseline entries by key; an empty dict if the file does not exist."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        keys = ("model", "sampler", "nfe_budget", "batch", "device", "threads")
        return {baseline_key(*(e[k] for k in keys)): e for e in data["entries"]}
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a speed baseline ({err})") from err


def save_baseline(path: str | Path, rows: Iterable[SpeedRow]) -> None:
    """Write rows into the baseline at `path`, replacing entries with the same key and keeping the others."""
    path = Path(path)
    entries = load_baseline(path)
    for row in rows:
        entries[row.key] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(row).items()}
    data = {
        "about": "scorebench speed baseline: ratio = sampler time / model-only time, measured in one run; "
        "`scorebench speed` fails when a ratio exceeds the baseline by more than the tolerance",
        "environment": environment(),
        "entries": [entries[k] for k in sorted(entries)],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, data, indent=1)


def environment() -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def check(rows: Iterable[SpeedRow], baseline: dict[str, dict[str, Any]], tolerance: float) -> list[Verdict]:
    verdicts = []
    for row in rows:
        entry = baseline.get(row.key)
        if entry is None:
            verdicts.append(Verdict(row, None, None, "new"))
            continue
        limit = entry["ratio"] * (1 + tolerance)
        if not math.isclose(row.nfe, entry["nfe"]):
            status = "nfe-changed"
        elif row.ratio > limit:
            status = "slower"
        else:
            status = "ok"
        verdicts.append(Verdict(row, entry, limit, status))
    return verdicts


# --- running it --------------------------------------------------------------------------------------------------
def run_gate(
    models: Sequence[str],
    samplers: Sequence[str] | None = None,
    *,
    nfe: int = 50,
    batch: int = 256,
    device: str = "cpu",
    repeats: int = GATE_REPEATS,
    threads: int | None = 1,
    specs: dict[str, SamplerSpec] | None = None,
    progress: bool = False,
) -> list[SpeedRow]:
    """Plan and measure every (model, sampler) pair. On the CPU torch runs on `threads` threads for the duration
    (None: leave as is). `specs` overrides registry entries (the gate's own tests inject slowdowns this way)."""
    registry = {**SAMPLERS, **(specs or {})}
    names = list(samplers) if samplers else list(registry)
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise ValueError(f"unknown sampler {', '.join(map(repr, unknown))}; known: {', '.join(registry)}")
    previous_threads = torch.get_num_threads()
    if torch.device(device).type == "cpu" and threads:
        set_torch_threads(threads)
    try:
        workloads = []
        for model_name in models:
            model = load_model(model_name, device=device)
            for name in names:
                workloads.append(plan(model, registry[name], nfe, batch, model_name=model_name))
        if not progress:
            return measure(workloads, repeats)
        from tqdm import tqdm

        with tqdm(total=repeats * len(workloads), desc="timing", unit="pair", leave=False) as bar:
            return measure(workloads, repeats, progress=bar.update)
    finally:
        set_torch_threads(previous_threads)


def format_rows(rows: Sequence[SpeedRow]) -> str:
    lines = [
        f"{'model':<12} {'sampler':<12} {'NFE':>5} {'batch':>5} {'sampler ms':>11} {'model ms':>9} "
        f"{'ratio':>6} {'overhead':>8} {'spread':>6}"
    ]
    for r in rows:
        lines.append(
            f"{r.model:<12} {r.sampler:<12} {r.nfe:>5g} {r.batch:>5} {r.sampler_ms:>11.1f} {r.model_ms:>9.1f} "
            f"{r.ratio:>6.3f} {r.overhead:>8.1%} {r.spread:>6.1%}"
        )
    return "\n".join(lines)


def format_verdicts(verdicts: Sequence[Verdict], tolerance: float) -> str:
    lines = [f"{'model':<12} {'sampler':<12} {'NFE':>5} {'ratio':>6} {'baseline':>8} {'limit':>6}  verdict"]
    for v in verdicts:
        r = v.row
        base = f"{v.baseline['ratio']:>8.3f}" if v.baseline else f"{'-':>8}"
        limit = f"{v.limit:>6.3f}" if v.limit else f"{'-':>6}"
        status = {
            "ok": "ok",
            "new": "no baseline",
            "slower": f"SLOWER: ratio over baseline x{1 + tolerance:g}",
            "nfe-changed": f"NFE CHANGED (baseline {v.baseline['nfe']:g})" if v.baseline else "",
        }[v.status]
        lines.append(f"{r.model:<12} {r.sampler:<12} {r.nfe:>5g} {r.ratio:>6.3f} {base} {limit}  {status}")
    return "\n".join(lines)
