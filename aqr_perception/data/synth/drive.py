"""Generate one synthetic drive as a rosbag2 (MCAP) with ground truth.

Topics (names from the node config, so the node reads the bag with its defaults):
    /LIDAR_TOP                          sensor_msgs/PointCloud2 (x y z intensity ring), lidar_rate_hz
    /CAM_*/image_rect_compressed        sensor_msgs/CompressedImage (JPEG), camera_rate_hz
      (sensor_msgs/Image rgb8 with node.image_transport = raw, on node.image_topic_format)
    /CAM_*/camera_info                  sensor_msgs/CameraInfo
    /tf_static                          base_link -> LIDAR_TOP -> CAM_* (optical frames)
    /tf                                 map -> base_link (ego pose) at every sweep
    /gt/detections                      vision_msgs/Detection3DArray in LIDAR_TOP, every sweep
    /gt/velocities                      aqr_perception/DetectionVelocityArray

Next to the bag: ``<name>.gt.json`` (nuScenes-style: ego poses, boxes in the LiDAR and
global frames, sizes as w, l, h) and, on request, ``<name>.png``.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer
from scipy.spatial.transform import Rotation

from aqr_perception.config import AqrConfig
from aqr_perception.data import rosbag_msgs as M
from aqr_perception.data.boxes import points_in_boxes, rotation_wxyz, transform_boxes, yaw_quaternion_wxyz
from aqr_perception.data.corruptions import cameras_removed, darken, fog, reduced_lidar_keep
from aqr_perception.data.rig import Camera, nuscenes_like_rig, resize_intrinsics
from aqr_perception.data.synth.camera_sim import render
from aqr_perception.data.synth.lidar_sim import LidarModel, simulate_sweep
from aqr_perception.data.synth.world import CLASS_SPECS, World, make_world
from aqr_perception.data.typestore import project_typestore

LIDAR_FRAME, BASE_FRAME, MAP_FRAME = "LIDAR_TOP", "base_link", "map"
EPOCH_S = 1_700_000_000           # drives start at EPOCH_S + 1000 * seed seconds


@dataclass
class DriveResult:
    """What was written."""

    bag: Path
    gt_json: Path
    lidar_frames: int = 0
    camera_frames: int = 0
    gt_boxes: int = 0
    messages: dict[str, int] = field(default_factory=dict)


def lidar_mount(cfg: AqrConfig) -> np.ndarray:
    """(4, 4) LiDAR -> base_link: ``synth.lidar_height`` up, ``synth.lidar_mount_yaw_deg`` about z."""
    s = cfg.synth
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("z", s.lidar_mount_yaw_deg, degrees=True).as_matrix()
    T[2, 3] = s.lidar_height
    return T


def drive_cameras(cfg: AqrConfig) -> list[Camera]:
    """The rig at the configured image size (nuScenes-like placement on the vehicle, names from
    the node config); ``lidar_to_camera`` from the LiDAR as mounted (:func:`lidar_mount`)."""
    s = cfg.synth
    base = nuscenes_like_rig()
    names = cfg.node.camera_names
    if len(names) != len(base):
        raise ValueError(f"the synthetic rig has {len(base)} cameras, node.camera_names lists {len(names)}")
    # the rig is given for a LiDAR aligned with base_link; a yawed LiDAR sees the cameras turned back
    mount = np.eye(4)
    mount[:3, :3] = lidar_mount(cfg)[:3, :3]
    return [Camera(name, s.image_width, s.image_height,
                   resize_intrinsics(c.K, s.image_width / c.width, s.image_height / c.height),
                   c.lidar_to_camera @ mount if s.lidar_mount_yaw_deg else c.lidar_to_camera)
            for name, c in zip(names, base)]


def _corrupt_points(points: np.ndarray, ring: np.ndarray, cfg: AqrConfig, rng: np.random.Generator):
    s = cfg.synth
    if s.corruption == "no_lidar":
        return points[:0], ring[:0]
    if s.corruption == "no_intensity":      # what the node reads from a cloud without an intensity field
        out = points.copy()
        out[:, 3] = 0.0
        return out, ring
    if s.corruption == "reduced_lidar":
        keep = reduced_lidar_keep(ring, s.reduced_lidar_keep_every, s.reduced_lidar_drop, rng)
        return points[keep], ring[keep]
    return points, ring


def _corrupt_image(rgb: np.ndarray, depth: np.ndarray, cfg: AqrConfig, rng: np.random.Generator) -> np.ndarray:
    c = cfg.synth.corruption
    if c == "dark":
        return darken(rgb, rng)
    if c == "fog":
        return fog(rgb, depth)
    return rgb


def _cameras_present(cfg: AqrConfig, cams: list[Camera]) -> list[Camera]:
    gone = cameras_removed(cfg.synth.corruption, [c.name for c in cams], cfg.synth.missing_camera)
    return [cam for cam in cams if cam.name not in gone]


@dataclass
class SweepEvent:
    """One LiDAR sweep of a simulated drive (the LiDAR frame is ``LIDAR_FRAME``).

    points (P, 4) ``[x, y, z, intensity]`` and ring (P,) after the configured corruption;
    ``boxes_lidar`` / ``boxes_global`` (N, 9) and ``objects`` the ground truth within
    ``synth.gt_max_distance``; ``num_lidar_pts`` (N,) points inside each box (clean sweep)."""

    t: float
    stamp_ns: int
    ego: np.ndarray                 # (4, 4) base_link -> map
    points: np.ndarray
    ring: np.ndarray
    boxes_lidar: np.ndarray
    boxes_global: np.ndarray
    objects: list
    num_lidar_pts: np.ndarray


@dataclass
class CameraEvent:
    """One camera instant: RGB (H, W, 3) per present camera, all stamped ``stamp_ns``."""

    t: float
    stamp_ns: int
    ego: np.ndarray
    images: dict[str, np.ndarray]


@dataclass
class DriveSimulation:
    """A simulated drive: the rig, the LiDAR mount and the events in time order."""

    cameras: list[Camera]
    present: list[Camera]           # the cameras that deliver images (corruptions drop some)
    lidar_to_base: np.ndarray       # (4, 4)
    t0_ns: int
    duration_s: float
    lidar_times: list[float]        # s from t0, the sweeps'
    camera_times: list[float]       # s from t0, the camera instants'
    events: Iterator[SweepEvent | CameraEvent]


def simulate_drive(cfg: AqrConfig, seed: int) -> DriveSimulation:
    """The drive of ``seed``, deterministic in it; the events are simulated as they are read."""
    s = cfg.synth
    rng = np.random.default_rng(seed)
    corrupt_rng = np.random.default_rng([seed, 1])   # corruptions never shift the clean stream
    duration = s.frames_per_drive / s.lidar_rate_hz
    world: World = make_world(rng, duration, s.object_density)
    world.lidar_height = s.lidar_height
    world.ego_yaw_rate = s.ego_yaw_rate
    cams = drive_cameras(cfg)
    present = _cameras_present(cfg, cams)
    model = LidarModel(beams=s.lidar_beams, azimuth_steps=s.lidar_azimuth_steps, max_range=s.lidar_max_range)
    lidar_to_base = lidar_mount(cfg)
    t0_ns = (EPOCH_S + 1000 * seed) * 1_000_000_000
    ns = lambda t: t0_ns + int(round(t * 1e9))  # noqa: E731

    lidar_times = [k / s.lidar_rate_hz for k in range(s.frames_per_drive)]
    cam_times = [j / s.camera_rate_hz for j in range(int(np.ceil(duration * s.camera_rate_hz)))]

    def events() -> Iterator[SweepEvent | CameraEvent]:
        # at equal times the cameras go first, as a driver's images of the sweep's instant
        for t, kind in sorted([(t, 1) for t in lidar_times] + [(t, 0) for t in cam_times]):
            ego = world.ego_pose(t)
            lidar_to_global = ego @ lidar_to_base
            boxes_g, objs = world.boxes(t)
            boxes_l = transform_boxes(boxes_g, np.linalg.inv(lidar_to_global))
            if kind == 1:
                refl = np.array([CLASS_SPECS[o.cls].reflectivity for o in objs])
                pts, ring = simulate_sweep(boxes_l, refl, s.lidar_height, model, rng)
                inside = points_in_boxes(pts[:, :3], boxes_l, margin=0.1) if len(objs) else np.zeros((len(pts), 0))
                n_pts = inside.sum(axis=0)
                pts_c, ring_c = _corrupt_points(pts, ring, cfg, corrupt_rng)
                near = np.hypot(boxes_l[:, 0], boxes_l[:, 1]) <= s.gt_max_distance
                sel = [i for i in range(len(objs)) if near[i]]
                yield SweepEvent(t, ns(t), ego, pts_c, ring_c, boxes_l[sel], boxes_g[sel], [objs[i] for i in sel],
                                 n_pts[sel])
            else:
                colors, classes = [o.color for o in objs], [o.cls for o in objs]
                stamp = ns(t + (s.time_offset_s if s.corruption == "time_offset" else 0.0))
                images = {}
                for cam in present:
                    r = render(cam, boxes_l, colors, lidar_to_global, s.lidar_height, classes)
                    images[cam.name] = _corrupt_image(r.rgb, r.depth, cfg, corrupt_rng)
                yield CameraEvent(t, stamp, ego, images)

    return DriveSimulation(cams, present, lidar_to_base, t0_ns, duration, lidar_times, cam_times, events())


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    """The drive's JPEG of an (H, W, 3) RGB image (the bag's CompressedImage data, the
    nuScenes export's file)."""
    return bytes(M.compressed_image(0, "", rgb, quality).data)


def generate_drive(cfg: AqrConfig, out_dir: Path, name: str, seed: int, picture: bool = False) -> DriveResult:
    """Write ``out_dir/name`` (rosbag2 folder) and ``out_dir/name.gt.json``; deterministic in ``seed``."""
    s, node = cfg.synth, cfg.node
    sim = simulate_drive(cfg, seed)
    cams, lidar_to_base, t0_ns = sim.cameras, sim.lidar_to_base, sim.t0_ns
    store = project_typestore()
    out_dir.mkdir(parents=True, exist_ok=True)
    bag_path = out_dir / name
    result = DriveResult(bag_path, out_dir / f"{name}.gt.json")
    gt_frames, picture_data = [], None
    raw = node.image_transport == "raw"
    img_topic_type = "sensor_msgs/msg/Image" if raw else "sensor_msgs/msg/CompressedImage"
    image_topic = node.image_topic_format

    writer = Writer(bag_path, version=9, storage_plugin=StoragePlugin.MCAP)
    if s.compress:
        writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)  # MCAP chunk compression
    with writer:
        conns = {}

        def write(topic: str, msgtype: str, stamp_ns: int, msg) -> None:
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=store)
            writer.write(conns[topic], stamp_ns, bytes(store.serialize_cdr(msg, msgtype)))
            result.messages[topic] = result.messages.get(topic, 0) + 1

        static = [M.transform_stamped(t0_ns, BASE_FRAME, LIDAR_FRAME, lidar_to_base)]
        static += [M.transform_stamped(t0_ns, LIDAR_FRAME, c.name, np.linalg.inv(c.lidar_to_camera)) for c in cams]
        write("/tf_static", "tf2_msgs/msg/TFMessage", t0_ns, M.tf_message(static))

        for ev in sim.events:
            if isinstance(ev, SweepEvent):
                stamp, boxes_l = ev.stamp_ns, ev.boxes_lidar
                classes = [o.cls for o in ev.objects]
                ids = [str(o.track_id) for o in ev.objects]
                # the ego pose of the sweep's instant is out before the sweep (odometry runs
                # faster than a LiDAR turns), so a multi-sweep reader can align it on arrival
                write("/tf", "tf2_msgs/msg/TFMessage", stamp,
                      M.tf_message([M.transform_stamped(stamp, MAP_FRAME, BASE_FRAME, ev.ego)]))
                write(node.lidar_topic, "sensor_msgs/msg/PointCloud2", stamp,
                      M.pointcloud2(stamp, LIDAR_FRAME, ev.points, ev.ring))
                write(s.gt_topic, "vision_msgs/msg/Detection3DArray", stamp,
                      M.detection_array(stamp, LIDAR_FRAME, boxes_l, classes, ids))
                write(s.gt_velocity_topic, "aqr_perception/msg/DetectionVelocityArray", stamp,
                      M.velocity_array(stamp, LIDAR_FRAME, boxes_l, ids))
                gt_frames.append(_gt_frame(stamp, ev.ego, lidar_to_base, boxes_l, ev.boxes_global, ev.objects,
                                           ev.num_lidar_pts))
                result.lidar_frames += 1
                result.gt_boxes += len(ev.objects)
                if picture and picture_data is None and ev.t >= sim.duration_s / 2:
                    picture_data = {"points": ev.points, "boxes": boxes_l, "classes": classes, "t": ev.t}
            else:
                for cam in sim.present:
                    rgb = ev.images[cam.name]
                    msg = M.raw_image(ev.stamp_ns, cam.name, rgb) if raw else \
                        M.compressed_image(ev.stamp_ns, cam.name, rgb, s.jpeg_quality)
                    write(image_topic.format(camera=cam.name), img_topic_type, ev.stamp_ns, msg)
                    write(node.camera_info_topic_format.format(camera=cam.name), "sensor_msgs/msg/CameraInfo",
                          ev.stamp_ns, M.camera_info(ev.stamp_ns, cam.name, cam.K, cam.width, cam.height))
                result.camera_frames += 1
                if picture and picture_data is not None and "images" not in picture_data:
                    picture_data["images"] = ev.images
    meta = {"seed": seed, "corruption": s.corruption, "frames": result.lidar_frames, "lidar_frame": LIDAR_FRAME,
            "classes": list(cfg.model.classes), "cameras": [c.name for c in cams],
            "lidar_rate_hz": s.lidar_rate_hz, "camera_rate_hz": s.camera_rate_hz,
            "image_size": [s.image_width, s.image_height], "lidar_to_ego": lidar_to_base.tolist()}
    result.gt_json.write_text(json.dumps({"meta": meta, "frames": gt_frames}, indent=1))
    if picture and picture_data is not None:
        from aqr_perception.data.pictures import drive_picture

        drive_picture(out_dir / f"{name}.png", picture_data, cams, cfg)
    return result


def _gt_frame(stamp_ns: int, ego: np.ndarray, lidar_to_base: np.ndarray, boxes_l: np.ndarray, boxes_g: np.ndarray,
              objs: list, n_pts: np.ndarray) -> dict:
    frame = {"stamp_ns": stamp_ns, "timestamp_us": stamp_ns // 1000,
             "ego_pose": {"translation": ego[:3, 3].tolist(), "rotation": rotation_wxyz(ego)}, "boxes": []}
    for bl, bg, o, n in zip(boxes_l, boxes_g, objs, n_pts):
        frame["boxes"].append({
            "instance": int(o.track_id), "detection_name": o.cls, "attribute_name": o.attribute,
            "lidar": {"center": bl[:3].tolist(), "yaw": float(bl[6]), "velocity": bl[7:9].tolist()},
            "translation": bg[:3].tolist(), "size": [float(bg[4]), float(bg[3]), float(bg[5])],  # w, l, h
            "rotation": yaw_quaternion_wxyz(float(bg[6])),
            "velocity": bg[7:9].tolist(), "num_lidar_pts": int(n)})
    return frame
