"""The one configuration object of aqr_perception.

``AqrConfig`` holds every setting of the model, the ROS node, synthetic data, training
and evaluation. It is loaded from YAML (``config/*.yaml``), validated with pydantic,
and shared by the node, the CLI, training and evaluation. Validation errors name the
offending key (``model.transformer.num_queries: Input should be greater than 0``).

YAML files may start from another file with ``base: other.yaml`` (relative to the
file), then override any subset of keys (mappings merge recursively, everything else
replaces). ``load_config(path, overrides=["model.aqr.strength=3.0"])`` applies
dotted overrides last.

The node's ROS parameters are exactly the fields of :class:`NodeConfig` (nested
fields become dotted parameter names, e.g. ``sync.max_image_age_s``); its parameter
file is ``config/aqr_perception.param.yaml`` and its JSON schema, generated from
this module, is ``schema/aqr_perception.schema.json``.
"""
from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PACKAGE_DIR = Path(__file__).resolve().parent


def _find_config_dir() -> Path:
    """config/ of a source checkout, else share/aqr_perception/config of a colcon install."""
    source = PACKAGE_DIR.parent / "config"
    if source.is_dir():
        return source
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("aqr_perception")) / "config"
    except Exception:  # no ament index: report the source path in later errors
        return source


CONFIG_DIR = _find_config_dir()
DEFAULT_CONFIG = CONFIG_DIR / "tiny.yaml"

NUSCENES_CLASSES: tuple[str, ...] = (
    "car", "truck", "construction_vehicle", "bus", "trailer",
    "barrier", "motorcycle", "bicycle", "pedestrian", "traffic_cone",
)
#: nuScenes camera order used by CMT (and the node's default camera order).
NUSCENES_CAMERAS: tuple[str, ...] = (
    "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT",
    "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT",
)

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names every bad key."""


def one_line(text: str) -> str:
    """A multi-line error (one line per bad key) as the one line a start-up error gets."""
    head, *rest = [line.strip() for line in text.strip().splitlines() if line.strip()] or [""]
    return " ".join([head, "; ".join(rest)]) if rest else head


def output_folder(path: Path | str, flag: str = "--out", make: bool = True) -> Path:
    """``path`` made as a folder to write into, before any work: ConfigError in one line
    when it cannot be (a file of that name, a file among its parents, no permission, a
    read-only file system) instead of a traceback after the work. ``make=False``: only
    checked (its first existing ancestor must be a writable folder), for a command that
    leaves nothing behind when its input turns out unusable."""
    path = Path(path)
    if not make:
        there = next(p for p in (path, *path.parents) if p.exists())
        if there == path and not path.is_dir():
            raise ConfigError(f"{flag} {path}: a file is there, not a folder")
        if not there.is_dir():
            raise ConfigError(f"{flag} {path}: cannot make the folder (Not a directory)")
        if not os.access(there, os.W_OK | os.X_OK):
            raise ConfigError(f"{flag} {path}: {there} is not writable")
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"{flag} {path}: a file is there, not a folder") from None
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot make the folder ({exc.strerror or exc})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: the folder is not writable")
    return path


class _Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments re-validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- model
class ImageBranchConfig(_Section):
    """Camera branch: ResNet or VoVNet + FPN, only the stride-16 level feeds the head."""

    backbone: Literal["resnet", "vovnet"] = Field(
        "resnet", description="ResNet (depth, base_width) or VoVNet-eSE (vovnet: the 1600x640 CMT model's)")
    depth: Literal[18, 34, 50] = Field(50, description="ResNet depth")
    vovnet: Literal["V-39-eSE", "V-57-eSE", "V-99-eSE"] = Field("V-99-eSE", description="VoVNet variant")
    camera_ego_motion: bool = Field(
        False, description="build lidar2img with the ego's motion between the sweep's and each image's stamp "
                           "(the /tf pose a multi-sweep model reads), as nuScenes' converters build CMT's: each "
                           "camera at its own ego pose. Off: the static extrinsics (this project's checkpoints)")
    channel_order: Literal["rgb", "bgr"] = Field(
        "rgb", description="channel order the backbone reads (pixel_mean/std are in this order); the published "
                           "CMT weights were trained on BGR (mmcv's to_rgb=False)")
    input_height: PositiveInt = Field(320, description="network input height per view, px")
    input_width: PositiveInt = Field(800, description="network input width per view, px")
    feature_stride: Literal[16] = Field(16, description="stride of the feature map used as memory (CMT: 16)")
    fpn_channels: PositiveInt = Field(256, description="FPN output channels")
    frozen_bn: bool = Field(True, description="freeze BatchNorm statistics and affine parameters")
    base_width: PositiveInt = Field(64, description="ResNet stem width (64 = standard ResNet)")
    pixel_mean: list[float] = Field([123.675, 116.28, 103.53], min_length=3, max_length=3)
    pixel_std: list[float] = Field([58.395, 57.12, 57.375], min_length=3, max_length=3)

    @model_validator(mode="after")
    def _divisible(self) -> ImageBranchConfig:
        for name in ("input_height", "input_width"):
            if getattr(self, name) % 32:
                raise ValueError(f"{name} must be a multiple of 32 (ResNet stride), got {getattr(self, name)}")
        return self


class SparseEncoderConfig(_Section):
    """mmdet3d SparseEncoder (basicblock) of the voxel LiDAR branch; defaults: CMT voxel0075."""

    base_channels: PositiveInt = 16
    output_channels: PositiveInt = 128
    encoder_channels: list[list[PositiveInt]] = Field(
        [[16, 16, 32], [32, 32, 64], [64, 64, 128], [128, 128]], min_length=1,
        description="per stage: residual blocks, then (all stages but the last) a stride-2 conv to the last entry")
    encoder_paddings: list[list[Annotated[int, Field(ge=0)] | list[Annotated[int, Field(ge=0)]]]] = Field(
        [[0, 0, 1], [0, 0, 1], [0, 0, [0, 1, 1]], [0, 0]],
        description="padding of each stage's stride-2 conv (int or [z, y, x]); unused for residual blocks")

    @model_validator(mode="after")
    def _stages(self) -> SparseEncoderConfig:
        if [len(c) for c in self.encoder_channels] != [len(p) for p in self.encoder_paddings]:
            raise ValueError("encoder_paddings must have the shape of encoder_channels")
        cin, last = self.base_channels, len(self.encoder_channels) - 1
        for i, stage in enumerate(self.encoder_channels):
            for j, cout in enumerate(stage):
                strided = j == len(stage) - 1 and i != last
                if not strided and cout != cin:
                    raise ValueError(f"encoder_channels[{i}][{j}] = {cout}: a residual block keeps its input's "
                                     f"{cin} channels")
                cin = cout
        for p in (q for stage in self.encoder_paddings for q in stage):
            if isinstance(p, list) and len(p) != 3:
                raise ValueError(f"a padding list is [z, y, x], got {p}")
        return self

    @property
    def downsample(self) -> int:
        """x/y stride of the encoder (one stride-2 conv per stage but the last)."""
        return 2 ** (len(self.encoder_channels) - 1)

    def output_depth(self, grid_z: int) -> int:
        """z cells of the output for ``grid_z`` voxel cells (the sparse grid has grid_z + 1)."""
        d = grid_z + 1
        for stage in self.encoder_paddings[:-1]:
            p = stage[-1][0] if isinstance(stage[-1], list) else stage[-1]
            d = (d + 2 * p - 3) // 2 + 1
        return (d - 3) // 2 + 1


class LidarBranchConfig(_Section):
    """LiDAR branch: pillars (PFN + scatter) or voxels (mean + sparse 3D conv), then SECOND + FPN."""

    encoder: Literal["pillar", "voxel"] = Field(
        "pillar", description="pillar: PointPillars encoder in plain torch; voxel: hard voxels + the sparse 3D "
                              "SparseEncoder of the published CMT weights (needs spconv)")
    voxel_size: list[PositiveFloat] = Field([0.075, 0.075, 0.2], min_length=3, max_length=3,
                                            description="voxel encoder: x/y/z voxel size, m")
    max_points_per_voxel: PositiveInt = Field(10, description="voxel encoder: points kept per voxel")
    max_voxels: PositiveInt = Field(160000, description="voxel encoder: voxels kept per sample (first seen)")
    sparse: SparseEncoderConfig = SparseEncoderConfig()
    shared_conv_bn_eps: PositiveFloat = Field(
        1e-3, description="BatchNorm eps of the shared 3x3 conv on the BEV map (the published CMT weights: 1e-5)")
    pillar_size: list[PositiveFloat] = Field([0.3, 0.3], min_length=2, max_length=2,
                                             description="pillar x/y size, m")
    max_points_per_pillar: PositiveInt = 20
    pillar_sampling: Literal["first", "strided"] = Field(
        "first", description="which points a pillar with more than max_points_per_pillar keeps: the first ones in "
                             "input order (mmdet3d hard voxelization; with sweeps stacked current-first this drops "
                             "the past sweeps of dense pillars) or max_points_per_pillar evenly spaced through them "
                             "(every sweep keeps its share)")
    max_pillars: PositiveInt = 30000
    point_features: Literal[4, 5] = Field(4, description="x, y, z, intensity (, time lag of the point's sweep, s)")
    intensity_max: PositiveFloat = Field(
        255.0, description="the model reads intensity on a 0..intensity_max scale (nuScenes and the synthetic "
                           "drives: 0-255); the node scales its input with node.lidar_intensity_scale and warns "
                           "in diagnostics when what it sees does not fit")
    intensity_required: bool = Field(
        True, description="the model cannot use a sweep without intensity (no intensity field, or all zero): "
                          "it reads geometry through intensity, so such sweeps are masked and the frame runs "
                          "camera-only (counted, diagnostics WARN). Training with train.drop_intensity_p > 0 "
                          "writes false into the checkpoint: that model uses the geometry alone")
    sweeps: Annotated[int, Field(ge=1, le=20)] = Field(
        1, description="LiDAR sweeps per sample: the current one + past ones moved into its frame with the /tf "
                       "ego pose (CMT reads the key frame + 10 past ones on nuScenes: 11); > 1 needs point_features 5")
    sweep_max_age_s: PositiveFloat = Field(0.5, description="past sweeps older than this are not used")
    pfn_channels: PositiveInt = 64
    backbone_layer_nums: list[PositiveInt] = [5, 5]
    backbone_strides: list[PositiveInt] = [2, 2]
    backbone_channels: list[PositiveInt] = [128, 256]
    fpn_upsample_strides: list[PositiveInt] = [1, 2]
    fpn_channels: list[PositiveInt] = [256, 256]

    @model_validator(mode="after")
    def _lengths(self) -> LidarBranchConfig:
        n = len(self.backbone_layer_nums)
        for name in ("backbone_strides", "backbone_channels", "fpn_upsample_strides", "fpn_channels"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} must have {n} entries like backbone_layer_nums")
        if self.sweeps > 1 and self.point_features != 5:
            raise ValueError("sweeps > 1 needs point_features: 5 (the time-lag channel)")
        return self


class TransformerConfig(_Section):
    """CMT decoder and position-encoding settings."""

    embed_dims: PositiveInt = 256
    num_heads: PositiveInt = 8
    num_layers: PositiveInt = 6
    ffn_dims: PositiveInt = 1024
    dropout: Probability = 0.1
    num_queries: PositiveInt = 900
    depth_num: PositiveInt = Field(64, description="depths per image ray in the RV position encoding")
    depth_start: PositiveFloat = Field(1.0, description="first ray depth, m")
    query_pe_clamp: bool = Field(
        False, description="encode the queries at their reference points clamped into [1e-5, 1 - 1e-5], as CMT "
                           "does (inverse_sigmoid(ref).sigmoid()); the published weights need it, this project's "
                           "checkpoints were trained without it (learned points can leave [0, 1])")

    @model_validator(mode="after")
    def _heads(self) -> TransformerConfig:
        if self.embed_dims % self.num_heads:
            raise ValueError(f"embed_dims ({self.embed_dims}) must be divisible by num_heads ({self.num_heads})")
        if self.embed_dims % 2:
            raise ValueError("embed_dims must be even")
        return self


class AqrRouterConfig(_Section):
    """Adaptive Query Routing: a learned per-query modality bias on cross-attention logits."""

    enabled: bool = Field(True, description="false gives plain CMT (the no-AQR baseline)")
    mode: Literal["global", "local"] = Field("global", description="bias every key of a modality, or only a window")
    strength: PositiveFloat = Field(5.0, description="bias magnitude scale")
    bev_window: PositiveInt = Field(15, description="local mode: BEV window side, cells (odd)")
    camera_window: PositiveInt = Field(15, description="local mode: camera window side, feature pixels (odd)")
    init_logit: float = Field(1.5, description="router output bias init: weights start at sigmoid(init_logit)")
    per_layer: bool = Field(True, description="one router per decoder layer (else one shared)")
    router: Literal["learned", "fixed"] = Field(
        "learned", description="fixed: no router, every query gets weights sigmoid(init_logit) "
                               "(ablation: the same bias without per-query routing)")

    @property
    def learned_routing(self) -> bool:
        """A router predicts the weights (false: plain CMT, or the fixed-weight ablation)."""
        return self.enabled and self.router == "learned"

    @model_validator(mode="after")
    def _odd(self) -> AqrRouterConfig:
        for name in ("bev_window", "camera_window"):
            if getattr(self, name) % 2 == 0:
                raise ValueError(f"{name} must be odd (centred on the query's cell), got {getattr(self, name)}")
        return self


class HeadConfig(_Section):
    """Task heads (center, height, dim, rot, vel, cls) on every decoder layer's output."""

    per_layer: bool = Field(
        False, description="one set of heads per decoder layer (CMT's grouped Conv1d + GroupLayerNorm, the "
                           "published weights) instead of one set shared by all layers")
    norm_eps: PositiveFloat = Field(1e-5, description="eps of the heads' LayerNorm (CMT's GroupLayerNorm: 1e-6)")
    cmt_slots: bool = Field(
        False, description="read the outputs as the published CMT weights do: the height branch carries log dx "
                           "and dim[1] the centre z (CMT issues #71, #103)")


class DecodeConfig(_Section):
    """NMS-free top-k decoding of the last decoder layer."""

    topk: PositiveInt = 300
    score_threshold: Probability = Field(
        0.0, description="the model's own floor: decoded detections below it are dropped before the node's "
                         "(node.score_threshold) or evaluation's (eval.score_threshold) threshold; 0 keeps the top-k")
    post_center_range: list[float] = Field([-61.2, -61.2, -10.0, 61.2, 61.2, 10.0], min_length=6, max_length=6)


class DenoiseConfig(_Section):
    """Query denoising (training only)."""

    enabled: bool = True
    max_groups: PositiveInt = 10
    box_noise_scale: Annotated[float, Field(ge=0.0)] = 1.0
    split: Probability = Field(0.75, description="noise beyond which the label becomes no-object")


class LossConfig(_Section):
    """Hungarian matching costs and per-layer losses."""

    focal_alpha: Probability = 0.25
    focal_gamma: Annotated[float, Field(ge=0.0)] = 2.0
    cls_weight: Annotated[float, Field(ge=0.0)] = 2.0
    bbox_weight: Annotated[float, Field(ge=0.0)] = 0.25
    code_weights: list[Annotated[float, Field(ge=0.0)]] = Field(
        [2.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2], min_length=10, max_length=10)
    match_cls_weight: Annotated[float, Field(ge=0.0)] = 2.0
    match_bbox_weight: Annotated[float, Field(ge=0.0)] = 0.25


class ModelConfig(_Section):
    """The AQR-biased CMT detector (see ../shared/spec/aqr-cmt.md)."""

    name: str = "cmt_aqr_r50_800x320"
    classes: list[str] = Field(list(NUSCENES_CLASSES), min_length=1)
    num_views: PositiveInt = 6
    point_cloud_range: list[float] = Field([-54.0, -54.0, -5.0, 54.0, 54.0, 3.0], min_length=6, max_length=6,
                                           description="x_min y_min z_min x_max y_max z_max, LiDAR frame, m")
    bev_size: PositiveInt = Field(180, description="BEV token grid side (memory holds bev_size^2 BEV tokens)")
    image: ImageBranchConfig = ImageBranchConfig()
    lidar: LidarBranchConfig = LidarBranchConfig()
    transformer: TransformerConfig = TransformerConfig()
    aqr: AqrRouterConfig = AqrRouterConfig()
    attention: Literal["dense", "fused"] = Field(
        "fused", description="decoder attention: fused (exact; cross-attention without the dense bias, "
                             "self-attention through PyTorch's SDPA) or dense (the reference, written out)")
    heads: HeadConfig = HeadConfig()
    decode: DecodeConfig = DecodeConfig()
    denoise: DenoiseConfig = DenoiseConfig()
    loss: LossConfig = LossConfig()

    @model_validator(mode="after")
    def _geometry(self) -> ModelConfig:
        if self.image.fpn_channels != self.transformer.embed_dims:
            raise ValueError(f"image.fpn_channels ({self.image.fpn_channels}) must equal transformer.embed_dims "
                             f"({self.transformer.embed_dims}): image features are memory tokens")
        r = self.point_cloud_range
        if not (r[0] < r[3] and r[1] < r[4] and r[2] < r[5]):
            raise ValueError(f"point_cloud_range must be [min_x, min_y, min_z, max_x, max_y, max_z], got {r}")
        lc = self.lidar
        if lc.encoder == "pillar":
            what, grid, down = "pillar grid", [round((r[3 + i] - r[i]) / lc.pillar_size[i]) for i in range(2)], 1
        else:
            what, grid = "voxel grid", [round((r[3 + i] - r[i]) / lc.voxel_size[i]) for i in range(2)]
            down = lc.sparse.downsample
        first = lc.backbone_strides[0] * down
        if grid[0] % first or grid[1] % first or grid[0] // first != self.bev_size or grid[1] != grid[0]:
            raise ValueError(
                f"{what} {grid} with first backbone stride {lc.backbone_strides[0]}"
                + (f" after the sparse encoder's {down}x" if down > 1 else "")
                + f" must give a square {self.bev_size}x{self.bev_size} BEV map (bev_size)")
        return self

    @property
    def feature_hw(self) -> tuple[int, int]:
        """Camera feature map (H, W) per view at ``image.feature_stride``."""
        s = self.image.feature_stride
        return self.image.input_height // s, self.image.input_width // s


# ------------------------------------------------------------------------------ node
class SyncConfig(_Section):
    """LiDAR-triggered camera association (no message_filters)."""

    max_image_age_s: PositiveFloat = Field(
        0.12, description="a camera is stale when |lidar stamp - (image stamp + offset)| exceeds this, s")
    camera_time_offsets_s: list[float] = Field(
        [], description="per-camera offsets added to image stamps, in camera order (empty: all 0)")
    image_buffer_size: Annotated[int, Field(ge=1, le=64)] = Field(4, description="images kept per camera")
    camera_wait_s: Annotated[float, Field(ge=0.0, le=5.0)] = Field(
        0.05, description="when a cloud arrives before a live camera's image of that instant (newest image older "
                          "than the cloud but inside max_image_age_s) or before its first calibration, wait at "
                          "most this long (wall clock) for it; 0 disables")
    time_jump_back_s: PositiveFloat = Field(
        1.0, description="a stamp this far behind the newest one resets the caches (bag loop, sim reset)")
    calibration_wait_s: Annotated[float, Field(ge=0.0)] = Field(
        2.0, description="startup: the first cloud waits this long (wall clock) for every camera's calibration "
                         "and first image, then runs with the missing cameras masked")


class NodeConfig(_Section):
    """Parameters of the aqr_perception ROS 2 node (ROS parameter names = field paths)."""

    config_file: str = Field("", description="AqrConfig YAML for the model (empty: the packaged tiny.yaml, "
                                             "or the config stored in the checkpoint)")
    checkpoint: str = Field("", description="model checkpoint (.pt); empty: the bundled one; "
                                            "'none': untrained weights built from config_file")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto, cpu, cuda or cuda:N")
    runtime: Literal["torch", "torch_bf16", "onnxruntime"] = Field(
        "torch", description="torch: eager PyTorch; torch_bf16: the image and BEV convolutions in bfloat16 "
                             "channels-last, the rest fp32 (fast on CPUs with native bf16: AVX512-BF16, AMX; and on "
                             "GPUs); onnxruntime (CPU): those convolutions exported to ONNX at start-up and run in "
                             "onnxruntime, the rest in torch (bench/runtime.py)")
    cpu_threads: Annotated[int, Field(ge=0)] = Field(
        0, description="PyTorch intra-op threads (0: PyTorch's default, one per core); set it below the core count "
                       "when other processes share the CPU: oversubscribed threads slow inference many times over")
    keep_freed_memory: bool = Field(
        True, description="glibc keeps freed blocks up to 32 MB for the next frame instead of returning them to the "
                          "kernel (each frame's images and activations are otherwise faulted in again: ~15,000 page "
                          "faults per tiny-model frame); RSS stays at its peak. Applied at configure, kept until exit")
    lidar_topic: str = Field("/LIDAR_TOP", min_length=1, description="sensor_msgs/PointCloud2 input")
    camera_names: list[str] = Field(list(NUSCENES_CAMERAS), min_length=1,
                                    description="camera names in model view order")
    image_topic_format: str = Field("/{camera}/image_rect_compressed",
                                    description="image topic per camera; {camera} is replaced")
    image_transport: Literal["raw", "compressed"] = Field(
        "compressed", description="sensor_msgs/Image (raw) or sensor_msgs/CompressedImage")
    camera_info_topic_format: str = Field("/{camera}/camera_info", description="CameraInfo topic per camera")
    extrinsics_source: Literal["tf_static", "file"] = Field(
        "tf_static", description="LiDAR->camera transforms from /tf_static or from calibration_file")
    calibration_file: str = Field("", description="YAML with per-camera lidar_to_camera 4x4 (extrinsics_source=file)")
    fixed_frame: str = Field("map", min_length=1,
                             description="world-fixed frame (REP 105 odom or map) whose /tf pose of the LiDAR aligns "
                                         "past sweeps (multi-sweep models only)")
    qos_reliability: Literal["best_effort", "reliable"] = Field(
        "best_effort", description="input QoS; reliable for lossless bag replay")
    qos_depth: Annotated[int, Field(ge=1, le=100)] = Field(2, description="input subscription queue depth")
    score_threshold: Probability = Field(0.3, description="detections below this score are not published")
    max_detections: Annotated[int, Field(ge=1, le=1000)] = Field(
        200, description="at most this many detections per frame (highest scores)")
    lidar_to_model_yaw_deg: Annotated[float, Field(ge=-180.0, le=180.0)] = Field(
        0.0, description="turns the LiDAR frame about z into the one the model was trained in, deg: points and "
                         "calibration go in turned, detections come out turned back into the LiDAR frame. 90 for a "
                         "LiDAR with x forward (REP 103) and a model trained on nuScenes (LIDAR_TOP: x right, "
                         "y forward: the published CMT weights); -90 the other way round")
    lidar_intensity_scale: PositiveFloat = Field(
        1.0, description="multiplies the cloud's intensity to reach the model's scale (0-255 for the bundled model): "
                         "255.0 for a driver normalising to 0-1, 0.00389 (255/65535) for a 16-bit one")
    max_points: Annotated[int, Field(ge=1)] = Field(
        2_000_000, description="a PointCloud2 declaring more points is refused (frame skipped); a 128-beam "
                               "sensor gives ~0.3 M per sweep")
    max_image_pixels: Annotated[int, Field(ge=1)] = Field(
        40_000_000, description="an image declaring more pixels (JPEG/PNG header, Image width x height) is refused "
                                "before decoding (camera masked for the frame, counted); 8K is 33 M")
    max_processing_time_ms: PositiveFloat = Field(200.0, description="diagnostics WARN beyond this")
    max_consecutive_delay_ms: PositiveFloat = Field(1000.0, description="diagnostics ERROR when slow this long")
    publish_markers: bool = Field(True, description="publish ~/markers (RViz boxes) while subscribed")
    publish_debug_images: bool = Field(False, description="per camera ~/debug/<camera>/image: the model's input "
                                                          "view with the boxes projected (only while subscribed)")
    diagnostics_period_s: PositiveFloat = Field(1.0, description="period of /diagnostics, s")
    lidar_timeout_s: PositiveFloat = Field(
        2.0, description="diagnostics ERROR when no PointCloud2 came for this long, s")
    sync: SyncConfig = SyncConfig()

    @model_validator(mode="after")
    def _per_camera_settings(self) -> NodeConfig:
        for name in ("image_topic_format", "camera_info_topic_format"):
            fmt = getattr(self, name)
            try:
                topics = {fmt.format(camera=c) for c in self.camera_names}
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"{name} {fmt!r}: only the field {{camera}} can be filled in "
                                 f"({type(exc).__name__}: {exc})") from None
            if len(topics) < len(self.camera_names):
                raise ValueError(f"{name} {fmt!r} gives the same topic to several cameras: it must contain {{camera}}")
        offsets = self.sync.camera_time_offsets_s
        if offsets and len(offsets) != len(self.camera_names):
            raise ValueError(f"sync.camera_time_offsets_s has {len(offsets)} entries for {len(self.camera_names)} "
                             "cameras (camera_names): give one per camera, or none")
        return self

    @model_validator(mode="after")
    def _extrinsics_file_named(self) -> NodeConfig:
        if self.extrinsics_source == "file" and not self.calibration_file:
            raise ValueError("extrinsics_source is 'file' but calibration_file is empty: name the YAML with each "
                             "camera's lidar_to_camera, or use extrinsics_source tf_static")
        return self

    def input_topics(self) -> list[str]:
        """Every topic the node may subscribe to (LiDAR, images, CameraInfo, /tf_static, and
        /tf, read by multi-sweep models for the ego pose)."""
        topics = [self.lidar_topic]
        for cam in self.camera_names:
            topics += [self.image_topic_format.format(camera=cam), self.camera_info_topic_format.format(camera=cam)]
        return topics + (["/tf_static"] if self.extrinsics_source == "tf_static" else []) + ["/tf"]


# ----------------------------------------------------------------- data / train / eval
class SynthConfig(_Section):
    """Synthetic multi-sensor drives (the embedded default data). Topic names and image
    transport follow ``node`` so that the node reads the bags with its defaults."""

    seed: int = 0
    num_drives: PositiveInt = 1
    frames_per_drive: PositiveInt = Field(20, description="LiDAR sweeps per drive")
    image_width: PositiveInt = 1600
    image_height: PositiveInt = 900
    jpeg_quality: Annotated[int, Field(ge=10, le=100)] = 85
    compress: bool = Field(True, description="zstd chunk compression inside the MCAP file")
    lidar_beams: PositiveInt = 32
    lidar_azimuth_steps: PositiveInt = 1080
    lidar_max_range: PositiveFloat = 80.0
    lidar_height: PositiveFloat = 1.84
    lidar_mount_yaw_deg: Annotated[float, Field(ge=-180.0, le=180.0)] = Field(
        0.0, description="the LiDAR's yaw on the vehicle (base_link), deg; nuScenes' LIDAR_TOP: -90 (its x axis "
                         "points right). Cameras keep their place on the vehicle")
    ego_yaw_rate: float = Field(0.0, description="the ego turns at this rate, rad/s (0: straight along the street)")
    lidar_rate_hz: PositiveFloat = 20.0
    camera_rate_hz: PositiveFloat = 12.0
    object_density: Annotated[float, Field(ge=0.0, le=5.0)] = 1.0
    gt_max_distance: PositiveFloat = Field(60.0, description="GT boxes farther than this from the LiDAR are omitted")
    corruption: Literal["clean", "no_lidar", "reduced_lidar", "no_intensity", "no_cameras", "one_camera_missing",
                        "dark", "fog", "time_offset"] = "clean"
    missing_camera: str = Field("CAM_FRONT", description="the camera removed by one_camera_missing")
    time_offset_s: float = Field(0.15, description="camera stamp error of the time_offset corruption, s")
    reduced_lidar_keep_every: PositiveInt = Field(4, description="reduced_lidar keeps every n-th beam ...")
    reduced_lidar_drop: Probability = Field(0.5, description="... and drops this share of its points")
    gt_topic: str = "/gt/detections"
    gt_velocity_topic: str = "/gt/velocities"
    gt_markers_topic: str = Field("/gt/markers", description="the player's RViz markers of gt_topic (play, demo, eval)")
    output_dir: str = "runs/synth"


class TrainConfig(_Section):
    """Training loop settings."""

    seed: int = 0
    epochs: PositiveInt = 20
    batch_size: PositiveInt = 1
    lr: PositiveFloat = 1e-4
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.01
    grad_clip: PositiveFloat = 35.0
    schedule: Literal["cosine", "cyclic", "constant"] = "cosine"
    warmup_steps: Annotated[int, Field(ge=0)] = 0
    drop_images_p: Probability = Field(0.25, description="masked-modal training: zero all images")
    drop_lidar_p: Probability = Field(0.25, description="masked-modal training: remove the LiDAR")
    drop_view_p: Probability = Field(
        0.0, description="masked-modal training: zero one random camera view of a sample that kept its images")
    drop_intensity_p: Probability = Field(
        0.0, description="masked-modal training: zero the LiDAR intensity of a sample that kept its LiDAR (a "
                         "driver without an intensity field gives zeros)")
    aug_rotation: Annotated[float, Field(ge=0.0, le=3.1416)] = Field(
        0.785, description="global BEV augmentation: max |yaw rotation| of the scene (rad)")
    aug_scale: tuple[PositiveFloat, PositiveFloat] = Field(
        (0.9, 1.1), description="global BEV augmentation: scale range")
    aug_flip_p: Probability = Field(
        0.5, description="global BEV augmentation: chance of mirroring y, and of mirroring x")
    cbgs: bool = Field(
        False, description="class-balanced grouping and sampling (CBGS, as CMT trains on nuScenes): samples are "
                           "repeated so that every class present is about equally often in an epoch")
    num_workers: Annotated[int, Field(ge=0)] = 0
    log_every: PositiveInt = 10
    checkpoint_every: Annotated[int, Field(ge=0)] = Field(200, description="steps between last.pt saves (0: per epoch)")
    output_dir: str = "runs/train"

    @model_validator(mode="after")
    def _masked_modal(self) -> TrainConfig:
        if self.drop_images_p + self.drop_lidar_p > 1.0:
            raise ValueError("drop_images_p + drop_lidar_p must not exceed 1")
        if self.aug_scale[0] > self.aug_scale[1]:
            raise ValueError("aug_scale must be [low, high] with low <= high")
        return self


class EvalConfig(_Section):
    """nuScenes-style detection evaluation."""

    dist_thresholds: list[PositiveFloat] = [0.5, 1.0, 2.0, 4.0]
    dist_th_tp: PositiveFloat = 2.0
    min_recall: Probability = 0.1
    min_precision: Probability = 0.1
    max_boxes_per_sample: PositiveInt = 500
    class_range: dict[str, PositiveFloat] = {
        "car": 50, "truck": 50, "bus": 50, "trailer": 50, "construction_vehicle": 50,
        "pedestrian": 40, "motorcycle": 40, "bicycle": 40, "traffic_cone": 30, "barrier": 30,
    }
    score_threshold: Probability = Field(
        0.05, description="the node runs at this score threshold in evaluation (mAP integrates precision over "
                          "recall: low-scoring detections count); the node's own default is node.score_threshold")
    stamp_tolerance_s: Annotated[float, Field(ge=0.0, le=0.5)] = Field(
        0.01, description="an answer belongs to the GT frame nearest its stamp within this (a fifth of the 20 Hz "
                          "LiDAR period): GT and bag stamps rarely agree to the nanosecond")
    distance_bins: list[list[Annotated[float, Field(ge=0.0)]]] = Field(
        [[0.0, 20.0], [20.0, 30.0], [30.0, 50.0]],
        description="distance bands from the ego (m) of the report's AP / recall / ATE by distance")
    pictures: Annotated[int, Field(ge=0)] = Field(3, description="frames drawn with predictions over GT")
    picture_score_threshold: Probability = Field(0.2, description="predictions drawn in the pictures")
    animation: bool = Field(False, description="also every frame's picture as one animated GIF, replay.gif (the "
                                               "demo turns it on)")
    replay_calibration_wait_s: PositiveFloat = Field(
        10.0, description="replay: the first cloud waits this long for every camera (a camera absent from the bag "
                          "costs it once)")
    replay_camera_wait_s: PositiveFloat = Field(
        0.2, description="replay: a cloud waits this long for a camera's image of its instant still in transport "
                         "(played before the cloud, which waits replay's 50 ms settle first; on loopback they land in "
                         "milliseconds). An image that comes after its cloud in the bag is held back by the stepwise "
                         "replay until the answer, so such a cloud costs this wait in full (every other sweep of a "
                         "20 Hz LiDAR with 12 Hz cameras: 1.0 s made the bundled drive's replay 60 % waiting)")
    replay_rate: Annotated[float, Field(ge=0.0, le=100.0)] = Field(
        0.0, description="replay: 0 plays stepwise (each sweep waits for the node's answer, nothing is missed); "
                         "r > 0 plays at the bag's pace times r with the node's own queue depth, as on a vehicle: "
                         "sweeps the node has no time for go unanswered, are counted, and are not scored")
    replay_diagnostics_period_s: PositiveFloat = Field(
        0.1, description="replay with a recording (demo, eval --record): the node publishes /diagnostics at least "
                         "this often in the bag's time, so that a drive of a few seconds (the bundled one: 0.75 s) "
                         "shows its diagnostics as it goes; the node's own default is node.diagnostics_period_s")
    replay_step_timeout_s: PositiveFloat = Field(
        60.0, description="replay: the longest wait for the node's answer to a sweep before the next is played")
    routing_score_threshold: Probability = Field(
        0.3, description="the report's mean router weights are taken over detections at least this confident")
    output_dir: str = "runs/eval"


class AqrConfig(_Section):
    """Everything: model, node, synthetic data, training, evaluation."""

    model: ModelConfig = ModelConfig()
    node: NodeConfig = NodeConfig()
    synth: SynthConfig = SynthConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()


# --------------------------------------------------------------------------- loading
def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml_with_base(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: circular 'base:' chain {' -> '.join(map(str, seen + (path,)))}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be a file name, got {base!r}")
    return _deep_merge(_read_yaml_with_base(path.parent / base, seen + (path,)), data)


def parse_override(text: str) -> dict[str, Any]:
    """``"model.aqr.strength=3"`` -> ``{"model": {"aqr": {"strength": 3}}}`` (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {text!r} has an empty key")
    value: Any = yaml.safe_load(raw) if raw.strip() else ""
    for part in reversed(parts):
        value = {part: value}
    return value


def format_validation_error(exc: ValidationError, source: str = "") -> str:
    """One line per problem, each naming the dotted key and the offending value."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        got = err.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {key}: {msg}{shown}")
    head = f"invalid configuration{' in ' + source if source else ''}:"
    return "\n".join([head, *lines])


def config_from_dict(data: dict[str, Any], source: str = "") -> AqrConfig:
    """Validate a plain mapping into an :class:`AqrConfig` (raises :class:`ConfigError`)."""
    try:
        return AqrConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> AqrConfig:
    """Load, merge and validate a config.

    Args:
        path: YAML file (``base:`` chains allowed); ``None`` loads ``config/tiny.yaml``.
            A bare name without suffix (``"tiny"``) is looked up in ``config/``.
        overrides: dotted ``key=value`` strings applied last.
    """
    p = resolve_config_path(path)
    data = _read_yaml_with_base(p)
    for text in overrides or []:
        data = _deep_merge(data, parse_override(text))
    return config_from_dict(data, str(p) + (f" with the overrides {', '.join(overrides)}" if overrides else ""))


def resolve_config_path(path: str | Path | None) -> Path:
    """Map ``None`` / a preset name / a path to an existing config file path."""
    if path is None or str(path) == "":
        return DEFAULT_CONFIG
    p = Path(path)
    if not p.suffix and not p.exists():
        p = CONFIG_DIR / f"{p.name}.yaml"
    return p


def config_to_dict(cfg: BaseModel) -> dict[str, Any]:
    """Plain-Python (YAML/JSON-safe) mapping of a config section."""
    return json.loads(cfg.model_dump_json())


# ------------------------------------------------------------- ROS parameter file schema
NODE_NAME = "aqr_perception"


def node_param_schema() -> dict[str, Any]:
    """JSON schema of the node's ROS parameter file (Autoware-style ``/**: ros__parameters``)."""
    inner = NodeConfig.model_json_schema()
    defs = inner.pop("$defs", {})
    inner["properties"].update({name: {"type": "boolean", "description": text}
                                for name, text in PROCESS_PARAMETERS.items()})
    node_ref = {"type": "object", "properties": {"ros__parameters": {"$ref": "#/$defs/NodeConfig"}},
                "required": ["ros__parameters"], "additionalProperties": False}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Parameters of the aqr_perception node",
        "description": "Generated by `aqr-perception config schema` from aqr_perception/config.py; "
                       "do not edit by hand.",
        "type": "object",
        "patternProperties": {r"^(/\*\*|/\*|(/\*\*)?/?([A-Za-z_][A-Za-z0-9_]*/)*" + NODE_NAME + ")$": node_ref},
        "minProperties": 1,
        "additionalProperties": False,
        "$defs": {**defs, "NodeConfig": inner},
    }


def _ros_value_problems(key: str, value: Any) -> list[str]:
    """What rcl's parameter-file parser refuses in ``value`` (rcl_yaml_param_parser: a list
    holds one type, true/false, integer, double or string, and holds no lists)."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _ros_value_problems(f"{key}.{k}", v)]
    if value is None:
        return [f"{key}: no value (rcl refuses an empty value: write \"\" for an empty string)"]
    if not isinstance(value, list):
        return []
    if any(v is None for v in value):
        return [f"{key}: a list with an empty entry"]
    if any(isinstance(v, list) for v in value):
        return [f"{key}: a list of lists (a ROS parameter list holds plain values)"]
    kinds = {type(v).__name__ for v in value}
    if len(kinds) > 1:
        return [f"{key}: the list mixes {' and '.join(sorted(kinds))} (a ROS parameter list holds one type"
                + ("; write integers as 0.0" if kinds == {"int", "float"} else "") + f"): {value!r}"]
    return []


class RosParamLoader(yaml.SafeLoader):
    """PyYAML's safe loader with rcl's reading of ``1e-3`` and ``2E5`` as doubles (YAML 1.1,
    PyYAML's, wants a dot in a float; rcl and YAML 1.2 do not)."""


RosParamLoader.add_implicit_resolver(   # after the int and float resolvers: "1" stays an int
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def read_param_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """The ``ros__parameters`` of each node name of a ROS parameter YAML file. Refused
    (:class:`ConfigError`) where ``--params-file`` would be: missing, not YAML, not ``node:
    ros__parameters:`` mappings, or a list rcl cannot type."""
    try:
        data = yaml.load(Path(path).read_text(), Loader=RosParamLoader) or {}
    except OSError as exc:
        raise ConfigError(f"parameter file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"parameter file {path}: not valid YAML: {one_line(str(exc))}") from None
    sections = _param_sections(data, "", path)
    problems = [p for params in sections.values() for k, x in params.items() for p in _ros_value_problems(k, x)]
    if problems:
        raise ConfigError("\n".join([f"parameter file {path}: ROS cannot read it:", *problems]))
    return sections


def holds_ros_parameters(data: Any) -> bool:
    """Whether a YAML mapping is a ROS parameter file (some node, at any namespace depth,
    holds ``ros__parameters``) rather than an :class:`AqrConfig` file."""
    return isinstance(data, dict) and ("ros__parameters" in data or any(map(holds_ros_parameters, data.values())))


def _param_sections(data: Any, prefix: str, path: str | Path) -> dict[str, dict[str, Any]]:
    """``{"/**": {"ros__parameters": {...}}, "ns": {"node": {"ros__parameters": ...}}}`` ->
    ``{"/**": {...}, "ns/node": {...}}``: the parameters of each node name (namespaces nest)."""
    if not isinstance(data, dict):
        raise ConfigError(f"parameter file {path}: {prefix or 'the top level'} must map node names to "
                          "'ros__parameters'")
    out: dict[str, dict[str, Any]] = {}
    for key, value in data.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict) and "ros__parameters" in value:
            params = value["ros__parameters"]
            if not isinstance(params, dict):
                raise ConfigError(f"parameter file {path}: {name}: ros__parameters must be a mapping of parameters")
            out[name] = params
        else:
            out.update(_param_sections(value, name, path))
    return out


#: parameters of the node process that are not NodeConfig's (rclpy's own, and ``autostart``),
#: with their descriptions; a parameter file may set them
PROCESS_PARAMETERS: dict[str, str] = {
    "use_sim_time": "rclpy: follow /clock instead of the system clock",
    "start_type_description_service": "rclpy: offer the type description service",
    "autostart": "configure and activate at start-up (false: wait for `ros2 lifecycle set`)",
}


def node_config_from_param_file(path: str | Path) -> NodeConfig:
    """This node's settings from a ROS parameter YAML file: the ``ros__parameters`` of every
    section naming it (``/**``, ``/*``, ``aqr_perception`` in any namespace) merged in file
    order, as rcl applies them. The process parameters of :data:`PROCESS_PARAMETERS`
    (booleans) are checked and left out."""
    sections = [params for key, params in read_param_file(path).items() if key in ("/**", "/*")
                or key.strip("/").split("/")[-1] == NODE_NAME]
    if not sections:
        raise ConfigError(f"{path}: no '/**' or '{NODE_NAME}' section with ros__parameters")
    merged: dict[str, Any] = {}
    for params in sections:          # as rcl applies them: every matching section, later ones win
        merged = _deep_merge(merged, params)
    not_bool = [k for k in PROCESS_PARAMETERS if k in merged and not isinstance(merged[k], bool)]
    if not_bool:
        raise ConfigError(f"{path}: {', '.join(not_bool)} must be true or false")
    try:
        return NodeConfig.model_validate({k: v for k, v in merged.items() if k not in PROCESS_PARAMETERS})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from None
