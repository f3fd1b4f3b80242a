"""FD, KD and precision/recall of generated samples against a reference, through torch-fidelity.

A `FeatureSet` names the feature space and therefore the metric names:

| feature set | torch-fidelity extractor                | metrics                                                    |
|-------------|-----------------------------------------|------------------------------------------------------------|
| inception   | inception-v3-compat (2048-d pool)       | fid, kid, kid_std, precision, recall                       |
| digits      | scorebench-digits (shipped classifier)  | fd_digits, kd_digits, kd_digits_std, precision_digits, ... |
| mnist5k     | scorebench-mnist5k (shipped classifier) | fd_mnist5k, kd_mnist5k, kd_mnist5k_std, ...                |
| data        | scorebench-data (the raw coordinates)   | fd_data, kd_data, kd_data_std, precision_data, recall_data |

Two steps, both torch-fidelity's code: `extract_features` runs its feature extractor over the generated samples, and
`fidelity_from_features` turns features into metrics with its statistics (`fid_features_to_statistics`,
`fid_statistics_to_metric`, `kid_features_to_metric`, `prc_features_to_metric`). Splitting them lets a torchrun sweep
extract each rank's share and gather the features (bench.runner), so N processes give the single-process number.
Features are extracted in chunks of the sweep's sampling batch, so a sample's features never depend on how the
batches were spread over processes. FD statistics are float64 (features cast first), as in EDM's fid.py.

References (`Reference`, made by `make_reference`): images (a tensor, a folder of png/jpg, an .npz of uint8 images),
raw rows, or `stats:PATH` files with precomputed statistics or features (bench.reference_files: EDM fid-refs and
pytorch-fid `mu`/`sigma`, score_sde `pool_3`, ADM reference batches). A file's own `mu`/`sigma` give FD directly; its
features or images give KD and precision/recall. Images reach torch-fidelity as uint8 [N, C, H, W] tensors, quantised
from the model's data range and clamped (the transform users' image files went through); gray is replicated to 3
channels for Inception. The reference set's features and float64 FD statistics are cached (torch-fidelity's cache)
under `<cache_dir>/fidelity/`, named after the reference's label, a sha256 of its data, and a sha256 of the extractor
weights: the second evaluation against the same reference extracts only the generated samples, and any change to the
reference data or to the extractor misses the cache.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "FeatureSet",
    "FEATURE_SETS",
    "FIDELITY_METRICS",
    "Reference",
    "make_reference",
    "to_uint8",
    "extract_features",
    "feature_dim",
    "check_reference_dim",
    "fidelity_from_features",
    "fidelity_metrics",
    "extractor_identity",
    "resolve_inception_weights",
    "default_cache_dir",
    "register_extractors",
]

STATS = ("fd", "kd", "kd_std", "precision", "recall")
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS_FILE}"
BOOTSTRAP_KID_SUBSETS = 10  # KD subsets per bootstrap replicate (the point estimate uses torch-fidelity's 100)


@dataclass(frozen=True)
class FeatureSet:
    name: str
    extractor: str  # torch-fidelity feature-extractor name
    layer: str  # the extractor's feature layer used by every metric
    images: bool  # inputs are uint8 images; False: raw float coordinates
    rgb: bool  # the extractor needs 3 channels
    batch_size: int
    summary: str

    def metric_name(self, stat: str) -> str:
        if self.name == "inception":
            return {"fd": "fid", "kd": "kid", "kd_std": "kid_std"}.get(stat, stat)
        if stat == "kd_std":
            return f"kd_{self.name}_std"
        return f"{stat}_{self.name}"

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(self.metric_name(s) for s in STATS)


FEATURE_SETS: dict[str, FeatureSet] = {
    fs.name: fs
    for fs in (
        FeatureSet("inception", "inception-v3-compat", "2048", True, True, 64, "Inception-v3 pool features (FID)"),
        FeatureSet("digits", "scorebench-digits", "features", True, False, 1000, "the shipped digits classifier"),
        FeatureSet("mnist5k", "scorebench-mnist5k", "features", True, False, 1000, "the shipped mnist5k classifier"),
        FeatureSet("data", "scorebench-data", "data", False, False, 10000, "the raw coordinates"),
    )
}
# metric name -> (feature set, statistic)
FIDELITY_METRICS: dict[str, tuple[str, str]] = {
    fs.metric_name(stat): (fs.name, stat) for fs in FEATURE_SETS.values() for stat in STATS
}


def default_cache_dir() -> Path:
    return Path(os.environ.get("SCOREBENCH_CACHE") or Path.home() / ".cache" / "scorebench")


# --- torch-fidelity feature extractors --------------------------------------------------------------------------------
@cache
def register_extractors() -> None:
    """Register the project's feature extractors with torch-fidelity (once; torch-fidelity imports in ~2 s, so not
    at module import)."""
    from torch_fidelity import register_feature_extractor
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    from .features import images_to_unit, load_classifier

    class ProjectExtractor(FeatureExtractorBase):
        """What both project extractors share: small eager modules, never compiled by torch-fidelity."""

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            raise NotImplementedError

    class ClassifierFeatures(ProjectExtractor):
        """A project classifier (bench.features) on uint8 images; `feature_extractor_weights_path` is its directory."""

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            assert feature_extractor_weights_path is not None, "fidelity_metrics passes the checkpoint directory"
            self.net, config = load_classifier(feature_extractor_weights_path)
            self.size = tuple(config["image_size"])

        @staticmethod
        def get_provided_features_list():
            return "features", "logits"

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return "features"

        def forward(self, x):
            feats = self.net.features(images_to_unit(x, self.size).to(self.net.head.weight))
            out = {"features": feats, "logits": self.net.head(feats)}
            return tuple(out[name] for name in self.features_list)

    class DataFeatures(ProjectExtractor):
        """The identity: features are the flattened samples themselves (low-dimensional analytic models)."""

        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)

        @staticmethod
        def get_provided_features_list():
            return ("data",)

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return "data"

        def forward(self, x):
            return (x.flatten(1).to(torch.float64),)

    for fs in FEATURE_SETS.values():
        if fs.extractor.startswith("scorebench-") and fs.extractor not in FEATURE_EXTRACTORS_REGISTRY:
            register_feature_extractor(fs.extractor, DataFeatures if fs.name == "data" else ClassifierFeatures)


# --- inputs ----------------------------------------------------------------------------------------------------------
class _Rows(Dataset):
    """A tensor as the map-style Dataset of its rows that torch-fidelity reads."""

    def __init__(self, x: Tensor):
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> Tensor:
        return self.x[i]


def to_uint8(x: Tensor, data_range: tuple[float, float]) -> Tensor:
    """Images [N, C, H, W] in `data_range` -> uint8, rounded and clamped (uint8 input passes through)."""
    if x.dtype == torch.uint8:
        return x.cpu()
    if not bool(torch.isfinite(x).all()):
        raise ValueError("samples contain NaN or infinite values; no metric is defined for them")
    lo, hi = data_range
    return ((x.detach().cpu().double() - lo) * (255.0 / (hi - lo))).round().clamp(0, 255).to(torch.uint8)


def _as_images(x: Tensor, rgb: bool) -> Tensor:
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"image metrics need samples of shape [N, 1 or 3, H, W], got {list(x.shape)}")
    return x.expand(-1, 3, -1, -1).contiguous() if rgb and x.shape[1] == 1 else x


def _digest(*arrays: Tensor) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = a.detach().cpu().contiguous()
        h.update(f"{a.dtype}{tuple(a.shape)}".encode())
        h.update(a.numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True, eq=False)
class Reference:
    """A reference set: images or rows to extract features from (a tensor, or an image folder torch-fidelity reads),
    and/or precomputed features or FD statistics from a file (`stats:PATH`)."""

    data: Tensor | Path | None  # None: the reference brings features or statistics only
    n: int | None  # images, rows or feature rows; None: statistics only (their count is not in the file)
    digest: str  # sha256 of the data: part of the cache key
    label: str  # readable part of the cache key (a dataset name, "npz", "folder", "tensor", ...)
    kind: str = "images"  # images | folder | tensor | dataset | exact | mu-sigma | pool-3 | adm-batch
    features: Tensor | None = None  # precomputed reference features [N, d] (score_sde's pool_3)
    stats: tuple[np.ndarray, np.ndarray] | None = None  # precomputed (mu, sigma), float64
    path: str | None = None  # the file or folder it was read from
    sha256: str | None = None  # the file's sha256 (a folder: of its files' names and bytes); None: not a file

    def identity(self) -> dict:
        """What a record stores about the reference: kind, label, hash of the file (or of the data), path, count."""
        return {"kind": self.kind, "label": self.label, "sha256": self.sha256 or self.digest, "path": self.path,
                "n": self.n}  # fmt: skip


def make_reference(
    ref: Tensor | str | Path, *, data_range: tuple[float, float] = (-1.0, 1.0), label: str | None = None
) -> Reference:
    """A reference from a tensor (uint8 images, float images in `data_range`, or float rows [N, d]), a folder of
    images (png/jpg/jpeg, not recursive, read by torch-fidelity), an .npz holding one uint8 image array ([N, H, W],
    [N, H, W, C] or [N, C, H, W], C in 1 or 3; the array named `images` when there are several), or `stats:PATH`: an
    .npz of statistics, features or an ADM reference batch (bench.reference_files lists the layouts)."""
    if isinstance(ref, Tensor):
        x = ref.detach().cpu()
        if len(x) == 0:
            raise ValueError(f"reference {label or 'tensor'} holds no samples (shape {list(x.shape)})")
        if x.ndim == 4:
            x = to_uint8(x, data_range)
        elif x.ndim == 2:
            x = x.to(torch.float64)
        else:
            raise ValueError(f"a reference tensor must be images [N, C, H, W] or rows [N, d], got {list(x.shape)}")
        return Reference(x, len(x), _digest(x), label or "tensor", kind="tensor")
    from .reference_files import read_npz, split_spec

    stats, path = split_spec(ref)
    if stats:
        if path.is_dir():
            raise ValueError(f"stats:{path} is a folder: a folder holds images, pass it without stats:")
        f = read_npz(path, stats=True)
        images = f.images
        features = f.features
        n = len(images) if images is not None else len(features) if features is not None else None
        digest = f.sha256
        return Reference(
            images,
            n,
            digest,
            label or f"stats-{f.layout}",
            kind=f.layout,
            features=features,
            stats=None if f.mu is None else (f.mu, f.sigma),
            path=str(path.resolve()),
            sha256=f.sha256,
        )
    if path.is_dir():
        from torch_fidelity.utils import glob_samples_paths

        files = glob_samples_paths(str(path), False, "png,jpg,jpeg", verbose=False)
        if not files:
            raise ValueError(f"reference folder {path} holds no .png/.jpg/.jpeg images")
        h = hashlib.sha256()
        for f in files:
            h.update(os.path.basename(f).encode())
            h.update(Path(f).read_bytes())
        digest = h.hexdigest()
        return Reference(path, len(files), digest, label or "folder", kind="folder", path=str(path.resolve()),
                         sha256=digest)  # fmt: skip
    if path.is_file() and path.suffix == ".npz":
        f = read_npz(path, stats=False)
        return Reference(f.images, len(f.images), _digest(f.images), label or "npz", kind="images",
                         path=str(path.resolve()), sha256=f.sha256)  # fmt: skip
    raise ValueError(f"reference {str(ref)!r} is neither a folder of images nor an .npz file")


# --- extractor weights -----------------------------------------------------------------------------------------------
def resolve_inception_weights(path: str | Path | None = None) -> Path:
    """The Inception-v3 weights file torch-fidelity needs: `path` if given, else torch's hub cache, else downloaded
    into that cache. ValueError (saying how to provide the file) when none is reachable or the file is not one."""
    from torch.hub import download_url_to_file, get_dir

    cached = Path(get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE
    how = (
        f"pass inception_weights=PATH (command line: --inception-weights PATH) with torch-fidelity's "
        f"{INCEPTION_WEIGHTS_FILE} (from {INCEPTION_URL}), or put that file at {cached}"
    )
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise ValueError(f"inception weights file {path} does not exist; {how}")
    elif cached.is_file():
        path = cached
    else:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            download_url_to_file(INCEPTION_URL, str(cached), progress=False)
        except OSError as err:  # URLError, refused or unreachable network, read-only cache
            raise ValueError(
                f"Inception-v3 weights are not available here and cannot be downloaded ({err}); {how}"
            ) from err
        path = cached
    _check_inception_state(path, how)
    return path


@cache
def _check_inception_state(path: Path, how: str) -> None:
    """Load with weights_only=True first: torch-fidelity itself unpickles the file without that guard."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 -- any unreadable or unsafe file is a user error here
        raise ValueError(f"{path} is not a readable weights file ({str(err).splitlines()[0]}); {how}") from err
    if not isinstance(state, dict) or "Mixed_7c.branch_pool.conv.weight" not in state:
        raise ValueError(f"{path} is not an Inception-v3 state dict of torch-fidelity's layout; {how}")


@cache
def _weights_digest(path: Path, size: int, mtime_ns: int) -> str:
    from .features import file_digest

    return file_digest(path)


def _extractor_weights(fs: FeatureSet, inception_weights: str | Path | None) -> tuple[Path | None, str]:
    """(feature_extractor_weights_path for torch-fidelity, digest identifying the weights in cache keys)."""
    if fs.name == "data":
        return None, "identity"
    if fs.name == "inception":
        path = resolve_inception_weights(inception_weights)
        file = path
    else:
        from .features import checkpoint_dir

        path = checkpoint_dir(fs.name)
        file = path / "model.safetensors"
        if not file.is_file():
            raise ValueError(
                f"the {fs.name} feature classifier is missing ({path}); "
                f"train it with `scorebench train features --data {fs.name} --out {path}`"
            )
    st = file.stat()
    return path, _weights_digest(file, st.st_size, st.st_mtime_ns)


def extractor_identity(feature_set: str, inception_weights: str | Path | None = None) -> str:
    """The feature extractor behind a feature set's metrics, for records: its name and the sha256 of its weights."""
    fs = FEATURE_SETS[feature_set]
    _, digest = _extractor_weights(fs, inception_weights)
    return f"{fs.extractor}:{digest[:16]}"


# --- features --------------------------------------------------------------------------------------------------------
_EXTRACTORS: dict[tuple, object] = {}


def _extractor(fs: FeatureSet, weights: Path | None, cuda: bool):
    """torch-fidelity's feature extractor of a feature set, made once per (set, weights, device) in a process."""
    from torch_fidelity.utils import create_feature_extractor

    register_extractors()
    device = torch.cuda.current_device() if cuda else None
    key = (fs.name, None if weights is None else str(weights), cuda, device)
    if key not in _EXTRACTORS:
        _EXTRACTORS[key] = create_feature_extractor(
            fs.extractor,
            [fs.layer],
            cuda=cuda,
            feature_extractor_weights_path=None if weights is None else str(weights),
            verbose=False,
        )
    return _EXTRACTORS[key]


def _inputs(samples: Tensor, fs: FeatureSet, data_range: tuple[float, float]) -> Tensor:
    """Samples as the extractor reads them: uint8 images (3 channels for Inception) or float64 rows."""
    if fs.images:
        return _as_images(to_uint8(samples, data_range), fs.rgb)
    if not bool(torch.isfinite(samples).all()):
        raise ValueError("samples contain NaN or infinite values; no metric is defined for them")
    return samples.detach().cpu().to(torch.float64).flatten(1)


def extract_features(
    samples: Tensor,
    feature_set: str,
    *,
    data_range: tuple[float, float] = (-1.0, 1.0),
    device: str | torch.device = "cpu",
    inception_weights: str | Path | None = None,
    chunk: int | None = None,
) -> Tensor:
    """Features [n, d] of `samples` in one feature set, by torch-fidelity's extractor (on `device`), `chunk` samples
    per call (default: all at once, in the set's batch size): a sample's features depend only on its chunk, so a
    sweep passes its sampling batch size and gets the same features from any number of processes."""
    from torch_fidelity.utils import extract_featuresdict_from_input_id

    fs = FEATURE_SETS[feature_set]
    x = _inputs(samples, fs, data_range)
    if len(x) == 0:
        raise ValueError("no samples to extract features from")
    weights, _ = _extractor_weights(fs, inception_weights)
    cuda = torch.device(device).type == "cuda"
    step = chunk or len(x)
    parts = []
    with torch.cuda.device(torch.device(device)) if cuda else nullcontext():
        extractor = _extractor(fs, weights, cuda)
        for lo in range(0, len(x), step):
            opts = dict(input1=_Rows(x[lo : lo + step]), batch_size=fs.batch_size, cuda=cuda, save_cpu_ram=True)
            parts.append(extract_featuresdict_from_input_id(1, extractor, verbose=False, **opts)[fs.layer])
    return torch.cat(parts)


def feature_dim(
    feature_set: str,
    shape: tuple[int, ...],
    *,
    data_range: tuple[float, float] = (-1.0, 1.0),
    inception_weights: str | Path | None = None,
) -> int:
    """The feature dimension of a feature set on samples of `shape` (two blank samples through the extractor)."""
    lo, _ = data_range
    return extract_features(
        torch.full((2, *shape), float(lo)), feature_set, data_range=data_range, inception_weights=inception_weights
    ).shape[1]


def check_reference_dim(reference: Reference, feature_set: str, dim: int) -> None:
    """ValueError in one line when a reference's stored features or statistics are not `dim`-dimensional."""
    fs = FEATURE_SETS[feature_set]
    stored = reference.stats[0].shape[0] if reference.stats is not None else None
    if stored is None and reference.features is not None:
        stored = reference.features.shape[1]
    if stored is not None and stored != dim:
        source = reference.path or reference.label
        raise ValueError(
            f"reference {source} holds statistics of {stored}-d features, but the {fs.name} features ({fs.extractor}) "
            f"are {dim}-d: it was computed with another feature extractor"
        )


# --- metrics ---------------------------------------------------------------------------------------------------------
def _cache_name(reference: Reference, weights_digest: str) -> str:
    return f"scorebench-{reference.label}-{reference.digest[:16]}-{weights_digest[:12]}"


def _reference_features(reference: Reference, fs: FeatureSet, weights, weights_digest, cuda, cache_root) -> Tensor:
    """The reference's features: stored in its file, else extracted by torch-fidelity (cached for images)."""
    from torch_fidelity.utils import extract_featuresdict_from_input_id_cached

    if reference.features is not None:
        return reference.features
    if reference.data is None:
        raise AssertionError("statistics-only references are refused before this")
    data = reference.data
    if isinstance(data, Tensor):
        if fs.images and data.ndim != 4:
            raise ValueError(f"{fs.name} features need an image reference, got rows {list(data.shape)}")
        if not fs.images and data.ndim != 2:
            raise ValueError("data-space metrics need a reference of rows [N, d]")
        data = _as_images(data, fs.rgb) if fs.images else data
    elif not fs.images:
        raise ValueError("data-space metrics need a reference of rows [N, d]")
    opts = dict(
        input2=_Rows(data) if isinstance(data, Tensor) else str(data),
        input2_cache_name=_cache_name(reference, weights_digest),
        cache_root=str(cache_root),
        cache=fs.images,  # raw coordinates cost nothing to "extract"
        batch_size=fs.batch_size,
        cuda=cuda,
        save_cpu_ram=not cuda,
        verbose=False,
    )
    extractor = _extractor(fs, weights, cuda)
    return extract_featuresdict_from_input_id_cached(2, extractor, **opts)[fs.layer]


def _statistics(features: Tensor) -> dict[str, np.ndarray]:
    from torch_fidelity.metric_fid import fid_features_to_statistics

    return fid_features_to_statistics(features.detach().cpu().to(torch.float64))


def fidelity_from_features(
    features: Tensor,
    reference: Reference,
    feature_set: str,
    stats: Iterable[str] = STATS,
    *,
    device: str | torch.device = "cpu",
    inception_weights: str | Path | None = None,
    cache_dir: str | Path | None = None,
    bootstrap: int = 0,
    seed: int = 0,
) -> dict[str, float]:
    """FD / KD (mean, std over subsets) / precision / recall of generated `features` [n, d] against `reference` in
    one feature set, with torch-fidelity's statistics; keys are the metric names (e.g. fd_digits), plus `n_ref` when
    the reference has a count. FD uses the reference's own statistics when it brings some. With bootstrap=B > 0,
    also `<name>_lo` / `<name>_hi`: a 95% interval from B random halves of the samples."""
    from torch_fidelity.helpers import get_kwarg
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric
    from torch_fidelity.utils import cache_lookup_one_recompute_on_miss

    fs = FEATURE_SETS[feature_set]
    stats = tuple(stats)
    gen = features.detach().cpu()
    need_ref_features = any(s != "fd" for s in stats) or reference.stats is None
    if need_ref_features and reference.features is None and reference.data is None:
        others = [fs.metric_name(s) for s in stats if s != "fd"]
        raise ValueError(
            f"reference {reference.path or reference.label} holds FD statistics only (mu, sigma): "
            f"{', '.join(others)} need reference images or features; ask for {fs.metric_name('fd')} alone"
        )
    n = len(gen)
    if n < 5:
        raise ValueError(f"{fs.name} metrics need at least 5 samples, got {n}")
    weights, weights_digest = _extractor_weights(fs, inception_weights)
    cuda = torch.device(device).type == "cuda"
    cache_root = Path(cache_dir or default_cache_dir()) / "fidelity"
    ref = None
    values: dict[str, float] = {}
    with torch.cuda.device(torch.device(device)) if cuda else nullcontext():
        if need_ref_features:
            ref = _reference_features(reference, fs, weights, weights_digest, cuda, cache_root).detach().cpu()
            if len(ref) < 5:
                raise ValueError(f"{fs.name} metrics need at least 5 reference items, got {len(ref)}")
            if ref.shape[1] != gen.shape[1]:
                check_reference_dim(replace(reference, stats=None, features=ref), feature_set, gen.shape[1])
        check_reference_dim(reference, feature_set, gen.shape[1])
        if reference.stats is not None:
            mu, sigma = reference.stats
            ref_stats = {"mu": mu, "sigma": sigma}
        elif "fd" in stats:
            ref_stats = cache_lookup_one_recompute_on_miss(
                f"{_cache_name(reference, weights_digest)}-{fs.extractor}-stat-fd64-{fs.layer}",
                lambda: _statistics(ref),
                cache=reference.data is not None and fs.images or reference.features is not None,
                cache_root=str(cache_root),
                verbose=False,
            )
        opts = dict(
            kid_subset_size=min(get_kwarg("kid_subset_size", {}), n, len(ref) if ref is not None else n),
            cuda=cuda,
            save_cpu_ram=not cuda,
            verbose=False,
        )
        if "fd" in stats:
            fd = fid_statistics_to_metric(_statistics(gen), ref_stats, False)[KEY_METRIC_FID]
            values[fs.metric_name("fd")] = float(fd)
        if "kd" in stats or "kd_std" in stats:
            kd = kid_features_to_metric(gen, ref, **opts)
            values.update(
                {fs.metric_name("kd"): kd[KEY_METRIC_KID_MEAN], fs.metric_name("kd_std"): kd[KEY_METRIC_KID_STD]}
            )
        if "precision" in stats or "recall" in stats:
            prc = prc_features_to_metric(gen, ref, **opts)
            values.update({fs.metric_name(k): float(prc[k]) for k in ("precision", "recall")})
        values = {fs.metric_name(s): float(values[fs.metric_name(s)]) for s in stats}
        if reference.n is not None:
            values["n_ref"] = float(reference.n)
        if bootstrap > 0:
            values.update(_bootstrap(fs, stats, gen, ref, ref_stats if "fd" in stats else None, opts, values,
                                     bootstrap, seed))  # fmt: skip
    return values


def fidelity_metrics(
    samples: Tensor | None,
    reference: Reference,
    feature_set: str,
    stats: Iterable[str] = STATS,
    *,
    data_range: tuple[float, float] = (-1.0, 1.0),
    device: str | torch.device = "cpu",
    inception_weights: str | Path | None = None,
    cache_dir: str | Path | None = None,
    bootstrap: int = 0,
    seed: int = 0,
    features: Tensor | None = None,
) -> dict[str, float]:
    """`extract_features` of `samples` (or the given `features`, e.g. gathered from every rank of a sweep), then
    `fidelity_from_features`."""
    if features is None:
        assert samples is not None, "samples or features"
        features = extract_features(
            samples, feature_set, data_range=data_range, device=device, inception_weights=inception_weights
        )
    return fidelity_from_features(
        features,
        reference,
        feature_set,
        stats,
        device=device,
        inception_weights=inception_weights,
        cache_dir=cache_dir,
        bootstrap=bootstrap,
        seed=seed,
    )


def _bootstrap(fs: FeatureSet, stats, gen: Tensor, ref, ref_stats, opts: dict, values: dict, n_boot: int, seed: int):
    """Half-sample intervals (see `half_sample_interval`) for the metrics of one feature set: each replicate applies
    torch-fidelity's own statistics to a random half of the generated features. KD replicates average
    BOOTSTRAP_KID_SUBSETS subsets (the point estimate: 100)."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    kid_opts = {**opts, "kid_subsets": BOOTSTRAP_KID_SUBSETS}
    if ref is not None:
        kid_opts["kid_subset_size"] = min(1000, len(gen) // 2, len(ref))
    reps: dict[str, list[float]] = {fs.metric_name(s): [] for s in stats if s != "kd_std"}
    for idx in half_samples(len(gen), n_boot, seed):
        f = gen[idx]
        out = {}
        if "fd" in stats:
            out["fd"] = fid_statistics_to_metric(_statistics(f), ref_stats, False)[KEY_METRIC_FID]
        if "kd" in stats:
            out["kd"] = kid_features_to_metric(f, ref, **kid_opts)[KEY_METRIC_KID_MEAN]
        if "precision" in stats or "recall" in stats:
            out.update(prc_features_to_metric(f, ref, **opts))
        for s, v in out.items():
            if fs.metric_name(s) in reps:
                reps[fs.metric_name(s)].append(float(v))
    return half_sample_interval(values, reps)


def half_samples(n: int, n_boot: int, seed: int) -> Iterator[Tensor]:
    """n_boot random halves (n // 2 indices each, drawn without replacement) of range(n)."""
    if n < 4:
        raise ValueError(f"a bootstrap interval needs at least 4 samples, got {n}")
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        yield torch.from_numpy(rng.permutation(n)[: n // 2])


def half_sample_interval(point: dict[str, float], replicates: dict[str, list[float]], level: float = 0.95) -> dict:
    """{name_lo, name_hi}: the point estimate plus the central `level` quantiles of the half-sample replicates'
    deviations from their mean.

    Half-samples without replacement rather than the with-replacement bootstrap: for a mean, a half-sample's
    variance s^2/m (1 - m/n) at m = n/2 equals the full sample's s^2/n; no point is duplicated (duplicates collapse
    the k-NN balls behind recall and inflate kernel U-statistics); centring on the replicates' mean removes the
    sample-size bias of FD. Measured on gmm-2d (results/metrics/bootstrap_coverage.md: n=500, B=40, 40 sample sets):
    with q != p every metric's interval covered its expectation in 17-20 of 20 sets, half-width/1.96 at 0.77-1.26x
    the spread over sets; with q = p FD and MMD^2 fluctuate at O(1/n), not O(1/sqrt n), and their intervals come
    out up to 2x wide (conservative). The with-replacement percentile interval of recall covered 0 of 20.
    """
    out = {}
    for name, vals in replicates.items():
        dev = np.asarray(vals, dtype=np.float64)
        lo, hi = np.quantile(dev - dev.mean(), [(1 - level) / 2, (1 + level) / 2])
        out[f"{name}_lo"], out[f"{name}_hi"] = point[name] + float(lo), point[name] + float(hi)
    return out
