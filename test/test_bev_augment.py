"""Global BEV augmentation: the scene, its GT and its camera geometry move together.

References: ``data.boxes.points_in_boxes`` (numpy box geometry, independent of the
augmentation code), closed-form yaw/velocity of a pure flip and of a pure rotation, and
the projection of the un-augmented points.
"""
import math

import numpy as np
import pytest
import torch

from aqr_perception.data.boxes import points_in_boxes, wrap_angle
from aqr_perception.model.detector import DetectorInputs
from aqr_perception.training.bev_augment import augment_boxes, augment_scene, random_augment, sample_transform

RANGE = [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0]


def _boxes(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.cat([torch.rand(n, 2, generator=g) * 60 - 30, torch.rand(n, 1, generator=g) * 2 - 1,
                      torch.rand(n, 3, generator=g) * 4 + 0.5, (torch.rand(n, 1, generator=g) * 2 - 1) * math.pi,
                      torch.randn(n, 2, generator=g) * 5], 1).double()


def _points_in_and_out(boxes: torch.Tensor, g: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per box 50 points strictly inside and 50 just outside (one local axis at 1.05-1.3 half extent)."""
    b = boxes.numpy()
    inside, outside = [], []
    for box in b:
        c, s = math.cos(box[6]), math.sin(box[6])
        R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
        local_in = (torch.rand(50, 3, generator=g).numpy() - 0.5) * 0.95 * box[3:6]
        local_out = (torch.rand(50, 3, generator=g).numpy() - 0.5) * 0.9 * box[3:6]
        axis = np.arange(50) % 3
        sign = np.where(np.arange(50) % 2 == 0, 1.0, -1.0)
        local_out[np.arange(50), axis] = sign * box[3 + axis] / 2 * (1.05 + 0.25 * torch.rand(50, generator=g).numpy())
        inside.append(local_in @ R.T + box[:3])
        outside.append(local_out @ R.T + box[:3])
    return np.stack(inside), np.stack(outside)


@pytest.mark.parametrize("seed", range(6))
def test_points_inside_a_box_stay_inside_the_augmented_box(seed):
    g = torch.Generator().manual_seed(seed)
    boxes = _boxes(8, g)
    A = sample_transform(math.pi / 4, (0.9, 1.1), 0.5, g)
    inside, outside = _points_in_and_out(boxes, g)
    new = augment_boxes(boxes, A).numpy()
    M, t = A[:3, :3].numpy(), A[:3, 3].numpy()
    for k in range(len(boxes)):
        assert points_in_boxes(inside[k] @ M.T + t, new[k:k + 1]).all()
        assert not points_in_boxes(outside[k] @ M.T + t, new[k:k + 1]).any()


def test_flips_and_rotation_match_the_closed_forms():
    g = torch.Generator().manual_seed(7)
    boxes = _boxes(20, g)
    mirror_y = torch.diag(torch.tensor([1.0, -1.0, 1.0, 1.0], dtype=torch.float64))
    out = augment_boxes(boxes, mirror_y)
    torch.testing.assert_close(out[:, 6], -boxes[:, 6])
    torch.testing.assert_close(out[:, 7:9], boxes[:, 7:9] * torch.tensor([1.0, -1.0], dtype=torch.float64))
    mirror_x = torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0], dtype=torch.float64))
    out = augment_boxes(boxes, mirror_x)
    torch.testing.assert_close(out[:, 6], torch.from_numpy(wrap_angle((math.pi - boxes[:, 6]).numpy())))
    torch.testing.assert_close(out[:, 0], -boxes[:, 0])
    theta, s = 0.6, 1.07
    rot = torch.eye(4, dtype=torch.float64)
    rot[:2, :2] = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]]) * s
    rot[2, 2] = s
    out = augment_boxes(boxes, rot)
    torch.testing.assert_close(out[:, 6], torch.from_numpy(wrap_angle((boxes[:, 6] + theta).numpy())))
    torch.testing.assert_close(out[:, 3:6], boxes[:, 3:6] * s)
    speed = boxes[:, 7:9].norm(dim=1)
    torch.testing.assert_close(out[:, 7:9].norm(dim=1), speed * s)


def test_augmented_points_project_to_the_same_pixels_and_gt_leaving_the_range_is_dropped():
    g = torch.Generator().manual_seed(3)
    pts = torch.cat([torch.rand(500, 3, generator=g) * 80 - 40, torch.rand(500, 2, generator=g)], 1)
    l2i = torch.randn(2, 3, 4, 4, generator=g)
    l2i[..., 3, :] = torch.tensor([0.0, 0.0, 0.0, 1.0])
    inputs = DetectorInputs([pts, pts[:100]], torch.zeros(2, 3, 3, 8, 8), l2i, torch.ones(2, 3, dtype=torch.bool),
                            torch.ones(2, dtype=torch.bool))
    boxes = torch.tensor([[10.0, 5.0, 0.0, 4.0, 2.0, 1.5, 0.2, 3.0, 0.0],
                          [48.0, 40.0, 0.0, 4.0, 2.0, 1.5, 0.0, 0.0, 0.0]])    # rotated 45 deg: y = 62 m, out of range
    labels = torch.tensor([0, 1])
    theta = math.pi / 4
    A = torch.eye(4, dtype=torch.float64)
    A[:2, :2] = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    A2 = sample_transform(0.5, (0.9, 1.1), 0.5, g)
    out, out_boxes, out_labels = augment_scene(inputs, [boxes, boxes], [labels, labels], [A, A2], RANGE)
    for b in range(2):
        n = len(inputs.points[b])
        torch.testing.assert_close(out.points[b][:, 3:], inputs.points[b][:, 3:])
        homog = lambda p: torch.cat([p[:, :3].double(), torch.ones(len(p), 1, dtype=torch.float64)], 1)  # noqa: E731
        before = torch.einsum("vij,nj->vni", inputs.lidar2img[b].double(), homog(inputs.points[b]))
        after = torch.einsum("vij,nj->vni", out.lidar2img[b].double(), homog(out.points[b]))
        torch.testing.assert_close(after, before, atol=1e-3, rtol=1e-4)
        assert out.points[b].shape == (n, 5)
    assert out_labels[0].tolist() == [0] and len(out_boxes[0]) == 1
    torch.testing.assert_close(out_boxes[0][0, :2], torch.tensor([(10 - 5) / math.sqrt(2), 15 / math.sqrt(2)]))
    assert torch.equal(inputs.lidar2img, l2i) and inputs.points[0] is pts      # the input is not modified


def test_identity_settings_leave_the_sample_and_the_random_stream_alone():
    g = torch.Generator().manual_seed(5)
    inputs = DetectorInputs([torch.rand(10, 5)], torch.zeros(1, 1, 3, 4, 4), torch.eye(4).expand(1, 1, 4, 4),
                            torch.ones(1, 1, dtype=torch.bool), torch.ones(1, dtype=torch.bool))
    boxes, labels = [_boxes(3, g).float()], [torch.tensor([0, 1, 2])]
    state = g.get_state()
    out, out_boxes, _ = random_augment(inputs, boxes, labels, 0.0, (1.0, 1.0), 0.0, RANGE, g)
    assert out is inputs and out_boxes is boxes and torch.equal(g.get_state(), state)
    random_augment(inputs, boxes, labels, 0.1, (1.0, 1.0), 0.0, RANGE, g)
    assert not torch.equal(g.get_state(), state)
