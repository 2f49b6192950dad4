"""Per-frame cost of the node's I/O path next to the model, measured side by side.

6 cameras at 1600x900 (raw rgb8 and JPEG) + a 35k-point cloud, as a subscriber gets them:
rclpy deserialisation, conversion to numpy, LiDAR-triggered sync, preprocessing to the
model input (resize + lidar2img), and building the output messages for 100 detections;
then the node's own path (``FramePipeline.assemble``: all of it, cameras in parallel) +
the output messages, which is what the per-frame totals report.
Target (issue 5): raw-image path <= 10 ms per frame on the 2-core dev machine, excluding
the model. Prints medians of --runs repetitions.

    python bench/node_io.py [--runs 20] [--config tiny]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def median_ms(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--points", type=int, default=35000)
    args = parser.parse_args()

    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import CompressedImage, Image, PointCloud2
    from std_msgs.msg import Header

    from aqr_perception.config import NUSCENES_CLASSES, load_config
    from aqr_perception.data import rosbag_msgs as M
    from aqr_perception.data.rig import nuscenes_like_rig
    from aqr_perception.data.typestore import project_typestore
    from aqr_perception.detections import FrameDetections
    from aqr_perception.frames.conversions import (
        compressed_imgmsg_to_cv2,
        compressed_to_rgb_reduced,
        imgmsg_to_cv2,
        jpeg_reduction,
        pointcloud2_to_xyzi,
        reduce_intrinsics,
    )
    from aqr_perception.frames.preprocess import build_model_arrays
    from aqr_perception.frames.sync import LidarTriggeredSync
    from aqr_perception.model.runtime import DetectorRuntime
    from aqr_perception.ros.detection_msgs import to_detection_array, to_routing_msg, to_velocity_msg
    from aqr_perception.ros.markers import detection_markers

    cfg = load_config(args.config)
    store = project_typestore()
    rng = np.random.default_rng(0)
    cams = nuscenes_like_rig(1600, 900)
    # realistic-looking content (gradients + noise) so that JPEG sizes are typical
    yy, xx = np.mgrid[0:900, 0:1600]
    base = np.stack([(xx / 7) % 255, (yy / 4) % 255, (xx + yy) / 10 % 255], -1).astype(np.uint8)
    images = [np.clip(base.astype(np.int16) + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
              for _ in cams]
    pts = np.concatenate([rng.normal(0, 20, (args.points, 3)), rng.uniform(0, 255, (args.points, 1))], 1)
    ser = lambda msg, t: bytes(store.serialize_cdr(msg, t))  # noqa: E731
    raw_bytes = [ser(M.raw_image(0, c.name, im), "sensor_msgs/msg/Image") for c, im in zip(cams, images)]
    jpg_bytes = [ser(M.compressed_image(0, c.name, im, 85), "sensor_msgs/msg/CompressedImage")
                 for c, im in zip(cams, images)]
    cloud_bytes = ser(M.pointcloud2(0, "LIDAR_TOP", pts.astype(np.float32), np.zeros(args.points, np.uint16)),
                      "sensor_msgs/msg/PointCloud2")
    raw_msgs = [deserialize_message(b, Image) for b in raw_bytes]
    jpg_msgs = [deserialize_message(b, CompressedImage) for b in jpg_bytes]
    cloud = deserialize_message(cloud_bytes, PointCloud2)
    names = [c.name for c in cams]
    hw = (cfg.model.image.input_height, cfg.model.image.input_width)
    Ks = [c.K for c in cams]
    exts = [c.lidar_to_camera for c in cams]
    n = 100
    det = FrameDetections(np.column_stack([rng.normal(0, 20, (n, 3)), rng.uniform(1, 5, (n, 3)),
                                           rng.uniform(-3, 3, (n, 3))]), rng.uniform(0, 1, n),
                          rng.integers(0, 10, n), np.arange(n), rng.uniform(0, 1, (n, 3)), rng.uniform(0, 1, (n, 3)))
    header = Header(frame_id="LIDAR_TOP")

    def sync_step():
        s = LidarTriggeredSync(names, cfg.node.sync)
        for c, m in zip(names, raw_msgs):
            s.add_image(c, 0, m)
        s.associate(0)

    def messages():
        to_detection_array(header, det, NUSCENES_CLASSES)
        to_routing_msg(header, det, True, names, [])
        to_velocity_msg(header, det)

    def markers():
        detection_markers(header, det.boxes, det.scores, [NUSCENES_CLASSES[i] for i in det.labels])

    decoded_raw = [imgmsg_to_cv2(m, "rgb8") for m in raw_msgs]
    r = jpeg_reduction((900, 1600), hw)
    decoded_small = [compressed_to_rgb_reduced(m, r)[0] for m in jpg_msgs]
    Ks_small = [reduce_intrinsics(K, r) for K in Ks]
    stages = {
        "deserialize 6 raw images (rclpy)": lambda: [deserialize_message(b, Image) for b in raw_bytes],
        "deserialize 6 JPEG images (rclpy)": lambda: [deserialize_message(b, CompressedImage) for b in jpg_bytes],
        "deserialize cloud (rclpy)": lambda: deserialize_message(cloud_bytes, PointCloud2),
        "cloud -> xyzi": lambda: pointcloud2_to_xyzi(cloud),
        "6 raw images -> rgb8 arrays": lambda: [imgmsg_to_cv2(m, "rgb8") for m in raw_msgs],
        "6 JPEG images -> rgb8 arrays (full size)": lambda: [compressed_imgmsg_to_cv2(m, "rgb8") for m in jpg_msgs],
        f"6 JPEG images -> rgb8 at 1/{r} (reduced decode, one by one)":
            lambda: [compressed_to_rgb_reduced(m, r) for m in jpg_msgs],
        "sync (6 images + associate)": sync_step,
        "preprocess to model input (raw)": lambda: build_model_arrays(pts, decoded_raw, Ks, exts, hw),
        "preprocess to model input (reduced JPEG)": lambda: build_model_arrays(pts, decoded_small, Ks_small, exts, hw),
        "output messages (100 detections)": messages,
        "RViz markers (100 detections; only with a subscriber)": markers,
    }
    # the node's own path, as its worker runs it: sync + decoding + calibration + model input
    # (FramePipeline.assemble; cameras decoded and resized in parallel)
    from sensor_msgs.msg import CameraInfo
    from tf2_msgs.msg import TFMessage

    from aqr_perception.config import NodeConfig
    from aqr_perception.frames.pipeline import FramePipeline

    infos = [deserialize_message(ser(M.camera_info(0, c.name, c.K, 1600, 900), "sensor_msgs/msg/CameraInfo"),
                                 CameraInfo) for c in cams]
    tf = deserialize_message(ser(M.tf_message([M.transform_stamped(0, "LIDAR_TOP", c.name,
                                                                   np.linalg.inv(c.lidar_to_camera)) for c in cams]),
                                 "tf2_msgs/msg/TFMessage"), TFMessage)
    pipelines = {}
    for transport, msgs in (("raw", raw_msgs), ("compressed", jpg_msgs)):
        p = FramePipeline(NodeConfig(image_transport=transport, camera_names=names), input_hw=hw)
        p.on_tf_static(tf)
        for c, info, m in zip(names, infos, msgs):
            p.on_camera_info(c, info)
            p.on_image(c, m)
        assert not p.assemble(cloud).masked, "bench frame incomplete"
        pipelines[transport] = p
    stages["node path: sync + decode + model input (raw)"] = lambda: pipelines["raw"].assemble(cloud)
    stages["node path: sync + decode + model input (JPEG)"] = lambda: pipelines["compressed"].assemble(cloud)
    res = {k: median_ms(fn, args.runs) for k, fn in stages.items()}
    runtime = DetectorRuntime(None, cfg.model, "cpu")
    arrays = build_model_arrays(pts.astype(np.float32), decoded_raw, Ks, exts, hw)
    res["model (tiny, CPU)"] = median_ms(lambda: runtime.infer(arrays), max(3, args.runs // 4))
    width = max(map(len, res))
    for k, v in res.items():
        print(f"{k:<{width}}  {v:8.2f} ms")
    raw_path = res["node path: sync + decode + model input (raw)"] + res["output messages (100 detections)"]
    jpg_path = res["node path: sync + decode + model input (JPEG)"] + res["output messages (100 detections)"]
    deser_raw = res["deserialize 6 raw images (rclpy)"] + res["deserialize cloud (rclpy)"]
    deser_jpg = res["deserialize 6 JPEG images (rclpy)"] + res["deserialize cloud (rclpy)"]
    print(f"\nnode I/O per frame, raw images : {raw_path:7.2f} ms (+ {deser_raw:.2f} ms rclpy deserialisation)"
          "   target <= 10 ms")
    print(f"node I/O per frame, JPEG images: {jpg_path:7.2f} ms (+ {deser_jpg:.2f} ms rclpy deserialisation)")
    print("(markers are extra, and only built while RViz or another subscriber listens)")
    model_ms = res["model (tiny, CPU)"]
    print(f"model: {model_ms:.1f} ms -> I/O is {100 * raw_path / model_ms:.0f} % of the model time (raw)")


if __name__ == "__main__":
    main()
