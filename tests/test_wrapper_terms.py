"""The network wrapper's per-noise-level terms: computed once per schedule, identical to the direct computation."""

import gc

import pytest
import torch

from models import DDPMProcess, NetworkDenoiser, VEProcess, VPProcess
from samplers import SAMPLERS, make_schedule


class Probe(torch.nn.Module):
    """A network whose output depends on both of its inputs, and that records what it was given."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x, cond):
        self.seen.append((x.clone(), cond.clone()))
        return torch.tanh(x) + cond.reshape(-1, *([1] * (x.ndim - 1))) / 1000


WRAPPERS = [
    ("eps", "index", DDPMProcess()),
    ("eps", "t999", VPProcess()),
    ("v", "t", VPProcess()),
    ("score", "sigma", VEProcess(0.01, 50.0)),
    ("x0", "t", VEProcess(0.01, 50.0)),
]


def wrapper(prediction, conditioning, sde, dtype=torch.float32):
    model = NetworkDenoiser(Probe(), sde, prediction=prediction, conditioning=conditioning, shape=(1, 2, 2))
    return model.to(dtype)


@pytest.mark.parametrize(("prediction", "conditioning", "sde"), WRAPPERS)
def test_views_of_a_schedule_give_the_direct_results(prediction, conditioning, sde):
    model = wrapper(prediction, conditioning, sde)
    x = torch.randn(5, 1, 2, 2)
    levels = make_schedule("karras", model, 6)[:-1]
    shared = levels.expand(5, -1)  # how samplers pass a 1-D schedule: every column a stride-0 view
    rows = torch.stack([levels * (1 + 0.01 * i) for i in range(5)])  # a per-sample schedule
    for schedule in (shared, rows):
        for i in range(schedule.shape[1]):
            cached = model(x, schedule[:, i])
            direct = model(x, schedule[:, i].clone())  # a standalone tensor: converted directly
            torch.testing.assert_close(cached, direct)  # float32 round-off at most
            (x_a, c_a), (x_b, c_b) = model.net.seen[-2:]
            torch.testing.assert_close(x_a, x_b)
            torch.testing.assert_close(c_a, c_b)
    assert len(model._terms.entries) == 2  # one table per schedule


def test_edited_and_replaced_schedules_are_never_served_stale():
    model = wrapper("eps", "index", DDPMProcess())
    x = torch.randn(3, 1, 2, 2)
    schedule = torch.tensor([[5.0, 1.0], [4.0, 0.5], [3.0, 0.2]], dtype=torch.float64)
    first = model(x, schedule[:, 0])
    schedule.mul_(0.5)  # an in-place edit bumps the version counter
    torch.testing.assert_close(
        model(x, schedule[:, 0]),
        model(x, schedule[:, 0].clone()),
    )
    assert not torch.equal(first, model(x, schedule[:, 0]))
    # a freed schedule whose id is reused by a new one with other values
    old_id = id(schedule)
    del schedule
    gc.collect()
    for _ in range(1000):
        fresh = torch.tensor([[2.0, 1.0], [2.5, 0.5], [0.7, 0.2]], dtype=torch.float64)
        if id(fresh) == old_id:
            break
    torch.testing.assert_close(
        model(x, fresh[:, 0]),
        model(x, fresh[:, 0].clone()),
    )


def test_float64_models_float32_levels_and_gradients_take_the_direct_path():
    model = wrapper("eps", "t999", VPProcess(), dtype=torch.float64)
    x = torch.randn(4, 1, 2, 2, dtype=torch.float64)
    levels = torch.linspace(3, 1, 4, dtype=torch.float64).expand(4, -1)
    torch.testing.assert_close(
        model(x, levels[:, 1]),
        model(x, levels[:, 1].clone()),
    )
    assert model.net.seen[-1][1].dtype == torch.float64
    model(x, levels[:, 1].float())  # float32 levels: converted directly
    sigma = torch.full((4,), 2.0, dtype=torch.float64, requires_grad=True)
    model(x, sigma.expand(4))  # a view that needs gradients is not memoised
    assert len(model._terms.entries) == 1


@pytest.mark.parametrize("sde", [VEProcess(0.01, 50.0), VPProcess(), DDPMProcess()])
def test_process_shortcuts_equal_their_definitions(sde):
    sigma = torch.logspace(-2, 1.5, 50, dtype=torch.float64)
    t = sde.t(sigma)
    torch.testing.assert_close(sde.sigma_scale(sigma), sde.scale(t), rtol=1e-12, atol=0)
    x = torch.randn(50, 3, dtype=torch.float64)
    f, g = sde.sde(x, t)
    torch.testing.assert_close(f, sde.drift_rate(t)[:, None] * x)
    torch.testing.assert_close(g, sde.diffusion(t))
    if isinstance(sde, DDPMProcess):
        torch.testing.assert_close(sde.index_of_sigma(sigma), sde.index(t), rtol=0, atol=1e-9)
        k = torch.arange(0, 1000, 37)
        at_knots = sde.index_of_sigma(sde.sigma((k + 1) / sde.T))
        torch.testing.assert_close(at_knots, k.double(), rtol=0, atol=1e-9)


def test_samplers_through_the_wrapper_match_unmemoised_runs():
    """A whole sampling run with memoised terms equals one where every level is a standalone tensor."""

    class Standalone(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            for name in ("shape", "sde", "sigma_min", "sigma_max", "data_range", "process", "name"):
                setattr(self, name, getattr(inner, name))

        def forward(self, x, sigma):
            return self.inner(x, sigma.clone())

    model = wrapper("eps", "index", DDPMProcess())
    x = torch.randn(4, 1, 2, 2) * model.sigma_max
    for name in ("ddim", "kar1", "kar2", "pf_euler"):
        spec = SAMPLERS[name]
        sigmas = make_schedule(spec.schedule, model, 8)
        torch.testing.assert_close(
            spec.fn(model, x, sigmas),
            spec.fn(Standalone(model), x, sigmas),
        )
