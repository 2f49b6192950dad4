"""The official CMT checkpoint as the tests make it: the key list of
``cmt_voxel0075_vov_1600x640.keys.json`` (names and shapes derived from the public model
definition; see its header) filled with random values, in an mmcv-style file."""
from __future__ import annotations

import json
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
MANIFEST = json.loads((HERE / "cmt_voxel0075_vov_1600x640.keys.json").read_text())
VOV = str(HERE.parent / "config" / "cmt_aqr_vov_1600x640.yaml")
SMALL = ["model.image.input_height=128", "model.image.input_width=320"]   # same weights, cheaper forward
HEAD = "pts_bbox_head."
CLASSES = ("car", "truck", "construction_vehicle", "bus", "trailer", "barrier", "motorcycle", "bicycle",
           "pedestrian", "traffic_cone")


def fixture_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """The manifest's keys and shapes with random values of a sane scale (fan-in scaled
    weights, positive BN variances, reference points in [0, 1])."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in MANIFEST["keys"].items():
        if not shape:
            out[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith("reference_points.weight"):
            out[key] = torch.rand(shape, generator=g)
        elif len(shape) == 1:
            out[key] = (1.0 if key.endswith("weight") else 0.0) + 0.1 * torch.randn(shape, generator=g)
        else:
            cout = shape[-1] if len(shape) == 5 else shape[0]    # spconv 1: (kD, kH, kW, Cin, Cout)
            out[key] = torch.randn(shape, generator=g) * (torch.Size(shape).numel() // cout) ** -0.5
    return out


def write_official_file(path: Path, state: dict[str, torch.Tensor] | None = None) -> Path:
    """An mmcv checkpoint (``state_dict`` + ``meta``) of the fixture weights at ``path``."""
    torch.save({"state_dict": state if state is not None else fixture_state_dict(),
                "meta": {"CLASSES": CLASSES, "epoch": 20, "mmcv_version": "1.6.0"}}, path)
    return path
