"""Soak: the real node process for many frames; memory growth, latency, accounting.

Starts ``python -m aqr_perception.ros.node`` (the tiny model shrunk further, untrained
weights via ``checkpoint:=none``: the model cost is not what is measured), feeds it six
small raw cameras + CameraInfo + /tf_static + a LiDAR sweep per frame over loopback
DDS at --rate Hz, and prints:

- the node's RSS after the warm-up, at the middle and at the end (target: growth < 5 %);
- latency percentiles (cloud published -> its Detection3DArray received);
- the accounting from the node's own /diagnostics counters: every cloud sent is
  published, or counted as skipped (newest wins), invalid, or missed in the
  subscription queue / transport (target: no uncounted drops).

    python bench/soak.py [--frames 10000] [--rate 20]
    python bench/soak.py --bundled --frames 4000      # overload: model slower than the LiDAR

Issue 8 targets: 10,000 frames, RSS growth < 5 %, no drops other than counted ones; under
overload the same, with latency bounded (the newest cloud wins, the rest are counted).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

NS = 1_000_000_000
#: shrinks the tiny model so that thousands of frames fit in minutes on a laptop CPU
MICRO_MODEL = {"image": {"input_height": 64, "input_width": 128}, "bev_size": 32,
               "lidar": {"pillar_size": [1.6, 1.6], "max_pillars": 4000},
               "transformer": {"num_queries": 50, "num_layers": 1}, "decode": {"topk": 50}}


def rss_mib(pid: int) -> float:
    """Resident set size of a process, MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=20.0, help="LiDAR frames per second")
    parser.add_argument("--warmup", type=int, default=200, help="frames before the first RSS sample")
    parser.add_argument("--points", type=int, default=4000)
    parser.add_argument("--bundled", action="store_true",
                        help="run the bundled tiny checkpoint instead of the micro model: on a 2-core CPU it follows "
                             "~2.5 of 20 Hz, so this is the minutes-long overload run (newest frame wins)")
    args = parser.parse_args()

    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2
    from tf2_msgs.msg import TFMessage
    from vision_msgs.msg import Detection3DArray

    from aqr_perception.config import config_from_dict, config_to_dict, load_config
    from aqr_perception.data import rosbag_msgs as M
    from aqr_perception.data.rig import nuscenes_like_rig
    from aqr_perception.data.typestore import project_typestore
    from aqr_perception.ros.node_process import NodeProcess, Probe, node_topic

    base = config_to_dict(load_config("tiny"))
    base["model"] = {**base["model"], **{k: ({**base["model"][k], **v} if isinstance(v, dict) else v)
                                         for k, v in MICRO_MODEL.items()}}
    cfg = config_from_dict(base, "soak micro model")
    tmp = Path(tempfile.mkdtemp(prefix="aqr_soak_"))
    cfg_file = tmp / "micro.yaml"
    cfg_file.write_text(yaml.safe_dump(config_to_dict(cfg)))

    w, h = cfg.model.image.input_width, cfg.model.image.input_height
    cams = nuscenes_like_rig(w, h)
    store = project_typestore()

    def ros(msg, msgtype: str, cls):
        return deserialize_message(bytes(store.serialize_cdr(msg, msgtype)), cls)

    rng = np.random.default_rng(0)
    points = rng.normal(0, 15, (args.points, 4)).astype(np.float32)
    rgb = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    tf_static = ros(M.tf_message([M.transform_stamped(0, "LIDAR_TOP", c.name, np.linalg.inv(c.lidar_to_camera))
                                  for c in cams]), "tf2_msgs/msg/TFMessage", TFMessage)

    node = NodeProcess(["--log-level", "warn",
                        *([] if args.bundled else ["-p", f"config_file:={cfg_file}", "-p", "checkpoint:=none"]),
                        "-p", "device:=cpu", "-p", "cpu_threads:=1", "-p", "image_transport:=raw",
                        "-p", "image_topic_format:=/{camera}/image_raw", "-p", "qos_reliability:=reliable",
                        "-p", "qos_depth:=5", "-p", "score_threshold:=0.0", "-p", "publish_markers:=false",
                        "-p", "diagnostics_period_s:=0.5"], log="inherit")
    probe = Probe("aqr_soak_feeder")
    feeder, ex = probe.node, probe.executor
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    pub_cloud = feeder.create_publisher(PointCloud2, "/LIDAR_TOP", qos)
    pub_img = {c.name: feeder.create_publisher(Image, f"/{c.name}/image_raw", qos) for c in cams}
    pub_info = {c.name: feeder.create_publisher(CameraInfo, f"/{c.name}/camera_info", qos) for c in cams}
    pub_tf = feeder.create_publisher(TFMessage, "/tf_static", QoSProfile(
        depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    sent: dict[int, float] = {}
    latency: list[float] = []
    counters: dict[str, str] = {}

    def on_det(msg) -> None:
        stamp = msg.header.stamp.sec * NS + msg.header.stamp.nanosec
        if stamp in sent:
            latency.append(time.monotonic() - sent[stamp])

    def on_diag(msg) -> None:
        for status in msg.status:
            if status.name.endswith(": processing"):
                counters.update({kv.key: kv.value for kv in status.values})

    feeder.create_subscription(Detection3DArray, node_topic("detections"), on_det, QoSProfile(depth=50))
    feeder.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    rss: dict[str, float] = {}
    try:
        deadline = time.monotonic() + 120
        while pub_cloud.get_subscription_count() == 0 or any(p.get_subscription_count() == 0 for p in pub_img.values()):
            if not node.running() or time.monotonic() > deadline:
                raise RuntimeError("the node did not start")
            ex.spin_once(timeout_sec=0.1)
        pub_tf.publish(tf_static)
        period = 1.0 / args.rate
        t0 = time.monotonic()
        for i in range(args.frames):
            stamp = (i + 1) * int(period * NS)
            for c in cams:
                pub_info[c.name].publish(ros(M.camera_info(stamp, c.name, c.K, w, h), "sensor_msgs/msg/CameraInfo",
                                             CameraInfo))
                pub_img[c.name].publish(ros(M.raw_image(stamp, c.name, rgb), "sensor_msgs/msg/Image", Image))
            sent[stamp] = time.monotonic()
            pub_cloud.publish(ros(M.pointcloud2(stamp, "LIDAR_TOP", points), "sensor_msgs/msg/PointCloud2",
                                  PointCloud2))
            if i == args.warmup:
                rss["start"] = rss_mib(node.pid)
            elif i == args.warmup + (args.frames - args.warmup) // 2:
                rss["middle"] = rss_mib(node.pid)
            if i % 500 == 0:
                print(f"  frame {i}/{args.frames}: node RSS {rss_mib(node.pid):.1f} MiB, "
                      f"{len(latency)} outputs", flush=True)
            while (left := t0 + (i + 1) * period - time.monotonic()) > 0:
                ex.spin_once(timeout_sec=left)
        end = time.monotonic() + 5
        while time.monotonic() < end:                            # outputs in flight, a last diagnostics
            ex.spin_once(timeout_sec=0.05)
        rss["end"] = rss_mib(node.pid)
    finally:
        node.stop()
        probe.close()

    lat_ms = np.array(latency) * 1e3
    received = int(counters.get("clouds_received", -1))
    published = int(counters.get("frames_published", -1))
    skipped = int(counters.get("clouds_skipped_newest_wins", 0))
    invalid = int(counters.get("clouds_invalid", 0)) + int(counters.get("frames_failed", 0))
    growth = rss["end"] / rss["start"] - 1.0
    print(f"\nsoak: {args.frames} frames at {args.rate:g} Hz, {'bundled tiny' if args.bundled else 'micro'} model, "
          f"{args.points} points, "
          f"6 cameras {w}x{h} raw")
    print(f"node RSS MiB: start {rss['start']:.1f} (after {args.warmup} frames), middle {rss['middle']:.1f}, "
          f"end {rss['end']:.1f}: growth {100 * growth:+.2f} % (target < 5 %)")
    print(f"latency ms (cloud sent -> detections received, {len(lat_ms)} frames): "
          + ", ".join(f"p{q} {np.percentile(lat_ms, q):.1f}" for q in (50, 90, 99)) + f", max {lat_ms.max():.1f}")
    # messages_missed counts every sample that never reached the callback (sequence gaps);
    # dds_messages_lost is the subset DDS reported as lost in transport: not added again
    missed = int(counters.get("messages_missed./LIDAR_TOP", 0))
    unaccounted = args.frames - missed - published - skipped - invalid
    print(f"accounting: sent {args.frames}; node: received {received}, missed in its queue/transport {missed}, "
          f"published {published}, skipped (newest wins) {skipped}, invalid/failed {invalid}; outputs received "
          f"{len(latency)}; uncounted {unaccounted} (target 0)")
    return 0 if growth < 0.05 and unaccounted == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
