"""Feature extraction on a Ray cluster: decoding + the frame backbone as Ray Data ``map_batches`` over actors.

:func:`ray_runner` returns an :data:`prvr.features.extract.EncodeRunner` for ``extract_videos``: the driver hashes the
files and looks them up in the cache as usual (so the cache, the feature file, the sidecar and ``failures.json`` are
the local path's own), and only the cache misses become a Ray dataset of file paths. A pool of actors, each holding
one copy of the backbone (built from its spec: ``clip:/models/clip-vit-base-patch32``), decodes and encodes one
video per call; results stream back to the driver, which puts each into the cache as it arrives, so a killed run
resumes from what was finished. A video that cannot be decoded comes back as a failure with its reason, like the
local path; an actor that dies is retried by Ray.

The videos and the model folder must be readable at the same paths from every node (a shared filesystem, or one
machine). Ray is an optional dependency (``pip install -e ".[ray]"``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prvr.features.extract import EncodeJob, EncodeRunner, Encoded
from prvr.features.frames import SamplingConfig

__all__ = ["RayBackbone", "RayOptions", "ray_runner"]

logger = logging.getLogger(__name__)

LOCAL = "local"  # --ray without an address: start a Ray instance on this machine


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray extraction runs.

    Attributes:
        address: ``"local"`` starts a private Ray instance on this machine (stopped at the end); anything else is
            passed to ``ray.init(address=...)``: ``"auto"`` (a running cluster this machine belongs to),
            ``"ray://head:10001"`` (Ray Client). When Ray is already initialised in this process it is used as is.
        workers: actors, each holding one copy of the backbone.
        gpus_per_worker: GPUs reserved per actor; None: 1 when the cluster has GPUs and the device is ``auto``,
            else 0.
        cpus_per_worker: CPUs reserved per actor.
    """

    address: str = LOCAL
    workers: int = 2
    gpus_per_worker: float | None = None
    cpus_per_worker: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"Ray workers must be an int >= 1, got {self.workers!r}")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise ValueError(f"gpus_per_worker must be >= 0, got {self.gpus_per_worker!r}")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker must be > 0, got {self.cpus_per_worker!r}")
        if not self.address:
            raise ValueError("the Ray address is empty; pass 'local', 'auto' or ray://HOST:PORT")


@dataclass(frozen=True)
class RayBackbone:
    """The frame backbone as the Ray actors hold it: the spec every actor builds, and its id (the cache key), read
    from the weights' digest without loading the model in the driver. What ``extract_videos`` is given with a
    :func:`ray_runner` (it only reads ``backbone_id``)."""

    spec: str
    backbone_id: str

    @classmethod
    def from_spec(cls, spec: str, *, allow_download: bool = True) -> RayBackbone:
        from prvr.features.backbones import image_backbone_id

        return cls(spec, image_backbone_id(spec, allow_download=allow_download))


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data ships in the ray[data] extra)
    except ImportError as error:
        raise RuntimeError(f"--ray needs Ray Data ({error}); install it with `pip install -e \".[ray]\"` (or "
                           "`pip install 'ray[data]'`), or drop --ray to extract in this process") from None
    return ray


class _EncoderActor:
    """A Ray actor: one backbone, one video per call (a batch of one path), the local path's ``encode_video``."""

    def __init__(self, spec: str, device: str, batch_size: int, sampling: dict[str, Any], threads: int) -> None:
        from prvr.features.backbones import load_image_backbone

        self.backbone = load_image_backbone(spec, device=device, batch_size=batch_size)
        self.sampling = SamplingConfig(**sampling)
        self.threads = threads

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from prvr.features.extract import encode_video
        from prvr.features.frames import VideoDecodeError

        rows: dict[str, list[Any]] = {"order": [], "features": [], "shape": [], "info": [], "error": [],
                                      "calls": [], "backbone": []}
        for order, path in zip(batch["order"].tolist(), batch["path"].tolist()):
            features, info, error, calls = None, "", "", 0
            try:
                array, facts, calls = encode_video(path, self.backbone, self.sampling, threads=self.threads)
                features, info = np.ascontiguousarray(array, dtype=np.float32), json.dumps(facts.to_dict())
            except VideoDecodeError as failure:
                error = str(failure) or "the video could not be decoded"
            rows["order"].append(int(order))
            rows["features"].append(b"" if features is None else features.tobytes())
            rows["shape"].append(json.dumps([] if features is None else list(features.shape)))
            rows["info"].append(info)
            rows["error"].append(error)
            rows["calls"].append(int(calls))
            rows["backbone"].append(self.backbone.backbone_id)
        return {name: np.array(values, dtype=object) for name, values in rows.items()}


def ray_runner(spec: str, backbone_id: str, sampling: SamplingConfig, options: RayOptions, *, device: str = "auto",
               batch_size: int = 32, threads: int = 0) -> EncodeRunner:
    """An ``extract_videos`` runner that encodes the cache misses on Ray actors.

    Args:
        spec: the backbone spec every actor builds (``clip:PATH``), readable from every node.
        backbone_id: the id of the driver's backbone (the cache key); an actor whose backbone has another id (other
            weights at the same path on a node) fails the run instead of caching foreign features.
        sampling: the frame sampling.
        options: the cluster and the pool size.
        device: the actors' device (``auto`` picks CUDA where the actor has a GPU).
        batch_size: frames per backbone forward pass.
        threads: decoder threads per video.
    """

    def run(jobs: Sequence[EncodeJob]) -> Iterator[Encoded]:
        if not jobs:
            return
        ray = _import_ray()
        started = False
        if not ray.is_initialized():
            if options.address == LOCAL:
                ray.init(num_cpus=max(1, int(round(options.workers * options.cpus_per_worker))),
                         include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
            else:
                ray.init(address=options.address, log_to_driver=False, logging_level=logging.WARNING)
            started = True
        try:
            gpus = options.gpus_per_worker
            if gpus is None:
                gpus = 1.0 if device == "auto" and ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
            by_order = {job.order: job for job in jobs}
            dataset = ray.data.from_items([{"order": job.order, "path": str(job.path)} for job in jobs],
                                          override_num_blocks=len(jobs))
            encoded = dataset.map_batches(
                _EncoderActor,
                fn_constructor_kwargs={"spec": spec, "device": device, "batch_size": batch_size,
                                       "sampling": sampling.to_dict(), "threads": threads},
                batch_size=1, batch_format="numpy", concurrency=options.workers, num_gpus=gpus,
                num_cpus=options.cpus_per_worker,
            )
            logger.info("encoding %d videos on Ray (%d actors, %s GPU each)", len(jobs), options.workers, gpus)
            for row in encoded.iter_rows():
                job = by_order[int(row["order"])]
                if row["backbone"] != backbone_id:
                    raise RuntimeError(f"a Ray actor loaded backbone {row['backbone']!r}, not {backbone_id!r} (the "
                                       f"model folder differs on its node); make {spec} the same files everywhere")
                if row["error"]:
                    yield Encoded(job, None, None, error=str(row["error"]))
                    continue
                shape = tuple(json.loads(row["shape"]))
                features = np.frombuffer(row["features"], dtype=np.float32).reshape(shape).copy()
                yield Encoded(job, features, json.loads(row["info"]), calls=int(row["calls"]))
        finally:
            if started:
                ray.shutdown()

    return run


def check_spec_is_shared(spec: str) -> None:
    """Warn when the backbone spec names a hub id: every node then needs the hub (or its own cache) to load it."""
    target = spec.partition(":")[2] or spec
    if not Path(target).expanduser().exists():
        logger.warning("backbone %s is not a local folder: every Ray node must reach the hub or have it cached", spec)
