import os
import shutil
from pathlib import Path

import pytest
import torch

# Tests are sized for a 2-core CPU; keep torch from oversubscribing it when pytest runs in parallel with other work.
torch.set_num_threads(min(2, os.cpu_count() or 1))
# `scorebench run` in one process unless a test asks for --jobs: tests that spy on or patch the harness in-process
# need every cell to run where the spy is
os.environ.setdefault("SCOREBENCH_JOBS", "1")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module, as the speed tools use: a second, descheduled thread stalls every parallel
    kernel on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def gaussian_ve():
    """A single 2-d Gaussian (closed-form probability flow) as a float64 VE model."""
    from models import GaussianMixture, GMMDenoiser, VEProcess

    mixture = GaussianMixture.single([0.3, -0.2], [[0.09, 0.03], [0.03, 0.04]])
    return GMMDenoiser(mixture, VEProcess(0.01, 50.0), dtype=torch.float64, name="gaussian-2d-ve")


FIXTURES = Path(os.environ.get("SCOREBENCH_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures"))


@pytest.fixture
def upstream_fixture(tmp_path):
    """copy(name) -> a temporary copy of ../shared/fixtures/checkpoints/<name> (upstream checkpoints with reference
    outputs made by the upstream code; $SCOREBENCH_FIXTURES overrides the location). A missing fixture fails."""

    def copy(name: str) -> Path:
        source = FIXTURES / "checkpoints" / name
        assert source.is_dir(), f"checkpoint fixture {name!r} not found under {FIXTURES} (set SCOREBENCH_FIXTURES)"
        target = tmp_path / "fixtures" / name
        shutil.copytree(source, target)
        for path in [target, *target.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)  # shared/ is read-only in CI
        return target

    return copy
