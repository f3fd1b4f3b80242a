"""The sweep: every (model, sampler, budget) cell of a suite sampled, measured and appended to its run directory.

A run directory holds:
- `suite.toml` (the file as given) and `suite.json` (the suite resolved: defaults, metrics per model, device);
- `env.json`: one entry per start or resume (versions, device, git commit, command line);
- `records.jsonl`: one JSON object per finished cell, appended and fsync'ed the moment the cell ends, so a killed run
  resumes (`--resume`) where it stopped, losing and duplicating nothing;
- `samples/`: the first few samples of every cell (.npz) for the report's grids; the report's tables and plots.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .distributed import Ranks
from .files import replacing, write_json, write_text
from .suite import KEEP_SAMPLES_2D, Cell, Suite
from .threads import Parallelism, choose, machine_load, set_torch_threads

__all__ = [
    "Interrupted",
    "RunDir",
    "load_models",
    "resolve_metrics",
    "resolve_references",
    "fit_metrics_to_references",
    "run_suite",
    "run_cell",
    "read_records",
]

RECORDS = "records.jsonl"
# marks a run directory (only a directory holding it is ever cleared by --force) and carries the OS-level lock of
# the one process writing the directory, with that process's PID
MARKER = ".scorebench-run"
# everything `scorebench run` writes into a run directory: what --force removes, and nothing else
RUN_OUTPUTS = ("suite.toml", "suite.json", "env.json", RECORDS, "samples", "tables", "plots", "grids", "report.md")
# the fields of a record that say how and when it was measured: the only ones that differ between two runs of one
# suite (e.g. --jobs 1 and --jobs 2); everything else (metrics, measured NFE, steps, kept samples) is identical
TIMING_FIELDS = frozenset(
    {
        "wall_s",
        "ms_per_sample",
        "metrics_s",
        "peak_mem_mb",
        "finished_at",
        "load_before",
        "load_after",
        "jobs",
        "threads",
    }
)


def default_out_dir(suite: Suite) -> Path:
    return Path("results") / "runs" / f"{suite.name}-{datetime.now():%Y%m%d-%H%M%S}"


def slug(text: str) -> str:
    """A file name for a model or sampler name: the name itself when it is one, else a cleaned-up version with a
    hash of the name appended, so that two names never share a file ("m/1", "m 1") and none leaves its directory."""
    safe = re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_").lstrip(".")
    if safe and safe == text:
        return text
    return f"{safe or '_'}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


# --- validation that needs the models ---------------------------------------------------------------------------


def load_model_checked(spec: str, device: torch.device | str = "cpu", where: str = "", **options) -> torch.nn.Module:
    """load_model(spec) on `device`, then one evaluation of the network (probe_model): any failure, a bad
    checkpoint or a config that does not match the network, is one ValueError naming the spec, before any work."""
    from models import load_model

    prefix = f"{where}: " if where else ""
    try:
        model = load_model(spec, **options).to(device)
    except Exception as err:  # a bad spec or checkpoint of any kind becomes one line before any work starts
        why = _first_line(err)
        if not isinstance(err, ValueError | OSError | KeyError):  # a crash inside the loader: a value it cannot use
            why = f"{type(err).__name__}: {why} (a bad value in its config?)"
        raise ValueError(f"{prefix}model {spec!r} cannot be loaded: {why}") from None
    probe_model(model, f"{prefix}model {spec!r}")
    return model


def probe_model(model: torch.nn.Module, what: str, batch: int = 2) -> float:
    """Evaluate D(x, sigma) on `batch` samples of the model's shape at sigma_max (twice, the second timed): a network
    whose config does not match it (shape, channels, process) fails here in one ValueError, not in every cell.
    Returns the seconds of one evaluation per sample."""
    shape = tuple(getattr(model, "shape", ()))
    if not shape:
        return 0.0
    try:
        device = torch.device(getattr(model, "device", "cpu"))
        x = torch.zeros(batch, *shape, device=device)
        sigma = torch.full((batch,), float(model.sigma_max), dtype=torch.float64, device=device)
        seconds = math.inf
        with torch.no_grad():
            for _ in range(2):
                start = time.perf_counter()
                out = model(x, sigma)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                seconds = time.perf_counter() - start
    except Exception as err:
        raise ValueError(
            f"{what} does not evaluate on samples of its shape {list(shape)}: {_first_line(err)} (does its config "
            "match the network?)"
        ) from None
    if tuple(out.shape) != (batch, *shape):
        raise ValueError(
            f"{what} maps samples of shape {list(shape)} to {list(out.shape[1:])}: does its config match the network?"
        )
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"{what} gives NaN or infinite values at sigma_max = {float(model.sigma_max):g}")
    return seconds / batch


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def load_models(suite: Suite, device: torch.device | str) -> dict[str, torch.nn.Module]:
    """Every model of the suite on `device`, each evaluated once (load_model_checked); ValueError naming the suite
    file and the spec that does not load."""
    return {e.name: load_model_checked(e.spec, device, suite.source, **e.options) for e in suite.models}


def resolve_metrics(suite: Suite, models: dict[str, torch.nn.Module]) -> dict[str, tuple[str, ...]]:
    """The metrics of every model (its own list, or the default for the model); ValueError for an unknown name."""
    from . import metrics as bm

    known = {name: kind for kind, names in bm.METRICS_BY_KIND.items() for name in names}
    out = {}
    for entry in suite.models:
        model = models[entry.name]
        names = tuple(entry.metrics) if entry.metrics is not None else tuple(bm.default_metrics(model))
        for name in names:
            if name not in known:
                raise ValueError(
                    f"{suite.source}: [[models]] {entry.spec!r}: unknown metric {name!r}; known: {', '.join(known)}"
                )
            if known[name] == "analytic" and not hasattr(model, "mixture"):
                raise ValueError(f"{suite.source}: metric {name!r} needs an analytic model; {entry.spec!r} is not one")
        out[entry.name] = names
    return out


def resolve_references(
    suite: Suite, models: dict[str, torch.nn.Module], metrics: dict[str, tuple[str, ...]]
) -> dict[str, str | None]:
    """The reference data (a path) of every model's metrics: its own, else the suite's (`--reference`) when its
    metrics need one, else None (built in); ValueError for a model whose metrics need one and have none."""
    from .fidelity import FIDELITY_METRICS
    from .metrics import needs_reference

    out = {}
    for entry in suite.models:
        reference = entry.reference
        if reference is None and needs_reference(models[entry.name], metrics[entry.name]):
            if suite.reference is None:
                raise ValueError(
                    f"{suite.source}: [[models]] {entry.spec!r}: its metrics ({', '.join(metrics[entry.name])}) need "
                    "reference data: set its reference = PATH (a folder of images, an .npz of uint8 images, or "
                    "stats:PATH for reference statistics) or pass --reference PATH"
                )
            reference = suite.reference
        elif reference is not None and not any(n in FIDELITY_METRICS for n in metrics[entry.name]):
            _warn_once(
                f"warning: {suite.source}: [[models]] {entry.spec!r}: its reference {reference} is not used: none of "
                f"its metrics ({', '.join(metrics[entry.name])}) compares with reference data"
            )
        out[entry.name] = reference
    if suite.reference is not None and suite.reference not in out.values():
        _warn_once(
            f"warning: --reference {suite.reference} is not used: every model's metrics have their own reference "
            "data or need none"
        )
    return out


def _warn_once(message: str) -> None:
    """A warning line on stderr, from rank 0 only under torchrun."""
    if os.environ.get("RANK", "0") == "0":
        _warn(message)


def metric_inputs(
    suite: Suite, models: dict[str, torch.nn.Module], metrics: dict[str, tuple[str, ...]], references
) -> dict[str, dict[str, Any]]:
    """Per model, compute_metrics' reference (read and hashed once for the whole sweep) and Inception weights
    (found, or downloaded, now): a bad file or unreachable weights is one ValueError before any work."""
    from .fidelity import FIDELITY_METRICS, check_reference_dim, feature_dim, make_reference, resolve_inception_weights

    out: dict[str, dict[str, Any]] = {}
    for entry in suite.models:
        model, where = models[entry.name], f"{suite.source}: [[models]] {entry.spec!r}"
        inputs: dict[str, Any] = {"reference": None, "inception_weights": None}
        sets = list(dict.fromkeys(FIDELITY_METRICS[n][0] for n in metrics[entry.name] if n in FIDELITY_METRICS))
        try:
            if "inception" in sets:
                inputs["inception_weights"] = resolve_inception_weights(suite.inception_weights)
            if references[entry.name] is not None:
                ref = make_reference(references[entry.name], data_range=tuple(model.data_range))
                if ref.stats is not None or ref.features is not None:  # a file's statistics: of the right extractor?
                    for fs in sets:
                        dim = feature_dim(
                            fs,
                            tuple(model.shape),
                            data_range=tuple(model.data_range),
                            inception_weights=inputs["inception_weights"],
                        )
                        check_reference_dim(ref, fs, dim)
                inputs["reference"] = ref
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        out[entry.name] = inputs
    return out


def fit_metrics_to_references(
    suite: Suite, metrics: dict[str, tuple[str, ...]], references: dict[str, str | None]
) -> dict[str, tuple[str, ...]]:
    """A statistics-only reference (stats:PATH holding mu and sigma, no images or features) supports FD alone: a
    model's default metrics lose KD and precision/recall with a warning; metrics the suite lists are an error."""
    from .fidelity import FIDELITY_METRICS
    from .reference_files import stats_only

    out = dict(metrics)
    for entry in suite.models:
        reference = references[entry.name]
        if reference is None or not stats_only(reference):
            continue
        others = [m for m in metrics[entry.name] if m in FIDELITY_METRICS and FIDELITY_METRICS[m][1] != "fd"]
        if not others:
            continue
        where = f"{suite.source}: [[models]] {entry.spec!r}"
        if entry.metrics is not None:
            raise ValueError(
                f"{where}: its reference {reference} holds FD statistics only (mu, sigma): {', '.join(others)} need "
                'reference images or features; list FD metrics only (e.g. metrics = ["fid"]) or give images'
            )
        _warn_once(
            f"warning: {where}: its reference {reference} holds FD statistics only (mu, sigma): leaving out "
            f"{', '.join(others)}"
        )
        out[entry.name] = tuple(m for m in metrics[entry.name] if m not in others)
    return out


MAX_HOURS = 24.0  # a suite estimated to take longer needs --yes-i-know
BYTES_PER_VALUE = 8  # float64: the metrics' copies of the samples
INCEPTION_DIM = 2048


@dataclass(frozen=True)
class Estimate:
    seconds: float  # sampling, from one timed model evaluation per model (metrics not included)
    memory: int  # bytes of host memory the largest cell needs: its samples, their float64 copies, their features
    largest: str  # the model of the largest cell
    device_memory: int = 0  # CUDA: bytes of device memory for one process's samples of the largest cell


def estimate_resources(suite: Suite, models: dict[str, torch.nn.Module], metrics, world: int = 1) -> Estimate:
    """How long sampling every cell takes and how much memory the largest cell needs, from the suite's sizes and one
    timed evaluation of each model at its batch size (at most 64 rows, scaled linearly beyond)."""
    from .fidelity import FIDELITY_METRICS

    seconds, memory, largest, device_memory = 0.0, 0, "", 0
    for entry in suite.models:
        model = models[entry.name]
        rows = min(entry.batch_size, 64)
        per_row = probe_model(model, f"{suite.source}: model {entry.spec!r}", batch=rows)
        for cell in suite.cells():
            if cell.model.name == entry.name:
                seconds += entry.n_batches * cell.budget * per_row * entry.batch_size / world
        d = math.prod(model.shape)
        inception = any(FIDELITY_METRICS.get(n, ("",))[0] == "inception" for n in metrics[entry.name])
        features = INCEPTION_DIM if inception else d
        need = entry.n_total * BYTES_PER_VALUE * (3 * d + 2 * features)
        if need > memory:
            memory, largest = need, entry.name
        device_memory = max(device_memory, math.ceil(entry.n_total / world) * d * 4 * 2)
    return Estimate(seconds, memory, largest, device_memory)


def _check_resources(suite: Suite, estimate: Estimate, device: torch.device) -> None:
    """ValueError in one line when the estimate exceeds what the machine has (memory) or MAX_HOURS (time)."""
    from .checks import available_memory

    proceed = "lower n_samples or budgets, or pass --yes-i-know to start anyway"
    available = available_memory()
    if available is not None and estimate.memory > available:
        raise ValueError(
            f"{suite.source}: model {estimate.largest!r} needs about {_size(estimate.memory)} of memory per cell "
            f"(n_samples and their copies for the metrics), more than the {_size(available)} available; {proceed}"
        )
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        if estimate.device_memory > free:
            raise ValueError(
                f"{suite.source}: the samples of one cell need about {_size(estimate.device_memory)} on {device}, "
                f"more than its {_size(free)} free; {proceed}"
            )
    if estimate.seconds > MAX_HOURS * 3600:
        raise ValueError(
            f"{suite.source}: sampling every cell takes about {estimate.seconds / 3600:,.0f} h on this machine (from "
            f"a timed model evaluation), more than {MAX_HOURS:g} h; {proceed}"
        )


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError


def check_sharding(suite: Suite, world: int) -> None:
    if world == 1:
        return
    for m in suite.models:
        if m.n_batches < world:
            raise ValueError(
                f"{suite.source}: model {m.name!r} has {m.n_total} samples in {m.n_batches} batch(es) of "
                f"{m.batch_size}: too few to shard over {world} processes; lower its batch_size"
            )


# --- the run directory ------------------------------------------------------------------------------------------


def read_records(path: Path, repair: bool = False, warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The records of a run directory (or of a records.jsonl file).

    A record is complete once its newline is on disk: a last line cut short by a kill is dropped, and with `repair`
    cut from the file so that appending goes on cleanly. A complete line that is not JSON is an error. Two records of
    one cell (model, sampler, budget), which only two writers at once could leave, are reported through `warn`
    (default: a line on stderr) and the later one is kept.
    """
    given = Path(path)
    if not given.exists():
        raise ValueError(f"{given}: no such run directory")
    path = given / RECORDS if given.is_dir() else given
    if not path.exists():
        raise ValueError(f"{given} is not a run directory: it has no {RECORDS}")
    data = path.read_bytes()
    complete, newline, _torn = data.rpartition(b"\n")
    by_cell: dict[Any, dict[str, Any]] = {}
    duplicates = 0
    for i, line in enumerate(complete.split(b"\n") if newline else [], start=1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise ValueError(f"{path}: line {i} is not a JSON record") from None
            key = (record.get("model"), record.get("sampler"), record.get("nfe_budget"))
            duplicates += key in by_cell
            by_cell.pop(key, None)
            by_cell[key] = record
    if duplicates:
        (warn or _warn)(f"warning: {path} has {duplicates} duplicate record(s) of a cell; the later of each is used")
    if repair and len(complete) + len(newline) < len(data):
        with open(path, "r+b") as f:
            f.truncate(len(complete) + len(newline))
            f.flush()
            os.fsync(f.fileno())
    return list(by_cell.values())


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


def is_run_dir(path: Path) -> bool:
    """A directory `scorebench run` made: it has the marker (or, from before the marker, all of suite.json,
    env.json and records.jsonl)."""
    path = Path(path)
    return (path / MARKER).is_file() or all((path / name).is_file() for name in ("suite.json", "env.json", RECORDS))


def lock_run_dir(path: Path) -> int:
    """Take the run directory's lock (creating its marker) for this process; ValueError naming the holder's PID when
    another process has it. The lock is the OS's (flock): it ends with the process, even one that is killed."""
    import fcntl

    fd = os.open(path / MARKER, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ValueError(
            f"run directory {path} is in use by process {holder} (a run or report writing it); wait for it to "
            "finish, or choose another output directory"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


@contextmanager
def locked(path: Path):
    """Hold the run directory's lock for a block (report writing; the sweep holds it through RunDir)."""
    fd = lock_run_dir(Path(path))
    try:
        yield
    finally:
        os.close(fd)


@dataclass
class RunDir:
    path: Path
    lock: int | None = None  # the lock's file descriptor, held by the process writing the directory

    @classmethod
    def prepare(cls, path: Path, resolved: dict[str, Any], suite_text: str, resume: bool, force: bool) -> RunDir:
        """Create (or, with `resume`, reopen) a run directory and lock it for this process; ValueError if it cannot
        be written, is in use, or is not a run directory and not empty (nothing is changed then).

        `suite.json` is written last: it marks a run that has started. Resuming a directory without it (killed while
        being set up) starts the run there afresh. `force` clears only what a run writes (RUN_OUTPUTS), and only in a
        run directory.
        """
        path = Path(path)
        if resume and force:
            raise ValueError("--resume and --force contradict each other: continue the run, or start it again")
        if path.exists() and not path.is_dir():
            raise ValueError(f"output {path} exists and is not a directory")
        if path.is_dir() and any(path.iterdir()):
            if not is_run_dir(path):
                raise ValueError(
                    f"output {path} is not empty and is not a scorebench run directory; refusing to "
                    f"{'resume in' if resume else 'write into'} it: choose a new or empty directory"
                )
            if not (force or resume):
                raise ValueError(
                    f"output {path} already exists; use --resume to continue that run or --force to redo it"
                )
        try:
            path.mkdir(parents=True, exist_ok=True)
            lock = lock_run_dir(path)
        except OSError as err:
            raise ValueError(f"cannot write to output directory {path}: {err.strerror or err}") from None
        try:
            run = cls(path, lock)
            if resume and (path / "suite.json").exists():
                before = json.loads((path / "suite.json").read_text())
                if before != resolved:
                    changed = sorted(k for k in set(before) | set(resolved) if before.get(k) != resolved.get(k))
                    raise ValueError(
                        f"cannot resume {path}: the suite differs from the one it was started with "
                        f"(in {', '.join(changed)}); start a new run or use --force"
                    )
                read_records(path, repair=True)
                return run
            for name in RUN_OUTPUTS:
                target = path / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
            write_text(path / "suite.toml", suite_text)
            (path / RECORDS).touch()
            _write_json(path / "suite.json", resolved)
            return run
        except BaseException:
            os.close(lock)
            raise

    def close(self) -> None:
        """Release the lock (the process's exit does it too)."""
        if self.lock is not None:
            os.close(self.lock)
            self.lock = None

    def records(self) -> list[dict[str, Any]]:
        return read_records(self.path)

    def append(self, record: dict[str, Any]) -> None:
        """One record as one line, on disk (flushed and fsync'ed) before the next cell starts."""
        line = json.dumps(record, default=_json_default) + "\n"
        with open(self.path / RECORDS, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def save_samples(self, cell: Cell, x: np.ndarray) -> str:
        """The kept samples of a cell, written whole (temporary file, then rename); returns the relative path."""
        rel = Path("samples") / slug(cell.model.name) / f"{slug(cell.sampler.name)}-nfe{cell.budget}.npz"
        _save_npz(self.path / rel, x)
        return rel.as_posix()

    def save_reference(self, model_name: str, x: np.ndarray, basis: np.ndarray | None = None) -> None:
        extra = {} if basis is None else {"basis": basis}
        _save_npz(self.path / "samples" / slug(model_name) / "reference.npz", x, **extra)

    def log_environment(self, env: dict[str, Any]) -> None:
        target = self.path / "env.json"
        sessions = json.loads(target.read_text()) if target.exists() else []
        _write_json(target, [*sessions, env])


def _save_npz(path: Path, x: np.ndarray, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        np.savez_compressed(tmp, x=x, **arrays)


def _write_json(path: Path, obj: Any) -> None:
    write_json(path, obj, default=_json_default)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor | np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path | torch.device | torch.dtype):
        return str(obj)
    raise TypeError(f"cannot record a {type(obj).__name__}")


# --- environment ------------------------------------------------------------------------------------------------


def environment(device: torch.device, world: int, parallelism: Parallelism | None = None) -> dict[str, Any]:
    """Versions, device and source revision: what a number in this run depends on besides the suite."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("torch", "numpy", "torchdiffeq", "torch-fidelity", "diffusers", "scorebench"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    env: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": sys.argv,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": versions,
        "device": str(device),
        "world_size": world,
        "git": _git_revision(Path(__file__).resolve().parent.parent),
    }
    if parallelism is not None:  # jobs, threads per job, usable cores, and why
        env["parallelism"] = parallelism.to_dict()
        env["load"] = machine_load()
    if device.type == "cuda":
        env["cuda"] = {"name": torch.cuda.get_device_name(device), "version": torch.version.cuda}
    return env


def _git_revision(root: Path) -> dict[str, Any] | None:
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(dirty)}


# --- one cell ---------------------------------------------------------------------------------------------------


def _peak_memory_start(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated memory of this cell. CPU: peak resident memory of the process so far (Linux: KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _load_average() -> float | None:
    return machine_load()


def _highest(values) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def _error_message(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def keep_count(suite: Suite, shape: tuple[int, ...], n: int) -> int:
    return min(n, max(suite.keep_samples, KEEP_SAMPLES_2D if math.prod(shape) <= 2 else 0))


def run_cell(
    cell: Cell,
    model: torch.nn.Module,
    suite: Suite,
    metric_names: tuple[str, ...],
    ranks: Ranks,
    save_samples: Callable[[Cell, np.ndarray], str] | None = None,
    metric_inputs: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Sample one cell on every rank, gather on rank 0 and return its record there (None on other ranks).

    Every rank extracts the features of its own samples for the cell's feature-space metrics (in chunks of the
    sampling batch, bench.fidelity.extract_features) and rank 0 gathers the features, not the images, so N processes
    give the single-process number; the samples themselves reach rank 0 only where exact metrics need them (else the
    few kept for the report). The metrics run on rank 0 with the suite's bootstrap and seed and `metric_inputs`
    (reference, inception_weights: bench.metrics.compute_metrics' arguments; the other ranks need only the weights).

    With `fid_seed_sets = K` the cell draws K * n samples, seed set j being sample indices [j n, (j + 1) n); each set
    gets its own metrics (`set_metrics`) and the record's metrics are their combination (bench.protocol).

    Any exception in sampling or metrics becomes an `error` record and NaN/inf samples a `diverged` one, so that the
    sweep goes on; KeyboardInterrupt still stops the run.
    """
    from samplers import get_sampler, sample

    from .fidelity import FIDELITY_METRICS, extract_features
    from .metrics import EXACT_METRICS, compute_metrics, reference_identity
    from .protocol import combine_seed_sets, metric_label, seed_ranges

    inputs = dict(metric_inputs or {})
    n, sets, batch_size = cell.model.n_samples, cell.model.fid_seed_sets, cell.model.batch_size
    total = n * sets
    shard = ranks.shard(total, batch_size)
    feature_sets = list(dict.fromkeys(FIDELITY_METRICS[m][0] for m in metric_names if m in FIDELITY_METRICS))
    # rank 0 needs every sample only for exact metrics (or when no feature-space metric replaces them by features)
    need_x = not feature_sets or any(m in EXACT_METRICS for m in metric_names)
    keep = keep_count(suite, tuple(model.shape), n)
    load_before = _load_average()
    _peak_memory_start(ranks.device)
    x = None
    try:
        res = sample(
            model,
            cell.sampler.sampler,
            cell.budget,
            seeds=shard,
            seed=suite.seed,
            batch_size=batch_size,
            schedule=cell.sampler.schedule,
            nfe_mean=ranks.nfe_mean,
            **cell.hyper,
        )
        x = res.x.detach().cpu()
        sent = list(range(len(shard))) if need_x else [i for i, idx in enumerate(shard) if idx < keep]
        local: dict[str, Any] = {
            "indices": shard,
            "x": x[sent],
            "x_indices": [shard[i] for i in sent],
            "nonfinite": int((~torch.isfinite(x.reshape(len(x), -1))).any(1).sum()),
            "nfe": res.nfe,
            "seconds": res.seconds,
            "steps": res.steps,
            "declared_nfe": res.declared_nfe,
            "hyper": res.hyper,
            "extras": dict(res.extras),
        }
    except Exception as err:
        local = {"error": _error_message(err)}
    local["peak_mem_mb"] = _peak_memory_mb(ranks.device)
    local["load"] = (load_before, _load_average())
    if x is not None and local["nonfinite"] == 0 and feature_sets:
        start = time.perf_counter()
        try:
            local["features"] = {
                fs: extract_features(
                    x,
                    fs,
                    data_range=tuple(model.data_range),
                    device=ranks.device,
                    inception_weights=inputs.get("inception_weights"),
                    chunk=batch_size,
                )
                for fs in feature_sets
            }
        except Exception as err:
            local["metrics_error"] = _error_message(err)
        local["extract_s"] = time.perf_counter() - start
    del x
    parts = ranks.gather(local)
    if parts is None:
        return None

    record: dict[str, Any] = {
        "model": cell.model.name,
        "sampler": cell.sampler.name,
        "nfe_budget": cell.budget,
        "algorithm": cell.sampler.sampler,
        "model_spec": cell.model.spec,
        "n": n,
        "seed": suite.seed,
        "seed_sets": sets,
        "seed_ranges": [list(r) for r in seed_ranges(n, sets)],
        "schedule": cell.sampler.schedule or get_sampler(cell.sampler.sampler).schedule,
        "device": str(ranks.device),
        "world_size": ranks.world,
        "peak_mem_mb": max(p["peak_mem_mb"] for p in parts),
        "peak_mem_kind": "cuda_max_allocated" if ranks.device.type == "cuda" else "process_max_rss",
        # the machine's 1-minute load average when sampling started and ended (the highest over the ranks), and its
        # cores: timings from a cell whose load exceeded the cores are marked in the report
        "load_before": _highest(p["load"][0] for p in parts),
        "load_after": _highest(p["load"][1] for p in parts),
        "cpu_count": os.cpu_count(),
    }
    errors = [p["error"] for p in parts if "error" in p]
    if errors:
        return {**record, "status": "error", "error": errors[0], "nfe": None, "metrics": {}}

    head = parts[0]
    wall_s = max(p["seconds"] for p in parts)  # the cell takes as long as its slowest rank
    record.update(
        status="ok",
        nfe=sum(p["nfe"] * len(p["indices"]) for p in parts) / total,  # per sample, over every rank's samples
        steps=head["steps"],
        declared_nfe=head["declared_nfe"],
        hyper=head["hyper"],
        wall_s=wall_s,
        ms_per_sample=1000.0 * wall_s / total,
        extras={k: sum(p["extras"][k] * len(p["indices"]) for p in parts) / total for k in head["extras"]},
        metrics={},
    )
    bad = sum(p["nonfinite"] for p in parts)
    if bad:
        record.update(status="diverged", error=f"{bad} of {total} samples are NaN or infinite")
        return record
    rows = sorted(i for p in parts for i in p["x_indices"])
    x = torch.empty(len(rows), *head["x"].shape[1:], dtype=head["x"].dtype)
    position = {idx: k for k, idx in enumerate(rows)}  # every sample (need_x), or the kept ones: indices < keep
    for p in parts:
        x[[position[i] for i in p["x_indices"]]] = p["x"]
    start = time.perf_counter()
    try:
        failed = [p["metrics_error"] for p in parts if "metrics_error" in p]
        if failed:
            raise RuntimeError(failed[0])
        features = {}
        for fs in feature_sets:
            first = head["features"][fs]
            features[fs] = torch.empty(total, *first.shape[1:], dtype=first.dtype)
            for p in parts:
                features[fs][p["indices"]] = p["features"][fs]
        per_set = []
        for lo, hi in seed_ranges(n, sets):
            per_set.append(
                compute_metrics(
                    model,
                    x[lo:hi] if need_x else None,
                    metric_names,
                    device=ranks.device,
                    bootstrap=suite.bootstrap,
                    seed=suite.seed,
                    features={fs: f[lo:hi] for fs, f in features.items()},
                    **inputs,
                )
            )
        record["metrics"] = per_set[0] if sets == 1 else combine_seed_sets(per_set)
        if sets > 1:
            record["set_metrics"] = per_set
        record["labels"] = {m: metric_label(m, n, sets) for m in metric_names if m in record["metrics"]}
        identity = reference_identity(model, metric_names, inputs.get("reference"), inputs.get("inception_weights"))
        if identity is not None:
            record["reference"] = identity
    except Exception as err:
        record.update(status="error", error=f"metrics: {_error_message(err)}")
    record["metrics_s"] = time.perf_counter() - start + max(p.get("extract_s", 0.0) for p in parts)
    if save_samples is not None and keep:
        record["samples_file"] = save_samples(cell, x[:keep].float().numpy())
    return record


# --- the sweep --------------------------------------------------------------------------------------------------


def resolved_suite(
    suite: Suite, metrics: dict[str, tuple[str, ...]], references: dict[str, str | None], device: torch.device, models
) -> dict[str, Any]:
    """The suite as it runs: every default filled in; a resumed run must resolve to the same."""
    out = suite.to_dict()
    out.pop("source")
    out.pop("reference")  # it lands in the models that use it
    out["device"] = device.type
    for entry in out["published"]:
        if entry["n"] is None:  # as written before published counts existed: such runs still resume
            entry.pop("n")
    for entry in out["models"]:
        if entry["fid_seed_sets"] == 1:
            entry.pop("fid_seed_sets")
        model = models[entry["name"]]
        entry["metrics"] = list(metrics[entry["name"]])
        entry["reference"] = references[entry["name"]]
        entry["process"] = model.process
        entry["shape"] = list(model.shape)
        entry["data_range"] = list(model.data_range)
        entry["dataset"] = getattr(model, "dataset", None)
    return json.loads(json.dumps(out, default=_json_default))


def run_suite(
    suite: Suite,
    out: Path | None,
    *,
    device: str | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    check_resources: bool = True,
    jobs: int | None = None,
    threads: int | None = None,
) -> Path | None:
    """Validate everything, then sweep every cell not yet recorded; returns the run directory (None off rank 0).

    `check_resources`: refuse (ValueError) a suite whose memory or time estimate exceeds the machine (--yes-i-know
    turns it off). `jobs`, `threads`: worker processes sampling cells at once and torch threads per process (None:
    chosen from the machine and the models, bench.threads.choose). With several jobs, workers (spawned, each loading
    the models once) send finished records back and this process alone appends them, in the order they finish."""
    from .checks import check_device

    suite.validate()
    ranks = Ranks.from_env(check_device(device or suite.device))
    set_torch_threads(threads or 1)  # loading and checking the models; the run's own choice follows
    prepared: RunDir | None = None  # rank 0's, holding the directory's lock until the sweep ends
    try:
        check_sharding(suite, ranks.world)
        models = load_models(suite, ranks.device)
        metrics = resolve_metrics(suite, models)
        references = resolve_references(suite, models, metrics)
        metrics = fit_metrics_to_references(suite, metrics, references)
        estimate = None
        if check_resources:
            estimate = estimate_resources(suite, models, metrics, ranks.world)
            _check_resources(suite, estimate, ranks.device)
        resolved = resolved_suite(suite, metrics, references, ranks.device, models)
        cells = suite.cells()

        def parallelism(todo: list[Cell]) -> Parallelism:
            chosen = choose(
                device_type=ranks.device.type,
                world=ranks.world,
                jobs=jobs,
                threads=threads,
                cells=len(todo),
                sample_size=max((math.prod(m.shape) for m in models.values()), default=0),
                memory_jobs=_memory_jobs(estimate),
            )
            return chosen

        # rank 0 computes the metrics and owns the run directory; the others learn the directory and the cells
        # already done, or the error
        plan: dict[str, Any] = {}
        inputs: dict[str, dict[str, Any]] = {}
        if ranks.main:
            try:
                inputs = metric_inputs(suite, models, metrics, references)
                if out is None:
                    out = _latest_run(suite) if resume else default_out_dir(suite)
                prepared = RunDir.prepare(out, resolved, Path(suite.source).read_text(), resume, force)
                done_keys = [_key(r) for r in prepared.records()]
                chosen = parallelism([c for c in cells if c.key not in set(done_keys)])
                prepared.log_environment(environment(ranks.device, ranks.world, chosen))
                plan = {"out": str(prepared.path), "done": done_keys}
                # every rank extracts the features of its own samples: it needs the extractor's weights
                plan["weights"] = {k: v["inception_weights"] and str(v["inception_weights"]) for k, v in inputs.items()}
            except ValueError as err:
                plan = {"error": str(err)}
        plan = ranks.broadcast(plan)
        if "error" in plan:
            raise ValueError(plan["error"])
        run = prepared or RunDir(Path(plan["out"]))
        done = {tuple(k) for k in plan["done"]}
        if not ranks.main:
            inputs = {k: {"inception_weights": w and Path(w)} for k, w in plan["weights"].items()}

        todo = [c for c in cells if c.key not in done]
        chosen = parallelism(todo)
        set_torch_threads(chosen.threads)
        if ranks.main:
            _save_references(run, suite, models)
        bar = tqdm(
            total=len(cells),
            initial=len(cells) - len(todo),
            desc=suite.name,
            unit="cell",
            disable=not (progress and ranks.main),
            dynamic_ncols=True,
        )
        with bar, _resumable(run.path):
            in_workers = chosen.jobs > 1 and len(todo) > 1
            if in_workers:
                todo = _longest_first(suite, todo, models)
                results = _cells_in_workers(suite, todo, metrics, inputs, ranks.device, chosen, bar)
            else:
                results = _cells_here(suite, todo, models, metrics, inputs, ranks, run, bar)
            with closing(results):  # an error or Ctrl-C here ends the workers at once
                for cell, record, kept in results:
                    if record is None:  # not rank 0 of a torchrun
                        bar.update()
                        continue
                    if kept is not None:
                        record["samples_file"] = run.save_samples(cell, kept)
                    record.update(jobs=chosen.jobs if in_workers else 1, threads=chosen.threads)
                    record["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
                    run.append(record)
                    if record["status"] != "ok":
                        bar.write(f"{'/'.join(map(str, cell.key))}: {record['status']}: {record.get('error')}")
                    bar.set_postfix_str(f"{cell.model.name} {cell.sampler.name} @{cell.budget}", refresh=False)
                    bar.update()
        return run.path if ranks.main else None
    finally:
        if prepared is not None:
            prepared.close()
        ranks.close()


CellResult = tuple[Cell, dict[str, Any] | None, np.ndarray | None]  # the cell, its record, its kept samples


def _memory_jobs(estimate: Estimate | None) -> int | None:
    """How many cells at once the host memory holds (None: unknown)."""
    from .checks import available_memory

    available = available_memory()
    if estimate is None or available is None or estimate.memory <= 0:
        return None
    return max(1, int(available // estimate.memory))


def _longest_first(suite: Suite, todo: list[Cell], models: dict[str, torch.nn.Module]) -> list[Cell]:
    """The cells by estimated sampling time, longest first (from one timed evaluation per model), so that the jobs
    finish together instead of one job running the longest cells alone at the end."""
    per_sample = {
        e.name: probe_model(models[e.name], f"model {e.spec!r}", batch=min(e.batch_size, 64)) for e in suite.models
    }
    return sorted(todo, key=lambda c: -per_sample[c.model.name] * c.budget * c.model.n_total)


def _sendable_samplers(todo: list[Cell]) -> dict[str, Any]:
    """The cells' samplers for the workers: each spec by value where it pickles (by reference to its functions),
    else None: the worker takes the one its own import of samplers registers under that name (e.g. DLG's)."""
    from samplers import SAMPLERS

    out: dict[str, Any] = {}
    for name in dict.fromkeys(c.sampler.sampler for c in todo):
        try:
            pickle.dumps(SAMPLERS[name])
            out[name] = SAMPLERS[name]
        except Exception:
            out[name] = None
    return out


class _Kept:
    """run_cell's save_samples that keeps the samples for the process writing the run directory to save."""

    def __init__(self) -> None:
        self.x: np.ndarray | None = None

    def __call__(self, cell: Cell, x: np.ndarray) -> str:
        self.x = x
        return ""


def _cells_here(suite, todo, models, metrics, inputs, ranks: Ranks, run: RunDir, bar) -> Iterator[CellResult]:
    """The cells one after the other in this process (every rank under torchrun)."""
    for cell in todo:
        bar.set_postfix_str(f"{cell.model.name} {cell.sampler.name} @{cell.budget}", refresh=True)
        name = cell.model.name
        kept = _Kept()
        record = run_cell(
            cell, models[name], suite, metrics[name], ranks, kept if ranks.main else None, inputs.get(name)
        )
        if record is not None:
            record.pop("samples_file", None)  # saved by the caller, as for the workers' cells
        yield cell, record, kept.x


def _cells_in_workers(suite, todo, metrics, inputs, device, chosen: Parallelism, bar) -> Iterator[CellResult]:
    """The cells in `chosen.jobs` spawned worker processes, yielded as they finish. Each worker loads a model the
    first time one of its cells needs it; Ctrl-C or an error here ends the workers, and a worker whose parent died
    (SIGKILL) ends itself."""
    import concurrent.futures as cf
    import multiprocessing

    state = {
        "suite": suite,
        "metrics": metrics,
        "inputs": inputs,
        "device": str(device),
        "threads": chosen.threads,
        "parent": os.getpid(),
        "samplers": _sendable_samplers(todo),
    }
    bar.set_postfix_str(f"{chosen.jobs} jobs", refresh=True)
    context = multiprocessing.get_context("spawn")
    pool = cf.ProcessPoolExecutor(chosen.jobs, mp_context=context, initializer=_worker_start, initargs=(state,))
    finished = False
    try:
        futures = {pool.submit(_worker_cell, c): c for c in todo}
        for future in cf.as_completed(futures):
            try:
                record, kept = future.result()
            except cf.process.BrokenProcessPool:
                raise ValueError(
                    "a worker process died (out of memory?); the finished cells are saved: resume with --resume "
                    "--jobs 1"
                ) from None
            yield futures[future], record, kept
        finished = True
    finally:
        pool.shutdown(wait=finished, cancel_futures=True)
        if not finished:
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()


_WORKER: dict[str, Any] = {}  # a worker process's suite, models (loaded when first needed) and metric inputs


def _worker_start(state: dict[str, Any]) -> None:
    """A worker's set-up: its threads, the parent's samplers, and a watch that ends it when the parent dies."""
    from samplers import SAMPLERS

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it ends the workers
    set_torch_threads(state["threads"])
    SAMPLERS.update({k: v for k, v in state["samplers"].items() if v is not None})
    missing = [k for k, v in state["samplers"].items() if v is None and not _registered(k)]
    _WORKER.update(state, models={}, missing=missing)
    parent = state["parent"]

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _registered(name: str) -> bool:
    """Whether this process's samplers know `name` (adapters such as diffusers:NAME are built on first use)."""
    from samplers import get_sampler

    try:
        get_sampler(name)
    except Exception:
        return False
    return True


def _worker_cell(cell: Cell) -> tuple[dict[str, Any], np.ndarray | None]:
    """One cell in a worker: its record (metrics included) and the samples the run directory keeps."""
    suite, name = _WORKER["suite"], cell.model.name
    if cell.sampler.sampler in _WORKER["missing"]:
        raise ValueError(
            f"sampler {cell.sampler.sampler!r} is registered in this process only and cannot be sent to worker "
            "processes (define its functions at module level): run with --jobs 1"
        )
    models = _WORKER["models"]
    if name not in models:
        models[name] = load_model_checked(cell.model.spec, _WORKER["device"], suite.source, **cell.model.options)
    kept = _Kept()
    ranks = Ranks(0, 1, torch.device(_WORKER["device"]))
    record = run_cell(cell, models[name], suite, _WORKER["metrics"][name], ranks, kept, _WORKER["inputs"].get(name))
    assert record is not None
    record.pop("samples_file", None)
    return record, kept.x


class Interrupted(Exception):
    """The sweep was stopped (Ctrl-C) with its finished cells on disk in `path`."""

    def __init__(self, path: Path):
        super().__init__(f"interrupted; the finished cells are in {path / RECORDS}")
        self.path = path


@contextmanager
def _resumable(path: Path):
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(path) from None


def _key(record: dict[str, Any]) -> tuple[str, str, int]:
    return (record["model"], record["sampler"], record["nfe_budget"])


def _latest_run(suite: Suite) -> Path:
    runs = sorted(p for p in (Path("results") / "runs").glob(f"{suite.name}-*") if (p / "suite.json").exists())
    if not runs:
        raise ValueError(f"--resume: no earlier run of suite {suite.name!r} under results/runs/; give it with --out")
    return runs[-1]


def _save_references(run: RunDir, suite: Suite, models) -> None:
    """Exact samples of analytic models, drawn under the sample scatters of the report. Above 2-d they are stored
    projected on the two leading principal axes of the exact distribution, with that basis to project samples on."""
    for entry in suite.models:
        mixture = getattr(models[entry.name], "mixture", None)
        if mixture is None:
            continue
        gen = torch.Generator().manual_seed(suite.seed)
        x, _ = mixture.sample(min(entry.n_samples, KEEP_SAMPLES_2D), generator=gen)
        basis = None
        if mixture.dim > 2:
            basis = torch.linalg.eigh(mixture.cov()).eigenvectors[:, -2:].flip(1)  # [d, 2], leading axis first
            x = x @ basis
        run.save_reference(entry.name, x.float().numpy(), None if basis is None else basis.float().numpy())
