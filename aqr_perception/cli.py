"""The ``aqr-perception`` command.

Subcommands:
    synth    generate synthetic drives (rosbag2 + ground truth + pictures)
    train    train the detector on synthetic drives (torchrun for DDP)
    play     replay a rosbag2 over DDS (ros2 bag play stand-in)
    demo     the README main job on the embedded default (what exists today, said plainly)
    node     run the ROS 2 node (same as ``aqr_perception_node``)
    config   show / validate configs, print or check the node parameter JSON schema
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

from aqr_perception import config as cfgmod

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schema" / "aqr_perception.schema.json"


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="config YAML or preset name (default: tiny)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set model.aqr.strength=3 (repeatable)")


def cmd_config(args: argparse.Namespace) -> int:
    if args.action == "show":
        cfg = cfgmod.load_config(args.config, args.overrides)
        print(yaml.safe_dump(cfgmod.config_to_dict(cfg), sort_keys=False), end="")
        return 0
    if args.action == "validate":
        bad = 0
        for f in args.files:
            try:
                text = yaml.safe_load(Path(f).read_text()) or {}
                if any(isinstance(v, dict) and "ros__parameters" in v for v in text.values()):
                    cfgmod.node_config_from_param_file(f)
                    kind = "node parameter file"
                else:
                    cfgmod.load_config(f)
                    kind = "config"
                print(f"ok: {f} ({kind})")
            except (cfgmod.ConfigError, OSError, yaml.YAMLError) as exc:
                print(f"error: {f}: {exc}", file=sys.stderr)
                bad += 1
        return 1 if bad else 0
    # schema
    schema = json.dumps(cfgmod.node_param_schema(), indent=2) + "\n"
    if args.check:
        current = SCHEMA_PATH.read_text() if SCHEMA_PATH.exists() else ""
        if current != schema:
            print(f"{SCHEMA_PATH} is out of date: run `aqr-perception config schema --write`", file=sys.stderr)
            return 1
        print(f"ok: {SCHEMA_PATH} matches NodeConfig")
        return 0
    if args.write:
        SCHEMA_PATH.parent.mkdir(parents=True, exist_ok=True)
        SCHEMA_PATH.write_text(schema)
        print(f"wrote {SCHEMA_PATH}")
        return 0
    print(schema, end="")
    return 0


def cmd_node(args: argparse.Namespace) -> int:
    from aqr_perception.ros.node import main as node_main

    return node_main([sys.argv[0], *args.ros_args])


def cmd_train(args: argparse.Namespace) -> int:
    from aqr_perception.training.train import main as train_main

    return train_main(args.train_args)


def cmd_play(args: argparse.Namespace) -> int:
    from aqr_perception.ros.player import main as play_main

    return play_main(args.play_args)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run what exists of the main job and report plainly what was and was not done."""
    print("aqr-perception demo: the main job on the embedded default\n")
    t0 = time.monotonic()
    cfg = cfgmod.load_config(args.config, args.overrides)
    m = cfg.model
    print(f"[1/2] config {cfgmod.resolve_config_path(args.config).name}: valid. model {m.name}: "
          f"{m.num_views} views at {m.image.input_width}x{m.image.input_height}, "
          f"BEV {m.bev_size}x{m.bev_size}, {m.transformer.num_queries} queries, "
          f"{m.transformer.num_layers} layers, AQR {'on (' + m.aqr.mode + ')' if m.aqr.enabled else 'off'}")

    from aqr_perception.ros.loopback_check import exchange

    res = exchange(count=args.frames)
    ok = res.publisher_rc == 0 and len(res.detections) == args.frames and len(res.routing) == args.frames
    gaps = sorted(res.arrival_gaps_ms)
    gap_txt = f", arrival spacing median {gaps[len(gaps) // 2]:.1f} ms" if gaps else ""
    print(f"[2/2] ROS 2 over loopback DDS: a publisher process sent {args.frames} frames of "
          f"vision_msgs/Detection3DArray + aqr_perception/QueryRouting; received "
          f"{len(res.detections)} + {len(res.routing)}{gap_txt} ({res.elapsed_s:.1f} s)")
    print("\nNot done yet (each is an open issue): the detector, the synthetic bag, the node's "
          "sensor pipeline, the bundled checkpoint and the replay evaluation. No detections were "
          "computed and no metrics or pictures were written.")
    print(f"\ndemo finished in {time.monotonic() - t0:.1f} s: {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


def cmd_synth(args: argparse.Namespace) -> int:
    """Generate synthetic drives (rosbag2 MCAP + nuScenes-style GT JSON + a picture each)."""
    from tqdm import tqdm

    from aqr_perception.data.synth.drive import generate_drive

    overrides = list(args.overrides)
    for key in ("num_drives", "frames_per_drive", "seed", "corruption"):
        value = getattr(args, key)
        if value is not None:
            overrides.append(f"synth.{key}={value}")
    cfg = cfgmod.load_config(args.config, overrides)
    s = cfg.synth
    out = Path(args.out or s.output_dir)
    t0 = time.monotonic()
    for i in tqdm(range(s.num_drives), desc="drives", unit="drive", disable=args.quiet):
        seed = s.seed + i
        r = generate_drive(cfg, out, f"drive_{seed:04d}_{s.corruption}", seed, picture=not args.no_pictures)
        if args.quiet:
            continue
        tqdm.write(f"{r.bag}: {r.lidar_frames} sweeps, {r.camera_frames} camera frames, {r.gt_boxes} GT boxes")
    if not args.quiet:
        print(f"wrote {s.num_drives} drive(s) to {out} in {time.monotonic() - t0:.1f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aqr-perception", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the main job on the embedded default")
    _add_config_args(p)
    p.add_argument("--frames", type=int, default=5, help="frames to exchange over DDS")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("synth", help="generate synthetic drives as rosbag2 files")
    _add_config_args(p)
    p.add_argument("--drives", dest="num_drives", type=int, help="number of drives (synth.num_drives)")
    p.add_argument("--frames", dest="frames_per_drive", type=int, help="LiDAR sweeps per drive")
    p.add_argument("--seed", type=int, help="seed of the first drive (drive i uses seed + i)")
    p.add_argument("--corruption", help="clean, no_lidar, reduced_lidar, no_cameras, one_camera_missing, "
                                        "dark, fog, time_offset")
    p.add_argument("--out", help="output folder (default synth.output_dir)")
    p.add_argument("--no-pictures", action="store_true", help="skip the PNG per drive")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("node", help="run the ROS 2 node; arguments after it go to ROS (--ros-args ...)")
    p.add_argument("ros_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_node)

    p = sub.add_parser("train", help="train the detector (see `aqr-perception train -- --help`)", add_help=False)
    p.add_argument("train_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("play", help="replay a rosbag2 over DDS (see `aqr-perception play -- --help`)",
                       add_help=False)
    p.add_argument("play_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_play)

    p = sub.add_parser("config", help="show or validate configuration")
    csub = p.add_subparsers(dest="action", required=True)
    c = csub.add_parser("show", help="print the merged, validated config as YAML")
    _add_config_args(c)
    c = csub.add_parser("validate", help="validate config YAMLs or node parameter files")
    c.add_argument("files", nargs="+")
    c = csub.add_parser("schema", help="JSON schema of the node parameter file")
    c.add_argument("--check", action="store_true", help="fail if schema/ is out of date")
    c.add_argument("--write", action="store_true", help="write schema/aqr_perception.schema.json")
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except cfgmod.ConfigError as exc:
        print(f"aqr-perception: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
