"""Models trained on discrete noise levels (NCSN, NCSNv2, score_sde's discrete VE): schedules drawn from the levels,
the level index as conditioning, and a sigma between levels refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models import NetworkDenoiser, VEProcess
from samplers import make_schedule, sample
from samplers.schedules import on_levels

LEVELS = torch.exp(torch.linspace(torch.log(torch.tensor(5.0)), torch.log(torch.tensor(0.01)), 20)).double()


class LevelNet(nn.Module):
    """score(x, level) of N(0, 1) data at sigma_level: -x / (1 + sigma^2); also remembers the levels it was given."""

    def __init__(self):
        super().__init__()
        self.seen: list[int] = []

    def forward(self, x, level):
        self.seen += level.long().tolist()
        sigma = LEVELS.to(x)[level.long()].reshape(-1, 1)
        return -x / (1 + sigma**2)


def discrete_model() -> NetworkDenoiser:
    return NetworkDenoiser(
        LevelNet(), VEProcess(0.01, 5.0), prediction="score", conditioning="level", shape=(3,), levels=LEVELS
    )


@pytest.mark.parametrize("name", ["karras", "geometric", "native"])
@pytest.mark.parametrize("n", [1, 5, 19, 20])
def test_default_schedules_are_drawn_from_the_levels(name, n):
    schedule = make_schedule(name, discrete_model(), n)
    assert schedule.shape == (n + 1,) and schedule[-1] == 0
    assert bool((schedule[1:] < schedule[:-1]).all())
    assert all(bool((LEVELS == s).any()) for s in schedule[:-1])


def test_on_levels_picks_the_nearest_level_and_refuses_too_many():
    wanted = torch.cat([LEVELS[[0, 3, 7]] * 1.01, torch.zeros(1)])
    assert torch.equal(on_levels(wanted, LEVELS), torch.cat([LEVELS[[0, 3, 7]], torch.zeros(1)]))
    with pytest.raises(ValueError, match="does not fit a model trained on 20 discrete levels"):
        make_schedule("karras", discrete_model(), 21)


def test_the_network_gets_the_level_index_and_a_sigma_between_levels_is_refused():
    model = discrete_model()
    x = torch.randn(3, 3)
    model(x, LEVELS[[0, 5, 19]])
    assert model.net.seen == [0, 5, 19]
    with pytest.raises(ValueError, match="20 discrete noise levels and sigma is not one of them"):
        model(x, torch.full((3,), float(LEVELS[5]) * 1.1, dtype=torch.float64))


def test_samplers_run_on_the_levels_and_churn_between_levels_is_refused():
    model = discrete_model()
    for name in ("ald", "kar1", "ddim", "em", "pc"):
        res = sample(model, name, nfe=12, seeds=range(4))
        assert res.nfe <= 12 and bool(torch.isfinite(res.x).all())
    with pytest.raises(ValueError, match="discrete noise levels"):
        sample(model, "kar2", nfe=12, seeds=range(4), s_churn=40.0)
