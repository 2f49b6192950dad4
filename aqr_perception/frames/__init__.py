"""From sensor messages to model inputs, without rclpy (the frame pipeline).

Works on rclpy messages and on rosbags' message objects alike, so the node, the bag
reader (training, offline evaluation) and the tests share one path:
``conversions`` (PointCloud2 / Image / CompressedImage / CameraInfo -> arrays) ->
``sync`` (a LiDAR-triggered match of the six cameras) -> ``calibration`` / ``transforms``
(intrinsics, ``/tf_static`` extrinsics) -> ``ego_pose`` + ``sweeps`` (past sweeps in the
current LiDAR frame) -> ``preprocess`` (resize, ``lidar2img``) -> ``pipeline``
(:class:`~aqr_perception.frames.pipeline.FramePipeline`: one cloud in, model arrays and
detections out). Imports config, stamps, detections and the model; never ros, data,
training or evaluation (test/test_architecture.py).
"""
