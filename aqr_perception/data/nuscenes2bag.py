"""``aqr-perception nuscenes2bag``: nuScenes scenes -> rosbag2 (MCAP) drives the node replays.

Read with the devkit's own ``NuScenes`` class; one bag per scene, with the topics and
types of the established ROS 2 converter, so users' bags and ours look the same:

* ``/LIDAR_TOP`` ``sensor_msgs/PointCloud2`` (x, y, z, intensity, ring as float32, frame
  ``LIDAR_TOP``): every sweep, not only the key frames. nuScenes' fifth channel is the
  ring (the sweep's time lag is the node's to add, as CMT does, when it stacks sweeps);
* ``/CAM_*/compressed`` ``sensor_msgs/CompressedImage``: the original JPEG bytes;
* ``/CAM_*/camera_info``;
* ``/tf``: ``map`` -> ``base_link`` at every LiDAR sample_data (key frames and sweeps);
* ``/tf_static``: ``base_link`` -> every sensor, once at the scene's start;
* the project's ground truth at the key frames: ``/gt/detections``, ``/gt/velocities``
  and ``<scene>.gt.json`` (data/ground_truth.py's format) with the sample and instance
  tokens, attributes and ``num_lidar_pts`` / ``num_radar_pts``.

Stamps are nuScenes' microseconds in nanoseconds. GT velocity is the devkit's
``box_velocity`` (nuScenes stores none: it is the annotations' finite difference), null
in the JSON where the devkit has none (an instance annotated once), as DetectionEval
leaves it out of the velocity error.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer

from aqr_perception.config import NUSCENES_CLASSES, ConfigError, output_folder
from aqr_perception.data import rosbag_msgs as M
from aqr_perception.data.boxes import pose_wxyz, quaternion_to_yaw, transform_boxes
from aqr_perception.data.typestore import project_typestore

LIDAR_CHANNEL, BASE_FRAME, MAP_FRAME = "LIDAR_TOP", "base_link", "map"
CAMERA_TOPIC, INFO_TOPIC = "/{camera}/compressed", "/{camera}/camera_info"
GT_TOPIC, GT_VELOCITY_TOPIC = "/gt/detections", "/gt/velocities"


def _ns(timestamp_us: int) -> int:
    return int(timestamp_us) * 1000


def scene_names(nusc, scenes: list[str] | None, split: str | None) -> list[str]:
    """The scenes asked for (names, or a devkit split), in the dataset's order; ValueError
    naming what is not there."""
    available = [s["name"] for s in nusc.scene]
    if split:
        from nuscenes.utils.splits import create_splits_scenes

        splits = create_splits_scenes()
        if split not in splits:
            raise ValueError(f"unknown split {split!r} (the devkit's: {', '.join(splits)})")
        wanted = set(splits[split])
        chosen = [n for n in available if n in wanted]
        if not chosen:
            raise ValueError(f"no scene of split {split} in this dataset ({len(available)} scenes)")
        return chosen
    if scenes:
        missing = [n for n in scenes if n not in available]
        if missing:
            raise ValueError(f"scene(s) {', '.join(missing)} not in the dataset (it has {', '.join(available[:8])}"
                             f"{', ...' if len(available) > 8 else ''})")
        return [n for n in available if n in set(scenes)]
    return available


def _channel_records(nusc, first_token: str) -> list[dict]:
    records, token = [], first_token
    while token:
        records.append(nusc.get("sample_data", token))
        token = records[-1]["next"]
    return records


def _first_sample_data(nusc, scene: dict, channel: str) -> dict:
    """The scene's first sample_data of a channel (sweeps before the first key frame included)."""
    sd = nusc.get("sample_data", nusc.get("sample", scene["first_sample_token"])["data"][channel])
    while sd["prev"]:
        sd = nusc.get("sample_data", sd["prev"])
    return sd


def _in_scene(nusc, sd: dict, scene_token: str) -> bool:
    return nusc.get("sample", sd["sample_token"])["scene_token"] == scene_token


#: bytes per point of a nuScenes ``.pcd.bin`` (float32 x, y, z, intensity, ring)
PCD_BIN_POINT_BYTES = 5 * 4


def _read_sweep(path: Path) -> np.ndarray | None:
    """(N, 5) float32 points of a ``.pcd.bin``, or None where the file is missing or not a
    whole number of points (a partial download)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(data) % PCD_BIN_POINT_BYTES:
        return None
    return np.frombuffer(data, dtype="<f4").reshape(-1, 5)


def convert_scene(nusc, name: str, out_dir: Path, compress: bool = True) -> tuple[dict[str, int], dict[str, int]]:
    """Write ``out_dir/<name>`` (bag) and ``out_dir/<name>.gt.json``; returns (message counts
    per topic, files skipped: ``lidar`` / ``camera`` files missing or unreadable in the
    dataroot, ``lidar_of``: the scene's LiDAR files). A scene none of whose LiDAR files is
    there raises ValueError and writes nothing."""
    store = project_typestore()
    scene = next(s for s in nusc.scene if s["name"] == name)
    first = nusc.get("sample", scene["first_sample_token"])
    channels = list(first["data"])
    cameras = [c for c in channels if nusc.get("sample_data", first["data"][c])["sensor_modality"] == "camera"]
    records = {c: [sd for sd in _channel_records(nusc, _first_sample_data(nusc, scene, c)["token"])
                   if _in_scene(nusc, sd, scene["token"])] for c in channels}
    calib = {c: nusc.get("calibrated_sensor", records[c][0]["calibrated_sensor_token"]) for c in channels}
    sensor_to_base = {c: pose_wxyz(calib[c]["translation"], calib[c]["rotation"]) for c in channels}
    lidar_to_ego = sensor_to_base[LIDAR_CHANNEL]

    # (stamp, order, topic, type, message): at equal stamps tf first, then images, then the cloud
    messages: list[tuple[int, int, str, str, object]] = []
    t0 = min(_ns(records[c][0]["timestamp"]) for c in channels)
    static = [M.transform_stamped(t0, BASE_FRAME, c, sensor_to_base[c]) for c in channels]
    messages.append((t0, 0, "/tf_static", "tf2_msgs/msg/TFMessage", M.tf_message(static)))
    skipped = {"lidar": 0, "camera": 0, "lidar_of": len(records[LIDAR_CHANNEL])}
    for sd in records[LIDAR_CHANNEL]:
        stamp = _ns(sd["timestamp"])
        ego = nusc.get("ego_pose", sd["ego_pose_token"])
        messages.append((stamp, 1, "/tf", "tf2_msgs/msg/TFMessage", M.tf_message(
            [M.transform_stamped(stamp, MAP_FRAME, BASE_FRAME, pose_wxyz(ego["translation"], ego["rotation"]))])))
        raw = _read_sweep(Path(nusc.dataroot) / sd["filename"])
        if raw is None:
            skipped["lidar"] += 1
            continue
        messages.append((stamp, 3, f"/{LIDAR_CHANNEL}", "sensor_msgs/msg/PointCloud2",
                         M.pointcloud2(stamp, LIDAR_CHANNEL, raw[:, :4], raw[:, 4], ring_datatype=M.FLOAT32)))
    if skipped["lidar"] == skipped["lidar_of"]:
        raise ValueError(f"{name}: none of its {skipped['lidar_of']} LiDAR files is in {nusc.dataroot} (are the "
                         "samples/ and sweeps/ folders downloaded?)")
    for cam in cameras:
        K = np.asarray(calib[cam]["camera_intrinsic"], dtype=np.float64)
        for sd in records[cam]:
            stamp = _ns(sd["timestamp"])
            try:
                data = (Path(nusc.dataroot) / sd["filename"]).read_bytes()
            except FileNotFoundError:
                skipped["camera"] += 1
                continue
            messages.append((stamp, 2, CAMERA_TOPIC.format(camera=cam), "sensor_msgs/msg/CompressedImage",
                             M.jpeg_image(stamp, cam, data)))
            messages.append((stamp, 2, INFO_TOPIC.format(camera=cam), "sensor_msgs/msg/CameraInfo",
                             M.camera_info(stamp, cam, K, sd["width"], sd["height"])))

    gt_frames = []
    sample = first
    while True:
        lidar_sd = nusc.get("sample_data", sample["data"][LIDAR_CHANNEL])
        stamp = _ns(lidar_sd["timestamp"])
        ego_rec = nusc.get("ego_pose", lidar_sd["ego_pose_token"])
        ego = pose_wxyz(ego_rec["translation"], ego_rec["rotation"])
        frame, boxes_g, names, ids = _gt_frame(nusc, sample, stamp, ego_rec, lidar_to_ego)
        gt_frames.append(frame)
        boxes_l = transform_boxes(boxes_g, np.linalg.inv(ego @ lidar_to_ego)) if len(boxes_g) else boxes_g
        messages.append((stamp, 4, GT_TOPIC, "vision_msgs/msg/Detection3DArray",
                         M.detection_array(stamp, LIDAR_CHANNEL, boxes_l, names, ids)))
        messages.append((stamp, 4, GT_VELOCITY_TOPIC, "aqr_perception/msg/DetectionVelocityArray",
                         M.velocity_array(stamp, LIDAR_CHANNEL, boxes_l, ids)))
        if not sample["next"]:
            break
        sample = nusc.get("sample", sample["next"])

    out_dir.mkdir(parents=True, exist_ok=True)
    writer = Writer(out_dir / name, version=9, storage_plugin=StoragePlugin.MCAP)
    if compress:
        writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    counts: dict[str, int] = {}
    with writer:
        conns = {}
        for stamp, _order, topic, msgtype, msg in sorted(messages, key=lambda m: (m[0], m[1], m[2])):
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=store)
            writer.write(conns[topic], stamp, bytes(store.serialize_cdr(msg, msgtype)))
            counts[topic] = counts.get(topic, 0) + 1
    meta = {"source": "nuscenes", "version": nusc.version, "scene": name, "scene_token": scene["token"],
            "frames": len(gt_frames), "lidar_frame": LIDAR_CHANNEL, "classes": list(NUSCENES_CLASSES),
            "cameras": cameras, "lidar_to_ego": lidar_to_ego.tolist()}
    (out_dir / f"{name}.gt.json").write_text(json.dumps({"meta": meta, "frames": gt_frames}, indent=1))
    return counts, skipped


def _json_floats(values) -> list[float | None]:
    """Floats for JSON, None (null) where not finite: an unknown velocity."""
    return [float(v) if np.isfinite(v) else None for v in values]


def _gt_frame(nusc, sample: dict, stamp: int, ego_rec: dict, lidar_to_ego: np.ndarray
              ) -> tuple[dict, np.ndarray, list[str], list[str]]:
    """One key frame in data/ground_truth.py's format (detection classes only), and its global
    boxes (N, 9), class names and instance ids for the GT topics."""
    from nuscenes.eval.detection.utils import category_to_detection_name

    ego = pose_wxyz(ego_rec["translation"], ego_rec["rotation"])
    lidar_to_global = ego @ lidar_to_ego
    frame = {"stamp_ns": stamp, "timestamp_us": stamp // 1000, "sample_token": sample["token"],
             "ego_pose": {"translation": list(ego_rec["translation"]), "rotation": list(ego_rec["rotation"])},
             "boxes": []}
    rows, names, ids = [], [], []
    for ann_token in sample["anns"]:
        ann = nusc.get("sample_annotation", ann_token)
        name = category_to_detection_name(ann["category_name"])
        if name is None:
            continue
        velocity = [float(v) for v in nusc.box_velocity(ann_token)[:2]]      # NaN: a single annotation
        w, x, y, z = ann["rotation"]
        yaw = float(quaternion_to_yaw(np.array([[x, y, z, w]]))[0])
        w, length, h = ann["size"]
        box_g = np.array([*ann["translation"], length, w, h, yaw, *velocity])
        box_l = transform_boxes(box_g[None], np.linalg.inv(lidar_to_global))[0]
        attrs = [nusc.get("attribute", t)["name"] for t in ann["attribute_tokens"]]
        frame["boxes"].append({
            "instance": ann["instance_token"], "sample_annotation_token": ann_token, "detection_name": name,
            "attribute_name": attrs[0] if attrs else "",
            "lidar": {"center": box_l[:3].tolist(), "yaw": float(box_l[6]), "velocity": _json_floats(box_l[7:9])},
            "translation": list(ann["translation"]), "size": list(ann["size"]), "rotation": list(ann["rotation"]),
            "velocity": _json_floats(velocity), "num_lidar_pts": int(ann["num_lidar_pts"]),
            "num_radar_pts": int(ann["num_radar_pts"])})
        rows.append(box_g)
        names.append(name)
        ids.append(ann["instance_token"])
    return frame, np.array(rows, dtype=np.float64).reshape(-1, 9), names, ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aqr-perception nuscenes2bag", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataroot", type=Path, required=True, help="the nuScenes folder (with v1.0-*/, samples/)")
    parser.add_argument("--version", default="v1.0-mini", help="v1.0-mini, v1.0-trainval or v1.0-test")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--scenes", nargs="+", help="scene names (default: all)")
    group.add_argument("--split", help="a split of the devkit (mini_val, val, train, ...)")
    parser.add_argument("--out", type=Path, required=True, help="output folder: <scene> bag + <scene>.gt.json")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    from nuscenes.nuscenes import NuScenes
    from tqdm import tqdm

    if not (args.dataroot / args.version).is_dir():
        print(f"aqr-perception nuscenes2bag: no {args.version} tables in {args.dataroot}", file=sys.stderr)
        return 2
    try:
        output_folder(args.out, make=False)     # made with the first scene: a refused one leaves nothing
    except ConfigError as exc:
        print(f"aqr-perception nuscenes2bag: {exc}", file=sys.stderr)
        return 2
    nusc = NuScenes(version=args.version, dataroot=str(args.dataroot), verbose=not args.quiet)
    try:
        names = scene_names(nusc, args.scenes, args.split)
    except ValueError as exc:
        print(f"aqr-perception nuscenes2bag: {exc}", file=sys.stderr)
        return 2
    for name in tqdm(names, desc="scenes", unit="scene", disable=args.quiet):
        try:
            counts, skipped = convert_scene(nusc, name, args.out)
        except ValueError as exc:
            print(f"aqr-perception nuscenes2bag: {exc}", file=sys.stderr)
            return 2
        if skipped["lidar"] or skipped["camera"]:      # said even with --quiet: the bag lacks them
            tqdm.write(f"aqr-perception nuscenes2bag: {name}: {skipped['lidar']} of {skipped['lidar_of']} LiDAR "
                       f"files and {skipped['camera']} camera files missing or unreadable in {args.dataroot} (a "
                       "partial download?): left out of the bag", file=sys.stderr)
        if not args.quiet:
            tqdm.write(f"{args.out / name}: {counts.get('/' + LIDAR_CHANNEL, 0)} sweeps, "
                       f"{sum(v for k, v in counts.items() if k.endswith('/compressed'))} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
