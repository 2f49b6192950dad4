"""A synthetic street: a straight road along global +x, the ego car driving on it, and
objects of the 10 nuScenes classes with class-typical sizes, poses and motions.

Global frame: x along the road, y to the left, z up, ground at z = 0. Lanes at
y = -5.25, -1.75 (ego lane, driving +x), +1.75, +5.25 (oncoming, -x); parking strips at
|y| = 7.6; sidewalks at 8.5 < |y| < 11.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from aqr_perception.data.boxes import pose_matrix

ROAD_HALF_WIDTH = 7.0
LANES_FORWARD = (-5.25, -1.75)      # traffic driving +x
LANES_ONCOMING = (1.75, 5.25)       # traffic driving -x
PARKING_Y = 7.6
SIDEWALK = (8.5, 11.0)
EGO_LANE_Y = -1.75


@dataclass(frozen=True)
class ClassSpec:
    """Typical size (dx, dy, dz) m, its relative jitter, colour (RGB), LiDAR reflectivity 0..255."""

    size: tuple[float, float, float]
    jitter: float
    color: tuple[int, int, int]
    reflectivity: float


#: nuScenes mean sizes (length along heading, width, height).
CLASS_SPECS: dict[str, ClassSpec] = {
    "car": ClassSpec((4.63, 1.96, 1.74), 0.08, (40, 90, 200), 45.0),
    "truck": ClassSpec((6.94, 2.52, 2.85), 0.10, (190, 40, 40), 50.0),
    "construction_vehicle": ClassSpec((6.56, 2.82, 3.20), 0.08, (230, 190, 30), 55.0),
    "bus": ClassSpec((11.0, 2.95, 3.47), 0.05, (240, 130, 20), 50.0),
    "trailer": ClassSpec((12.3, 2.93, 3.87), 0.08, (120, 80, 50), 40.0),
    "barrier": ClassSpec((0.50, 2.53, 0.98), 0.05, (235, 235, 235), 90.0),
    "motorcycle": ClassSpec((2.11, 0.77, 1.47), 0.08, (110, 40, 130), 40.0),
    "bicycle": ClassSpec((1.70, 0.60, 1.28), 0.08, (30, 180, 190), 35.0),
    "pedestrian": ClassSpec((0.73, 0.67, 1.77), 0.08, (60, 160, 70), 25.0),
    "traffic_cone": ClassSpec((0.41, 0.41, 1.07), 0.05, (255, 110, 0), 120.0),
}


@dataclass
class WorldObject:
    """An object moving at constant velocity: position(t) = p0 + v * t, fixed heading."""

    track_id: int
    cls: str
    size: np.ndarray        # (3,) dx, dy, dz
    p0: np.ndarray          # (2,) x, y at t = 0 (global)
    velocity: np.ndarray    # (2,) global m/s
    yaw: float
    color: tuple[int, int, int]
    attribute: str          # nuScenes attribute (vehicle.moving, pedestrian.standing, ...)

    def box(self, t: float) -> np.ndarray:
        """(9,) global box at time t."""
        x, y = self.p0 + self.velocity * t
        return np.array([x, y, self.size[2] / 2, *self.size, self.yaw, *self.velocity])


@dataclass
class World:
    """Objects + ego motion. Ego pose: ``ego_pose(t)`` (4, 4) ego -> global."""

    objects: list[WorldObject]
    ego_speed: float
    ego_start_x: float = 0.0
    lidar_height: float = 1.84
    meta: dict = field(default_factory=dict)
    ego_yaw_rate: float = 0.0       # rad/s: the ego drives an arc (0: straight along +x)

    def ego_pose(self, t: float) -> np.ndarray:
        w = self.ego_yaw_rate
        if w == 0.0:
            return pose_matrix(self.ego_start_x + self.ego_speed * t, EGO_LANE_Y, 0.0, 0.0)
        r = self.ego_speed / w                      # turning radius, heading w * t
        return pose_matrix(self.ego_start_x + r * np.sin(w * t), EGO_LANE_Y + r * (1 - np.cos(w * t)), 0.0, w * t)

    def boxes(self, t: float) -> tuple[np.ndarray, list[WorldObject]]:
        """(N, 9) global boxes of every object at time t, and the objects."""
        if not self.objects:
            return np.zeros((0, 9)), []
        return np.stack([o.box(t) for o in self.objects]), list(self.objects)


def _size(rng: np.random.Generator, spec: ClassSpec) -> np.ndarray:
    return np.array(spec.size) * (1 + spec.jitter * rng.uniform(-1, 1, 3))


def _color(rng: np.random.Generator, spec: ClassSpec) -> tuple[int, int, int]:
    c = np.clip(np.array(spec.color) * rng.uniform(0.8, 1.15) + rng.uniform(-15, 15, 3), 0, 255)
    return tuple(int(v) for v in c)


def _free(x: float, y: float, r: float, taken: list[tuple[float, float, float]]) -> bool:
    return all((x - a) ** 2 + (y - b) ** 2 > (r + c) ** 2 for a, b, c in taken)


def make_world(rng: np.random.Generator, duration: float, density: float = 1.0) -> World:
    """Populate the street around the ego's path for a drive of ``duration`` seconds.

    Vehicles in one lane share that lane's speed (no collisions); parked vehicles, cones
    and barriers are static; pedestrians walk along or across the sidewalks.
    """
    ego_speed = float(rng.uniform(4.0, 10.0))
    x_lo, x_hi = -55.0, 55.0 + ego_speed * duration
    objects: list[WorldObject] = []
    taken: list[tuple[float, float, float]] = [(0.0, EGO_LANE_Y, 6.0)]  # keep clear around the ego at t=0
    # moving taken-lists are per lane (shared speeds), static ones global
    next_id = 0

    def add(cls: str, x: float, y: float, yaw: float, vel: tuple[float, float], attr: str, lane_taken) -> bool:
        nonlocal next_id
        spec = CLASS_SPECS[cls]
        size = _size(rng, spec)
        r = 0.5 * float(np.hypot(size[0], size[1])) + 0.6
        if not _free(x, y, r, lane_taken):
            return False
        lane_taken.append((x, y, r))
        objects.append(WorldObject(next_id, cls, size, np.array([x, y]), np.array(vel, dtype=float), yaw,
                                   _color(rng, spec), attr))
        next_id += 1
        return True

    n = lambda mean: rng.poisson(mean * density)  # noqa: E731
    vehicle_classes = ["car"] * 6 + ["truck", "bus", "trailer", "construction_vehicle", "motorcycle", "bicycle"]
    # lanes: every vehicle in a lane moves at the lane speed, both directions
    for lane_y, direction in [(y, 1.0) for y in LANES_FORWARD] + [(y, -1.0) for y in LANES_ONCOMING]:
        speed = float(rng.uniform(3.0, 11.0))
        lane_taken = list(taken) if lane_y == EGO_LANE_Y else []
        for _ in range(n(5)):
            cls = vehicle_classes[rng.integers(len(vehicle_classes))]
            yaw = 0.0 if direction > 0 else np.pi
            add(cls, float(rng.uniform(x_lo, x_hi)), lane_y + float(rng.normal(0, 0.2)), yaw,
                (direction * speed, 0.0), "vehicle.moving" if cls not in ("bicycle", "motorcycle")
                else "cycle.with_rider", lane_taken)
    static_taken = list(taken)
    # parked vehicles and cycles along both curbs
    for side in (-1.0, 1.0):
        for _ in range(n(6)):
            cls = ["car", "car", "car", "truck", "bicycle", "motorcycle"][rng.integers(6)]
            attr = "vehicle.parked" if cls in ("car", "truck") else "cycle.without_rider"
            add(cls, float(rng.uniform(x_lo, x_hi)), side * PARKING_Y, float(rng.choice([0.0, np.pi])),
                (0.0, 0.0), attr, static_taken)
    # a construction zone: cones and barriers at the road edge
    for _ in range(n(5)):
        side = float(rng.choice([-1.0, 1.0]))
        add("traffic_cone", float(rng.uniform(x_lo, x_hi)), side * float(rng.uniform(6.6, 7.4)), 0.0, (0.0, 0.0),
            "", static_taken)
    for _ in range(n(3)):
        side = float(rng.choice([-1.0, 1.0]))
        add("barrier", float(rng.uniform(x_lo, x_hi)), side * float(rng.uniform(6.8, 7.6)),
            float(rng.normal(0, 0.1)), (0.0, 0.0), "", static_taken)
    # pedestrians: walking along the sidewalks, a few standing
    walk_taken: list[tuple[float, float, float]] = []
    for _ in range(n(8)):
        side = float(rng.choice([-1.0, 1.0]))
        y = side * float(rng.uniform(*SIDEWALK))
        if rng.uniform() < 0.2:
            add("pedestrian", float(rng.uniform(x_lo, x_hi)), y, float(rng.uniform(-np.pi, np.pi)), (0.0, 0.0),
                "pedestrian.standing", static_taken)
            continue
        speed = float(rng.uniform(0.9, 1.6)) * float(rng.choice([-1.0, 1.0]))
        add("pedestrian", float(rng.uniform(x_lo, x_hi)), y, 0.0 if speed > 0 else np.pi, (speed, 0.0),
            "pedestrian.moving", walk_taken)
    return World(objects=objects, ego_speed=ego_speed)
