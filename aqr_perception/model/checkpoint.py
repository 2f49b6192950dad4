"""Checkpoints: weights + the model config that built them + free-form metadata.

A checkpoint is self-describing: ``load_checkpoint`` rebuilds the exact architecture
from the stored config, so the node and the evaluator need nothing else.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from aqr_perception.config import ConfigError, ModelConfig, format_validation_error
from aqr_perception.model.detector import CmtAqrDetector

FORMAT_VERSION = 1
#: keys of a checkpoint written by :func:`save_checkpoint`
_REQUIRED_KEYS = ("format", "model_config", "state_dict")


class CheckpointError(ConfigError):
    """A checkpoint file is missing, unreadable, not ours, or does not fit its own config.
    A ConfigError: the node and the CLI report it in one line and exit with code 2."""


def save_checkpoint(path: str | Path, model: CmtAqrDetector, meta: dict[str, Any] | None = None,
                    optimizer_state: dict | None = None, half: bool = False) -> None:
    """Write weights (CPU; fp32, or fp16 with ``half`` for a small shipped file), the model
    config and ``meta`` (metrics, data, step...). Loading casts back to the model's dtype."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if half else torch.float32
    state = {k: v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()
             for k, v in model.state_dict().items()}
    blob = {"format": FORMAT_VERSION, "model_config": model.cfg.model_dump(mode="json"), "state_dict": state,
            "meta": meta or {}}
    if optimizer_state is not None:
        blob["optimizer"] = optimizer_state
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)


def _read_blob(path: str | Path) -> dict[str, Any]:
    """The checkpoint's dictionary, checked to be one that :func:`save_checkpoint` wrote."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # random bytes, a truncated zip, a pickle of something else...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"checkpoint {path}: not a readable PyTorch checkpoint "
                              f"({type(exc).__name__}: {first[:160]})") from None
    if not isinstance(blob, dict) or any(k not in blob for k in _REQUIRED_KEYS):
        keys = ", ".join(map(str, list(blob)[:5])) if isinstance(blob, dict) else type(blob).__name__
        raise CheckpointError(f"checkpoint {path}: not an aqr_perception checkpoint (it holds {keys}; "
                              f"expected {', '.join(_REQUIRED_KEYS)})")
    if blob["format"] != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path}: unsupported checkpoint format {blob['format']!r} "
                              f"(this version reads {FORMAT_VERSION})")
    return blob


def _model_config_of(blob: dict[str, Any], path: str | Path) -> ModelConfig:
    try:
        return ModelConfig.model_validate(blob["model_config"])
    except ValidationError as exc:  # written by another version of the project
        problems = "; ".join(line.strip() for line in format_validation_error(exc).splitlines()[1:])
        raise CheckpointError(f"checkpoint {path}: its model config is not valid here: {problems}") from None


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[CmtAqrDetector, dict]:
    """Rebuild the detector stored in ``path`` on ``device`` (eval mode); returns (model, blob).
    Raises :class:`CheckpointError` when the file cannot give that model."""
    blob = _read_blob(path)
    model = CmtAqrDetector(_model_config_of(blob, path))
    missing, unexpected = [], []
    state = model.state_dict()
    for key, value in blob["state_dict"].items():
        if key not in state:
            unexpected.append(key)
        elif tuple(state[key].shape) != tuple(value.shape):
            missing.append(f"{key} {tuple(value.shape)} vs {tuple(state[key].shape)}")
    missing += [k for k in state if k not in blob["state_dict"]]
    if missing or unexpected:
        example = (missing or unexpected)[0]
        raise CheckpointError(f"checkpoint {path}: its weights are of a different model than its config "
                              f"({len(missing)} missing or of another shape, {len(unexpected)} unexpected; "
                              f"e.g. {example})")
    bad = [k for k, v in blob["state_dict"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"checkpoint {path}: {len(bad)} weight tensor(s) hold NaN or infinite values "
                              f"(e.g. {bad[0]}): a diverged training run?")
    model.load_state_dict(blob["state_dict"])
    return model.to(device).eval(), blob


def read_model_config(path: str | Path) -> ModelConfig:
    """The model config stored in a checkpoint (no weights built)."""
    return _model_config_of(_read_blob(path), path)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda``/``cuda:N``/``cpu`` as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available (device:=cpu or auto)")
    return torch.device(name)
