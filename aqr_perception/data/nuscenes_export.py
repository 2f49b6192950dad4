"""Write synthetic drives as a nuScenes-format dataset (what a user downloads, in small).

``<dataroot>/<version>/*.json``: the 13 tables the devkit's ``NuScenes`` class loads
(``scene``, ``sample``, ``sample_data`` with key frames and sweeps, ``ego_pose``,
``calibrated_sensor``, ``sensor``, ``log``, ``sample_annotation``, ``instance``,
``category``, ``attribute``, ``visibility``, ``map``); ``samples/<channel>/`` and
``sweeps/<channel>/`` hold the key-frame and in-between files: ``LIDAR_TOP`` ``.pcd.bin``
(float32 x5: x, y, z, intensity, ring, sensor frame) and the cameras' JPEGs (the bytes
the drive's bag carries); ``maps/`` a placeholder semantic map.

Key frames (``sample``) are the sweeps that coincide with a camera frame (20 Hz LiDAR,
12 Hz cameras: every 0.25 s), so every key frame has all seven channels at its instant;
every sweep and camera frame is a ``sample_data``. Annotations are the drive's ground
truth at the key frames, with nuScenes categories, attributes, ``num_lidar_pts`` and an
instance per tracked object. Tokens are deterministic (md5 of scene and record).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from aqr_perception.config import AqrConfig
from aqr_perception.data.boxes import rotation_wxyz, yaw_quaternion_wxyz
from aqr_perception.data.synth.drive import SweepEvent, encode_jpeg, simulate_drive

LIDAR_CHANNEL = "LIDAR_TOP"
#: nuScenes detection class -> the nuScenes category the export annotates it with
CATEGORY_OF = {"car": "vehicle.car", "truck": "vehicle.truck", "bus": "vehicle.bus.rigid",
               "trailer": "vehicle.trailer", "construction_vehicle": "vehicle.construction",
               "pedestrian": "human.pedestrian.adult", "motorcycle": "vehicle.motorcycle",
               "bicycle": "vehicle.bicycle", "traffic_cone": "movable_object.trafficcone",
               "barrier": "movable_object.barrier"}
ATTRIBUTES = ("vehicle.moving", "vehicle.stopped", "vehicle.parked", "cycle.with_rider", "cycle.without_rider",
              "pedestrian.sitting_lying_down", "pedestrian.standing", "pedestrian.moving")
VISIBILITY = {"1": "v0-40", "2": "v40-60", "3": "v60-80", "4": "v80-100"}
#: every exported box is given the highest visibility level (the simulator does not grade occlusion)
EXPORT_VISIBILITY = "4"
LOCATION = "singapore-onenorth"


def token(*parts: object) -> str:
    """A 32-hex-digit token, like nuScenes', fixed by what it names."""
    return hashlib.md5("/".join(map(str, parts)).encode()).hexdigest()


def _us(stamp_ns: int) -> int:
    return stamp_ns // 1000


@dataclass
class _Tables:
    rows: dict[str, list[dict]] = field(default_factory=lambda: {name: [] for name in (
        "category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose", "log",
        "scene", "sample", "sample_data", "sample_annotation", "map")})

    def add(self, table: str, **record) -> dict:
        self.rows[table].append(record)
        return record


@dataclass
class ExportedScene:
    """What one scene became: its name, sample tokens in time order and sweep count."""

    name: str
    samples: list[str]
    sweeps: int


def _link(records: list[dict]) -> None:
    """prev / next tokens along a time-ordered chain (nuScenes' linked lists)."""
    for a, b in zip(records, records[1:]):
        a["next"], b["prev"] = b["token"], a["token"]


def _static_tables(tables: _Tables, cameras: list[str]) -> None:
    for name in sorted(set(CATEGORY_OF.values())):
        tables.add("category", token=token("category", name), name=name, description=name)
    for name in ATTRIBUTES:
        tables.add("attribute", token=token("attribute", name), name=name, description=name)
    for level, desc in VISIBILITY.items():
        tables.add("visibility", token=level, level=desc, description=f"visibility of whole object is {desc}")
    for channel in [LIDAR_CHANNEL, *cameras]:
        tables.add("sensor", token=token("sensor", channel), channel=channel,
                   modality="lidar" if channel == LIDAR_CHANNEL else "camera")


def _export_scene(cfg: AqrConfig, tables: _Tables, dataroot: Path, name: str, seed: int) -> ExportedScene:
    sim = simulate_drive(cfg, seed)
    log_token = token(name, "log")
    tables.add("log", token=log_token, logfile=name, vehicle="aqr-synth", date_captured="2026-01-01",
               location=LOCATION)
    calib = {LIDAR_CHANNEL: tables.add(
        "calibrated_sensor", token=token(name, "calib", LIDAR_CHANNEL), sensor_token=token("sensor", LIDAR_CHANNEL),
        translation=sim.lidar_to_base[:3, 3].tolist(), rotation=rotation_wxyz(sim.lidar_to_base),
        camera_intrinsic=[])}
    for cam in sim.cameras:
        camera_to_base = sim.lidar_to_base @ np.linalg.inv(cam.lidar_to_camera)
        calib[cam.name] = tables.add(
            "calibrated_sensor", token=token(name, "calib", cam.name), sensor_token=token("sensor", cam.name),
            translation=camera_to_base[:3, 3].tolist(), rotation=rotation_wxyz(camera_to_base),
            camera_intrinsic=np.asarray(cam.K, dtype=float).tolist())
    camera_times = {round(t, 9) for t in sim.camera_times}
    key_times = sorted(round(t, 9) for t in sim.lidar_times if round(t, 9) in camera_times)
    sample_at = {t: token(name, "sample", i) for i, t in enumerate(key_times)}
    samples = [tables.add("sample", token=sample_at[t], timestamp=0, prev="", next="", scene_token=token(name, "scene"))
               for t in key_times]
    _link(samples)

    def nearest_sample(t: float) -> str:
        return sample_at[min(key_times, key=lambda k: abs(k - t))]

    chains: dict[str, list[dict]] = {}
    annotations_by_instance: dict[int, list[dict]] = {}
    quality = cfg.synth.jpeg_quality

    def sample_data(channel: str, t: float, stamp_ns: int, ego: np.ndarray, ext: str, data: bytes,
                    hw: tuple[int, int]) -> dict:
        key = round(t, 9) in sample_at
        ts = _us(stamp_ns)
        rel = f"{'samples' if key else 'sweeps'}/{channel}/{name}__{channel}__{ts}.{ext}"
        path = dataroot / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        ego_token = token(name, "ego", channel, ts)
        tables.add("ego_pose", token=ego_token, timestamp=ts, rotation=rotation_wxyz(ego),
                   translation=ego[:3, 3].tolist())
        record = tables.add("sample_data", token=token(name, "sd", channel, ts), sample_token=nearest_sample(t),
                            ego_pose_token=ego_token, calibrated_sensor_token=calib[channel]["token"], timestamp=ts,
                            fileformat="pcd" if ext == "pcd.bin" else ext, is_key_frame=key, height=hw[0],
                            width=hw[1], filename=rel, prev="", next="")
        chains.setdefault(channel, []).append(record)
        return record

    sweeps = 0
    for ev in sim.events:              # simulated as written: one instant in memory at a time
        if isinstance(ev, SweepEvent):
            sweeps += 1
            points = np.column_stack([ev.points, ev.ring.astype(np.float32)]).astype("<f4")
            sample_data(LIDAR_CHANNEL, ev.t, ev.stamp_ns, ev.ego, "pcd.bin", points.tobytes(), (0, 0))
            t = round(ev.t, 9)
            if t not in sample_at:
                continue
            samples[key_times.index(t)]["timestamp"] = _us(ev.stamp_ns)
            for box, obj, n in zip(ev.boxes_global, ev.objects, ev.num_lidar_pts):
                ann = tables.add(
                    "sample_annotation", token=token(name, "ann", obj.track_id, t), sample_token=sample_at[t],
                    instance_token=token(name, "instance", obj.track_id), visibility_token=EXPORT_VISIBILITY,
                    attribute_tokens=[token("attribute", obj.attribute)] if obj.attribute else [],
                    translation=box[:3].tolist(), size=[float(box[4]), float(box[3]), float(box[5])],   # w, l, h
                    rotation=yaw_quaternion_wxyz(float(box[6])),
                    prev="", next="", num_lidar_pts=int(n), num_radar_pts=0)
                annotations_by_instance.setdefault(obj.track_id, []).append((obj.cls, ann))
        else:
            for cam in sim.present:
                sample_data(cam.name, ev.t, ev.stamp_ns, ev.ego, "jpg", encode_jpeg(ev.images[cam.name], quality),
                            (cam.height, cam.width))
    for chain in chains.values():
        _link(chain)
    for track_id, anns in sorted(annotations_by_instance.items()):
        records = [a for _, a in anns]
        _link(records)
        tables.add("instance", token=token(name, "instance", track_id),
                   category_token=token("category", CATEGORY_OF[anns[0][0]]), nbr_annotations=len(records),
                   first_annotation_token=records[0]["token"], last_annotation_token=records[-1]["token"])
    tables.add("scene", token=token(name, "scene"), log_token=log_token, nbr_samples=len(samples),
               first_sample_token=samples[0]["token"], last_sample_token=samples[-1]["token"], name=name,
               description=f"aqr_perception synthetic drive, seed {seed}")
    return ExportedScene(name, [s["token"] for s in samples], sweeps)


def export_nuscenes(cfg: AqrConfig, dataroot: Path, scenes: dict[str, int], version: str = "v1.0-mini"
                    ) -> list[ExportedScene]:
    """Write the drives ``{scene name: seed}`` as one nuScenes-format dataset in ``dataroot``."""
    dataroot = Path(dataroot)
    tables = _Tables()
    _static_tables(tables, list(cfg.node.camera_names))
    exported = [_export_scene(cfg, tables, dataroot, name, seed) for name, seed in scenes.items()]
    map_token = token("map", LOCATION)
    (dataroot / "maps").mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(dataroot / "maps" / f"{map_token}.png"), np.zeros((8, 8), np.uint8))
    tables.add("map", token=map_token, log_tokens=[r["token"] for r in tables.rows["log"]],
               category="semantic_prior", filename=f"maps/{map_token}.png")
    (dataroot / version).mkdir(parents=True, exist_ok=True)
    for name, rows in tables.rows.items():
        (dataroot / version / f"{name}.json").write_text(json.dumps(rows, indent=0))
    return exported
