"""Checkpoint formats: scorebench's native directories and diffusers UNet2DModel directories, loaded safely.

Native checkpoint: a directory with `model.safetensors` (the network's weights) and `config.json`:

    {"format": "scorebench-checkpoint", "format_version": 1,
     "arch": "unet", "arch_kwargs": {...},              # models.unet.UNet(**arch_kwargs)
     "process": {"name": "ve", "sigma_min": ..., "sigma_max": ...}    # or {"name": "ddpm", "beta_start", "beta_end",
                                                                       #  "T"} or {"name": "vp", "beta_min", "beta_max"}
     "prediction": "score", "conditioning": "sigma",    # models.wrappers.NetworkDenoiser
     "shape": [1, 8, 8], "data_range": [-1, 1], "dataset": "digits", "sigma_min": ..., "sigma_max": ...,
     "training": {"command": ..., "seed": ..., "steps": ..., "final_loss": ..., ...}}

diffusers directory (`diffusers:PATH`): a pipeline directory (unet/ and scheduler/ sub-folders) or a bare model
directory (config.json + weights, scheduler_config.json beside it or in scheduler/). The scheduler config decides
the layout:
- a DDPM-family scheduler (DDPM, DDIM, PNDM, ...: it has betas): VP DDPM, data in [-1, 1], prediction from its
  prediction_type (epsilon -> eps), the network conditioned on the timestep index (google/ddpm-cifar10-32);
- ScoreSdeVeScheduler: VE with its sigma_min/sigma_max, data in [0, 1], the timestep argument is sigma and the output
  is the score (google/ncsnpp-*).

Nothing is unpickled: weights are read with safetensors (diffusers itself falls back to torch.load(weights_only=True)
for .bin files). Every problem with a path or a file is a one-line ValueError.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint_dir import write_checkpoint_dir
from .processes import DDPMProcess, Process, VEProcess, VPProcess
from .unet import UNet
from .upstream.common import load_strict
from .wrappers import NetworkDenoiser

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ARCHS",
    "load_native",
    "save_native",
    "native_config",
    "convert",
    "load_diffusers",
    "process_to_config",
    "process_from_config",
    "build_network",
]

FORMAT = "scorebench-checkpoint"
FORMAT_VERSION = 1
WEIGHTS, CONFIG = "model.safetensors", "config.json"

# network architectures a native checkpoint may name; each is built as cls(**arch_kwargs)
ARCHS: dict[str, type[nn.Module]] = {"unet": UNet}


# --- processes <-> JSON -------------------------------------------------------------------------------------------
def process_to_config(sde: Process) -> dict[str, Any]:
    """A JSON-serialisable description of a process, read back by process_from_config."""
    if isinstance(sde, VEProcess):
        return {"name": "ve", "sigma_min": sde.sigma_min, "sigma_max": sde.sigma_max}
    if isinstance(sde, VPProcess):
        return {"name": "vp", "beta_min": sde.beta_min, "beta_max": sde.beta_max}
    if isinstance(sde, DDPMProcess):
        start, end = float(sde.betas[0]), float(sde.betas[-1])
        if torch.allclose(sde.betas, torch.linspace(start, end, sde.T, dtype=torch.float64), rtol=0, atol=1e-12):
            return {"name": "ddpm", "beta_start": start, "beta_end": end, "T": sde.T}
        return {"name": "ddpm", "betas": sde.betas.tolist()}
    raise ValueError(f"cannot describe process {type(sde).__name__} in a checkpoint config")


def process_from_config(spec: dict[str, Any]) -> Process:
    """The process a checkpoint config describes; ValueError naming what is wrong."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(f"process must be an object with a 'name', got {spec!r}")
    name, args = spec["name"], {k: v for k, v in spec.items() if k != "name"}
    builders = {"ve": VEProcess, "vp": VPProcess, "ddpm": DDPMProcess}
    if name not in builders:
        raise ValueError(f"unknown process {name!r}; expected one of {', '.join(builders)}")
    if name == "ddpm" and "betas" in args:
        args["betas"] = torch.tensor(args["betas"], dtype=torch.float64)
    try:
        return builders[name](**args)
    except TypeError as err:
        raise ValueError(f"bad arguments for process {name!r}: {err}") from None


def build_network(arch: str, arch_kwargs: dict[str, Any]) -> nn.Module:
    """A fresh network for `arch`; an upstream architecture ("score_sde.ncsnpp", ...) registers itself in ARCHS
    when its format module (models.upstream.<format>) is imported."""
    fmt = arch.partition(".")[0]
    if arch not in ARCHS and "." in arch and fmt.isidentifier():
        from .upstream import FORMATS

        if fmt in FORMATS:
            import importlib

            importlib.import_module(f"models.upstream.{FORMATS[fmt].module}")
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHS)}")
    try:
        return ARCHS[arch](**arch_kwargs)
    except TypeError as err:
        raise ValueError(f"bad arguments for architecture {arch!r}: {err}") from None


# --- native checkpoints -------------------------------------------------------------------------------------------
# what a native checkpoint directory may hold: its two files and the training figures written beside them
NATIVE_FILES = (WEIGHTS, CONFIG, "training_curve.csv", "training_curve.png", "samples.png")


def save_native(path: str | Path, net: nn.Module, config: dict[str, Any]) -> Path:
    """Write a native checkpoint directory whole (models.checkpoint_dir): a half-written checkpoint never appears at
    `path`, and an existing `path` is replaced only if it is empty or a native checkpoint (else ValueError).

    `config` holds everything but the format fields, which are added here.
    """
    from safetensors.torch import save_file

    config = {"format": FORMAT, "format_version": FORMAT_VERSION, **config}

    def write(tmp: Path) -> None:
        state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
        save_file(state, tmp / WEIGHTS, metadata={"format": FORMAT})
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")

    return write_checkpoint_dir(path, write, FORMAT, NATIVE_FILES)


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"{what}: missing {path.name} in {path.parent}")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{what}: {path} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what}: {path} must hold a JSON object")
    return data


def _read_safetensors(path: Path, what: str) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise ValueError(f"{what}: missing {path.name} in {path.parent}")
    try:
        return load_file(path)
    except Exception as err:  # safetensors raises its own error types (and OSError) for corrupt/truncated files
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"{what}: {path} is not a readable safetensors file ({reason})") from None


def _field(config: dict[str, Any], key: str, what: str) -> Any:
    if key not in config:
        raise ValueError(f"{what}: config.json has no {key!r}")
    return config[key]


def load_native(path: str | Path, name: str | None = None) -> NetworkDenoiser:
    """Load a native checkpoint directory (model.safetensors + config.json) as a Denoiser."""
    path = Path(path)
    what = f"checkpoint {str(path)!r}"
    if not path.exists():
        raise ValueError(f"{what}: no such directory")
    if not path.is_dir():
        raise ValueError(f"{what}: not a directory (a native checkpoint is a directory with {WEIGHTS} and {CONFIG})")
    config = _read_json(path / CONFIG, what)
    if config.get("format") != FORMAT:
        raise ValueError(f"{what}: config.json is not a {FORMAT} config (format={config.get('format')!r})")
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{what}: unsupported format_version {config.get('format_version')!r} (this is {FORMAT_VERSION})"
        )
    net = build_network(_field(config, "arch", what), _field(config, "arch_kwargs", what))
    load_strict(net, _read_safetensors(path / WEIGHTS, what), what)
    levels = config.get("levels")
    model = NetworkDenoiser(
        net,
        process_from_config(_field(config, "process", what)),
        prediction=_field(config, "prediction", what),
        conditioning=_field(config, "conditioning", what),
        shape=tuple(_field(config, "shape", what)),
        data_range=tuple(config.get("data_range", (-1.0, 1.0))),
        sigma_min=config.get("sigma_min"),
        sigma_max=config.get("sigma_max"),
        name=name or path.name,
        levels=None if levels is None else torch.tensor(levels, dtype=torch.float64),
    )
    model.dataset = config.get("dataset")
    model.config = config
    model.arch, model.arch_kwargs = config["arch"], config["arch_kwargs"]
    if config.get("sampler_defaults"):
        model.sampler_defaults = config["sampler_defaults"]
    return model


def native_config(model: NetworkDenoiser) -> dict[str, Any]:
    """The config.json of a native checkpoint that rebuilds `model` (a network registered in ARCHS, see
    models.upstream) without its original format."""
    arch = getattr(model, "arch", None)
    if not isinstance(model, NetworkDenoiser) or arch is None:
        raise ValueError(
            f"model {model.name!r} cannot be converted: only checkpoints whose network scorebench can rebuild "
            "(native, score_sde:, ncsnv2:, ddim:, edm:) have a native form"
        )
    config = {
        "arch": arch,
        "arch_kwargs": model.arch_kwargs,
        "process": process_to_config(model.sde),
        "prediction": model.prediction,
        "conditioning": model.conditioning,
        "shape": list(model.shape),
        "data_range": list(model.data_range),
        "dataset": model.dataset,
        "sigma_min": model.sigma_min,
        "sigma_max": model.sigma_max,
    }
    if model.levels is not None:
        config["levels"] = model.levels.tolist()
    if getattr(model, "sampler_defaults", None):
        config["sampler_defaults"] = model.sampler_defaults
    return config


def convert(model: NetworkDenoiser, out: str | Path, source: str | None = None) -> Path:
    """Write `model` as a native checkpoint directory `out` (config.json records the source spec)."""
    config = native_config(model)
    if source is not None:
        config["converted_from"] = source
    return save_native(out, model.net, config)


# --- diffusers directories ----------------------------------------------------------------------------------------
class DiffusersUNet(nn.Module):
    """net(x, cond) -> unet(x, cond).sample: a diffusers UNet2DModel as the plain network NetworkDenoiser wraps."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        return self.unet(x, cond).sample


_DIFFUSERS_PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}


def _find_diffusers_parts(path: Path, what: str) -> tuple[Path, Path]:
    """(unet directory, scheduler config file) of a pipeline directory or a bare model directory."""
    if (path / "unet" / "config.json").is_file():
        unet_dir = path / "unet"
    elif (path / "config.json").is_file():
        unet_dir = path
    else:
        raise ValueError(f"{what}: neither unet/config.json nor config.json found (not a diffusers model directory)")
    for candidate in (path / "scheduler" / "scheduler_config.json", path / "scheduler_config.json"):
        if candidate.is_file():
            return unet_dir, candidate
    raise ValueError(f"{what}: no scheduler config (scheduler/scheduler_config.json or scheduler_config.json)")


def _diffusers_process(scheduler_config: dict[str, Any], what: str) -> tuple[Process, str, str, tuple[float, float]]:
    """(process, prediction, conditioning, data range) of a diffusers scheduler config."""
    import diffusers

    cls_name = scheduler_config.get("_class_name")
    if cls_name == "ScoreSdeVeScheduler":
        sigma_min = float(scheduler_config.get("sigma_min", 0.01))
        sigma_max = float(scheduler_config.get("sigma_max", 1348.0))
        return VEProcess(sigma_min, sigma_max), "score", "sigma", (0.0, 1.0)
    scheduler_cls = getattr(diffusers, str(cls_name), None)
    if not (isinstance(scheduler_cls, type) and issubclass(scheduler_cls, diffusers.SchedulerMixin)):
        raise ValueError(f"{what}: unknown layout: scheduler class {cls_name!r} is not a diffusers scheduler")
    scheduler = scheduler_cls.from_config(scheduler_config)
    if not hasattr(scheduler, "betas"):
        raise ValueError(
            f"{what}: unknown layout: scheduler {cls_name} is neither ScoreSdeVeScheduler (VE NCSN++) "
            "nor a DDPM-family scheduler with betas (VP)"
        )
    prediction_type = scheduler_config.get("prediction_type", "epsilon")
    if prediction_type not in _DIFFUSERS_PREDICTIONS:
        raise ValueError(f"{what}: unknown layout: prediction_type {prediction_type!r}")
    cfg = scheduler.config
    if cfg.get("beta_schedule", "linear") == "linear" and cfg.get("trained_betas") is None:  # exact, in float64
        sde = DDPMProcess(beta_start=cfg.beta_start, beta_end=cfg.beta_end, T=cfg.num_train_timesteps)
    else:
        sde = DDPMProcess(betas=scheduler.betas.double())
    return sde, _DIFFUSERS_PREDICTIONS[prediction_type], "index", (-1.0, 1.0)


def load_diffusers(path: str | Path, name: str | None = None) -> NetworkDenoiser:
    """Load a diffusers UNet2DModel directory (with its scheduler config) as a Denoiser."""
    import diffusers

    path = Path(path)
    what = f"diffusers model {str(path)!r}"
    if not path.is_dir():
        raise ValueError(f"{what}: no such directory")
    unet_dir, scheduler_file = _find_diffusers_parts(path, what)
    unet_config = _read_json(unet_dir / "config.json", what)
    if unet_config.get("_class_name") != "UNet2DModel":
        raise ValueError(
            f"{what}: unknown layout: {unet_dir / 'config.json'} describes {unet_config.get('_class_name')!r}, "
            "not a UNet2DModel"
        )
    sde, prediction, conditioning, data_range = _diffusers_process(_read_json(scheduler_file, what), what)
    try:
        unet = diffusers.UNet2DModel.from_pretrained(unet_dir, low_cpu_mem_usage=False)
    except Exception as err:  # diffusers/safetensors/torch raise many types for corrupt or mismatched files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{what}: cannot load the UNet2DModel weights ({reason})") from None
    size = unet.config.sample_size
    if size is None:
        raise ValueError(f"{what}: the UNet2DModel config has no sample_size, so the image shape is unknown")
    height, width = (size, size) if isinstance(size, int) else size
    model = NetworkDenoiser(
        DiffusersUNet(unet),
        sde,
        prediction=prediction,
        conditioning=conditioning,
        shape=(unet.config.in_channels, height, width),
        data_range=data_range,
        name=name or f"diffusers:{path}",
    )
    return model
