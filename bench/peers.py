"""Wall-clock against the loops users would otherwise write with diffusers' schedulers, measured side by side.

Each comparison runs one discrete-time eps network (DDPM betas 1e-4..0.02, T = 1000) on the same noise levels
from the same initial noise with the same number of network evaluations, once as the familiar diffusers loop and
once as the scorebench sampler that computes the same update:

    DDIMScheduler (eta = 0)   vs  ddim   (VP-coordinate DDIM; ours steps in VE coordinates)
    EulerDiscreteScheduler    vs  ddim   (DDIM with eta = 0 is Euler in sigma)
    HeunDiscreteScheduler     vs  kar1   (Karras Algorithm 1: Heun in sigma, Euler on the last step to 0)

Before any timing counts, the outputs must agree (to float32 round-off) and the counted network evaluations must be
equal, so the timing compares like with like. Every repeat times the diffusers loop, the scorebench sampler and the
bare network calls (model-only) back to back in rotating order; the table gives medians, the median paired ratio
diffusers / scorebench, and each side's time per network evaluation spent outside the network.

    python -m bench.peers            (or: scorebench speed --peers)
"""

from __future__ import annotations

import argparse
import functools
import gc
import operator
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from models import DDPMProcess, NetworkDenoiser, load_model
from samplers import SAMPLERS
from samplers.api import synchronize

from .files import write_json
from .threads import set_torch_threads

__all__ = ["NETS", "ConvEps", "PeerRow", "tiny_unet", "compare", "format_table", "main"]

BETAS = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"}


class _Net(nn.Module):
    """An eps network net(x, t[B]) (a diffusers model's output unwrapped from `.sample`), counting its calls."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.calls = 0

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        out = self.net(x, t.expand(x.shape[0]) if t.ndim == 0 else t)  # diffusers' loops pass one timestep
        return out.sample if hasattr(out, "sample") else out


class ConvEps(nn.Module):
    """The cheapest eps network worth the name: one 3x3 convolution (ignores t). Its per-call cost is a few tens of
    microseconds, so a loop's own per-step overhead dominates the wall-clock: the case the comparison is about."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.conv(x)


def tiny_unet(channels: tuple[int, int], seed: int = 0) -> nn.Module:
    """A randomly initialised diffusers UNet2DModel on 1x8x8 images (its weights do not matter for timing)."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=channels,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=min(8, channels[0]),
    ).eval()


def shipped_eps_net(name: str) -> nn.Module:
    """The network of a shipped DDPM eps checkpoint (e.g. digits-vp), to run under both loops."""
    model = load_model(name)
    layout = (type(model.sde), getattr(model, "prediction", None), getattr(model, "conditioning", None), model.shape)
    if layout != (DDPMProcess, "eps", "index", (1, 8, 8)):
        raise ValueError(f"{name} is not a DDPM eps network on 1x8x8 images conditioned on the timestep index")
    return model.net


# eps networks on 1x8x8 images, from the one where per-step overhead dominates to ones where the network does
NETS = {
    "conv-8x8": ConvEps,
    "unet-8x8-tiny": lambda: tiny_unet((8, 16)),
    "unet-8x8-small": lambda: tiny_unet((32, 64)),
    "digits-vp": lambda: shipped_eps_net("digits-vp"),
}
# what `python -m bench.peers` measures by default (about 90 s on a 2-core CPU): overhead-bound and network-bound
DEFAULT_CASES = (("conv-8x8", 16), ("conv-8x8", 256), ("unet-8x8-tiny", 16), ("digits-vp", 16))


# --- the loops users write with diffusers -------------------------------------------------------------------------
def diffusers_ddim(net: _Net, scheduler, steps: int, x: Tensor) -> Tensor:
    scheduler.set_timesteps(steps, device=x.device)
    for t in scheduler.timesteps:
        x = scheduler.step(net(x, t), t, x, eta=0.0).prev_sample
    return x


def diffusers_karras(net: _Net, scheduler, steps: int, x: Tensor) -> Tensor:
    """The Euler and Heun schedulers' loop: scale the input, predict eps, step."""
    scheduler.set_timesteps(steps, device=x.device)
    for t in scheduler.timesteps:
        x = scheduler.step(net(scheduler.scale_model_input(x, t), t), t, x).prev_sample
    return x


@dataclass(frozen=True)
class PeerRow:
    model: str
    params: int
    peer: str  # the diffusers scheduler
    ours: str  # the scorebench sampler
    batch: int
    nfe: int  # network evaluations, counted on both sides
    diffusers_ms: float  # medians over repeats
    scorebench_ms: float
    model_ms: float  # the same network calls alone
    speedup: float  # median over repeats of diffusers time / scorebench time (> 1: scorebench is faster)
    # each loop's own cost per network evaluation: the median over repeats of (its time - model-only time) / NFE; of
    # the order of the timing noise when the network dominates
    diffusers_us_per_eval: float
    scorebench_us_per_eval: float
    max_rel_diff: float  # max |ours - theirs| / max |theirs| of the outputs


def _setups(net: _Net, steps: int, device: torch.device):
    """(peer name, sampler name, diffusers loop, scheduler, scorebench noise levels, initial-state map)."""
    import warnings

    from diffusers import DDIMScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler

    # diffusers' schedulers warn about numpy 2's copy keyword inside their own code
    warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)

    ddim = DDIMScheduler(**BETAS, clip_sample=False, set_alpha_to_one=True, timestep_spacing="leading")
    euler = EulerDiscreteScheduler(**BETAS, timestep_spacing="leading")
    heun = HeunDiscreteScheduler(**BETAS, timestep_spacing="leading")
    process = DDPMProcess()
    out = []
    for name, sampler, loop, scheduler in [
        ("DDIMScheduler", "ddim", diffusers_ddim, ddim),
        ("EulerDiscreteScheduler", "ddim", diffusers_karras, euler),
        ("HeunDiscreteScheduler", "kar1", diffusers_karras, heun),
    ]:
        scheduler.set_timesteps(steps, device=device)
        if name == "DDIMScheduler":
            # the diffusers loop starts from x_vp at the first timestep: x_ve = x_vp / sqrt(alpha_bar)
            t_first = (scheduler.timesteps.to(torch.float64) + 1) / process.T
            sigmas = torch.cat([process.sigma(t_first), t_first.new_zeros(1)])
            to_ours = 1 / float(process.scale(t_first[:1]))
            scale = 1.0
        else:
            sigmas = torch.unique_consecutive(scheduler.sigmas.to(torch.float64))  # Heun repeats each level
            to_ours, scale = 1.0, float(scheduler.init_noise_sigma)
        out.append((name, sampler, loop, scheduler, sigmas.to(device), to_ours, scale))
    return out


def _interleaved(runs: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds of every run, `repeats` times, back to back in rotating order (device synchronised around each)."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    order = list(runs)
    times: dict[str, list[float]] = {key: [] for key in order}
    gc.collect()
    gc.disable()
    try:
        for r in range(repeats):
            for key in order[r % len(order) :] + order[: r % len(order)]:
                synchronize(device)
                start = clock()
                runs[key]()
                synchronize(device)
                times[key].append(clock() - start)
    finally:
        gc.enable()
    return times


def _paired(a: list[float], b: list[float], op: Callable[[float, float], float]) -> float:
    return statistics.median(op(x, y) for x, y in zip(a, b, strict=True))


def compare(
    net: nn.Module,
    model_name: str,
    *,
    steps: int = 25,
    batch: int = 16,
    repeats: int = 15,
    device: str = "cpu",
    seed: int = 0,
) -> list[PeerRow]:
    """Check agreement, then time every (diffusers loop, scorebench sampler) pair side by side."""
    device_ = torch.device(device)
    net = _Net(net.to(device_))
    model = NetworkDenoiser(net, DDPMProcess(), prediction="eps", conditioning="index", shape=(1, 8, 8)).to(device_)
    z = torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(seed)).to(device_)
    rows = []
    with torch.no_grad():
        for name, sampler, loop, scheduler, sigmas, to_ours, scale in _setups(net, steps, device_):
            x_theirs = z * scale
            x_ours = x_theirs * to_ours
            spec = SAMPLERS[sampler]
            timesteps = list(scheduler.timesteps)

            def model_only(x=x_theirs, timesteps=timesteps):
                for t in timesteps:
                    net(x, t)

            def ours(spec=spec, x=x_ours, sigmas=sigmas):
                return spec.fn(model, x, sigmas.clone())  # a fresh schedule each run, as in real use

            theirs = functools.partial(loop, net, scheduler, steps, x_theirs)
            runs = {"theirs": theirs, "ours": ours, "model": model_only}
            # like with like: the same number of network evaluations, and the same images
            net.calls = 0
            reference = runs["theirs"]()
            nfe, net.calls = net.calls, 0
            result = runs["ours"]()
            if net.calls != nfe:
                raise RuntimeError(f"{name} made {nfe} network calls, {sampler} {net.calls}")
            rel = float((result - reference).abs().max() / reference.abs().max())
            if not rel < 1e-3:
                raise RuntimeError(f"{sampler} does not reproduce {name}: max relative difference {rel:.2e}")

            t = _interleaved(runs, repeats, device_)
            rows.append(
                PeerRow(
                    model=model_name,
                    params=sum(p.numel() for p in net.parameters()),
                    peer=name,
                    ours=sampler,
                    batch=batch,
                    nfe=nfe,
                    diffusers_ms=1e3 * statistics.median(t["theirs"]),
                    scorebench_ms=1e3 * statistics.median(t["ours"]),
                    model_ms=1e3 * statistics.median(t["model"]),
                    speedup=_paired(t["theirs"], t["ours"], operator.truediv),
                    diffusers_us_per_eval=1e6 * _paired(t["theirs"], t["model"], operator.sub) / nfe,
                    scorebench_us_per_eval=1e6 * _paired(t["ours"], t["model"], operator.sub) / nfe,
                    max_rel_diff=rel,
                )
            )
    return rows


def format_table(rows: list[PeerRow]) -> str:
    lines = [
        "| model (params) | diffusers loop | scorebench | batch | NFE | diffusers ms | scorebench ms | model-only ms "
        "| speed-up | diffusers us/eval | scorebench us/eval | max rel. diff |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        params = str(r.params) if r.params < 1000 else f"{r.params / 1e3:.0f}k"
        lines.append(
            f"| {r.model} ({params}) | {r.peer} | {r.ours} | {r.batch} | {r.nfe} | {r.diffusers_ms:.1f} "
            f"| {r.scorebench_ms:.1f} | {r.model_ms:.1f} | {r.speedup:.2f}x | {r.diffusers_us_per_eval:.0f} "
            f"| {r.scorebench_us_per_eval:.0f} | {r.max_rel_diff:.1e} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace, out: Callable[[str], None] = print) -> list[PeerRow]:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available")
    if device.type == "cpu" and args.threads:
        set_torch_threads(args.threads)
    if args.nets is None and args.batch_sizes is None:
        cases = list(DEFAULT_CASES)
    else:
        cases = [(n, b) for n in args.nets or list(NETS) for b in args.batch_sizes or [16]]
    rows = []
    for name, batch in cases:
        if name not in NETS:
            raise ValueError(f"unknown network {name!r}; expected one of {', '.join(NETS)}")
        rows += compare(NETS[name](), name, steps=args.steps, batch=batch, repeats=args.repeats, device=args.device)
    threads = f", {torch.get_num_threads()} CPU thread(s)" if device.type == "cpu" else ""
    out(
        f"device {device}{threads}, {args.steps} steps, {args.repeats} interleaved repeats; "
        f"speed-up = diffusers time / scorebench time (median of paired runs)"
    )
    out(format_table(rows))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, [asdict(r) for r in rows], indent=1)
    return rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    cases = ", ".join(f"{n} at batch {b}" for n, b in DEFAULT_CASES)
    p.add_argument("--nets", nargs="+", help=f"eps networks, from {', '.join(NETS)} (default cases: {cases})")
    p.add_argument("--batch-sizes", nargs="+", type=int, help="batch sizes (with --nets: every pair; default 16)")
    p.add_argument("--steps", type=int, default=25, help="scheduler steps (default: 25; Heun takes 2 steps - 1 NFE)")
    p.add_argument("--repeats", type=int, default=15, help="interleaved timed runs of each loop (default: 15)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1; 0: torch's own)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the rows as JSON")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        run(args)
    except ValueError as err:
        print(f"bench.peers: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
