"""A restricted reader for NVlabs/edm network pickles: class names, constructor arguments and tensors, nothing else.

The format (EDM's training loop writes it with plain `pickle.dump`): a dict such as {'ema': network, 'loss_fn': ...,
'augment_pipe': ..., 'dataset_kwargs': {...}}. Every network object is an instance of a class decorated by EDM's
`torch_utils.persistence`, and pickles as a call of `torch_utils.persistence._reconstruct_persistent_obj(meta)`, with
meta = {'type': 'class', 'version': 6, 'module_src': <the source of training/networks.py>, 'class_name': 'VPPrecond',
'state': <the module's __dict__: _parameters, _buffers, _modules, ..., _init_args, _init_kwargs>}. EDM's own reader
executes module_src to rebuild the class; this one never does (the source is kept as an ignored string). Inside the
state:
- tensors pickle as torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])
  and parameters as torch._utils._rebuild_parameter(tensor, requires_grad, hooks); each storage is
  torch.storage._load_from_bytes(bytes), the bytes being torch.save's legacy format of that one storage, read here
  with torch.load(weights_only=True);
- torch.nn.ModuleDict containers pickle as a new object whose __dict__ is then set (a module's state);
- constructor arguments may hold numpy scalars (numpy's `scalar(dtype, bytes)`), dtypes, arrays, OrderedDicts.
Pickle protocols 2 to 5 are read (EDM writes Python's default, 4; protocol 2 names sets and encodes bytes by name).

Each global the pickle names resolves to a stand-in of this module's allow-list (ALLOWED) that builds inert data:
a persistent object becomes a PersistentObject record, a ModuleDict a ModuleRecord. Any other global (another
class, a function such as os.system or builtins.exec) is refused with a ValueError naming it before anything is
called, so nothing the file carries ever runs. Persistent ids (which EDM pickles never use) are refused too.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .common import first_line

__all__ = ["PersistentObject", "ModuleRecord", "ALLOWED", "read_network_pickle"]


class _Refused(ValueError):
    """A pickle asked for something outside the allow-list (the message says what)."""


@dataclass
class PersistentObject:
    """An object of an EDM persistent class, as data: its class name, constructor arguments and remaining state."""

    class_name: str
    init_args: tuple
    init_kwargs: dict[str, Any]
    state: dict[str, Any]


class ModuleRecord:
    """A torch.nn.ModuleDict as data: its __dict__, which pickle's BUILD sets after NEWOBJ made the object."""

    class_name = "ModuleDict"

    def __new__(cls, *args: Any) -> ModuleRecord:
        record = super().__new__(cls)
        record.state = {}
        return record

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise _Refused(f"the state of a {self.class_name} is a {type(state).__name__}, not a dict")
        self.state = state


def _reconstruct_persistent(meta: Any) -> PersistentObject:
    """Stand-in for torch_utils.persistence._reconstruct_persistent_obj: records meta, never runs module_src."""
    if not isinstance(meta, dict) or not {"type", "class_name", "state", "module_src"} <= set(meta):
        raise _Refused("a persistent object without the type/class_name/module_src/state fields of EDM's persistence")
    if meta["type"] != "class":
        raise _Refused(f"a persistent object of type {meta['type']!r} (only 'class' objects are read)")
    name, state = meta["class_name"], meta["state"]
    if not isinstance(name, str) or not name.isidentifier():
        raise _Refused(f"a persistent object with class name {name!r}")
    if not isinstance(state, dict) or not isinstance(meta["module_src"], str):
        raise _Refused(f"a persistent {name} whose state is not a dict or whose source is not text")
    state = dict(state)
    init_args = state.pop("_init_args", None) or ()
    init_kwargs = state.pop("_init_kwargs", None) or {}
    if not isinstance(init_args, (tuple, list)) or not isinstance(init_kwargs, dict):
        raise _Refused(f"a persistent {name} whose constructor arguments are not a tuple and a dict")
    return PersistentObject(name, tuple(init_args), dict(init_kwargs), state)


def _load_storage(data: Any) -> torch.TypedStorage:
    """Stand-in for torch.storage._load_from_bytes: one storage in torch.save's format, read with weights_only."""
    if not isinstance(data, (bytes, bytearray)):
        raise _Refused(f"a tensor storage given as {type(data).__name__}, not bytes")
    try:
        storage = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises UnpicklingError, RuntimeError, ... for bad or hostile bytes
        raise _Refused(f"a tensor storage that torch.load(weights_only=True) refuses ({first_line(err)})") from None
    if not isinstance(storage, torch.TypedStorage):
        raise _Refused(f"a tensor storage that holds a {type(storage).__name__}")
    return storage


def _rebuild_tensor(
    storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False, hooks: Any = None, metadata=None
) -> Tensor:
    """Stand-in for torch._utils._rebuild_tensor_v2: a view of `storage`; hooks and metadata must be empty."""
    if not isinstance(storage, torch.TypedStorage):
        raise _Refused(f"a tensor over a {type(storage).__name__}, not a storage")
    if hooks or metadata:
        raise _Refused("a tensor with backward hooks or extra metadata")
    try:
        return torch.empty(0, dtype=storage.dtype).set_(storage, int(offset), tuple(size), tuple(stride))
    except (RuntimeError, TypeError, ValueError) as err:
        raise _Refused(f"a tensor that does not fit its storage ({first_line(err)})") from None


def _rebuild_parameter(data: Any, requires_grad: Any = False, hooks: Any = None) -> Tensor:
    """Stand-in for torch._utils._rebuild_parameter: the parameter's tensor (weights are copied into new modules)."""
    if not isinstance(data, Tensor) or hooks:
        raise _Refused("a parameter that is not a plain tensor without hooks")
    return data


_NUMERIC_KINDS = "biufc"  # bool, signed, unsigned, float, complex: dtypes that hold no Python objects


def _dtype(name: Any, align: Any = False, copy: Any = False) -> np.dtype:
    """Stand-in for numpy.dtype: only plain numeric dtypes (never object or structured ones)."""
    try:
        dtype = np.dtype(name) if isinstance(name, str) else None
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None:
        raise _Refused(f"a numpy dtype {name!r} (only numeric dtypes are read)")
    return dtype


def _scalar(dtype: Any, data: Any) -> Any:
    """Stand-in for numpy's multiarray.scalar: the value of one numeric scalar."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in _NUMERIC_KINDS or not isinstance(data, bytes):
        raise _Refused("a numpy scalar that is not numeric")
    if len(data) != dtype.itemsize:
        raise _Refused(f"a numpy {dtype} scalar of {len(data)} bytes")
    return np.frombuffer(data, dtype=dtype)[0]


_NDARRAY = object()  # what the name numpy.ndarray stands for: only an argument of _reconstruct, never called


def _array(cls: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    """Stand-in for numpy's multiarray._reconstruct: an empty ndarray that pickle's BUILD then fills (numeric)."""
    if cls is not _NDARRAY:
        raise _Refused("a numpy array of a subclass")
    return np.ndarray.__new__(np.ndarray, (0,), np.uint8)


def _array_from_buffer(buffer: Any, dtype: Any, shape: Any, order: Any = "C") -> np.ndarray:
    """Stand-in for numpy's numeric._frombuffer (arrays in protocol 5 pickles): numeric data of the given shape."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in _NUMERIC_KINDS or order not in ("C", "F"):
        raise _Refused("a numpy array that is not numeric")
    if not isinstance(buffer, bytes | bytearray | pickle.PickleBuffer) or not isinstance(shape, tuple):
        raise _Refused("a numpy array without a byte buffer and a shape")
    try:
        return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order).copy()
    except (ValueError, TypeError) as err:
        raise _Refused(f"a numpy array whose data does not fit its shape ({first_line(err)})") from None


def _latin1_bytes(text: Any, encoding: Any = "latin1") -> bytes:
    """Stand-in for _codecs.encode, which protocol 2 pickles use to store bytes as latin-1 text."""
    if not isinstance(text, str) or encoding != "latin1":
        raise _Refused("a bytes value that is not latin-1 text")
    return text.encode("latin1")


# (module, name) the pickle may name -> what it gets instead. Every entry builds data; none runs anything it is given.
ALLOWED: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("torch.nn.modules.container", "ModuleDict"): ModuleRecord,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,  # protocol 2 names sets, frozensets and the encoder of its bytes
    ("builtins", "frozenset"): frozenset,
    ("_codecs", "encode"): _latin1_bytes,
    ("dnnlib.util", "EasyDict"): dict,
    ("numpy", "dtype"): _dtype,
    ("numpy", "ndarray"): _NDARRAY,
    **{(module, "scalar"): _scalar for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "_reconstruct"): _array for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "_frombuffer"): _array_from_buffer for module in ("numpy.core.numeric", "numpy._core.numeric")},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        module = "builtins" if module == "__builtin__" else module  # protocol 2 writes Python 2's name
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(
                f"it names {module}.{name}, which is not an EDM network, a tensor or a plain container"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("it uses a persistent id (EDM network pickles have none)")


def read_network_pickle(path: Path, what: str) -> Any:
    """The unpickled content of an EDM network pickle, persistent objects as PersistentObject records.

    Refusals and unreadable files are each one ValueError that starts with `what`; nothing in the file is run.
    """
    if not path.is_file():
        raise ValueError(f"{what}: no such file {str(path)!r}")
    with path.open("rb") as file:
        head = file.read(4)
        if head.startswith(b"PK\x03\x04"):
            raise ValueError(
                f"{what}: {path.name} is a torch.save archive, not an EDM network pickle (pickle.dump of a dict "
                "with 'ema')"
            )
        file.seek(0)
        try:
            return _RestrictedUnpickler(file).load()
        except _Refused as err:
            raise ValueError(f"{what}: refused {path.name}: {err}; nothing in it was run") from None
        except Exception as err:  # a corrupt or truncated pickle raises many types (EOFError, UnpicklingError, ...)
            raise ValueError(f"{what}: {path.name} is not a readable EDM network pickle ({first_line(err)})") from None
