"""Benchmark suites: a TOML file mapped onto frozen dataclasses, validated completely before any work starts.

A suite names the models, the samplers with their hyper-parameters, the NFE budgets, the number of samples and the
seed, the metrics and the device. Its cells are every (model, sampler, budget) triple:

```toml
[suite]
description = "what the suite shows"
seed = 0                  # sample i of every cell uses the noise streams of (seed, i)
n_samples = 1000
batch_size = 500          # also the unit of sharding across torchrun processes
budgets = [10, 20, 50]    # NFE budgets; each cell gets the largest step count whose NFE fits
device = "cpu"            # `scorebench run --device` overrides it
keep_samples = 64         # samples saved per cell for the report's grids (2-d models keep up to 1000)
bootstrap = 0             # B > 0: every metric also gets a 95% interval (<name>_lo, <name>_hi) from B half-samples
inception_weights = "weights-inception-2015-12-05-6726825d.pth"   # for fid/kid/precision/recall (default: torch's
                          # hub cache, else downloaded); `scorebench run --inception-weights` overrides it
reference = "train.npz"   # the reference data of models whose metrics need some and name none (`--reference`);
                          # "stats:fid-refs/cifar10-32x32.npz": a file of reference statistics or features (EDM
                          # fid-refs, pytorch-fid, score_sde pool_3, ADM reference batches: bench.reference_files)
fid_seed_sets = 1         # K > 1: EDM's protocol, every cell draws K disjoint seed sets of n_samples and reports
                          # each metric's best set (FID: the minimum) and the mean over sets (<metric>_mean)

[[models]]
spec = "gmm-2d-ve"        # a built-in name, diffusers:PATH or a native checkpoint directory
# name, n_samples, batch_size, budgets, metrics (default: the model's default metrics) override per model
reference = "images/"     # its metrics' real data: a folder of .png/.jpg images, an .npz of uint8 images or
                          # stats:PATH (default: the model's shipped dataset, or exact samples of an analytic model)
fid_seed_sets = 3         # per model, as in [suite]

[samplers.kar1]           # a registered sampler with its defaults
[samplers.kar2]
s_churn = 10.0            # any other key is a hyper-parameter of the sampler
[samplers.pc.per_model."gmm-2d-vp"]
snr = 0.01                # hyper-parameters (and `budgets`) for one model only
[samplers.ddim-eta1]
sampler = "ddim"          # a second entry of one sampler under its own name
eta = 1.0
# budgets, schedule and models (the model names it runs on) are the other reserved keys of a sampler table
```
Relative paths (reference, inception_weights) are read from the suite file's directory; every path must exist when
the run starts.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = [
    "ModelEntry",
    "SamplerEntry",
    "Cell",
    "Published",
    "Suite",
    "SUITES_DIR",
    "shipped_suites",
    "find_suite",
    "load_suite",
]

SUITES_DIR = Path(__file__).parent / "suites"
DEFAULT_BATCH_SIZE = 500
DEFAULT_KEEP_SAMPLES = 64
KEEP_SAMPLES_2D = 1000  # scatter plots of 2-d models need more points than an image grid, and they are tiny

_SUITE_KEYS = (
    "name",
    "description",
    "seed",
    "n_samples",
    "batch_size",
    "budgets",
    "device",
    "keep_samples",
    "bootstrap",
    "inception_weights",
    "reference",
    "fid_seed_sets",
)
# options of upstream checkpoint specs (models.upstream.FORMATS), passed to models.load_model
MODEL_OPTIONS = ("config", "ema", "class_labels")
_MODEL_KEYS = (
    "spec",
    "name",
    "n_samples",
    "batch_size",
    "budgets",
    "metrics",
    "reference",
    "fid_seed_sets",
    *MODEL_OPTIONS,
)
_SAMPLER_RESERVED = ("sampler", "budgets", "schedule", "models", "per_model")


@dataclass(frozen=True)
class ModelEntry:
    name: str  # the label in records, tables and plots
    spec: str  # what models.load_model understands
    n_samples: int
    batch_size: int
    budgets: tuple[int, ...]
    metrics: tuple[str, ...] | None = None  # None: bench.metrics.default_metrics(model)
    reference: str | None = None  # its metrics' reference data; None: built in, else the suite's reference
    options: dict[str, Any] = field(default_factory=dict)  # load_model options (config, ema, class_labels)
    fid_seed_sets: int = 1  # K > 1: K disjoint seed sets of n_samples each, best and mean reported (EDM)

    @property
    def n_total(self) -> int:
        """Samples drawn per cell: n_samples in each of the seed sets."""
        return self.n_samples * self.fid_seed_sets

    @property
    def n_batches(self) -> int:
        return math.ceil(self.n_total / self.batch_size)


@dataclass(frozen=True)
class SamplerEntry:
    name: str  # the label in records, tables and plots
    sampler: str  # the registered sampler (samplers.SAMPLERS)
    hyper: dict[str, Any] = field(default_factory=dict)
    per_model: dict[str, dict[str, Any]] = field(default_factory=dict)  # model name -> hyper-parameters
    budgets: tuple[int, ...] | None = None  # None: each model's budgets
    per_model_budgets: dict[str, tuple[int, ...]] = field(default_factory=dict)
    schedule: str | None = None  # None: the sampler's default schedule
    models: tuple[str, ...] | None = None  # None: every model of the suite

    def hyper_for(self, model: str) -> dict[str, Any]:
        return {**self.hyper, **self.per_model.get(model, {})}

    def budgets_for(self, model: ModelEntry) -> tuple[int, ...]:
        return self.per_model_budgets.get(model.name) or self.budgets or model.budgets


@dataclass(frozen=True)
class Cell:
    model: ModelEntry
    sampler: SamplerEntry
    budget: int

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.model.name, self.sampler.name, self.budget)

    @property
    def hyper(self) -> dict[str, Any]:
        return self.sampler.hyper_for(self.model.name)


@dataclass(frozen=True)
class Published:
    """A published number the report prints next to the measured one: model and sampler (the suite's entry names),
    the NFE it was reported at, the metric, its value, the preset that reproduces the paper's algorithm, the source."""

    model: str
    sampler: str
    nfe: int
    metric: str
    value: float
    source: str
    preset: str | None = None
    note: str = ""
    n: int | None = None  # the samples behind the published value (FD depends on it); None: not known


@dataclass(frozen=True)
class Suite:
    name: str
    source: str  # the file it was read from
    description: str
    seed: int
    device: str
    keep_samples: int
    models: tuple[ModelEntry, ...]
    samplers: tuple[SamplerEntry, ...]
    bootstrap: int = 0  # half-sample replicates behind each metric's 95% interval; 0: none
    inception_weights: str | None = None  # Inception-v3 weights file; None: torch's hub cache, else downloaded
    reference: str | None = None  # reference data of the models whose metrics need some and name none
    published: tuple[Published, ...] = ()  # [[published]]: numbers from papers, printed beside the measured ones

    def cells(self) -> list[Cell]:
        """Every (model, sampler, budget) cell, model by model, samplers in suite order, budgets ascending."""
        return [
            Cell(model, sampler, budget)
            for model in self.models
            for sampler in self.samplers
            if sampler.models is None or model.name in sampler.models
            for budget in sampler.budgets_for(model)
        ]

    def select(self, models: Iterable[str] | None = None, samplers: Iterable[str] | None = None) -> Suite:
        """The suite restricted to some of its models and samplers (by name); ValueError for a name it lacks."""
        out = self
        if models is not None:
            out = replace(out, models=_pick(self.models, list(models), "model", self.source))
        if samplers is not None:
            out = replace(out, samplers=_pick(self.samplers, list(samplers), "sampler", self.source))
        return out

    def with_preset(self, preset: str | None) -> Suite:
        """Every sampler that has `preset` (samplers' SamplerSpec.presets) runs with it, unless its table names one;
        "upstream" gives each sampler its own upstream preset (score_sde for em, rd, pc, pf_euler, rk45; ncsnv2 for
        ald; dmcmc for dlg+X). ValueError when no sampler of the suite has the preset."""
        if preset is None:
            return self
        from samplers import get_sampler

        samplers, applied = [], 0
        for entry in self.samplers:
            presets = get_sampler(entry.sampler).presets
            name = next(iter(presets), None) if preset == "upstream" else (preset if preset in presets else None)
            if name is not None and "preset" not in entry.hyper:
                entry = replace(entry, hyper={**entry.hyper, "preset": name})
                applied += 1
            samplers.append(entry)
        if not applied:
            raise ValueError(f"--preset {preset}: no sampler of suite {self.name!r} has it (or all name their own)")
        return replace(self, samplers=tuple(samplers))

    def with_metric_options(
        self,
        reference: str | Path | None = None,
        inception_weights: str | Path | None = None,
        bootstrap: int | None = None,
    ) -> Suite:
        """The suite with `scorebench run`'s --reference, --inception-weights and --bootstrap (None: keep the suite's;
        paths relative to the working directory); ValueError naming the option for a missing path or a negative B."""
        out = self
        from .reference_files import join_spec, split_spec

        for option, value in (("reference", reference), ("inception_weights", inception_weights)):
            if value is not None:
                stats, path = split_spec(value) if option == "reference" else (False, Path(value).expanduser())
                if not path.exists():
                    raise ValueError(f"--{option.replace('_', '-')} {value}: no such file or directory")
                out = replace(out, **{option: join_spec(stats, path.resolve())})
        if bootstrap is not None:
            if bootstrap < 0:
                raise ValueError(f"--bootstrap must be a non-negative number of replicates, got {bootstrap}")
            out = replace(out, bootstrap=bootstrap)
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        """Every sampler registered, every hyper-parameter known, every budget fitting a step count; else ValueError.

        Model specs are checked when the models are loaded (bench.runner.load_models), also before any work.
        """
        from samplers import SCHEDULES, get_sampler, steps_for_budget

        paths = [("[suite] inception_weights", self.inception_weights), ("[suite] reference", self.reference)]
        paths += [(f"[[models]] {m.spec!r} reference", m.reference) for m in self.models]
        from .reference_files import split_spec

        for where, path in paths:
            if path is not None and not split_spec(path)[1].exists():
                raise ValueError(f"{self.source}: {where}: {split_spec(path)[1]} does not exist")

        for entry in self.samplers:
            where = f"{self.source}: [samplers.{_quote(entry.name)}]"
            try:
                spec = get_sampler(entry.sampler)
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from None
            if entry.schedule is not None and entry.schedule not in SCHEDULES:
                raise ValueError(
                    f"{where}: unknown schedule {entry.schedule!r}; expected one of {', '.join(SCHEDULES)}"
                )
            for model in self.models:
                if entry.models is not None and model.name not in entry.models:
                    continue
                hyper = entry.hyper_for(model.name)
                try:
                    spec.resolve(hyper)
                    _check_types(hyper, spec.defaults())
                except ValueError as err:
                    raise ValueError(f"{where}: {err}") from None
                if spec.adaptive:  # its budget is met by a tolerance sweep at run time
                    continue
                for budget in entry.budgets_for(model):
                    try:
                        steps_for_budget(spec, budget, hyper)
                    except ValueError as err:
                        raise ValueError(f"{where} on model {model.name!r}: {err}") from None


def _check_types(hyper: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
    """A hyper-parameter given as a string where the default is a number (or the like) is a typo, not a setting."""
    for key, value in hyper.items():
        default = defaults[key]
        if default is None or value is None:
            continue
        numeric = (int, float)
        ok = isinstance(value, bool) == isinstance(default, bool) and (
            isinstance(value, numeric) if isinstance(default, numeric) else isinstance(value, type(default))
        )
        if not ok:
            raise ValueError(f"{key} = {value!r} should be a {type(default).__name__} like its default {default!r}")


def _pick(entries, names: list[str], what: str, source: str):
    known = {e.name: e for e in entries}
    missing = [n for n in names if n not in known]
    if missing:
        raise ValueError(f"{source} has no {what} {', '.join(map(repr, missing))}; it has: {', '.join(known)}")
    return tuple(e for e in entries if e.name in names)


def _quote(key: str) -> str:
    return key if key.replace("-", "").replace("_", "").isalnum() else f'"{key}"'


# --- finding and parsing suite files ----------------------------------------------------------------------------


def shipped_suites() -> dict[str, Path]:
    """The suites that ship inside the package, by name."""
    return {p.stem: p for p in sorted(SUITES_DIR.glob("*.toml"))}


def find_suite(ref: str | Path) -> Path:
    """A suite file: an existing path, or the name of a shipped suite."""
    path = Path(ref)
    if path.is_file():
        return path
    shipped = shipped_suites()
    if str(ref) in shipped:
        return shipped[str(ref)]
    raise ValueError(f"unknown suite {str(ref)!r}: not a file, and not a shipped suite ({', '.join(shipped)})")


def load_suite(ref: str | Path) -> Suite:
    """Read and check a suite file (its structure and every key and type); ValueError naming the file and key."""
    path = find_suite(ref)
    source = str(path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{source}: malformed TOML: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{source}: cannot read: {err}") from None
    return parse_suite(raw, source, default_name=path.stem)


def parse_suite(raw: Mapping[str, Any], source: str, default_name: str = "suite") -> Suite:
    _check_keys(raw, ("suite", "models", "samplers", "published"), source, "the top level")
    head = _table(raw.get("suite", {}), source, "[suite]")
    _check_keys(head, _SUITE_KEYS, source, "[suite]")
    n_samples = _positive_int(head.get("n_samples", 1000), source, "[suite] n_samples")
    defaults = {
        "n_samples": n_samples,
        "batch_size": _positive_int(
            head.get("batch_size", min(n_samples, DEFAULT_BATCH_SIZE)), source, "[suite] batch_size"
        ),
        "budgets": _budgets(head["budgets"], source, "[suite] budgets") if "budgets" in head else None,
        "fid_seed_sets": _positive_int(head.get("fid_seed_sets", 1), source, "[suite] fid_seed_sets"),
    }

    models_raw = raw.get("models")
    if not isinstance(models_raw, list) or not models_raw:
        raise ValueError(f"{source}: needs at least one [[models]] table")
    models = tuple(_model(m, i, defaults, source) for i, m in enumerate(models_raw))
    _unique([m.name for m in models], source, "model")

    samplers_raw = _table(raw.get("samplers", {}), source, "[samplers]")
    if not samplers_raw:
        raise ValueError(f"{source}: needs at least one [samplers.NAME] table")
    model_names = [m.name for m in models]
    samplers = tuple(_sampler(name, table, model_names, source) for name, table in samplers_raw.items())

    for m in models:
        if m.budgets == () and any(s.budgets is None for s in samplers):
            raise ValueError(f"{source}: model {m.name!r} has no NFE budgets: set [suite] budgets or its own budgets")

    device = head.get("device", "cpu")
    if not isinstance(device, str) or not device:
        raise ValueError(f'{source}: [suite] device must be a string such as "cpu" or "cuda", got {device!r}')
    seed = head.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"{source}: [suite] seed must be a non-negative integer, got {seed!r}")
    keep = head.get("keep_samples", DEFAULT_KEEP_SAMPLES)
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 0:
        raise ValueError(f"{source}: [suite] keep_samples must be a non-negative integer, got {keep!r}")
    description = head.get("description", "")
    if not isinstance(description, str):
        raise ValueError(f"{source}: [suite] description must be a string, got {description!r}")
    bootstrap = head.get("bootstrap", 0)
    if not isinstance(bootstrap, int) or isinstance(bootstrap, bool) or bootstrap < 0:
        raise ValueError(f"{source}: [suite] bootstrap must be a non-negative integer, got {bootstrap!r}")
    return Suite(
        name=_string(head.get("name", default_name), source, "[suite] name"),
        source=source,
        description=description,
        seed=seed,
        device=device,
        keep_samples=keep,
        models=models,
        samplers=samplers,
        bootstrap=bootstrap,
        inception_weights=_path(head.get("inception_weights"), source, "[suite] inception_weights"),
        reference=_reference(head.get("reference"), source, "[suite] reference"),
        published=_published(raw.get("published", []), model_names, [s.name for s in samplers], source),
    )


_PUBLISHED_FIELDS = {"model": str, "sampler": str, "nfe": int, "metric": str, "value": float, "source": str}
_PUBLISHED_OPTIONAL = ("preset", "note", "n")


def _published(raw: Any, models: list[str], samplers: list[str], source: str) -> tuple[Published, ...]:
    if not isinstance(raw, list):
        raise ValueError(f"{source}: published must be an array of tables ([[published]])")
    out = []
    for i, entry in enumerate(raw):
        where = f"[[published]] #{i + 1}"
        entry = _table(entry, source, where)
        _check_keys(entry, (*_PUBLISHED_FIELDS, *_PUBLISHED_OPTIONAL), source, where)
        if "n" in entry:
            _positive_int(entry["n"], source, f"{where} n")
        for key, kind in _PUBLISHED_FIELDS.items():
            value = entry.get(key)
            ok = (
                isinstance(value, int | float) and not isinstance(value, bool)
                if kind is float
                else (isinstance(value, kind) and not isinstance(value, bool))
            )
            if not ok:
                raise ValueError(f"{source}: {where} needs {key} ({kind.__name__}), got {value!r}")
        if entry["model"] not in models:
            raise ValueError(f"{source}: {where} names unknown model {entry['model']!r}; models: {', '.join(models)}")
        if entry["sampler"] not in samplers:
            raise ValueError(f"{source}: {where} names unknown sampler {entry['sampler']!r}")
        out.append(Published(**{**entry, "value": float(entry["value"])}))
    return tuple(out)


def _model(raw: Any, i: int, defaults: dict[str, Any], source: str) -> ModelEntry:
    where = f"[[models]] #{i + 1}"
    raw = _table(raw, source, where)
    _check_keys(raw, _MODEL_KEYS, source, where)
    if "spec" not in raw:
        raise ValueError(f"{source}: {where} needs a spec (a built-in model name, diffusers:PATH or a directory)")
    spec = _string(raw["spec"], source, f"{where} spec")
    where = f"[[models]] {spec!r}"
    metrics = raw.get("metrics")
    if metrics is not None:
        if not isinstance(metrics, list) or not all(isinstance(x, str) for x in metrics):
            raise ValueError(f"{source}: {where} metrics must be a list of metric names, got {metrics!r}")
        metrics = tuple(metrics)
    budgets = _budgets(raw["budgets"], source, f"{where} budgets") if "budgets" in raw else defaults["budgets"]
    n_samples = _positive_int(raw.get("n_samples", defaults["n_samples"]), source, f"{where} n_samples")
    batch_default = min(defaults["batch_size"], n_samples)
    return ModelEntry(
        name=_string(raw.get("name", spec), source, f"{where} name"),
        spec=spec,
        n_samples=n_samples,
        batch_size=_positive_int(raw.get("batch_size", batch_default), source, f"{where} batch_size"),
        budgets=budgets or (),
        metrics=metrics,
        reference=_reference(raw.get("reference"), source, f"{where} reference"),
        options={k: raw[k] for k in MODEL_OPTIONS if k in raw},
        fid_seed_sets=_positive_int(
            raw.get("fid_seed_sets", defaults["fid_seed_sets"]), source, f"{where} fid_seed_sets"
        ),
    )


def _sampler(name: str, raw: Any, model_names: list[str], source: str) -> SamplerEntry:
    where = f"[samplers.{_quote(name)}]"
    raw = dict(_table(raw, source, where))
    per_model, per_model_budgets = {}, {}
    for model, table in _table(raw.pop("per_model", {}), source, f"{where} per_model").items():
        if model not in model_names:
            raise ValueError(
                f"{source}: {where} per_model names unknown model {model!r}; models: {', '.join(model_names)}"
            )
        table = dict(_table(table, source, f"{where} per_model.{_quote(model)}"))
        if "budgets" in table:
            per_model_budgets[model] = _budgets(table.pop("budgets"), source, f"{where} per_model.{_quote(model)}")
        per_model[model] = table
    models = raw.pop("models", None)
    if models is not None:
        if not isinstance(models, list) or not models or not all(m in model_names for m in models):
            raise ValueError(
                f"{source}: {where} models must list some of the suite's models ({', '.join(model_names)})"
            )
        models = tuple(models)
    schedule = raw.pop("schedule", None)
    if schedule is not None:
        schedule = _string(schedule, source, f"{where} schedule")
    budgets = _budgets(raw.pop("budgets"), source, f"{where} budgets") if "budgets" in raw else None
    sampler = _string(raw.pop("sampler", name), source, f"{where} sampler")
    for key, value in raw.items():  # everything left is a hyper-parameter
        if isinstance(value, dict | list):
            raise ValueError(
                f"{source}: {where} {key} = {value!r} is not a hyper-parameter value; the reserved keys of a sampler "
                f"table are {', '.join(_SAMPLER_RESERVED)}"
            )
    return SamplerEntry(
        name=name,
        sampler=sampler,
        hyper=raw,
        per_model=per_model,
        budgets=budgets,
        per_model_budgets=per_model_budgets,
        schedule=schedule,
        models=models,
    )


def _check_keys(table: Mapping[str, Any], allowed: tuple[str, ...], source: str, where: str) -> None:
    unknown = [k for k in table if k not in allowed]
    if unknown:
        raise ValueError(f"{source}: unknown key {unknown[0]!r} in {where}; expected one of {', '.join(allowed)}")


def _table(value: Any, source: str, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{source}: {where} must be a table, got {value!r}")
    return value


def _string(value: Any, source: str, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{source}: {where} must be a non-empty string, got {value!r}")
    return value


def _path(value: Any, source: str, where: str) -> str | None:
    """A path from the suite file: relative to the file's directory (its existence is checked by Suite.validate)."""
    if value is None:
        return None
    path = Path(_string(value, source, where)).expanduser()
    return str(path if path.is_absolute() else (Path(source).parent / path).resolve())


def _reference(value: Any, source: str, where: str) -> str | None:
    """A reference from the suite file: a path, or stats:PATH, relative to the file's directory."""
    from .reference_files import join_spec, split_spec

    if value is None:
        return None
    stats, _ = split_spec(_string(value, source, where))
    text = str(value)[len("stats:") :] if stats else str(value)
    return join_spec(stats, _path(text, source, where))


def _positive_int(value: Any, source: str, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{source}: {where} must be a positive integer, got {value!r}")
    return value


def _budgets(value: Any, source: str, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{source}: {where} must be a non-empty list of NFE budgets, got {value!r}")
    budgets = tuple(_positive_int(v, source, where) for v in value)
    if len(set(budgets)) != len(budgets):
        raise ValueError(f"{source}: {where} repeats a budget: {list(budgets)}")
    return tuple(sorted(budgets))


def _unique(names: list[str], source: str, what: str) -> None:
    seen = set()
    for n in names:
        if n in seen:
            raise ValueError(f"{source}: two {what}s are named {n!r}; give one a distinct name")
        seen.add(n)
