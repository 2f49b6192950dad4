"""One frame, from a PointCloud2 to filtered detections, without rclpy.

The node (``ros/node.py``), the offline evaluator and the training-data reader all feed
messages through this class, so the three see identical frames:

    on_image / on_camera_info / on_tf_static / on_tf   (inputs, in arrival order)
    wait_for_inputs(...)                         (live input only: let a cloud's inputs catch up)
    assemble(cloud)  -> FrameInputs              (sync + conversion + calibration + preprocessing)
    process(cloud)   -> FrameOutcome             (wait + assemble + model + score filter)

Messages may be rclpy or rosbags objects (same field names).
"""
from __future__ import annotations

import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from aqr_perception.config import ImageBranchConfig, LidarBranchConfig, NodeConfig
from aqr_perception.detections import FrameDetections
from aqr_perception.frames.calibration import CalibrationStore
from aqr_perception.frames.conversions import (
    ConversionError,
    compressed_image_size,
    compressed_to_rgb_reduced,
    imgmsg_to_cv2,
    jpeg_reduction,
    pointcloud2_to_xyzi,
    reduce_intrinsics,
)
from aqr_perception.frames.ego_pose import EgoPoses
from aqr_perception.frames.model_frame import from_model_frame, to_model_frame
from aqr_perception.frames.preprocess import ModelArrays, build_model_arrays, camera_pool
from aqr_perception.frames.sweeps import SweepAccumulator
from aqr_perception.frames.sync import LidarTriggeredSync
from aqr_perception.frames.transforms import RejectedTransform
from aqr_perception.stamps import NS, header_ns

#: an ego-pose stream whose newest sample is older than this is not waited for (it stopped)
POSE_STREAM_LIVE_S = 1.0
#: an image whose aspect ratio is this many times off the model input's is refused: the
#: covering resize would be enormous
MAX_ASPECT_MISMATCH = 4.0


@dataclass
class FrameInputs:
    """A frame ready for the model; ``images`` (RGB per camera, None where masked) kept for pictures."""

    stamp_ns: int
    lidar_frame: str
    arrays: ModelArrays
    images: list[np.ndarray | None]
    masked: dict[str, str]                      # camera -> reason
    image_errors: dict[str, str] = field(default_factory=dict)
    image_warnings: dict[str, str] = field(default_factory=dict)   # camera -> decoder warning (image used)
    lidar_masked: str | None = None             # why this sweep's points were not given to the model


@dataclass
class InputWaitCounters:
    """Clouds that arrived before some of their inputs (live input only)."""

    clouds_waited: int = 0          # waited for an image or a calibration still in transport
    wait_timeouts: int = 0          # ... and went on without it at the bound


@dataclass
class FrameOutcome:
    """What became of one cloud. status: ok | invalid_cloud | model_error."""

    status: str
    stamp_ns: int
    detections: FrameDetections | None = None
    inputs: FrameInputs | None = None
    has_input: bool = False
    message: str = ""
    stage_ms: dict[str, float] = field(default_factory=dict)


#: a topic name that says its images are rectified: a name part starting with "rect"
#: (image_proc's image_rect, image_rect_color; a driver's rect_raw, rectified), not
#: "direct" or "corrected"
_RECTIFIED_TOPIC = re.compile(r"(^|[/_])rect")


class IntensityMonitor:
    """Does the LiDAR intensity the model gets fit the scale it was trained on?

    Keeps the 99th percentile of the last ``WINDOW`` non-empty sweeps (after
    ``lidar_intensity_scale``) and whether they had an intensity field at all. A driver's
    convention (0-1, 0-255, 0-65535) decides whether the model sees anything, so a
    mismatch is reported, not guessed at; the report covers the last ``WINDOW`` sweeps, so
    it clears once the driver sends intensity again (``without_field`` / ``all_zero``
    count them all)."""

    WINDOW = 20
    #: above this share of the model's scale: a wider convention (16-bit, or unscaled)
    TOO_HIGH = 1.5
    #: below it over a whole window: a narrower one (a driver normalising to 0-1)
    TOO_LOW = 0.02
    #: the percentile is read from about this many points of a sweep (every k-th): conventions
    #: differ by 255x, far beyond its sampling error, and all 35k points cost 0.3 ms per sweep
    SAMPLE = 4096

    def __init__(self, intensity_max: float, required: bool = True) -> None:
        self.intensity_max = float(intensity_max)
        self.required = required
        self._p99: list[float] = []
        self._recent: deque[str] = deque(maxlen=self.WINDOW)   # per non-empty sweep: "ok" / "no_field" / "zero"
        self.without_field = 0
        self.all_zero = 0

    def observe(self, points: np.ndarray, has_field: bool) -> bool:
        """Record one sweep; True when it carries intensity (a field, not all zero)."""
        if not len(points):
            return True
        if not has_field:
            self.without_field += 1
            self._recent.append("no_field")
            return False
        if not points[:, 3].any():
            self.all_zero += 1
            self._recent.append("zero")
            return False
        self._recent.append("ok")
        sample = points[:: max(1, len(points) // self.SAMPLE), 3]
        self._p99 = [*self._p99[-(self.WINDOW - 1):], float(np.percentile(sample, 99))]
        return True

    def problem(self) -> str | None:
        """A one-line warning about the last ``WINDOW`` sweeps, or None while the intensity fits."""
        no_field, zero = self._recent.count("no_field"), self._recent.count("zero")
        if no_field or zero:
            of = f"of the last {len(self._recent)} sweeps"
            what = (f"{no_field} {of} without an intensity field" if no_field else
                    f"{zero} {of} with intensity all zero")
            if self.required:
                return f"{what}: the model needs intensity, LiDAR masked for those (camera-only detection)"
            return f"{what}: the model reads geometry alone (it expects intensity 0-{self.intensity_max:g})"
        if not self._p99:
            return None
        high = max(self._p99)
        if high > self.TOO_HIGH * self.intensity_max:
            return (f"LiDAR intensity up to {high:.4g} (99th percentile) exceeds the model's 0-{self.intensity_max:g}: "
                    "set lidar_intensity_scale (e.g. 0.00389 for a 16-bit driver)")
        if len(self._p99) >= self.WINDOW and high < self.TOO_LOW * self.intensity_max:
            return (f"LiDAR intensity at most {high:.4g} (99th percentile) for {self.WINDOW} sweeps, the model reads "
                    f"0-{self.intensity_max:g}: a driver normalising to 0-1? set lidar_intensity_scale:=255.0")
        return None


class FramePipeline:
    """Sync + calibration + conversion + model for one sensor rig.

    ``lidar`` (default: the runtime model's) says how many sweeps a sample holds; with
    more than one, past sweeps are aligned by the /tf pose of the LiDAR in
    ``cfg.fixed_frame`` (``on_tf``).
    """

    def __init__(self, cfg: NodeConfig, runtime=None, input_hw: tuple[int, int] | None = None,
                 lidar: LidarBranchConfig | None = None, image: ImageBranchConfig | None = None) -> None:
        self.cfg = cfg
        self.cameras = list(cfg.camera_names)
        self.runtime = runtime
        self.input_hw = input_hw or runtime.input_hw
        lidar = lidar or getattr(getattr(runtime, "cfg", None), "lidar", None) or LidarBranchConfig()
        self.sweeps = SweepAccumulator(lidar.sweeps, lidar.sweep_max_age_s) if lidar.sweeps > 1 else None
        self.intensity = IntensityMonitor(lidar.intensity_max, lidar.intensity_required)
        image = image or getattr(getattr(runtime, "cfg", None), "image", None) or ImageBranchConfig()
        #: lidar2img with the ego motion between sweep and image (needs the /tf a multi-sweep model reads)
        self.camera_ego_motion = bool(image.camera_ego_motion) and self.sweeps is not None
        #: images whose ego pose was not known: the static extrinsics were used
        self.ego_motion_fallbacks = 0
        self.poses = EgoPoses()
        self.sync = LidarTriggeredSync(self.cameras, cfg.sync)
        self.calib = CalibrationStore(self.cameras, cfg.extrinsics_source, cfg.calibration_file)
        self.first_cloud_wall: float | None = None
        self.input_waits = InputWaitCounters()
        #: cloud values repaired rather than dropped (``intensity_non_finite``: points kept, intensity 0)
        self.cloud_repairs: dict[str, int] = {}
        self._arrival = threading.Condition()          # notified on every stored input
        self._calibration_given_up: set[str] = set()   # waited once for it in vain: never again

    # ----------------------------------------------------------------- inputs
    def _arrived(self) -> None:
        with self._arrival:
            self._arrival.notify_all()

    def on_image(self, camera: str, msg) -> None:
        self.sync.add_image(camera, header_ns(msg), msg)
        self._arrived()

    def on_camera_info(self, camera: str, msg) -> None:
        """Raises ConversionError for unusable intrinsics (the caller counts and logs)."""
        self.calib.set_camera_info(camera, msg)
        self._arrived()

    def unrectified_camera(self, camera: str) -> str | None:
        """Why ``camera``'s images look unrectified, or None: its CameraInfo states a
        distortion and its image topic is no ``image_rect*`` one (image_proc's names; a raw
        camera's ``image_raw``, say). The model projects with P, as for rectified images, so
        distorted ones put camera features off by up to tens of pixels at the edges."""
        topic = self.cfg.image_topic_format.format(camera=camera)
        distortion = self.calib.distortion(camera)
        if distortion is None or _RECTIFIED_TOPIC.search(topic):
            return None
        return (f"{topic}: its CameraInfo states {distortion} distortion and the topic is no image_rect one; the "
                "model projects as for rectified images (rectify them, e.g. with image_proc)")

    def on_tf_static(self, msg) -> list[RejectedTransform]:
        """Store a /tf_static message's valid transforms; returns the rejected ones (the
        caller counts and logs them)."""
        rejected = self.calib.add_tf_static(msg)
        self._arrived()
        return rejected

    def on_tf(self, msg) -> list[RejectedTransform]:
        """A /tf message (ego pose): stores its valid transforms, returns the rejected ones."""
        rejected = self.poses.add_message(msg)
        self._arrived()
        return rejected

    @property
    def multi_sweep(self) -> bool:
        return self.sweeps is not None

    def lidar_pose(self, lidar_frame: str, stamp: int) -> np.ndarray | None:
        """(4, 4) LiDAR -> ``fixed_frame`` at ``stamp`` (/tf interpolated + /tf_static), or None."""
        dynamic_edges = set(self.poses.edges)
        steps = self.calib.tf.path(self.cfg.fixed_frame, lidar_frame, dynamic_edges) if dynamic_edges else None
        if steps is None:
            return None
        # only the /tf edges on the path are interpolated: a tracker may publish hundreds of frames
        on_path = [edge for edge, _down in steps if edge in dynamic_edges]
        edges = self.poses.edges_at(stamp, only=on_path)
        if len(edges) < len(on_path):      # an edge of the path has no samples around the stamp
            return None
        return self.calib.tf.compose(steps, edges)

    def _inputs_in_flight(self, stamp: int, lidar_frame: str, startup: bool) -> dict[str, str]:
        """camera -> what it still lacks for this cloud ("image", "first image", "calibration").

        Steady state: only live cameras are expected (one that is down costs no wait).
        Startup: every configured camera is expected.
        """
        late = {c: "image" for c in self.sync.cameras_in_flight(stamp)}
        if startup:
            expected = set(self.cameras)
            late.update((c, "first image") for c in self.cameras if self.sync.counters.images_received[c] == 0)
        else:
            expected = set(self.sync.live_cameras(stamp))
        for c in self.calib.missing(lidar_frame):
            if c in expected and c not in self._calibration_given_up:
                late.setdefault(c, "calibration")
        if self.sweeps is not None and self.lidar_pose(lidar_frame, stamp) is None:
            newest = self.poses.newest_ns
            if startup or (newest is not None and stamp - newest <= POSE_STREAM_LIVE_S * NS):
                late["/tf"] = "ego pose"
        return late

    def wait_for_inputs(self, stamp: int, lidar_frame: str) -> dict[str, str]:
        """Hold a live cloud while its inputs may still be in transport (wall-clock bound).

        Startup (the first ``sync.calibration_wait_s`` after the first cloud): wait for
        every camera's calibration and first image. Always: wait up to
        ``sync.camera_wait_s`` for a live camera's image of this instant (after startup, for
        a first calibration too). A calibration that never comes is waited for once. Returns what was
        still missing when the wait ended (empty: nothing was). Multi-sweep: the /tf ego pose
        at the cloud's stamp is waited for the same way while the /tf stream is live. Offline
        readers see every input in bag order and never call this.
        """
        now = time.monotonic()
        self.first_cloud_wall = self.first_cloud_wall or now
        startup_end = self.first_cloud_wall + self.cfg.sync.calibration_wait_s
        startup = now < startup_end
        image_deadline = now + self.cfg.sync.camera_wait_s
        if not startup and image_deadline <= now:
            return {}

        def deadline(what: str) -> float:
            # startup's first images, calibrations and pose get the startup bound; an image of
            # this instant only the camera wait, at startup too (the next frame's image, which a
            # stepwise replay holds back until the answer, would cost the whole startup bound)
            return startup_end if startup and what != "image" else image_deadline

        with self._arrival:
            late = self._inputs_in_flight(stamp, lidar_frame, startup)
            if late:
                self.input_waits.clouds_waited += 1
            while late:
                remaining = max(deadline(what) for what in late.values()) - time.monotonic()
                if remaining <= 0.0:
                    self.input_waits.wait_timeouts += 1
                    self._calibration_given_up.update(c for c, what in late.items() if what == "calibration")
                    return late
                self._arrival.wait(remaining)
                late = self._inputs_in_flight(stamp, lidar_frame, startup)
        return {}

    # ------------------------------------------------------------------ frame
    def assemble(self, cloud) -> FrameInputs:
        """Points + the associated, decoded, calibrated images in model layout.

        Raises ConversionError when the cloud itself is unusable. A camera that is
        stale, uncalibrated or whose image does not decode (or does not match its
        CameraInfo size) is masked, with the reason in ``masked``. Multi-sweep: the points
        are the current sweep + the past ones (``frames.sweeps``), (N, 5); a sweep without
        ego pose goes alone (counted in ``sweeps.counters``). A sweep without intensity is
        masked (no points) for a model that needs intensity (``lidar.intensity_required``),
        with the reason in ``lidar_masked``.
        """
        points = self._read_cloud(cloud)
        lidar_masked = None
        if not self.intensity.observe(points, any(f.name == "intensity" for f in cloud.fields)) \
                and self.intensity.required:
            lidar_masked = "no intensity (no field, or all zero); the model needs it"
            points = points[:0]
        lidar_frame = cloud.header.frame_id
        stamp = header_ns(cloud)
        if self.sweeps is not None:
            points = self.sweeps.add(stamp, points, self.lidar_pose(lidar_frame, stamp))
        assoc = self.sync.associate(stamp)
        missing = self.calib.missing(lidar_frame)
        masked: dict[str, str] = {}
        errors: dict[str, str] = {}
        for cam in self.cameras:
            if cam in missing:
                masked[cam] = missing[cam]
            elif assoc.images[cam] is None:
                masked[cam] = assoc.stale.get(cam, "stale")
        todo = [cam for cam in self.cameras if cam not in masked]
        run = camera_pool().map if len(todo) > 1 else map        # decoding releases the GIL
        decoded = dict(zip(todo, run(lambda cam: self._try_decode(cam, assoc.images[cam]), todo)))
        images, Ks, exts, warnings = [], [], [], {}
        for cam in self.cameras:
            img, K, err, warning = decoded.get(cam, (None, None, None, None))
            if err is not None:
                masked[cam] = errors[cam] = f"invalid image: {err}"
            if warning is not None:
                warnings[cam] = warning
            images.append(img)
            Ks.append(K)
            exts.append(self._lidar_to_camera(cam, lidar_frame, stamp, assoc.images[cam]) if img is not None else None)
        masked = {cam: masked[cam] for cam in self.cameras if cam in masked}       # camera order
        arrays = build_model_arrays(points, images, Ks, exts, self.input_hw)
        return FrameInputs(stamp, lidar_frame, arrays, images, masked, errors, warnings, lidar_masked)

    def _lidar_to_camera(self, cam: str, lidar_frame: str, stamp: int, image_msg) -> np.ndarray | None:
        """(4, 4) LiDAR at the sweep's ``stamp`` -> camera ``cam`` at its image's stamp.

        With ``camera_ego_motion``: ``inv(map <- camera at t_image) @ (map <- LiDAR at t_sweep)``
        from the /tf ego pose, so a camera that fired 40 ms after the sweep at 10 m/s sees
        the scene 0.4 m further on, as nuScenes' infos give CMT each camera's own ego pose;
        an image without a pose falls back to the static extrinsics (counted). Else the
        static extrinsics."""
        static = self.calib.lidar_to_camera(cam, lidar_frame)
        if static is None or not self.camera_ego_motion:
            return static
        lidar_to_map = self.lidar_pose(lidar_frame, stamp)
        camera_to_map = self.lidar_pose(self.calib.frame_id(cam), header_ns(image_msg))
        if lidar_to_map is None or camera_to_map is None:
            self.ego_motion_fallbacks += 1
            return static
        return np.linalg.inv(camera_to_map) @ lidar_to_map

    def remember_sweep(self, cloud) -> None:
        """Multi-sweep: keep a cloud that will not be run (skipped under load) as history
        for the next ones. Unusable clouds and clouds without pose are left out, counted
        (``sweeps.counters.skipped_not_kept``)."""
        if self.sweeps is None:
            return
        try:
            points = self._read_cloud(cloud)
        except ConversionError:
            self.sweeps.counters.skipped_not_kept += 1
            return
        stamp = header_ns(cloud)
        self.sweeps.remember(stamp, points, self.lidar_pose(cloud.header.frame_id, stamp))

    def _read_cloud(self, cloud) -> np.ndarray:
        """(N, 4) ``[x, y, z, intensity]`` with the intensity on the model's scale."""
        points = pointcloud2_to_xyzi(cloud, max_points=self.cfg.max_points, repairs=self.cloud_repairs)
        if self.cfg.lidar_intensity_scale != 1.0:
            points[:, 3] *= np.float32(self.cfg.lidar_intensity_scale)
        return points

    def _try_decode(self, cam: str, msg) -> tuple[np.ndarray | None, np.ndarray | None, str | None, str | None]:
        """(image, K, None, decoder warning or None), or (None, None, reason, None) when the
        image is unusable."""
        try:
            img, K, warning = self._decode(cam, msg)
            return img, K, None, warning
        except ConversionError as exc:
            return None, None, str(exc), None

    def _decode(self, cam: str, msg) -> tuple[np.ndarray, np.ndarray, str | None]:
        """RGB image + the intrinsics that go with it + the JPEG decoder's warning, if any;
        checks the size against CameraInfo.

        JPEGs much larger than the model input are decoded directly at 1/2, 1/4 or 1/8
        size (DCT scaling), with the intrinsics reduced to match.
        """
        size, K = self.calib.image_size(cam), self.calib.intrinsics(cam)
        self._check_declared_size(msg, size)
        if self.cfg.image_transport == "raw":
            img, r, warning = imgmsg_to_cv2(msg, "rgb8"), 1, None
        else:
            r = jpeg_reduction(size, self.input_hw) if size is not None else 1
            img, warning = compressed_to_rgb_reduced(msg, r)
        if size is not None:
            expect = (-(-size[0] // r), -(-size[1] // r))
            if img.shape[:2] != expect:
                raise ConversionError(f"image is {img.shape[1] * r}x{img.shape[0] * r}, CameraInfo says "
                                      f"{size[1]}x{size[0]}")
        return img, reduce_intrinsics(K, r), warning

    def _check_declared_size(self, msg, size: tuple[int, int] | None) -> None:
        """Refuse, before decoding, an image whose declared size (Image fields, JPEG/PNG
        header) exceeds ``max_image_pixels``, differs from its CameraInfo, or has an aspect
        ratio the resize to the model input would blow up (a 4000x1 image -> 192x768000)."""
        hw = ((int(msg.height), int(msg.width)) if self.cfg.image_transport == "raw"
              else compressed_image_size(msg.data))       # ConversionError unless a JPEG/PNG header gives it
        h, w = hw
        if h * w > self.cfg.max_image_pixels:
            raise ConversionError(f"image declares {w}x{h} = {h * w} pixels > max_image_pixels "
                                  f"{self.cfg.max_image_pixels}; not decoded")
        if size is not None and hw != size:
            raise ConversionError(f"image declares {w}x{h}, CameraInfo says {size[1]}x{size[0]}; not decoded")
        if h <= 0 or w <= 0 or not 1 / MAX_ASPECT_MISMATCH <= (w / h) / (self.input_hw[1] / self.input_hw[0]) \
                <= MAX_ASPECT_MISMATCH:
            raise ConversionError(f"image is {w}x{h}: its aspect ratio is too far from the model input's "
                                  f"{self.input_hw[1]}x{self.input_hw[0]} to resize; not decoded")

    def process(self, cloud, live: bool = False) -> FrameOutcome:
        """Assemble, run the model, keep the ``max_detections`` best detections at or above
        ``score_threshold`` (the node's settings, ``self.cfg``).

        ``live`` (the node): first ``wait_for_inputs`` (its time is ``stage_ms["input_wait_ms"]``,
        apart from the processing). Offline readers leave it False: bag order already puts a
        cloud's inputs before it.
        """
        stamp = header_ns(cloud)
        t_wait = time.perf_counter()
        if live:
            self.wait_for_inputs(stamp, cloud.header.frame_id)
        t0 = time.perf_counter()
        try:
            inputs = self.assemble(cloud)
        except ConversionError as exc:
            return FrameOutcome("invalid_cloud", stamp, message=str(exc))
        t1 = time.perf_counter()
        try:
            pred = self.runtime.infer(to_model_frame(inputs.arrays, self.cfg.lidar_to_model_yaw_deg))
        except RuntimeError as exc:   # includes ModelOutputError and CUDA out-of-memory
            if "out of memory" in str(exc).lower():
                self.runtime.release_memory()
            return FrameOutcome("model_error", stamp, inputs=inputs, message=f"{type(exc).__name__}: {exc}")
        t2 = time.perf_counter()
        keep = np.nonzero(pred.detections.scores >= self.cfg.score_threshold)[0][:self.cfg.max_detections]
        det = from_model_frame(pred.detections.select(keep), self.cfg.lidar_to_model_yaw_deg)
        return FrameOutcome("ok", stamp, det, inputs, pred.has_input,
                            stage_ms={"input_wait_ms": 1e3 * (t0 - t_wait), "preprocess_ms": 1e3 * (t1 - t0),
                                      "inference_ms": 1e3 * (t2 - t1)})
