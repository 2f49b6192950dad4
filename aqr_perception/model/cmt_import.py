"""Import the published CMT weights (an mmcv checkpoint) into :class:`CmtAqrDetector`.

The official fusion checkpoint ``voxel0075_vov_1600x640_epoch20.pth`` (junjie18/CMT
#16, #115) holds ``{"state_dict": ..., "meta": ...}`` with mmdet3d's module names.
:func:`map_key` renames each key onto this project's modules, :func:`convert_tensor`
changes the layouts that differ, and :func:`import_state_dict` checks that every key
found a home and every weight of ours was filled:

===============================================  ==========================================
official                                         ours
===============================================  ==========================================
``img_backbone.stem.stem_{k}/{conv,norm}``       ``img_backbone.stem.{k-1}.{conv,bn}``
``img_backbone.stage{s}.OSA{s}_{b}.layers.{i}``  ``img_backbone.stages.{s-2}.blocks.{b-1}.layers.{i}``
``...OSA{s}_{b}.concat`` / ``.ese.fc``           ``...blocks.{b-1}.concat`` / ``.ese.fc``
``img_neck.{lateral,fpn}_convs.{i}.conv``        ``img_neck.{lateral,fpn}_convs.{i}``
``pts_middle_encoder.*``                         ``lidar.middle.*`` (sparse weights: spconv 2 layout)
``pts_backbone.*`` / ``pts_neck.*``              ``lidar.backbone.*`` / ``lidar.neck.*``
``pts_bbox_head.shared_conv.{conv,bn}``          ``lidar.shared_conv.{0,1}``
``pts_bbox_head.{bev,rv}_embedding``             ``position.{bev,rv}_embedding``
``pts_bbox_head.reference_points``               ``reference_points``
``...decoder.layers.{n}.attentions.{0,1}.attn``  ``decoder.layers.{n}.{self,cross}_attn``
``...decoder.layers.{n}.ffns.0.layers.{0.0,1}``  ``decoder.layers.{n}.ffn.{0,3}``
``...decoder.layers.{n}.norms.{i}``, post_norm   the same names under ``decoder.``
``pts_bbox_head.task_heads.0.{head}.{0,1,3}``    ``heads.branches.{head}`` / ``heads.cls`` (grouped
                                                 Conv1d (L*o, i, 1) -> per-layer (L, o, i))
===============================================  ==========================================

BatchNorm's ``num_batches_tracked`` has no counterpart in a frozen BatchNorm and is
dropped (counted). The AQR routers are ours alone: ``allow_missing=("aqr",)`` leaves
them at their initial weights with the output layer's weight zeroed, so every query
starts with lidar_weight == camera_weight and, in global mode, the same bias on every
key: the softmax is unchanged and the imported model computes CMT.

Sparse-conv weights: spconv 1 (and mmdet3d checkpoints written with it) keeps
``(kD, kH, kW, Cin, Cout)``, spconv 2 ``(Cout, kD, kH, kW, Cin)``. The layout is told
from the shape (the CMT layers' channel counts are never their kernel sizes); a
checkpoint saved by spconv 2.1 (CMT's README environment) is already in ours.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from aqr_perception.config import ModelConfig
from aqr_perception.model.checkpoint import CheckpointError, save_checkpoint
from aqr_perception.model.detector import CmtAqrDetector

#: names for groups of our keys that the official weights cannot have
MISSING_GROUPS = {"aqr": "decoder.routers."}

_RULES: list[tuple[re.Pattern, str]] = [(re.compile(p), r) for p, r in [
    # VoVNet-eSE
    (r"^img_backbone\.stem\.stem_(\d)/conv\.(.+)$", "img_backbone.stem.{0-1}.conv.{1}"),
    (r"^img_backbone\.stem\.stem_(\d)/norm\.(.+)$", "img_backbone.stem.{0-1}.bn.{1}"),
    (r"^img_backbone\.stage(\d)\.OSA\d_(\d+)\.layers\.(\d+)\.OSA\d_\d+_\d+/conv\.(.+)$",
     "img_backbone.stages.{0-2}.blocks.{1-1}.layers.{2}.conv.{3}"),
    (r"^img_backbone\.stage(\d)\.OSA\d_(\d+)\.layers\.(\d+)\.OSA\d_\d+_\d+/norm\.(.+)$",
     "img_backbone.stages.{0-2}.blocks.{1-1}.layers.{2}.bn.{3}"),
    (r"^img_backbone\.stage(\d)\.OSA\d_(\d+)\.concat\.OSA\d_\d+_concat/conv\.(.+)$",
     "img_backbone.stages.{0-2}.blocks.{1-1}.concat.conv.{2}"),
    (r"^img_backbone\.stage(\d)\.OSA\d_(\d+)\.concat\.OSA\d_\d+_concat/norm\.(.+)$",
     "img_backbone.stages.{0-2}.blocks.{1-1}.concat.bn.{2}"),
    (r"^img_backbone\.stage(\d)\.OSA\d_(\d+)\.ese\.fc\.(.+)$", "img_backbone.stages.{0-2}.blocks.{1-1}.ese.fc.{2}"),
    # CPFPN
    (r"^img_neck\.(lateral_convs|fpn_convs)\.(\d+)\.conv\.(.+)$", "img_neck.{0}.{1}.{2}"),
    # LiDAR: SparseEncoder, SECOND, SECONDFPN, the head's shared conv
    (r"^pts_middle_encoder\.(.+)$", "lidar.middle.{0}"),
    (r"^pts_backbone\.(.+)$", "lidar.backbone.{0}"),
    (r"^pts_neck\.(.+)$", "lidar.neck.{0}"),
    (r"^pts_bbox_head\.shared_conv\.conv\.(.+)$", "lidar.shared_conv.0.{0}"),
    (r"^pts_bbox_head\.shared_conv\.bn\.(.+)$", "lidar.shared_conv.1.{0}"),
    # queries and position encodings
    (r"^pts_bbox_head\.reference_points\.(.+)$", "reference_points.{0}"),
    (r"^pts_bbox_head\.(bev_embedding|rv_embedding)\.(.+)$", "position.{0}.{1}"),
    # decoder
    (r"^pts_bbox_head\.transformer\.decoder\.layers\.(\d+)\.attentions\.0\.attn\.(.+)$",
     "decoder.layers.{0}.self_attn.{1}"),
    (r"^pts_bbox_head\.transformer\.decoder\.layers\.(\d+)\.attentions\.1\.attn\.(.+)$",
     "decoder.layers.{0}.cross_attn.{1}"),
    (r"^pts_bbox_head\.transformer\.decoder\.layers\.(\d+)\.ffns\.0\.layers\.0\.0\.(.+)$",
     "decoder.layers.{0}.ffn.0.{1}"),
    (r"^pts_bbox_head\.transformer\.decoder\.layers\.(\d+)\.ffns\.0\.layers\.1\.(.+)$",
     "decoder.layers.{0}.ffn.3.{1}"),
    (r"^pts_bbox_head\.transformer\.decoder\.layers\.(\d+)\.norms\.(\d)\.(.+)$",
     "decoder.layers.{0}.norms.{1}.{2}"),
    (r"^pts_bbox_head\.transformer\.decoder\.post_norm\.(.+)$", "decoder.post_norm.{0}"),
    # task heads (one task): grouped Conv1d + GroupLayerNorm
    (r"^pts_bbox_head\.task_heads\.0\.cls_logits\.(\d)\.(.+)$", "heads.cls.{0}.{1}"),
    (r"^pts_bbox_head\.task_heads\.0\.(center|height|dim|rot|vel)\.(\d)\.(.+)$", "heads.branches.{0}.{1}.{2}"),
]]
_ARITH = re.compile(r"\{(\d)(?:-(\d))?\}")


def map_key(key: str) -> str | None:
    """Our name for an official key, or None when no rule covers it."""
    key = key.removeprefix("module.")            # a state_dict saved from a DDP wrapper
    for pattern, template in _RULES:
        m = pattern.match(key)
        if m:
            return _fill(template, m.groups())
    return None


def _fill(template: str, groups: tuple[str, ...]) -> str:
    """``{i}`` -> group i, ``{i-n}`` -> group i minus n (official indices count from 1 or 2)."""
    return _ARITH.sub(lambda a: str(int(groups[int(a[1])]) - int(a[2])) if a[2] else groups[int(a[1])], template)


def spconv1_to_spconv2(weight: Tensor) -> Tensor:
    """(kD, kH, kW, Cin, Cout) -> (Cout, kD, kH, kW, Cin)."""
    return weight.permute(4, 0, 1, 2, 3).contiguous()


def convert_tensor(ours: str, value: Tensor, target: Tensor) -> tuple[Tensor, str]:
    """``value`` in the layout of our ``target`` tensor, and the conversion applied ("" if none).

    Raises ValueError when no known conversion gives the target's shape.
    """
    want = tuple(target.shape)
    if tuple(value.shape) == want:
        return value, ""
    if value.dim() == 5 and target.dim() == 5 and tuple(value.permute(4, 0, 1, 2, 3).shape) == want:
        return spconv1_to_spconv2(value), "spconv1->spconv2"
    if ours.startswith("heads.") and value.numel() == target.numel():
        # grouped Conv1d weight (L*o, i, 1) / GroupLayerNorm or bias (L*o,) -> (L, o, i) / (L, o)
        conv = value.dim() == 3 and value.shape[-1] == 1 and target.dim() == 3
        if conv or (value.dim() == 1 and target.dim() == 2):
            return value.reshape(want), "grouped->per-layer"
    raise ValueError(f"shape {tuple(value.shape)} does not fit {ours} {want}")


@dataclass
class ImportReport:
    """What happened to every key. ``loaded`` counts our tensors filled."""

    loaded: int = 0
    conversions: dict[str, int] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)        # num_batches_tracked with nowhere to go
    unmatched: list[str] = field(default_factory=list)      # official keys no rule maps
    unknown_target: list[str] = field(default_factory=list)  # mapped to a name our model lacks
    shape_mismatch: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)        # ours, not filled and not allowed
    left_at_init: list[str] = field(default_factory=list)   # ours, not filled, allowed

    @property
    def ok(self) -> bool:
        return not (self.unmatched or self.unknown_target or self.shape_mismatch or self.missing)

    def problems(self, limit: int = 8) -> list[str]:
        """One line per problem kind, naming the first ``limit`` keys."""
        out = []
        for title, keys in (("official keys no rule maps", self.unmatched),
                            ("official keys mapped to a name this model lacks", self.unknown_target),
                            ("shape mismatches", self.shape_mismatch),
                            ("weights of this model the checkpoint does not fill", self.missing)):
            if keys:
                more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
                out.append(f"{len(keys)} {title}: {', '.join(keys[:limit])}{more}")
        return out


def _allowed(key: str, allow_missing: Iterable[str]) -> bool:
    return any(key.startswith(MISSING_GROUPS.get(a, a)) for a in allow_missing)


def import_state_dict(model: CmtAqrDetector, official: dict[str, Tensor],
                      allow_missing: Iterable[str] = ()) -> ImportReport:
    """Map ``official`` onto ``model`` in place when everything fits; return the report.

    Nothing is loaded unless the report is ok (no unmatched key, no mismatch, nothing
    missing beyond ``allow_missing``: group names of :data:`MISSING_GROUPS` or key prefixes).
    """
    allow_missing = tuple(allow_missing)
    ours = model.state_dict()
    rep = ImportReport()
    new: dict[str, Tensor] = {}
    for key, value in official.items():
        name = map_key(key)
        if name is None:
            rep.unmatched.append(key)
            continue
        if name not in ours:
            if key.endswith("num_batches_tracked"):
                rep.dropped.append(key)
            else:
                rep.unknown_target.append(f"{key} -> {name}")
            continue
        try:
            tensor, how = convert_tensor(name, value, ours[name])
        except ValueError as exc:
            rep.shape_mismatch.append(f"{key}: {exc}")
            continue
        if how:
            rep.conversions[how] = rep.conversions.get(how, 0) + 1
        new[name] = tensor.to(ours[name].dtype)
    for name in ours:
        if name not in new:
            (rep.left_at_init if _allowed(name, allow_missing) else rep.missing).append(name)
    if not rep.ok:
        return rep
    model.load_state_dict(new, strict=False)
    rep.loaded = len(new)
    if any(k.startswith(MISSING_GROUPS["aqr"]) for k in rep.left_at_init):
        neutral_routers(model)
    return rep


@torch.no_grad()
def neutral_routers(model: CmtAqrDetector) -> None:
    """Zero each router's output weight: both weights start at sigmoid(init_logit) for
    every query, so the global-mode bias is one constant per query and changes nothing."""
    for router in model.decoder.routers:
        router.mlp[-1].weight.zero_()


class CmtImportError(CheckpointError):
    """The official checkpoint cannot be read or does not fit the config (one line, exit 2)."""


def read_mmcv_checkpoint(path: str | Path, trust: bool = False) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(state_dict, meta) of an mmcv checkpoint (a bare state_dict is accepted too).

    Read with ``torch.load(weights_only=True)``; ``trust`` unpickles arbitrary objects
    (only for a file from a source you trust, when its meta holds more than plain data).
    """
    path = Path(path)
    if not path.is_file():
        raise CmtImportError(f"{path}: no such file")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        hint = "" if trust else " (if it is the official file and its meta holds objects, --trust-file reads it)"
        raise CmtImportError(f"{path}: not readable as a PyTorch checkpoint: {type(exc).__name__}: {first}{hint}") \
            from None
    if isinstance(blob, dict) and isinstance(blob.get("state_dict"), dict):
        state, meta = blob["state_dict"], blob.get("meta") or {}
    elif isinstance(blob, dict) and blob and all(isinstance(v, Tensor) for v in blob.values()):
        state, meta = blob, {}
    else:
        keys = ", ".join(map(str, list(blob)[:5])) if isinstance(blob, dict) else type(blob).__name__
        raise CmtImportError(f"{path}: not an mmcv checkpoint (holds {keys}; expected state_dict and meta)")
    return {k: v for k, v in state.items() if isinstance(v, Tensor)}, meta if isinstance(meta, dict) else {}


def import_cmt_checkpoint(path: str | Path, cfg: ModelConfig, out: str | Path, allow_missing: Iterable[str] = (),
                          trust: bool = False) -> ImportReport:
    """Read the official file, import it into a model built from ``cfg``, write our checkpoint.

    Raises :class:`CmtImportError` naming the keys when the weights do not fit, or when
    the checkpoint's class list (mmcv meta ``CLASSES``) differs from ``cfg.classes``.
    """
    state, meta = read_mmcv_checkpoint(path, trust)
    classes = meta.get("CLASSES")
    if classes is not None and list(classes) != list(cfg.classes):
        raise CmtImportError(f"{path}: its classes {list(classes)} are not the config's {list(cfg.classes)} "
                             "(model.classes must list them in the checkpoint's order)")
    model = CmtAqrDetector(cfg)
    rep = import_state_dict(model, state, allow_missing)
    if not rep.ok:
        groups = ", ".join(f"{k} ({v})" for k, v in MISSING_GROUPS.items())
        raise CmtImportError(f"{path}: the weights do not fit {cfg.name}: " + "; ".join(rep.problems())
                             + f". Nothing written. --allow-missing takes a group [{groups}] or a key prefix")
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    plain = {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool)) and k != "config"}
    save_checkpoint(out, model, meta={
        "imported_from": {"file": Path(path).name, "sha256": digest.hexdigest(), "mmcv_meta": plain,
                          "conversions": rep.conversions, "dropped": len(rep.dropped),
                          "left_at_init": rep.left_at_init},
        "note": "CMT weights imported by aqr-perception import-cmt; routers left at init are neutral"})
    return rep
