"""Per-frame pictures of an evaluation: BEV and the six cameras, GT white, answers by class;
as PNGs of chosen frames, or every frame as one animated GIF of the replay."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from aqr_perception.config import AqrConfig
from aqr_perception.data.bag_reader import feed_bag
from aqr_perception.data.ground_truth import read_ground_truth
from aqr_perception.data.pictures import compose, draw_bev, draw_camera, save_png
from aqr_perception.data.rig import Camera
from aqr_perception.evaluation.answers import FrameAnswer, eval_node_config
from aqr_perception.frames.conversions import reduce_intrinsics
from aqr_perception.frames.pipeline import FramePipeline
from aqr_perception.stamps import header_ns

#: the animation's frames are scaled down to this width (px) and shown this long (ms)
ANIMATION_WIDTH, ANIMATION_FRAME_MS = 960, 250


def frame_pictures(drawn: list[tuple[str, np.ndarray]], out_dir: Path) -> list[Path]:
    """The pictures of :func:`frame_images` as ``out_dir/frame_<token>.png``."""
    written = []
    for token, picture in drawn:
        path = out_dir / f"frame_{token}.png"
        save_png(path, picture)
        written.append(path)
    return written


def write_animation(pictures: list[np.ndarray], path: Path) -> int:
    """Pictures of :func:`frame_images`, in order, as one looping GIF at ``path``
    (``ANIMATION_WIDTH`` px wide); returns the number of frames."""
    from PIL import Image

    frames = []
    for picture in pictures:
        img = Image.fromarray(picture)
        scale = min(1.0, ANIMATION_WIDTH / img.width)
        frames.append(img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
                      .quantize(colors=255, method=Image.Quantize.MEDIANCUT))
    if frames:
        path.parent.mkdir(parents=True, exist_ok=True)
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=ANIMATION_FRAME_MS, loop=0)
    return len(frames)


def frame_images(bag: Path, gt_json: Path, cfg: AqrConfig, answers: dict[str, FrameAnswer], tokens: list[str]
                 ) -> list[tuple[str, np.ndarray]]:
    """(token, (H, W, 3) uint8 RGB picture) of each frame of ``tokens``, in bag order: BEV +
    camera overlays, GT boxes seen by the LiDAR in white, answers above
    ``eval.picture_score_threshold`` in class colours."""
    gts = read_ground_truth(gt_json, list(cfg.model.classes))
    pipeline = FramePipeline(eval_node_config(cfg), input_hw=(cfg.model.image.input_height,
                                                              cfg.model.image.input_width), lidar=cfg.model.lidar,
                              image=cfg.model.image)
    done: list[tuple[str, np.ndarray]] = []

    def on_cloud(cloud) -> None:
        token = str(header_ns(cloud))
        if token not in tokens:
            pipeline.sync.associate(header_ns(cloud))   # keep the sync state as the node has it
            return
        inputs = pipeline.assemble(cloud)
        gt = gts[int(token)]
        seen = gt.num_lidar_pts > 0
        groups = [(gt.lidar_boxes[seen], [n for n, s in zip(gt.names, seen) if s], False)]
        a = answers.get(token)
        if a is not None:
            conf = a.scores >= cfg.eval.picture_score_threshold
            groups.append((a.boxes[conf], [n for n, c in zip(a.names, conf) if c], True, a.scores[conf]))
        tiles = []
        for cam, img in zip(pipeline.cameras, inputs.images):
            size = pipeline.calib.image_size(cam)
            if img is None or size is None:
                h, w = size or (cfg.synth.image_height, cfg.synth.image_width)
                tiles.append(np.zeros((h, w, 3), np.uint8))
                continue
            r = round(size[1] / img.shape[1])          # JPEGs may have been decoded reduced
            c = Camera(cam, img.shape[1], img.shape[0], reduce_intrinsics(pipeline.calib.intrinsics(cam), r),
                       pipeline.calib.lidar_to_camera(cam, inputs.lidar_frame))
            tiles.append(draw_camera(img, c, groups))
        done.append((token, compose(draw_bev(inputs.arrays.points, groups), tiles)))

    feed_bag(bag, pipeline, on_cloud)
    return done
