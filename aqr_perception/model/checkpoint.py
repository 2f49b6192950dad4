"""Checkpoints: weights + the model config that built them + free-form metadata.

A checkpoint is self-describing: ``load_checkpoint`` rebuilds the exact architecture
from the stored config, so the node and the evaluator need nothing else.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from aqr_perception.config import ModelConfig
from aqr_perception.model.detector import CmtAqrDetector

FORMAT_VERSION = 1


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


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[CmtAqrDetector, dict]:
    """Rebuild the detector stored in ``path`` on ``device`` (eval mode); returns (model, blob)."""
    blob = torch.load(Path(path), map_location="cpu", weights_only=False)
    if blob.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported checkpoint format {blob.get('format')!r}")
    cfg = ModelConfig.model_validate(blob["model_config"])
    model = CmtAqrDetector(cfg)
    model.load_state_dict(blob["state_dict"])
    return model.to(device).eval(), blob


def read_model_config(path: str | Path) -> ModelConfig:
    """The model config stored in a checkpoint (no weights built)."""
    blob = torch.load(Path(path), map_location="cpu", weights_only=False)
    return ModelConfig.model_validate(blob["model_config"])


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda``/``cuda:N``/``cpu`` as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)
