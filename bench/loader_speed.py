"""How much loading an upstream checkpoint and wrapping its network as a denoiser cost, measured side by side.

For each checkpoint (the upstream fixtures by default):
- load: `load_model(SPEC)` plus its first denoiser call, against the bare minimum any loader pays, `torch.load` of
  the file (for EDM's pickles: the restricted unpickler) plus one forward pass of the same, already built network
  (median of paired ratios over repeats);
- wrap: the denoiser's forward at batch 64 against the bare network's forward on the same inputs (median of paired
  ratios), i.e. what the conversion to D(x, sigma) adds per call.
The clock is the process's CPU time and torch runs on one thread, so that other processes on a shared machine do
not enter the figures.

    python -m bench.loader_speed --json results/benchmarks/loaders.json [--fixtures DIR] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from .files import write_json
from .threads import set_torch_threads

# fixture folder -> spec template ({} is the folder): the formats whose loading this measures
CHECKPOINTS = {
    "score_sde/ve-ncsnpp-continuous": "score_sde:{}/checkpoint_1.pth",
    "score_sde/vp-ddpmpp-continuous": "score_sde:{}/checkpoint_1.pth",
    "score_sde/vp-ddpm": "score_sde:{}/checkpoint_1.pth",
    "ncsnv2/cifar10": "ncsnv2:{}/checkpoint.pth",
    "ddim/cifar10": "ddim:{}/model-ema.ckpt",
    "edm/vp-songunet": "edm:{}/network-snapshot.pkl",
}
BATCH = 64
WRAP_PAIRS = 5  # denoiser-vs-network timing pairs per load repeat


def _file_of(spec: str) -> Path:
    from models.upstream import split_spec

    found = split_spec(spec)
    assert found is not None, f"not an upstream checkpoint spec: {spec}"
    return Path(found[1])


def _reader(spec: str):
    """The bare reading of the file: torch.load (weights only), or for EDM's pickles, whose own loader would run the
    code inside them, scorebench's restricted unpickler alone."""
    if spec.startswith("edm:"):
        from models.upstream.edm_unpickle import read_network_pickle

        return lambda path: read_network_pickle(path, str(path))
    return lambda path: torch.load(path, map_location="cpu", weights_only=True)


def measure(spec: str, repeats: int = 7, wrap: bool = True, **options: Any) -> dict[str, Any]:
    """Paired CPU-time ratios for one checkpoint spec (see the module docstring)."""
    from models import load_model

    clock = time.process_time
    model = load_model(spec, **options)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, *model.shape, generator=gen)
    level = (
        (model.sigma_min * model.sigma_max) ** 0.5
        if model.levels is None
        else float(model.levels[len(model.levels) // 2])
    )
    sigma = torch.full((BATCH,), level, dtype=torch.float64)
    terms = model._terms(sigma, x)  # the network's own inputs, as the denoiser makes them
    net_x, net_cond = x * terms[0], terms[2].reshape(-1)
    one_x, one_sigma, one_cond = x[:1], sigma[:1], net_cond[:1]

    read = _reader(spec)
    load_ratios, wrap_ratios, loads, bares = [], [], [], []
    with torch.no_grad():
        model(one_x, one_sigma)
        for _ in range(repeats):
            start = clock()
            loaded = load_model(spec, **options)
            loaded(one_x, one_sigma)
            load = clock() - start
            start = clock()
            read(_file_of(spec))
            model.net(one_x * terms[0][:1], one_cond)
            bare = clock() - start
            load_ratios.append(load / bare)
            loads.append(load)
            bares.append(bare)

        for i in range(WRAP_PAIRS * repeats if wrap else 0):  # cheap: more pairs, in alternating order
            first, second = (model, model.net) if i % 2 else (model.net, model)
            seconds = []
            for fn in (first, second):
                start = clock()
                fn(x, sigma) if fn is model else fn(net_x, net_cond)
                seconds.append(clock() - start)
            wrapped, plain = seconds if first is model else seconds[::-1]
            wrap_ratios.append(wrapped / plain)
    return {
        "spec": spec,
        "parameters": sum(p.numel() for p in model.parameters()),
        "load_s": round(statistics.median(loads), 4),
        "torch_load_plus_forward_s": round(statistics.median(bares), 4),
        "load_ratio": round(statistics.median(load_ratios), 3),
        "wrap_overhead": round(statistics.median(wrap_ratios) - 1, 4) if wrap_ratios else None,
        "repeats": repeats,
    }


def full_size_score_sde(folder: Path, config: str = "ve/cifar10_ncsnpp_continuous") -> str:
    """A score_sde checkpoint of a published config at full size (random weights), saved as score_sde saves it;
    returns its spec (to be loaded with config=`config`)."""
    from models.loaders import build_network
    from models.upstream.common import Config
    from models.upstream.score_sde import network_spec
    from models.upstream.score_sde_configs import PUBLISHED_CONFIGS

    arch, kwargs = network_spec(Config(PUBLISHED_CONFIGS[config]), config)
    net = build_network(arch, kwargs)  # initialised as constructed (the noise-level buffer included)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.02 if p.ndim > 1 else 0.1))
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    shadow = [p.detach().clone() for p in net.parameters() if p.requires_grad]
    path = folder / "checkpoint_24.pth"
    torch.save(
        {
            "optimizer": {},
            "model": state,
            "ema": {"decay": 0.999, "num_updates": 0, "shadow_params": shadow},
            "step": 0,
        },
        path,
    )
    return f"score_sde:{path}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loader_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--fixtures", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "fixtures")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument(
        "--full-size",
        action="store_true",
        help="also score_sde's CIFAR-10 NCSN++ (ve/cifar10_ncsnpp_continuous) at its published size, random weights",
    )
    args = parser.parse_args(argv)
    set_torch_threads(1)
    rows = []
    for folder, template in CHECKPOINTS.items():
        path = args.fixtures / "checkpoints" / folder
        if not path.is_dir():
            print(f"{folder}: not found under {args.fixtures}, skipped")
            continue
        row = measure(template.format(path), args.repeats)
        row["checkpoint"] = folder
        rows.append(row)
        print(
            f"{folder:34s} load {row['load_s'] * 1e3:7.1f} ms = {row['load_ratio']:.2f} x (torch.load + forward), "
            f"denoiser overhead at batch {BATCH}: {100 * row['wrap_overhead']:+.2f}%"
        )
    if args.full_size:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            name = "ve/cifar10_ncsnpp_continuous"
            row = measure(full_size_score_sde(Path(tmp), name), args.repeats, wrap=False, config=name)
            row["checkpoint"] = row["spec"] = f"score_sde {name} (published size, random weights)"
            rows.append(row)
            print(f"{name} full size: load {row['load_s']:.2f} s = {row['load_ratio']:.2f} x (torch.load + forward)")
    if args.json:
        write_json(args.json, {"threads": 1, "clock": "process CPU time", "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
