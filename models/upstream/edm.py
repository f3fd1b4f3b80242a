"""`edm:PATH`: NVlabs/edm network pickles (training snapshots `network-snapshot-*.pkl` and the released `*.pkl`).

Format: a pickle.dump of a dict {'ema': network, 'loss_fn': ..., 'augment_pipe': ..., 'dataset_kwargs': {...}}
whose network objects are EDM persistent-class instances carrying their class name, constructor arguments, tensors and
the source of EDM's training/networks.py. models.upstream.edm_unpickle reads it as data without running anything;
here the 'ema' entry (other entries are inert data, ignored but for the dataset name in dataset_kwargs['path']) must
be one of EDM's preconditioned networks (VPPrecond, VEPrecond, iDDPMPrecond, EDMPrecond) built only of EDM's network
classes. Its top-level constructor arguments rebuild it from scorebench's implementation (models.upstream.edm_nets);
the pickled parameters and buffers then load strictly.

As a Denoiser: EDM's preconditioned network is D(x, sigma) itself in VE terms over data in [-1, 1], so it is wrapped
with an x0 prediction conditioned on sigma, in the process of its preconditioning: VPProcess(beta_min, beta_min +
beta_d) for VP (sigma range from epsilon_t..1), VEProcess(sigma_min, sigma_max) for VE, the discrete VP of the
cosine-schedule levels for iDDPM, and VEProcess over EDM's sampling range 0.002..80 for EDM (or the network's finite
range). A class-conditional network needs `class_labels=K`: every sample is of class K.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from ..loaders import ARCHS
from ..wrappers import NetworkDenoiser
from .common import first_line, load_strict
from .edm_nets import CLASSES, PRECONDS, Precond
from .edm_unpickle import ModuleRecord, PersistentObject, read_network_pickle

__all__ = ["load", "ARCH_NAMES"]

# scorebench architecture name of each preconditioner (models.loaders.ARCHS, `scorebench convert`)
ARCH_NAMES: dict[str, str] = {
    "VPPrecond": "edm.vp",
    "VEPrecond": "edm.ve",
    "iDDPMPrecond": "edm.iddpm",
    "EDMPrecond": "edm.edm",
}
ARCHS.update({ARCH_NAMES[name]: cls for name, cls in PRECONDS.items()})

# dataset names of EDM's dataset archives (dataset_kwargs['path'], e.g. datasets/cifar10-32x32.zip)
DATASETS = ("cifar10", "ffhq", "afhqv2", "imagenet")


def _network(content: Any, what: str) -> PersistentObject:
    """The 'ema' network of a snapshot dict (or a pickled network itself), checked to be a preconditioner."""
    if isinstance(content, dict):
        if "ema" not in content:
            raise ValueError(f"{what}: the pickle holds no 'ema' network (keys: {', '.join(map(str, content))})")
        content = content["ema"]
    if not isinstance(content, PersistentObject):
        raise ValueError(f"{what}: its network is a {type(content).__name__}, not an EDM persistent network object")
    if content.class_name not in PRECONDS:
        kind = "a bare U-Net" if content.class_name in CLASSES else "an unsupported network class"
        raise ValueError(
            f"{what}: its network is {kind} {content.class_name!r}; scorebench reads EDM's preconditioned networks "
            f"({', '.join(PRECONDS)})"
        )
    return content


def _dataset(content: Any) -> str | None:
    """The dataset a snapshot's dataset_kwargs names by its archive path, when it is one of EDM's."""
    kwargs = content.get("dataset_kwargs") if isinstance(content, dict) else None
    path = kwargs.get("path") if isinstance(kwargs, dict) else None
    if not isinstance(path, str):
        return None
    name = Path(path).name.split("-")[0].split(".")[0].lower()
    return name if name in DATASETS else None


def _plain(value: Any, where: str, what: str) -> Any:
    """A constructor argument as JSON data: numpy scalars and arrays become numbers and lists."""
    if isinstance(value, np.generic | np.ndarray):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{where}.{k}", what) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, where, what) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise ValueError(f"{what}: constructor argument {where} is a {type(value).__name__}, not plain data")


def _constructor_kwargs(network: PersistentObject, what: str) -> dict[str, Any]:
    """The network's constructor arguments as JSON-serialisable keyword arguments."""
    names = ["img_resolution", "img_channels"]  # the only positional arguments EDM's preconditioners have
    if len(network.init_args) > len(names):
        raise ValueError(f"{what}: its {network.class_name} has {len(network.init_args)} positional arguments")
    kwargs = dict(zip(names, network.init_args, strict=False))
    for key, value in network.init_kwargs.items():
        if key in kwargs or key == "class_labels":
            raise ValueError(f"{what}: its {network.class_name} has a duplicate or foreign argument {key!r}")
        kwargs[str(key)] = value
    return _plain(kwargs, network.class_name, what)


def _state_dict(network: PersistentObject, what: str) -> dict[str, Tensor]:
    """The parameters and persistent buffers of the module tree under `network`, each of EDM's classes."""
    state: dict[str, Tensor] = {}

    def visit(node: PersistentObject | ModuleRecord, prefix: str) -> None:
        where = prefix.rstrip(".") or "the network"
        if isinstance(node, PersistentObject) and node.class_name not in CLASSES:
            raise ValueError(
                f"{what}: {where} is an unsupported network class {node.class_name!r} (scorebench reads EDM's "
                f"{', '.join(CLASSES)})"
            )
        fields = node.state
        params, buffers, modules = (fields.get(key) for key in ("_parameters", "_buffers", "_modules"))
        if not all(isinstance(entry, dict) for entry in (params, buffers, modules)):
            raise ValueError(f"{what}: {where} ({node.class_name}) does not hold a torch module's state")
        transient = fields.get("_non_persistent_buffers_set") or set()
        tensors = [*params.items(), *((name, b) for name, b in buffers.items() if name not in transient)]
        for name, tensor in tensors:
            if tensor is None:
                continue
            if not isinstance(tensor, Tensor):
                raise ValueError(f"{what}: {prefix}{name} is a {type(tensor).__name__}, not a tensor")
            state[f"{prefix}{name}"] = tensor.detach()
        for name, child in modules.items():
            if child is None:
                continue
            if not isinstance(child, PersistentObject | ModuleRecord):
                raise ValueError(f"{what}: {prefix}{name} is a {type(child).__name__}, not a module of EDM's networks")
            visit(child, f"{prefix}{name}.")

    visit(network, "")
    return state


def load(path: Path, class_labels: int | None = None) -> NetworkDenoiser:
    """An EDM network pickle as a Denoiser over [-1, 1] data; `class_labels=K` picks a conditional network's class.

    Every problem (a refused or unreadable pickle, an unsupported network, constructor arguments that do not fit the
    weights, a missing or superfluous class label) is one ValueError naming the file.
    """
    what = f"EDM network {str(path)!r}"
    content = read_network_pickle(path, what)
    network = _network(content, what)
    kwargs = _constructor_kwargs(network, what)
    state = _state_dict(network, what)
    cls = PRECONDS[network.class_name]
    arch_kwargs = kwargs if class_labels is None else {**kwargs, "class_labels": class_labels}
    try:
        net: Precond = cls(**arch_kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what}: cannot build its {network.class_name} ({first_line(err)})") from None
    load_strict(net, state, what)
    net.eval().requires_grad_(False)
    sigma_min, sigma_max = net.sigma_range()
    model = NetworkDenoiser(
        net,
        net.process(),
        prediction="x0",
        conditioning="sigma",
        shape=(net.img_channels, net.img_resolution, net.img_resolution),
        data_range=(-1.0, 1.0),
        sigma_min=sigma_min,
        sigma_max=sigma_max,
        name=f"edm:{path}",
    )
    model.arch = ARCH_NAMES[network.class_name]
    model.arch_kwargs = arch_kwargs
    model.config = kwargs
    model.dataset = _dataset(content)
    return model
