"""Checkpoints: atomic save, safe load (weights_only), the experiment config embedded in every file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from prvr.config import ExperimentConfig
from prvr.fileio import atomic_path
from prvr.model import DreamPRVR

__all__ = ["save_checkpoint", "read_checkpoint", "checkpoint_config", "load_model", "atomic_torch_save"]

FORMAT_VERSION = 1


def atomic_torch_save(payload: dict[str, Any], path: str | Path) -> None:
    """torch.save to a temp file in the target directory, fsync, then rename into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def save_checkpoint(
    path: str | Path,
    *,
    model: DreamPRVR,
    config: ExperimentConfig,
    epoch: int,
    state: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint holding the weights, the full config (JSON) and optional training state.

    Args:
        path: destination file (written atomically).
        model: the model whose ``state_dict`` is saved.
        config: the experiment config; stored as JSON under "model_config" so the file describes itself.
        epoch: the number of finished epochs.
        state: optimizer / scheduler / RNG / history entries needed to resume (plain tensors, dicts, numbers).
    """
    payload: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "model_config": config.to_json(indent=None),
        "model": model.state_dict(),
        "epoch": epoch,
    }
    if state:
        payload.update(state)
    atomic_torch_save(payload, path)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *,
                    config_key: str = "model_config", command: str = "prvr train") -> dict[str, Any]:
    """Load a checkpoint dict safely (``weights_only=True``), with clear errors for missing or foreign files.

    Args:
        path: the checkpoint file.
        map_location: where tensors are loaded.
        config_key: the embedded config a checkpoint of this kind must hold (``moment_config`` for the localiser).
        command: the command that writes such checkpoints, named in the error messages.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass the best.pt or last.pt of a `{command}` run")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for truncated / foreign files
        raise ValueError(f"checkpoint {path} cannot be read ({type(error).__name__}: {error}); it may be truncated "
                         f"or not a prvr checkpoint: re-run `{command}` or point at another file") from error
    if not isinstance(payload, dict) or config_key not in payload or "model" not in payload:
        raise ValueError(f"{path} is not a checkpoint of `{command}` (no embedded {config_key}); pass a file written "
                         f"by `{command}`")
    return payload


def checkpoint_config(path: str | Path) -> ExperimentConfig:
    """The experiment config embedded in a retrieval checkpoint (read safely, see :func:`read_checkpoint`)."""
    return ExperimentConfig.from_json(read_checkpoint(path)["model_config"])


def load_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[DreamPRVR, ExperimentConfig, dict[str, Any]]:
    """Rebuild the model from a checkpoint's embedded config and load its weights (eval mode).

    The config's ``model.kind`` picks the class: DreamPRVR (the default, so older checkpoints load unchanged) or the
    weight-free :class:`prvr.zero_shot.ZeroShotPRVR` (same ``encode_videos`` / ``encode_queries`` / ``score``).

    Returns:
        (model, config, payload) where payload is the raw checkpoint dict.
    """
    payload = read_checkpoint(path)
    config = ExperimentConfig.from_json(payload["model_config"])
    if config.model.kind == "zero_shot":
        from prvr.zero_shot import ZeroShotPRVR

        model: Any = ZeroShotPRVR(config.model)
    else:
        model = DreamPRVR(config.model, seed=config.seed)
    model.load_state_dict(payload["model"])
    model.to(device).eval()
    return model, config, payload
