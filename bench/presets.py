"""What each upstream preset changes: every sampler that has a preset, with and without it, at equal NFE budgets.

    python -m bench.presets                      # writes results/presets/README.md and results/presets/presets.csv
    python -m bench.presets --models gmm-64d-ve --budgets 10,20 --n 128 --out /tmp/presets

For every sampler with a preset (samplers.SAMPLERS[name].presets), model and NFE budget, cells on the same seeds:
scorebench's default and the preset (DLG also: the dmcmc preset with 8 outputs per chain), each fitted to the budget
by measured NFE (samplers.sample: the most steps, or for rk45 the tightest tolerance, that fits). Scored by `fd_exact`
on mixtures (Frechet distance to the exact moments) and `fd_digits` on the digits checkpoints (the shipped
classifier's features against the training digits); both from bench.metrics.compute_metrics. A cell is `n/a`
when the budget is below the sampler's minimum and `diverged` when a sample is not finite.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from bench.files import write_text
from bench.metrics import compute_metrics
from bench.threads import set_torch_threads
from models import load_model
from samplers import SAMPLERS, sample

__all__ = ["preset_table", "variants", "to_markdown", "main"]

MODELS = ("gmm-64d-ve", "gmm-64d-vp", "digits-ve", "digits-vp")
BUDGETS = (10, 20, 50, 100)
# what each preset changes against scorebench's default, and why the default differs (README)
DIFFERENCES = [
    (
        "score_sde",
        "time grid t = linspace(1, eps, N), eps 1e-5 VE / 1e-3 VP; the schedule gives only N",
        "the default walks the given sigma schedule (any schedule, e.g. DLG's per-sample restarts), ending at the "
        "model's sigma_min",
    ),
    (
        "score_sde",
        "N predictor steps, the last one's mean x_mean is the sample (noise removal)",
        "N - 1 steps between N levels, then the Tweedie step D(x, sigma_N): the posterior mean, the same last "
        "evaluation used to denoise exactly",
    ),
    (
        "score_sde",
        "VP: discrete_betas = linspace(b0/N, b1/N, N) at the truncated index t (N - 1); x_mean = (2 - sqrt(alpha)) x "
        "+ beta score; NaN below N = 21 (b1 / N >= 1)",
        "the default takes the exact step between consecutive levels (alpha = alpha_bar(t) / alpha_bar(t_next)), "
        "valid at any N",
    ),
    (
        "score_sde",
        "Euler-Maruyama's dt = 1/N although the grid steps by (1 - eps) / (N - 1)",
        "the default's dt is the grid's own step",
    ),
    (
        "score_sde",
        "pc: the corrector's step from batch-mean norms of the score and of the drawn noise",
        "per-sample score norm and the noise norm's expectation sqrt(d): a sample must not depend on its batch",
    ),
    (
        "score_sde",
        "prior N(0, I) on VP (not the marginal at t = 1); VP sample in VP coordinates, not divided by mean(eps)",
        "the default starts from the harness's x_T = sigma_max z and returns VE (data) coordinates",
    ),
    (
        "score_sde",
        "rk45: scipy RK45 on the whole batch as one system (error norm over the batch), then one reverse-diffusion "
        "denoise step on the N = 1000 discretisation",
        "torchdiffeq dopri5 with every sample meeting the tolerance (a sample barely depends on its batch), then "
        "the Tweedie step",
    ),
    (
        "ncsnv2",
        "step x + step_lr (sigma_i / sigma_L)^2 score + sqrt(2 step) z with step_lr = 6.2e-6 (cifar10.yml), then "
        "x + sigma_L^2 score(x, sigma_L)",
        "the default is the paper's form x + alpha/2 score + sqrt(alpha) z with alpha = eps (sigma_i / sigma_L)^2, "
        "eps = 0.2 sigma_L^2 (scales with the model's sigma_L; 2e-5 at 0.01 is step_lr 1e-5 in ncsnv2's form)",
    ),
    (
        "dmcmc",
        "n_skip 10 and 250 outputs per chain; burn-in KAR2 over 19 levels with S_churn 80, S_tmin 0.05",
        "n_skip 2 and 8 outputs per chain: best at 10 NFE on gmm-64d (results/dlg); burn-in KAR2 over 20 levels "
        "with kar2's defaults",
    ),
    (
        "dmcmc",
        "the round's first state competes for the lowest sigma (it can be handed off twice)",
        "only states visited in the round compete, so consecutive outputs never repeat a state",
    ),
    (
        "dmcmc",
        "hand-off: kar2 with S_churn 80, S_tmin 0.05, gamma = min(S_churn / (L + 1), sqrt 2 - 1); em, rd, pf_euler, "
        "rk45 as score_sde runs them on VESDE(sigma_min, own sigma); then x + twd_eps^2 score(x, twd_eps) (1 NFE)",
        "the integrators as scorebench runs them (their own schedule shape from each sigma), ending with their own "
        "Tweedie step: no second denoising",
    ),
]


def variants(name: str) -> dict[str, dict]:
    """A sampler's cells: its default, each preset, and for DLG the dmcmc preset with scorebench's 8 outputs per
    chain (what of the preset's effect is its 250 correlated outputs per chain at a small sample size)."""
    spec = SAMPLERS[name]
    cells = {"default": {}, **{p: {"preset": p} for p in spec.presets}}
    if spec.chains and "dmcmc" in spec.presets:
        cells["dmcmc, 8 per chain"] = {"preset": "dmcmc", "outputs_per_chain": 8}
    return cells


def preset_table(models: list[str], budgets: list[int], n: int, seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """One row per (model, sampler, variant, budget): status, measured NFE, steps or tolerance, metric, seconds."""
    torch.set_grad_enabled(False)
    cells = [
        (model, name, variant, hyper, budget)
        for model in models
        for name, spec in SAMPLERS.items()
        if spec.presets
        for variant, hyper in variants(name).items()
        for budget in budgets
    ]
    loaded = {name: load_model(name) for name in models}
    rows = []
    for model_name, sampler, variant, hyper, budget in tqdm(cells, desc="presets", disable=not progress):
        model = loaded[model_name]
        metric = "fd_exact" if hasattr(model, "mixture") else "fd_digits"
        row = {"model": model_name, "sampler": sampler, "preset": variant, "budget": budget}
        try:
            res = sample(model, sampler, nfe=budget, seeds=range(n), seed=seed, **hyper)
        except ValueError as err:  # the budget is below the sampler's minimum
            rows.append({**row, "status": "n/a", "note": str(err)})
            continue
        done = {**row, "nfe": res.nfe, "steps": res.steps, "tol": res.hyper.get("rtol"), "seconds": res.seconds}
        if not bool(torch.isfinite(res.x).all()):
            rows.append({**done, "status": "diverged"})
            continue
        value = compute_metrics(model, res.x, [metric])[metric]
        rows.append({**done, "status": "ok", "metric": metric, "value": value})
    return pd.DataFrame(rows)


def _cell(row: pd.Series) -> str:
    if row.status == "ok":
        return f"{row.value:.3g} ({row.nfe:g})"
    if row.status == "diverged":
        return f"diverged ({row.nfe:g})"
    return row.status


def to_markdown(table: pd.DataFrame, n: int, command: str, seconds: float) -> str:
    """Per model: one line per (sampler, variant), one column per budget: metric (measured NFE)."""
    lines = [
        "# Upstream presets: what each one changes",
        "",
        "`preset=` reproduces an upstream's exact algorithm where scorebench's default deliberately differs "
        "(samplers/presets.py, DESIGN.md): `score_sde` for em, rd, pc, pf_euler and rk45 (yang-song/score_sde_pytorch "
        "sampling.py), `ncsnv2` for ald (ermongroup/ncsnv2 anneal_Langevin_dynamics), `dmcmc` for every dlg+X "
        "(1202kbs/DMCMC's notebooks). Each is checked against an independent transcription of the upstream update "
        "(tests/test_presets.py).",
        "",
        "| preset | the upstream does | scorebench's default, and why |",
        "|---|---|---|",
        *(f"| {p} | {what} | {why} |" for p, what, why in DIFFERENCES),
        "",
        f"Each cell: the metric (lower is better) at the measured NFE per sample in parentheses, {n} samples, the "
        "same seeds for default and preset. `fd_exact`: Frechet distance to the mixture's exact moments; "
        "`fd_digits`: Frechet distance in the shipped digits classifier's features to the training digits (its "
        "real-data floor is 2.31, results/checkpoints). `n/a`: the budget is below the sampler's minimum; "
        "`diverged`: non-finite samples. DLG's burn-in and classifier evaluations are not in its NFE (results/dlg). "
        "`dmcmc, 8 per chain` is the dmcmc preset with scorebench's 8 outputs per chain instead of DMCMC's 250: at "
        f"{n} samples the preset's samples come from one chain, whose correlated outputs inflate FD.",
        "",
    ]
    budgets = sorted(table.budget.unique())
    for model, part in table.groupby("model", sort=False):
        metric = part.metric.dropna().iloc[0] if part.metric.notna().any() else "metric"
        pivot = (
            part.assign(cell=part.apply(_cell, axis=1))
            .pivot(index=["sampler", "preset"], columns="budget", values="cell")
            .reindex(columns=budgets)
        )
        order = [(s, p) for s in dict.fromkeys(part.sampler) for p in dict.fromkeys(part[part.sampler == s].preset)]
        pivot = pivot.reindex(order)
        lines += [f"## {model} ({metric})", "", "| sampler | | " + " | ".join(f"NFE {b}" for b in budgets) + " |"]
        lines += ["|---|---|" + "---|" * len(budgets)]
        for (sampler, preset), cells in pivot.iterrows():
            lines.append(f"| {sampler} | {preset} | " + " | ".join(str(c) for c in cells) + " |")
        lines.append("")
    lines += [f"Reproduce: `{command}` ({seconds / 60:.1f} min on one CPU thread).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.presets",
        description="Run every sampler that has an upstream preset with and without it at equal NFE budgets.",
    )
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated (default: %(default)s)")
    parser.add_argument("--budgets", default=",".join(map(str, BUDGETS)), help="NFE budgets (default: %(default)s)")
    parser.add_argument("--n", type=int, default=128, help="samples per cell (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--out", default="results/presets", help="output directory (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        budgets = [int(b) for b in args.budgets.split(",")]
    except ValueError:
        parser.error(f"--budgets must be comma-separated integers, got {args.budgets!r}")
    if args.n < 2:
        parser.error(f"--n must be at least 2, got {args.n}")
    set_torch_threads(args.threads)
    start = time.perf_counter()
    table = preset_table(args.models.split(","), budgets, args.n, args.seed)
    seconds = time.perf_counter() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m bench.presets " + shlex.join(argv if argv is not None else sys.argv[1:])
    write_text(out / "presets.csv", table.to_csv(index=False, float_format="%.6g"))
    write_text(out / "README.md", to_markdown(table, args.n, command.strip(), seconds))
    print(f"wrote {out / 'presets.csv'} and {out / 'README.md'} in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
