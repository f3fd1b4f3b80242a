"""Models seen through one interface: a denoiser D(x, sigma) over the VE noise level (see models.base)."""

from .base import CountingDenoiser, Denoiser
from .gmm import GaussianMixture, GMMDenoiser
from .processes import DDPMProcess, Process, VEProcess, VPProcess
from .registry import MODELS, ModelSpec, load_model, register_model
from .wrappers import NetworkDenoiser

__all__ = [
    "CountingDenoiser",
    "DDPMProcess",
    "Denoiser",
    "GMMDenoiser",
    "GaussianMixture",
    "MODELS",
    "ModelSpec",
    "NetworkDenoiser",
    "Process",
    "VEProcess",
    "VPProcess",
    "load_model",
    "register_model",
]
