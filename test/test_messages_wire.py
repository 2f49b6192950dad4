"""Wire compatibility of the project's messages: rclpy <-> rosbags bytes, type hashes."""
import math

import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.typesys import Stores, get_typestore
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import Detection3DArray

from aqr_perception.config import NUSCENES_CLASSES
from aqr_perception.data.typestore import project_typestore
from aqr_perception.detections import FrameDetections
from aqr_perception.msg import QueryRouting
from aqr_perception.ros.detection_msgs import to_detection_array, to_routing_msg

DET = "vision_msgs/msg/Detection3DArray"
ROUTING = "aqr_perception/msg/QueryRouting"


def _frame(n=4, layers=3, seed=0):
    rng = np.random.default_rng(seed)
    return FrameDetections(
        boxes=np.column_stack([rng.uniform(-50, 50, (n, 3)), rng.uniform(0.3, 12, (n, 3)),
                               rng.uniform(-math.pi, math.pi, n), rng.uniform(-5, 5, (n, 2))]),
        scores=rng.uniform(0, 1, n), labels=rng.integers(0, 10, n),
        query_index=rng.choice(900, n, replace=False),
        lidar_weight=rng.uniform(0, 1, (n, layers)), camera_weight=rng.uniform(0, 1, (n, layers)))


def _header():
    h = Header(frame_id="LIDAR_TOP")
    h.stamp.sec, h.stamp.nanosec = 1_533_151_603, 547_590_000
    return h


def test_detection_array_rclpy_bytes_decode_in_rosbags():
    frame = _frame()
    msg = to_detection_array(_header(), frame, NUSCENES_CLASSES)
    decoded = project_typestore().deserialize_cdr(bytes(serialize_message(msg)), DET)
    assert decoded.header.frame_id == "LIDAR_TOP"
    assert (decoded.header.stamp.sec, decoded.header.stamp.nanosec) == (1_533_151_603, 547_590_000)
    assert len(decoded.detections) == len(frame)
    for d, box, score, label in zip(decoded.detections, frame.boxes, frame.scores, frame.labels):
        c = d.bbox.center
        np.testing.assert_allclose([c.position.x, c.position.y, c.position.z], box[:3])
        np.testing.assert_allclose([d.bbox.size.x, d.bbox.size.y, d.bbox.size.z], box[3:6])
        # yaw from the quaternion, written out independently: q = (0, 0, sin(yaw/2), cos(yaw/2))
        yaw = 2.0 * math.atan2(c.orientation.z, c.orientation.w)
        assert math.isclose(math.remainder(yaw - box[6], 2 * math.pi), 0.0, abs_tol=1e-9)
        assert (c.orientation.x, c.orientation.y) == (0.0, 0.0)
        assert d.results[0].hypothesis.class_id == NUSCENES_CLASSES[label]
        assert d.results[0].hypothesis.score == pytest.approx(score)


def test_routing_rclpy_bytes_decode_in_rosbags():
    frame = _frame(layers=3)
    msg = to_routing_msg(_header(), frame, True, ["CAM_FRONT", "CAM_BACK"], ["CAM_BACK_LEFT"])
    decoded = project_typestore().deserialize_cdr(bytes(serialize_message(msg)), ROUTING)
    assert list(decoded.cameras_available) == ["CAM_FRONT", "CAM_BACK"]
    assert list(decoded.cameras_masked) == ["CAM_BACK_LEFT"]
    assert decoded.lidar_available is True
    for entry, q, lw, cw in zip(decoded.detections, frame.query_index, frame.lidar_weight, frame.camera_weight):
        assert entry.query_index == q
        np.testing.assert_allclose(entry.lidar_weight_per_layer, lw, rtol=1e-6)
        np.testing.assert_allclose(entry.camera_weight_per_layer, cw, rtol=1e-6)
        assert entry.lidar_weight == pytest.approx(lw[-1], rel=1e-6)
    assert decoded.mean_camera_weight == pytest.approx(frame.camera_weight[:, -1].mean(), rel=1e-6)


def test_rosbags_bytes_decode_in_rclpy():
    store = project_typestore()
    T = store.types
    Time, HeaderT = T["builtin_interfaces/msg/Time"], T["std_msgs/msg/Header"]
    hdr = HeaderT(stamp=Time(sec=7, nanosec=123), frame_id="lidar")
    Point, Quat, Pose = T["geometry_msgs/msg/Point"], T["geometry_msgs/msg/Quaternion"], T["geometry_msgs/msg/Pose"]
    pose = Pose(position=Point(x=1.5, y=-2.0, z=0.25), orientation=Quat(x=0.0, y=0.0, z=0.5, w=math.sqrt(0.75)))
    hyp = T["vision_msgs/msg/ObjectHypothesisWithPose"](
        hypothesis=T["vision_msgs/msg/ObjectHypothesis"](class_id="pedestrian", score=0.75),
        pose=T["geometry_msgs/msg/PoseWithCovariance"](pose=pose, covariance=np.arange(36, dtype=np.float64)))
    det = T["vision_msgs/msg/Detection3D"](
        header=hdr, results=[hyp], id="7:42",
        bbox=T["vision_msgs/msg/BoundingBox3D"](center=pose, size=T["geometry_msgs/msg/Vector3"](x=0.7, y=0.6, z=1.8)))
    arr = T[DET](header=hdr, detections=[det])
    out = deserialize_message(bytes(store.serialize_cdr(arr, DET)), Detection3DArray)
    d = out.detections[0]
    assert out.header.frame_id == "lidar" and out.header.stamp.nanosec == 123
    assert d.id == "7:42" and d.results[0].hypothesis.class_id == "pedestrian"
    assert d.results[0].hypothesis.score == 0.75
    assert list(d.results[0].pose.covariance) == list(range(36))
    assert (d.bbox.size.x, d.bbox.size.y, d.bbox.size.z) == (0.7, 0.6, 1.8)
    assert d.bbox.center.orientation.z == 0.5

    entry = T["aqr_perception/msg/DetectionRouting"](
        id="7:42", query_index=42, lidar_weight=0.25, camera_weight=0.75,
        lidar_weight_per_layer=np.array([0.5, 0.25], dtype=np.float32),
        camera_weight_per_layer=np.array([0.5, 0.75], dtype=np.float32))
    rmsg = T[ROUTING](header=hdr, detections=[entry], mean_lidar_weight=0.25, mean_camera_weight=0.75,
                      lidar_available=False, cameras_available=["CAM_FRONT"], cameras_masked=[])
    r = deserialize_message(bytes(store.serialize_cdr(rmsg, ROUTING)), QueryRouting)
    assert r.detections[0].query_index == 42 and r.detections[0].camera_weight == 0.75
    assert list(r.detections[0].lidar_weight_per_layer) == [0.5, 0.25]
    assert r.lidar_available is False and list(r.cameras_available) == ["CAM_FRONT"]


def _advertised_hash(ctx, msg_type, topic):
    import rclpy

    node = rclpy.create_node("hash_probe", context=ctx)
    try:
        node.create_publisher(msg_type, topic, 1)
        return str(node.get_publishers_info_by_topic(topic)[0].topic_type_hash)
    finally:
        node.destroy_node()


@pytest.mark.parametrize("msg_type, name", [
    (Detection3DArray, DET), (QueryRouting, ROUTING),
])
def test_type_hash_matches_the_msg_definition(ros_context, msg_type, name):
    # rosbags computes RIHS01 from the .msg text; rclpy advertises the hash rosidl built.
    assert _advertised_hash(ros_context, msg_type, "/hash_probe") == project_typestore().hash_rihs01(name)


def test_tf2_msgs_stand_in_matches_the_real_package(ros_context):
    # rosbags ships the real Kilted tf2_msgs definitions: an independent reference.
    real = get_typestore(Stores.ROS2_KILTED).hash_rihs01("tf2_msgs/msg/TFMessage")
    assert _advertised_hash(ros_context, TFMessage, "/tf_probe") == real


@pytest.mark.parametrize("n, layers", [(0, 3), (1, 1), (7, 3), (100, 3)])
def test_the_cdr_twins_are_the_bytes_rclpy_serialises(n, layers):
    """What the node publishes (bytes written directly) is rclpy's serialisation of the
    message objects, byte for byte except the alignment padding (which rclpy leaves
    uninitialised: both are compared through a rosbags round trip, which writes zeros);
    rclpy and rosbags decode it to the frame's values."""
    from aqr_perception.data.detection_cdr import detection_array_cdr, routing_cdr, velocity_cdr
    from aqr_perception.ros.detection_msgs import to_velocity_msg

    frame, header = _frame(n=n, layers=layers, seed=n), _header()
    header.frame_id = "lidar_top_\u00e9"                       # a non-ASCII frame id: UTF-8 lengths
    cams, masked = ["CAM_FRONT", "CAM_BACK"], ["CAM_BACK_LEFT"]
    store = project_typestore()

    def same(ours: bytes, msg, typename: str) -> None:
        theirs = bytes(serialize_message(msg))
        assert len(ours) == len(theirs)
        assert ours == bytes(store.serialize_cdr(store.deserialize_cdr(theirs, typename), typename))
        assert ours == bytes(store.serialize_cdr(store.deserialize_cdr(ours, typename), typename))

    same(detection_array_cdr(header, frame, NUSCENES_CLASSES), to_detection_array(header, frame, NUSCENES_CLASSES),
         DET)
    same(velocity_cdr(header, frame), to_velocity_msg(header, frame), "aqr_perception/msg/DetectionVelocityArray")
    same(routing_cdr(header, frame, n % 2 == 0, cams, masked),
         to_routing_msg(header, frame, n % 2 == 0, cams, masked), ROUTING)
    # rclpy's typed take of the bytes (what a subscriber gets), against the frame itself
    msg = deserialize_message(detection_array_cdr(header, frame, NUSCENES_CLASSES), Detection3DArray)
    assert len(msg.detections) == n
    for d, box, score in zip(msg.detections, frame.boxes, frame.scores):
        assert [d.bbox.size.x, d.bbox.size.y, d.bbox.size.z] == box[3:6].tolist()
        assert d.results[0].hypothesis.score == score
        assert d.results[0].pose.pose.position.x == box[0]
    velocities = "aqr_perception/msg/DetectionVelocityArray"
    decoded = project_typestore().deserialize_cdr(velocity_cdr(header, frame), velocities)
    assert [(v.velocity.x, v.velocity.y, v.velocity.z) for v in decoded.velocities] == [
        (b[7], b[8], 0.0) for b in frame.boxes.tolist()]


@pytest.mark.parametrize("n", [0, 1, 7, 100])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_marker_cdr_twin_is_the_bytes_rclpy_serialises(n, dtype):
    """The node's RViz markers written directly are rclpy's serialisation of the
    MarkerArray objects (compared through a rosbags round trip: rclpy's padding bytes are
    uninitialised); float32 boxes are what the model hands the node."""
    from visualization_msgs.msg import MarkerArray

    from aqr_perception.ros.markers import detection_markers, detection_markers_cdr

    frame, header = _frame(n=n, seed=n + 1), _header()
    header.frame_id = "lidar_top_\u00e9"
    boxes = frame.boxes.astype(dtype)
    scores = frame.scores.astype(dtype)
    names = [NUSCENES_CLASSES[int(c)] for c in frame.labels]
    ours = detection_markers_cdr(header, boxes, scores, names)
    msg = detection_markers(header, boxes, scores, names)
    theirs = bytes(serialize_message(msg))
    store, typename = project_typestore(), "visualization_msgs/msg/MarkerArray"
    assert len(ours) == len(theirs)
    assert ours == bytes(store.serialize_cdr(store.deserialize_cdr(theirs, typename), typename))
    decoded = deserialize_message(ours, MarkerArray)
    assert len(decoded.markers) == 1 + 3 * n and decoded.markers[0].action == decoded.markers[0].DELETEALL
    for got, want in zip(decoded.markers, msg.markers):
        assert (got.ns, got.id, got.type, got.text, len(got.points)) == (want.ns, want.id, want.type, want.text,
                                                                       len(want.points))
        assert [(p.x, p.y, p.z) for p in got.points] == [(p.x, p.y, p.z) for p in want.points]


def test_the_marker_writer_knows_the_layout_it_writes():
    """This distro's Marker is the layout written; a Marker without Iron's texture / uv /
    mesh_file fields (Humble) is recognised as another layout (the node then publishes objects)."""
    from visualization_msgs.msg import Marker

    from aqr_perception.ros.markers import marker_cdr_matches

    assert marker_cdr_matches(Marker)
    fields = {k: v for k, v in Marker.get_fields_and_field_types().items()
              if k not in ("texture_resource", "texture", "uv_coordinates", "mesh_file")}
    humble = type("HumbleMarker", (), {"get_fields_and_field_types": staticmethod(lambda: fields)})
    assert not marker_cdr_matches(humble)
