"""Camera calibration of the node: intrinsics from CameraInfo, LiDAR->camera extrinsics
from /tf_static (or a calibration file), cached, with a plain statement of what is missing.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import yaml

from aqr_perception.config import ConfigError
from aqr_perception.frames.conversions import ConversionError, camera_info_K
from aqr_perception.frames.transforms import RejectedTransform, StaticTransforms


class CalibrationStore:
    """Per camera: K (3, 3), image size, optical frame id, and lidar_to_camera (4, 4)."""

    def __init__(self, cameras: list[str], extrinsics_source: str, calibration_file: str = "") -> None:
        self.cameras = list(cameras)
        self.source = extrinsics_source
        self.tf = StaticTransforms()
        self._K: dict[str, np.ndarray] = {}
        self._size: dict[str, tuple[int, int]] = {}
        self._frame: dict[str, str] = {}
        self._file_ext: dict[str, np.ndarray] = {}
        self._cache: dict[tuple[str, str], np.ndarray] = {}
        self._rejected: dict[str, str] = {}      # camera -> why its last CameraInfo was refused
        self._distortion: dict[str, str] = {}    # camera -> its CameraInfo's distortion, when not zero
        self._lock = threading.Lock()
        if extrinsics_source == "file":
            self._file_ext = load_calibration_file(calibration_file, cameras)

    def set_camera_info(self, camera: str, info) -> None:
        """Store a CameraInfo (raises ConversionError for unusable intrinsics, which are
        remembered as the reason the camera is missing until a good one comes)."""
        try:
            K = camera_info_K(info)
        except ConversionError as exc:
            with self._lock:
                self._rejected[camera] = str(exc)
            raise
        with self._lock:
            self._rejected.pop(camera, None)
            self._K[camera] = K
            d = np.abs(np.asarray(info.d, dtype=np.float64))
            if d.size and np.nanmax(d) > 0:
                self._distortion[camera] = f"{info.distortion_model or 'unnamed'} (largest |D| {np.nanmax(d):.3g})"
            else:
                self._distortion.pop(camera, None)
            self._size[camera] = (int(info.height), int(info.width))
            if info.header.frame_id and self._frame.get(camera) != info.header.frame_id:
                self._frame[camera] = info.header.frame_id
                self._cache = {k: v for k, v in self._cache.items() if k[0] != camera}

    def add_tf_static(self, msg) -> list[RejectedTransform]:
        """Store the valid transforms of a /tf_static message; returns the rejected ones."""
        with self._lock:
            rejected = self.tf.add_message(msg)
            self._cache.clear()
        return rejected

    def distortion(self, camera: str) -> str | None:
        """The distortion the camera's CameraInfo states ("plumb_bob (largest |D| 0.35)"), or
        None when its D is zero or empty. A rectified image's CameraInfo keeps the raw
        camera's D (ROS' convention: P is the rectified projection), so this alone says
        nothing about the image."""
        return self._distortion.get(camera)

    def intrinsics(self, camera: str) -> np.ndarray | None:
        return self._K.get(camera)

    def image_size(self, camera: str) -> tuple[int, int] | None:
        return self._size.get(camera)

    def frame_id(self, camera: str) -> str:
        """The camera's optical frame (from its CameraInfo), or the camera name before one came."""
        return self._frame.get(camera, camera)

    def lidar_to_camera(self, camera: str, lidar_frame: str) -> np.ndarray | None:
        """(4, 4) mapping LiDAR points into the camera's optical frame, or None if unknown."""
        if self.source == "file":
            return self._file_ext.get(camera)
        with self._lock:
            key = (camera, lidar_frame)
            if key not in self._cache:
                frame = self._frame.get(camera)
                if frame is None:
                    return None
                T = self.tf.lookup(frame, lidar_frame)
                if T is None:
                    return None
                self._cache[key] = T
            return self._cache[key]

    def missing(self, lidar_frame: str | None) -> dict[str, str]:
        """camera -> what is missing ("no CameraInfo", "no /tf_static path LIDAR_TOP -> CAM_X")."""
        out = {}
        for c in self.cameras:
            if c in self._rejected and c not in self._K:
                out[c] = f"CameraInfo refused: {self._rejected[c]}"
            elif c not in self._K:
                out[c] = "no CameraInfo received"
            elif lidar_frame is not None and self.lidar_to_camera(c, lidar_frame) is None:
                out[c] = (f"no extrinsic for {c} in {self.source}" if self.source == "file" else
                          f"no /tf_static path {lidar_frame} -> {self._frame.get(c, '?')}")
        return out


def load_calibration_file(path: str, cameras: list[str]) -> dict[str, np.ndarray]:
    """YAML ``{camera: {lidar_to_camera: [16 numbers, row-major]}}`` -> camera -> (4, 4).

    Cameras the file leaves out are not calibrated (masked, with the reason). Raises
    ConfigError, one line naming the file, for a file that cannot be read or parsed, an
    entry that is not 16 finite numbers of a rigid motion, or a file that names none of
    ``cameras`` (the usual cause: other camera names)."""
    if not path:
        raise ConfigError("extrinsics_source is 'file' but calibration_file is empty")
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"calibration_file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        raise ConfigError(f"calibration_file {path}: not valid YAML{at}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"calibration_file {path}: expected a mapping camera -> {{lidar_to_camera: [16 numbers]}}, "
                          f"got {type(data).__name__}")
    out = {}
    for c in cameras:
        if c not in data:
            continue
        entry = data[c]
        values = entry.get("lidar_to_camera", []) if isinstance(entry, dict) else None
        try:
            T = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            T = np.zeros(0)
        if T.size != 16 or not np.all(np.isfinite(T)):
            raise ConfigError(f"calibration_file {path}: {c}.lidar_to_camera must be 16 finite numbers (row-major 4x4)")
        T = T.reshape(4, 4)
        R = T[:3, :3]
        if not (np.allclose(T[3], [0, 0, 0, 1]) and np.allclose(R @ R.T, np.eye(3), atol=1e-3)
                and np.linalg.det(R) > 0):
            raise ConfigError(f"calibration_file {path}: {c}.lidar_to_camera is not a rigid motion (rotation part not "
                              "orthonormal or last row not 0 0 0 1)")
        out[c] = T
    if not out:
        raise ConfigError(f"calibration_file {path} names none of the node's cameras ({', '.join(cameras)}); it has: "
                          f"{', '.join(map(str, data)) or 'nothing'}")
    return out


__all__ = ["CalibrationStore", "ConversionError", "load_calibration_file"]
