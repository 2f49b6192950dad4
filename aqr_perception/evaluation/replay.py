"""Evaluation by replay: the real node as its own process, the bag played to it over DDS.

The bag's sensor topics go to the node over loopback DDS with ``/clock``, stepwise: each
LiDAR sweep waits until the node has answered the previous one, so nothing is skipped and
the node associates exactly the images that preceded the sweep in the bag (as offline
evaluation does). With ``eval.replay_rate`` r > 0 the bag is played at its own pace times r
instead, to the node's own queue depth, as a vehicle feeds it: what the node has no time
for is dropped from its queue and goes unanswered. Detection3DArray /
DetectionVelocityArray / QueryRouting are recorded by stamp. The node and this process's
probe are ros/node_process.py's.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import yaml
from vision_msgs.msg import Detection3DArray

from aqr_perception.config import AqrConfig, ConfigError, NodeConfig
from aqr_perception.data.bag_order import node_pose_wait
from aqr_perception.data.typestore import project_typestore
from aqr_perception.evaluation.answers import FrameAnswer, answer_from_messages, eval_node_config
from aqr_perception.msg import DetectionVelocityArray, QueryRouting
from aqr_perception.ros.dds_env import private_domain
from aqr_perception.ros.node_process import NodeProcess, Probe, node_topic
from aqr_perception.ros.player import BagPlayer
from aqr_perception.ros.recorder import Recorder
from aqr_perception.stamps import header_ns

#: the node process loads torch and the model
NODE_START_TIMEOUT_S = 120.0
#: once the node is up, its subscriptions are discovered within this
NODE_SUBSCRIBE_GRACE_S = 5.0
#: before a sweep, the messages of its instant get this long to arrive first
SWEEP_SETTLE_S = 0.05
#: after the last sweep, what is in flight gets this long
DRAIN_S = 0.2
#: the node's outputs, recorded (queue depth: a frame's three messages never wait long)
RECORDED = {"det": (Detection3DArray, "detections"), "vel": (DetectionVelocityArray, "velocities"),
            "routing": (QueryRouting, "routing")}


#: what a recording holds besides the played inputs: the node's outputs, diagnostics, GT markers
RECORDED_OUTPUTS = {"detections": "vision_msgs/msg/Detection3DArray",
                    "velocities": "aqr_perception/msg/DetectionVelocityArray",
                    "routing": "aqr_perception/msg/QueryRouting", "markers": "visualization_msgs/msg/MarkerArray"}


def replay_node_config(cfg: AqrConfig, checkpoint: str, device: str, record: bool = False) -> NodeConfig:
    """The node settings of a replay: the user's (``cfg.node``: topics, frames, cameras...)
    with every detection the metric may use, lossless QoS, the evaluated checkpoint (empty:
    the bundled one) and waits that let a cloud's inputs, which precede it in the bag, land
    before it is used. A recorded replay also publishes markers, and diagnostics at least
    every ``cfg.eval.replay_diagnostics_period_s``."""
    node_cfg = eval_node_config(cfg)
    sync = node_cfg.sync.model_copy(update={
        "calibration_wait_s": cfg.eval.replay_calibration_wait_s, "camera_wait_s": cfg.eval.replay_camera_wait_s})
    real_time = cfg.eval.replay_rate > 0          # the vehicle's queue: what the node cannot take is dropped
    recorded = ({"diagnostics_period_s": min(cfg.node.diagnostics_period_s, cfg.eval.replay_diagnostics_period_s)}
                if record else {})
    return node_cfg.model_copy(update={"qos_depth": cfg.node.qos_depth if real_time else 20, "device": device,
                                       "publish_markers": record, "sync": sync, "checkpoint": checkpoint,
                                       **recorded})


def write_node_params(node_cfg: NodeConfig, path: Path) -> Path:
    """A ROS parameter file (``/**: ros__parameters``) holding every node setting."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": node_cfg.model_dump(mode="json")}}, sort_keys=False))
    return path


def wait_for_node_inputs(player: BagPlayer, probe: Probe, node_cfg: NodeConfig, node: NodeProcess) -> None:
    """Spin until the node subscribes to every played input topic. Once the node is up
    (its detections publisher is seen), topics still without a subscriber after
    ``NODE_SUBSCRIBE_GRACE_S`` are named in the error."""
    wanted = [t for t in node_cfg.input_topics() if t in player.publishers]
    up_since = None
    deadline = time.monotonic() + NODE_START_TIMEOUT_S
    while not player.wait_for_subscribers(wanted, 0.2, probe.spin):
        if not node.running():     # exit code 2: a start-up error, which the node has said in one line
            raise (ConfigError if node.returncode == 2 else RuntimeError)(
                f"the node exited with code {node.returncode} before subscribing (its output above says why)")
        now = time.monotonic()
        if up_since is None and probe.node.count_publishers(node_topic("detections")) > 0:
            up_since = now
        if (up_since is not None and now - up_since > NODE_SUBSCRIBE_GRACE_S) or now > deadline:
            missing = [t for t in wanted if player.publishers[t].get_subscription_count() == 0]
            raise ConfigError(f"the node did not subscribe to {', '.join(missing)} (played from the bag): "
                               "the node settings name other topics (check node.image_topic_format, "
                               "node.camera_names, node.image_transport, node.extrinsics_source)")


def wait_for_recorded_outputs(recorder: Recorder, probe: Probe, log: bool) -> None:
    """Spin until the recorder's subscriptions are matched with the node's publishers (at
    most ``NODE_SUBSCRIBE_GRACE_S``; then the topics still unmatched are named and the
    replay goes on). Under sim time the node's first /diagnostics comes at the first /clock
    the player sends, and a drive shorter than the diagnostics period has no other."""
    if not probe.spin_until(lambda: not recorder.unmatched(), NODE_SUBSCRIBE_GRACE_S) and log:
        print(f"recording without a publisher on {', '.join(recorder.unmatched())} yet: what the node "
              "publishes there before discovery ends is not recorded", flush=True)


def predict_replay(bag: Path, cfg: AqrConfig, checkpoint: str, device: str = "cpu",
                   log: bool = True, record: Path | None = None) -> dict[str, FrameAnswer]:
    """Play the bag to the node process over DDS, stepwise (or at ``cfg.eval.replay_rate``
    times its pace): token (str(stamp_ns)) -> answer, for every sweep the node answered.
    ``record``: also write one MCAP of the run (ros/recorder.py): the inputs as played, the
    node's outputs (markers included), /diagnostics and the ground-truth markers.

    ``cfg.model`` must be the model the node will run (the checkpoint's: ``run_eval``
    puts it there): whether the node needs ``/tf`` (multi-sweep) is read from it.
    """
    node_cfg = replay_node_config(cfg, checkpoint, device, record is not None)
    multi_sweep = cfg.model.lidar.sweeps > 1
    got: dict[str, dict[str, object]] = {key: {} for key in RECORDED}
    with private_domain() as (domain, chosen), tempfile.TemporaryDirectory(prefix="aqr_eval_") as tmp, \
            Probe("aqr_eval_player") as probe:
        if log:
            print(f"replay on ROS domain {domain}" + (" (a private one: two evaluations on one host do not mix; "
                                                       "set ROS_DOMAIN_ID to choose it)" if chosen else
                                                       " (ROS_DOMAIN_ID)"), flush=True)
        for key, (msg_type, name) in RECORDED.items():
            probe.collect(msg_type, node_topic(name), 100,
                          into=lambda m, k=key: got[k].__setitem__(str(header_ns(m)), m))
        params = write_node_params(node_cfg, Path(tmp) / "node.param.yaml")
        ros_args = ["--params-file", str(params), "-p", "use_sim_time:=true", *([] if log else ["--log-level", "warn"])]
        with NodeProcess(ros_args, log="inherit") as node:
            player = BagPlayer(probe.node, bag, exclude=[cfg.synth.gt_topic, cfg.synth.gt_velocity_topic]
                               + ([] if multi_sweep else ["/tf"]), publish_clock=True,
                               gt_markers=(cfg.synth.gt_topic, cfg.synth.gt_markers_topic))
            for line in player.unplayable_lines("eval") if log else []:    # none of them is an input of the node
                print(line, flush=True)
            recorder = None
            if record is not None:
                recorder = Recorder(record, lambda: player.clock_ns)
                for name, msgtype in RECORDED_OUTPUTS.items():
                    recorder.subscribe(probe.node, node_topic(name), msgtype)
                recorder.subscribe(probe.node, "/diagnostics", "diagnostic_msgs/msg/DiagnosticArray")
                recorder.subscribe(probe.node, cfg.synth.gt_markers_topic, "visualization_msgs/msg/MarkerArray")
                player.on_publish = recorder.write
            # every played input must be matched: a message published before discovery is lost
            wait_for_node_inputs(player, probe, node_cfg, node)
            if recorder is not None:
                wait_for_recorded_outputs(recorder, probe, log)
            outstanding: list[str] = []

            def gate(topic: str, stamp: int) -> None:
                # nothing is published while a sweep is being processed
                if outstanding:      # a sweep the node never answers is missing from the report
                    probe.spin_until(lambda: outstanding[0] in got["routing"] or not node.running(),
                                     cfg.eval.replay_step_timeout_s, step_s=0.01)
                    if not node.running():
                        raise RuntimeError(f"the node exited with code {node.returncode}")
                    outstanding.clear()
                if topic == cfg.node.lidar_topic:
                    probe.spin(SWEEP_SETTLE_S)
                    outstanding.append(str(stamp))

            # the same message order as offline (feed_bag): a /tf recorded just after its cloud goes first
            order = (node_pose_wait(cfg.node.lidar_topic, cfg.node.sync.camera_wait_s, project_typestore())
                     if multi_sweep else None)
            rate = cfg.eval.replay_rate
            played: list[str] = []

            def note(topic: str, stamp: int) -> None:      # real time: nothing waits for the node
                if topic == cfg.node.lidar_topic:
                    played.append(str(stamp))

            player.play(rate=rate, spin=lambda s: probe.executor.spin_once(timeout_sec=s),
                        gate=gate if rate <= 0 else note, order=order)
            if rate <= 0:
                gate("", 0)
            elif played:           # the newest sweep is never dropped from the node's queue: wait for it
                probe.spin_until(lambda: played[-1] in got["routing"] or not node.running(),
                                 cfg.eval.replay_step_timeout_s, step_s=0.01)
            probe.spin(DRAIN_S)
            if recorder is not None:
                recorder.close()
                if log:
                    print(f"recorded {sum(recorder.counts.values())} messages on {len(recorder.counts)} topics to "
                          f"{record}", flush=True)
    return {token: answer_from_messages(det, got["vel"].get(token), got["routing"].get(token))
            for token, det in got["det"].items()}
