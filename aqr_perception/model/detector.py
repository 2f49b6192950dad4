"""The AQR-biased CMT detector: points + six images in, 3D boxes and routing weights out.

Data flow (B samples, V views, Q queries, L layers, C = embed_dims):

    points ----> LidarBranch ---------> BEV (B, C, Hb, Wb) --+
    images ----> ResNet|VoVNet + FPN > img (B*V, C, h, w) ----+--> memory (B, Hb*Wb + V*h*w, C)
    lidar2img -> PositionEncoder ---> key PE, query PE            |
    reference points (Q, 3) [+ DN queries] ----------------------> AqrDecoder (routers + bias)
                                                                   |
                                    TaskHeads <--------------------+  (L, B, Q, C)
                                    -> cls_logits (L, B, Q, ncls), bbox_code (L, B, Q, 10)

Missing inputs: ``lidar_valid[b] = False`` masks all BEV keys of sample b,
``camera_valid[b, v] = False`` masks view v's keys; a sample with neither has no
detections (``has_input`` is False).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from aqr_perception.config import ModelConfig
from aqr_perception.model.aqr import MemoryLayout, query_projection
from aqr_perception.model.box_coder import Detections, topk_decode
from aqr_perception.model.decoder import AqrDecoder
from aqr_perception.model.denoising import DenoisingGroups, make_denoising_queries
from aqr_perception.model.heads import TaskHeads, inverse_sigmoid
from aqr_perception.model.lidar import LidarBranch
from aqr_perception.model.positional import PositionEncoder
from aqr_perception.model.resnet import ImageNeck, ResNet
from aqr_perception.model.vovnet import VoVNet


@dataclass
class DetectorInputs:
    """One batch.

    points: B tensors (N_i, F) ``[x, y, z, intensity]`` in the LiDAR frame (m)
    images: (B, V, 3, H, W) float RGB in [0, 255], already at the model's input size
    lidar2img: (B, V, 4, 4) LiDAR frame -> input-image pixels (intrinsics @ extrinsics,
        with the resize to the input size folded in)
    camera_valid: (B, V) bool, False for a missing or stale view
    lidar_valid: (B,) bool, False when there is no LiDAR sweep
    """

    points: list[Tensor]
    images: Tensor
    lidar2img: Tensor
    camera_valid: Tensor
    lidar_valid: Tensor

    def to(self, device: torch.device | str) -> DetectorInputs:
        return DetectorInputs([p.to(device) for p in self.points], self.images.to(device),
                              self.lidar2img.to(device), self.camera_valid.to(device), self.lidar_valid.to(device))

    @property
    def batch_size(self) -> int:
        return int(self.images.shape[0])


@dataclass
class DetectorOutput:
    """Raw outputs. Matching queries: cls_logits (L, B, Q, ncls), bbox_code (L, B, Q, 10),
    lidar_weight / camera_weight (L, B, Q); reference (B, Q, 3). DN queries (training):
    dn_cls_logits (L, B, pad, ncls), dn_bbox_code (L, B, pad, 10), dn. has_input (B,)."""

    cls_logits: Tensor
    bbox_code: Tensor
    lidar_weight: Tensor
    camera_weight: Tensor
    reference: Tensor
    has_input: Tensor
    dn_cls_logits: Tensor | None = None
    dn_bbox_code: Tensor | None = None
    dn: DenoisingGroups | None = None


@dataclass
class FramePrediction:
    """Decoded result of one sample: detections + AQR weights of their queries.

    lidar_weight / camera_weight: (N, L) for the N detections; has_input False means
    no modality was available and nothing was detected.
    """

    detections: Detections
    lidar_weight: Tensor
    camera_weight: Tensor
    has_input: bool


class CmtAqrDetector(nn.Module):
    """CMT with AQR (see the module docstring and ../shared/spec/aqr-cmt.md)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        t, im = cfg.transformer, cfg.image
        self.img_backbone = (ResNet(im.depth, im.base_width, im.frozen_bn) if im.backbone == "resnet" else
                             VoVNet(im.vovnet, im.frozen_bn))
        self.img_neck = ImageNeck(self.img_backbone.out_channels, im.fpn_channels)
        self.lidar = LidarBranch(cfg)
        self.position = PositionEncoder(t.embed_dims, t.depth_num, t.depth_start, cfg.point_cloud_range,
                                        cfg.bev_size, im.feature_stride)
        self.reference_points = nn.Embedding(t.num_queries, 3)
        nn.init.uniform_(self.reference_points.weight, 0, 1)
        self.decoder = AqrDecoder(cfg)
        self.heads = TaskHeads(t.embed_dims, len(cfg.classes), cfg.point_cloud_range, t.num_layers, cfg.heads)
        self.register_buffer("pixel_mean", torch.tensor(im.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(im.pixel_std).view(1, 3, 1, 1), persistent=False)
        fh, fw = cfg.feature_hw
        self.layout = MemoryLayout(cfg.bev_size, cfg.bev_size, cfg.num_views, fh, fw)

    # ---------------------------------------------------------------- memory
    def normalised_images(self, images: Tensor) -> Tensor:
        """(B, V, 3, H, W) RGB 0-255 -> (B*V, 3, H, W) in the backbone's channel order and scale."""
        x = images.flatten(0, 1)
        if self.cfg.image.channel_order == "bgr":
            x = x.flip(1)
        return (x - self.pixel_mean) / self.pixel_std

    def image_branch(self, images: Tensor) -> Tensor:
        """(B, V, 3, H, W) RGB 0-255 -> image features (B*V, C, h, w)."""
        return self.img_neck(self.img_backbone(self.normalised_images(images)))

    def branch_features(self, inputs: DetectorInputs, image_branch: Callable[[Tensor], Tensor],
                        lidar_branch: Callable[[list[Tensor]], Tensor]) -> tuple[Tensor, Tensor]:
        """Image features (B*V, C, h, w) and BEV features (B, C, Hb, Wb); a modality that no
        sample has skips its branch (zeros).

        On CUDA a look at a flag on the host waits for all the work queued before it, and so
        do the LiDAR branch's voxelisation and sparse-convolution rules. So both flags are
        read before anything is queued, and the LiDAR branch runs before the image branch,
        whose convolutions then queue behind it without a wait. The two are independent:
        the order changes no output."""
        b, v = inputs.images.shape[:2]
        any_camera, any_lidar = bool(inputs.camera_valid.any()), bool(inputs.lidar_valid.any())
        bev = lidar_branch(inputs.points) if any_lidar else None
        if any_camera:
            img = image_branch(inputs.images)
        else:
            fh, fw = self.cfg.feature_hw
            img = inputs.images.new_zeros(b * v, self.cfg.transformer.embed_dims, fh, fw)
        if bev is None:
            n = self.cfg.bev_size
            bev = img.new_zeros(b, self.cfg.transformer.embed_dims, n, n)
        return img, bev

    def memory(self, inputs: DetectorInputs) -> tuple[Tensor, Tensor, Tensor]:
        """memory (B, K, C), its position encodings (B, K, C), key padding mask (B, K) bool."""
        img, bev = self.branch_features(inputs, self.image_branch, self.lidar)
        return self.assemble_memory(img, bev, inputs.lidar2img, inputs.camera_valid, inputs.lidar_valid)

    def assemble_memory(self, img: Tensor, bev: Tensor, lidar2img: Tensor, camera_valid: Tensor,
                        lidar_valid: Tensor, img2lidar: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """BEV (B, C, Hb, Wb) + image features (B*V, C, h, w) -> memory, key PE, key padding.
        ``img2lidar`` (B, V, 4, 4): inv(lidar2img) when the caller has it (an exported graph)."""
        lay = self.layout
        b = bev.shape[0]
        pad_h, pad_w = self.cfg.image.input_height, self.cfg.image.input_width
        bev_pe = self.position.bev_key_pe()[None].expand(b, -1, -1)
        img_pe = self.position.image_key_pe(lidar2img, lay.img_h, lay.img_w, pad_h, pad_w, img2lidar)
        memory = torch.cat([rearrange(bev, "b c h w -> b (h w) c"),
                            rearrange(img, "(b v) c h w -> b (v h w) c", b=b)], dim=1)
        pos = torch.cat([bev_pe, rearrange(img_pe, "b v h w c -> b (v h w) c")], dim=1)
        pad = torch.cat([(~lidar_valid)[:, None].expand(b, lay.num_bev),
                         (~camera_valid)[:, :, None].expand(b, lay.num_views, lay.img_h * lay.img_w
                                                           ).reshape(b, -1)], dim=1)
        return memory, pos, pad

    # --------------------------------------------------------------- forward
    def forward(self, inputs: DetectorInputs, gt_boxes: list[Tensor] | None = None,
                gt_labels: list[Tensor] | None = None) -> DetectorOutput:
        """Raw outputs; with ``gt_boxes``/``gt_labels`` in training mode, DN queries are added."""
        memory, memory_pos, pad = self.memory(inputs)
        return self.decode_queries(memory, memory_pos, pad, inputs.lidar2img, inputs.camera_valid,
                                   inputs.lidar_valid, gt_boxes, gt_labels)

    def decode_queries(self, memory: Tensor, memory_pos: Tensor, pad: Tensor, lidar2img: Tensor,
                       camera_valid: Tensor, lidar_valid: Tensor, gt_boxes: list[Tensor] | None = None,
                       gt_labels: list[Tensor] | None = None, img2lidar: Tensor | None = None) -> DetectorOutput:
        """Queries (+ DN queries in training) through the decoder and heads, over ``memory``.
        ``pad`` is :meth:`assemble_memory`'s, made of the same ``lidar_valid`` / ``camera_valid``."""
        cfg, b = self.cfg, memory.shape[0]
        base_ref = self.reference_points.weight
        dn = None
        if self.training and gt_boxes is not None and gt_labels is not None:
            ref, self_mask, dn = make_denoising_queries(gt_boxes, gt_labels, base_ref, cfg.denoise,
                                                        len(cfg.classes), cfg.point_cloud_range)
        else:
            ref, self_mask = base_ref[None].expand(b, -1, -1), None
        pad_h, pad_w = cfg.image.input_height, cfg.image.input_width
        pe_ref = inverse_sigmoid(ref).sigmoid() if cfg.transformer.query_pe_clamp else ref
        query_pos = self.position.query_pe(pe_ref, lidar2img, pad_h, pad_w, camera_valid, img2lidar)
        uv, visible = self.position.project_reference_points(ref, lidar2img, pad_h, pad_w)
        visible = visible & camera_valid[:, :, None]
        proj = query_projection(ref, uv, visible, self.layout, cfg.image.feature_stride, pad_h, pad_w)
        # pad per segment, handed to the attention so that it need not check it (a host sync on CUDA)
        segment_pad = torch.cat([~lidar_valid[:, None], ~camera_valid], dim=1)
        dec = self.decoder(query_pos, memory, memory_pos, self.layout, proj, pad, self_mask,
                           lidar_valid, proj.cam_visible, segment_pad)
        cls_logits, bbox_code = self.heads(dec.features, ref)
        p = dn.pad_size if dn is not None else 0
        has_input = lidar_valid | camera_valid.any(dim=1)
        return DetectorOutput(
            cls_logits=cls_logits[:, :, p:], bbox_code=bbox_code[:, :, p:],
            lidar_weight=dec.lidar_weight[:, :, p:], camera_weight=dec.camera_weight[:, :, p:],
            reference=ref[:, p:], has_input=has_input,
            dn_cls_logits=cls_logits[:, :, :p] if dn is not None else None,
            dn_bbox_code=bbox_code[:, :, :p] if dn is not None else None, dn=dn)

    def forward_with_branches(self, inputs: DetectorInputs, image_branch: Callable[[Tensor], Tensor],
                              bev_dense: Callable[[Tensor], Tensor]) -> DetectorOutput:
        """:meth:`forward` in inference with the convolutional branches run by others (an
        onnxruntime session, a bf16 copy): ``image_branch`` images (B, V, 3, H, W) RGB 0-255
        -> (B*V, C, h, w) fp32; ``bev_dense`` BEV canvas (B, C0, H, W) -> (B, C, Hb, Wb) fp32.
        A modality no sample has skips its branch (zeros), as :meth:`forward` does."""
        img, bev = self.branch_features(inputs, image_branch, lambda points: bev_dense(self.lidar.canvas(points)))
        memory, pos, pad = self.assemble_memory(img, bev, inputs.lidar2img, inputs.camera_valid, inputs.lidar_valid)
        return self.decode_queries(memory, pos, pad, inputs.lidar2img, inputs.camera_valid, inputs.lidar_valid)

    @torch.no_grad()
    def predict(self, inputs: DetectorInputs) -> list[FramePrediction]:
        """Forward + :meth:`decode`."""
        return self.decode(self.forward(inputs))

    def decode(self, out: DetectorOutput) -> list[FramePrediction]:
        """Decode the last layer of every sample (NMS-free top-k, threshold, range filter)."""
        d = self.cfg.decode
        preds = []
        for i in range(out.cls_logits.shape[1]):
            det = topk_decode(out.cls_logits[-1, i], out.bbox_code[-1, i], d.topk, d.score_threshold,
                              d.post_center_range)
            if not bool(out.has_input[i]):
                det = Detections(det.boxes[:0], det.scores[:0], det.labels[:0], det.query_index[:0])
            lw = out.lidar_weight[:, i, det.query_index].T
            cw = out.camera_weight[:, i, det.query_index].T
            preds.append(FramePrediction(det, lw, cw, bool(out.has_input[i])))
        return preds


def build_detector(cfg: ModelConfig) -> CmtAqrDetector:
    return CmtAqrDetector(cfg)
