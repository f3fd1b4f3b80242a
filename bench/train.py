"""Training of the small UNet score models shipped as native checkpoints (`scorebench train score`).

Denoising score matching, written once for both processes through the model's own denoiser (NetworkDenoiser): draw
x0 from the data, a noise level sigma and eps, evaluate D(x0 + sigma eps, sigma) and minimise
||eps_hat - eps||^2 with eps_hat = (x - D) / sigma. For a VE score network (eps_hat = -sigma s) this is denoising
score matching with Song & Ermon's weighting lambda(sigma) = sigma^2; for a DDPM eps network (eps_hat = its output)
it is Ho et al.'s simple loss. Only the distribution of sigma differs:

- VE: sigma log-uniform in [sigma_min, sigma_max]; sigma_max defaults to the largest pairwise distance of the
  training images, rounded up (Song & Ermon 2020, technique 1): 10 for digits. The network predicts the score,
  conditioned on sigma, with EDM preconditioning inside (models.unet).
- VP: discrete DDPM (linear betas 1e-4..0.02, T = 1000), timestep index k uniform, eps prediction conditioned on k
  (the layout of google/ddpm-cifar10-32), with EDM preconditioning inside (models.unet): a plain eps network trained
  for minutes is far off at high noise, where x0 = x_ve - sigma eps multiplies its error by sigma (up to 157).

The weights saved are an exponential moving average (torch.optim.swa_utils), written with the training curve and a
sample grid drawn by the repository's own `samplers.sample`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from models.loaders import process_to_config, save_native
from models.processes import DDPMProcess, Process, VEProcess
from models.unet import UNet
from models.wrappers import NetworkDenoiser
from samplers import sample

from .data import load_dataset
from .files import save_figure, write_text
from .grid import save_grid
from .train_config import LAYOUT, ScoreTraining

__all__ = ["ScoreTraining", "TrainResult", "train_score", "default_arch", "save_curve"]

# network sizes per dataset (UNet kwargs); the process adds its conditioning and preconditioning
ARCH_BY_DATA: dict[str, dict[str, Any]] = {
    "digits": {"channels": 32, "channel_mult": [1, 1], "num_res_blocks": 1, "attention": True, "emb_dim": 128},
    "mnist5k": {"channels": 32, "channel_mult": [1, 2, 2], "num_res_blocks": 1, "attention": True, "emb_dim": 128},
}
SAMPLE_GRID = {"sampler": "kar1", "nfe": 79, "n": 64}  # the end-of-training grid: Heun, 40 noise levels


@dataclass(frozen=True)
class TrainResult:
    path: Path  # the checkpoint directory
    final_loss: float
    seconds: float
    curve: list[tuple[int, float]]  # (step, mean loss over the preceding log interval)


def default_arch(cfg: ScoreTraining, train: Tensor) -> dict[str, Any]:
    """UNet kwargs for a run: the dataset's size, the process's conditioning, then the user's overrides."""
    arch = {"in_channels": train.shape[1], **ARCH_BY_DATA.get(cfg.data, ARCH_BY_DATA["mnist5k"])}
    if cfg.process == "ve":  # conditioned on sigma through log(sigma)
        arch |= {"cond_map": "log", "f_min": 0.1, "f_max": 30.0, "precondition": "ve_score"}
    else:  # conditioned on the timestep index 0..999 of the DDPM schedule
        arch |= {"cond_map": "linear", "f_min": 1e-3, "f_max": 1.0, "precondition": "vp_eps"}
    arch["sigma_data"] = round(float(train.std()), 3)  # EDM preconditioning with the data's standard deviation
    return arch | cfg.arch


def build_process(cfg: ScoreTraining, train: Tensor) -> Process:
    if cfg.process == "vp":
        return DDPMProcess()
    sigma_max = cfg.sigma_max
    if sigma_max is None:
        flat = train.flatten(1).double()
        sigma_max = float(torch.cdist(flat, flat).max().ceil())
    return VEProcess(cfg.sigma_min, sigma_max)


def draw_sigma(sde: Process, n: int, gen: torch.Generator) -> Tensor:
    """Training noise levels: log-uniform for VE, at a uniform DDPM timestep index for VP (float64 [n])."""
    device = gen.device
    if isinstance(sde, DDPMProcess):
        k = torch.randint(sde.T, (n,), generator=gen, device=device)
        return sde.sigma((k + 1).double() / sde.T)
    u = torch.rand(n, generator=gen, device=device, dtype=torch.float64)
    return sde.sigma(u * (sde.t_max - sde.t_min) + sde.t_min)


def dsm_loss(model: NetworkDenoiser, x0: Tensor, sigma: Tensor, eps: Tensor) -> Tensor:
    """||eps_hat - eps||^2 averaged over pixels and batch, eps_hat = (x - D(x, sigma)) / sigma at x = x0 + sigma eps."""
    sig = sigma.to(x0.dtype)[:, None, None, None]
    x = x0 + sig * eps
    eps_hat = (x - model(x, sigma)) / sig
    return (eps_hat - eps).square().mean()


def train_score(
    cfg: ScoreTraining,
    out: str | Path,
    *,
    figures: str | Path | None = None,
    device: str = "cpu",
    command: str = "",
    progress: bool = True,
    grid: dict[str, Any] = SAMPLE_GRID,
) -> TrainResult:
    """Train a score model, write the EMA checkpoint to `out` and the curve and sample grid to `figures` (or `out`).

    `grid` says how the sample grid is drawn: sampler, NFE budget and number of samples (seeds 0..n-1).
    """
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    cfg.check()
    device = torch.device(device)
    train = load_dataset(cfg.data).train.to(device)
    sde = build_process(cfg, train.cpu())
    arch = default_arch(cfg, train)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        net = UNet(**arch).to(device)
    layout = LAYOUT[cfg.process]
    model = NetworkDenoiser(net, sde, shape=tuple(train.shape[1:]), name=f"{cfg.data}-{cfg.process}", **layout)
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema))
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / max(cfg.warmup, 1)))
    gen = torch.Generator(device).manual_seed(cfg.seed)

    curve: list[tuple[int, float]] = []
    running, count = torch.zeros((), device=device), 0
    start = time.perf_counter()
    bar = tqdm(range(1, cfg.steps + 1), desc=f"train {cfg.data}-{cfg.process}", disable=not progress, unit="step")
    for step in bar:
        # a batch of data, noise levels and noise
        x0 = train[torch.randint(len(train), (cfg.batch_size,), generator=gen, device=device)]
        sigma = draw_sigma(sde, cfg.batch_size, gen)
        eps = torch.randn(x0.shape, generator=gen, device=device)
        # one Adam step on the denoising loss, then the EMA
        loss = dsm_loss(model, x0, sigma, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        ema.update_parameters(net)
        running, count = running + loss.detach(), count + 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            curve.append((step, float(running) / count))
            running, count = torch.zeros((), device=device), 0
            bar.set_postfix(loss=f"{curve[-1][1]:.4f}")
    seconds = time.perf_counter() - start
    if not all(math.isfinite(loss) for _, loss in curve):
        raise ValueError(f"training diverged (loss {curve[-1][1]}); try a smaller --lr")

    # the checkpoint: EMA weights and everything needed to rebuild and describe the model
    final_loss = curve[-1][1]
    config = {
        "arch": "unet",
        "arch_kwargs": arch,
        "process": process_to_config(sde),
        **layout,
        "shape": list(train.shape[1:]),
        "data_range": [-1.0, 1.0],
        "dataset": cfg.data,
        "sigma_min": sde.sigma_min,
        "sigma_max": sde.sigma_max,
        "training": {
            "command": command,
            **asdict(cfg),
            "final_loss": final_loss,
            "seconds": round(seconds, 1),
            "device": str(device),
            "parameters": sum(p.numel() for p in net.parameters()),
            "torch": torch.__version__,
            "sample_grid": grid,
        },
    }
    path = save_native(out, ema.module, config)

    # figures: training curve and a sample grid from the EMA model
    figures = Path(figures) if figures is not None else path
    figures.mkdir(parents=True, exist_ok=True)
    save_curve(curve, figures / "training_curve", title=f"{cfg.data}-{cfg.process}: denoising loss")
    ema_model = NetworkDenoiser(ema.module, sde, shape=model.shape, name=model.name, **layout).eval()
    samples = sample(ema_model, grid["sampler"], grid["nfe"], seeds=range(grid["n"])).x
    save_grid(samples, figures / "samples.png", ema_model.data_range)
    return TrainResult(path, final_loss, seconds, curve)


def save_curve(curve: list[tuple[int, float]], stem: Path, title: str) -> None:
    """The loss curve as `stem`.csv (step, loss) and `stem`.png (log-scale loss against step)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    frame = pd.DataFrame(curve, columns=["step", "loss"])
    write_text(stem.with_suffix(".csv"), frame.to_csv(index=False))
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(frame["step"], frame["loss"])
    ax.set(xlabel="step", ylabel="loss (mean per interval)", yscale="log", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, stem.with_suffix(".png"), dpi=120)
    plt.close(fig)
