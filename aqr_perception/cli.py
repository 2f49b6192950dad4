"""The ``aqr-perception`` command.

Subcommands:
    synth    generate synthetic drives (rosbag2 + ground truth + pictures)
    train    train the detector on synthetic drives (torchrun for DDP)
    play     replay a rosbag2 over DDS (ros2 bag play stand-in)
    demo     the README main job: the node replays the bundled drive with the bundled checkpoint
    eval     nuScenes metrics of a drive bag (replay to the node over DDS, or offline)
    robustness  AQR vs no-AQR baseline under sensor corruptions (table + routing weights)
    node     run the ROS 2 node (same as ``aqr_perception_node``)
    import-cmt  the published CMT weights (mmcv .pth) -> a checkpoint the node loads
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
from aqr_perception.allocator import keep_freed_memory

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
                if cfgmod.holds_ros_parameters(text):
                    cfgmod.node_config_from_param_file(f)
                    kind = "node parameter file"
                else:
                    cfgmod.load_config(f)
                    kind = "config"
                print(f"ok: {f} ({kind})")
            except (cfgmod.ConfigError, OSError, yaml.YAMLError) as exc:
                msg = cfgmod.one_line(str(exc))
                print(f"error: {msg if str(f) in msg else f'{f}: {msg}'}", file=sys.stderr)
                bad += 1
        return 2 if bad else 0
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


DEFAULT_BAG = Path(__file__).resolve().parent / "resources" / "default_drive"


def _print_result(name: str, result, report: dict) -> None:
    from aqr_perception.evaluation.report import metrics_table, per_class_table

    print(metrics_table({name: result}))
    print()
    print(per_class_table(result))
    r = report["routing"]
    print(f"\nAQR routing over {r['routed_detections']} confident detections: mean LiDAR weight "
          f"{r['mean_lidar_weight']:.3f}, mean camera weight {r['mean_camera_weight']:.3f}")


def process_settings(cfg: cfgmod.AqrConfig) -> None:
    """What the node applies at configure, for the commands that run the model in this
    process too (offline predictions, the pictures): the allocator setting."""
    if cfg.node.keep_freed_memory:
        keep_freed_memory()


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate drive bags: replay to the node (or offline), nuScenes metrics, report + pictures.
    One bag: its report and pictures; several (repeated --bag, or a folder of bags): pooled."""
    import os

    from aqr_perception.data.bag_reader import check_bag_topics, drive_pairs, ground_truth_beside
    from aqr_perception.data.ground_truth import read_ground_truth

    rate = [f"eval.replay_rate={args.rate}"] if args.rate is not None else []
    cfg = cfgmod.load_config(args.config, args.overrides + rate)
    if args.node_params:   # the node's own ROS parameter file: its topics, frames, cameras, checkpoint
        cfg = cfg.model_copy(update={"node": cfgmod.node_config_from_param_file(args.node_params)})
    # --checkpoint, else the node settings' (a vehicle's parameter file names its model); empty: bundled
    checkpoint = args.checkpoint if args.checkpoint is not None else cfg.node.checkpoint
    process_settings(cfg)
    paths = [Path(b).resolve() for b in args.bag]
    for given, path in list(zip(args.bag, paths)) + ([(args.gt, Path(args.gt))] if args.gt else []):
        if not path.exists():
            raise cfgmod.ConfigError(f"{given}: no such file or folder")
    beside = ground_truth_beside(paths[0])                          # a single bag's ground truth
    single = len(paths) == 1 and (args.gt or beside.is_file()) \
        and int(os.environ.get("WORLD_SIZE", "1")) == 1
    if args.gt and not single:
        raise cfgmod.ConfigError("--gt names the ground truth of one bag; several bags each have <bag>.gt.json")
    record = Path(args.record) if args.record else None
    if record is not None and (not single or args.mode != "replay"):
        raise cfgmod.ConfigError("--record writes the replay of one bag (--mode replay, one --bag)")
    if record is not None and record.exists():
        raise cfgmod.ConfigError(f"--record {record}: it exists (a recording is never overwritten)")
    pairs = [(paths[0], Path(args.gt) if args.gt else beside)] if single else drive_pairs(paths)
    for bag, gt in pairs:                               # every bag and its ground truth, before any work
        check_bag_topics(bag, cfg.node)
        read_ground_truth(gt, list(cfg.model.classes))
    name = paths[0].name if single else "pooled"
    out = Path(args.out or Path(cfg.eval.output_dir) / name)
    submission = Path(args.submission) if args.submission else (out / "results_nusc.json" if args.devkit_eval
                                                                   else None)
    # the devkit comes with these (~1 s of imports): after the checks, so that a mistake is said at once
    from aqr_perception.evaluation.evaluate import run_eval
    from aqr_perception.evaluation.pooled import run_pooled_eval

    try:
        if single:
            ((bag, gt),) = pairs
            result, report = run_eval(bag, gt, cfg, checkpoint, args.mode, out, args.device, args.quiet,
                                      submission, record)
        else:
            done = run_pooled_eval(pairs, cfg, checkpoint, args.mode, out, args.device,
                                   args.quiet, submission)
            if done is None:      # a torchrun rank other than 0: its answers went to rank 0
                return 0
            pooled, report = done
            result = pooled.pooled
    except ValueError as exc:     # e.g. a submission of a drive without nuScenes sample tokens
        print(f"aqr-perception eval: {exc}", file=sys.stderr)
        return 2
    if single:
        _print_result(name, result, report)
    else:
        from aqr_perception.evaluation.report import metrics_table, per_class_table

        print(metrics_table({"pooled": result, **pooled.per_bag}))
        print(f"\n(pooled: the {len(pooled.per_bag)} bags' frames as one evaluation)\n")
        print(per_class_table(result))
    print(f"\n{report['frames_with_output']}/{report['frames']} frames answered in {report['seconds']} s "
          f"({args.mode}); report: {out / 'report.md'}")
    if args.mode == "replay" and cfg.eval.replay_rate > 0:
        print(f"real time at {cfg.eval.replay_rate:g}x: the node answered {report['sweeps_answered']}/"
              f"{report['sweeps_in_bag']} sweeps ({report['answered_rate_hz']:.2f} Hz); the scores are those of the "
              f"{report['frames_scored']} answered GT frames, {report['frames_unmatched']} unanswered not scored")
    if submission is not None:
        print(f"nuScenes submission: {submission}")
    if record is not None:
        print(f"recording: {record} (ros2 bag play {record}, or open {record.name}/*.mcap in Foxglove with "
              "rviz/aqr_perception.foxglove.json)")
    if args.devkit_eval:
        from aqr_perception.evaluation.submission import devkit_detection_eval

        official = devkit_detection_eval(Path(args.devkit_eval), args.nuscenes_version, args.eval_set, submission,
                                         out / "devkit")
        print(f"nuScenes DetectionEval ({args.nuscenes_version}, {args.eval_set}): mAP {official['mean_ap']:.4f} "
              f"NDS {official['nd_score']:.4f} (this evaluation: mAP {result.mAP:.4f} NDS {result.NDS:.4f}); "
              f"its files: {out / 'devkit'}")
    return 0


def baseline_models(specs: list[str]) -> dict[str, str]:
    """``["b.pt", "fixed=f.pt"]`` -> ``{"baseline": "b.pt", "fixed": "f.pt"}`` (column label -> checkpoint)."""
    models: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        name, path = (name, path) if sep else ("baseline", spec)
        if not name or not path or name == "aqr" or name in models:
            raise ValueError(f"--baseline {spec!r}: need [NAME=]CHECKPOINT with a new NAME other than 'aqr'")
        models[name] = path
    return models


def cmd_robustness(args: argparse.Namespace) -> int:
    """The robustness table: held-out drives under corruptions, AQR vs baseline."""
    from aqr_perception.data.corruptions import CONDITIONS as ALL_CONDITIONS
    from aqr_perception.evaluation.robustness import CONDITIONS, run_robustness

    cfg = cfgmod.load_config(args.config, args.overrides + [f"synth.frames_per_drive={args.frames}"])
    process_settings(cfg)
    models = {"aqr": args.checkpoint or ""}
    try:
        models.update(baseline_models(args.baseline or []))
    except ValueError as e:
        print(f"aqr-perception robustness: {e}", file=sys.stderr)
        return 2
    seeds = [args.seed + i for i in range(args.drives)]
    bags = None
    if args.bag:                # the user's own bags, corrupted copies per condition
        from aqr_perception.data.bag_reader import check_bag_topics, drive_pairs
        from aqr_perception.data.corrupt_bag import BAG_CONDITIONS, check_bag_condition
        from aqr_perception.data.ground_truth import read_ground_truth

        bags = drive_pairs([Path(b) for b in args.bag])
        conditions = tuple(args.conditions or (c for c in CONDITIONS if c in BAG_CONDITIONS))
        for c in conditions:          # before any work: a refused condition or bag costs nothing
            check_bag_condition(c)
        for bag, gt in bags:
            check_bag_topics(bag, cfg.node)
            read_ground_truth(gt, list(cfg.model.classes))
    else:
        conditions = tuple(args.conditions or CONDITIONS)
        unknown = [c for c in conditions if c not in ALL_CONDITIONS]
        if unknown:        # before any work: a typo would otherwise score clean drives under its name
            raise cfgmod.ConfigError(f"--conditions: unknown {', '.join(unknown)} (the synthetic drives' "
                                     f"conditions: {', '.join(ALL_CONDITIONS)})")
    report = run_robustness(cfg, models, seeds, cfgmod.output_folder(args.out), conditions, args.device, bags=bags)
    from aqr_perception.evaluation.robustness import robustness_table

    print()
    print(robustness_table(report["results"], list(models)))
    print(f"\nwritten to {args.out}/robustness.md")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The README main job: the node replays the bundled drive with the bundled checkpoint."""
    from aqr_perception.data.bag_reader import ground_truth_beside
    from aqr_perception.evaluation.evaluate import run_eval
    from aqr_perception.model.runtime import BUNDLED_CHECKPOINT

    cfg = cfgmod.load_config(args.config, ["eval.animation=true", *args.overrides])   # the drive as a GIF too
    process_settings(cfg)
    out = cfgmod.output_folder(args.out)
    trained = BUNDLED_CHECKPOINT.exists()
    print("aqr-perception demo: the aqr_perception node replays the bundled synthetic drive "
          f"({DEFAULT_BAG.name}: 16 LiDAR sweeps, 6 cameras) over loopback DDS\n"
          f"checkpoint: {BUNDLED_CHECKPOINT.name if trained else 'NONE bundled yet: untrained weights'}\n")
    t0 = time.monotonic()
    record = out / "recording" if args.mode == "replay" else None
    if record is not None and record.exists():      # the demo's own folder: the last run's recording goes
        import shutil

        shutil.rmtree(record)
    result, report = run_eval(DEFAULT_BAG, ground_truth_beside(DEFAULT_BAG), cfg, "",
                              args.mode, out, "cpu", quiet=True, record=record)
    _print_result(DEFAULT_BAG.name, result, report)
    by = "by the node" if args.mode == "replay" else "offline (the node's pipeline in this process)"
    print(f"\n{report['frames_with_output']}/{report['frames']} frames answered {by}; "
          f"report, PR curves and pictures in {out}/ ({time.monotonic() - t0:.1f} s)")
    if record is not None:
        print(f"the run as a rosbag2 MCAP (inputs, detections, markers, routing, diagnostics, GT markers): {record}")
    if (out / "replay.gif").is_file():
        print(f"the replay frame by frame (BEV + six cameras): {out / 'replay.gif'}")
    if not trained:
        print("note: no trained checkpoint is bundled yet, so these numbers are those of random weights")
    return 0 if report["frames_with_output"] == report["frames"] else 1


def cmd_import_cmt(args: argparse.Namespace) -> int:
    from aqr_perception.model.cmt_import import import_cmt_checkpoint

    cfg = cfgmod.load_config(args.config, args.overrides)
    cfgmod.output_folder(Path(args.out).parent, f"--out {args.out}:")
    rep = import_cmt_checkpoint(args.checkpoint, cfg.model, args.out, args.allow_missing, args.trust_file)
    conv = ", ".join(f"{n} {k}" for k, n in sorted(rep.conversions.items())) or "none"
    print(f"imported {args.checkpoint} into {cfg.model.name}: {rep.loaded} tensors loaded (layout conversions: "
          f"{conv}), {len(rep.dropped)} BatchNorm counters dropped, {len(rep.left_at_init)} left at their "
          f"initial weights{' (' + ', '.join(args.allow_missing) + ')' if rep.left_at_init else ''}")
    print(f"wrote {args.out}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    """Generate synthetic drives (rosbag2 MCAP + nuScenes-style GT JSON + a picture each), or
    write them as one nuScenes-format dataset (``--format nuscenes``)."""
    from tqdm import tqdm

    from aqr_perception.data.synth.drive import generate_drive

    overrides = list(args.overrides)
    for key in ("num_drives", "frames_per_drive", "seed", "corruption"):
        value = getattr(args, key)
        if value is not None:
            overrides.append(f"synth.{key}={value}")
    cfg = cfgmod.load_config(args.config, overrides)
    s = cfg.synth
    out = cfgmod.output_folder(args.out or s.output_dir)
    t0 = time.monotonic()
    if args.format == "nuscenes":
        from aqr_perception.data.nuscenes_export import export_nuscenes

        scenes = {f"scene-{s.seed + i:04d}": s.seed + i for i in range(s.num_drives)}
        exported = export_nuscenes(cfg, out, scenes, args.nuscenes_version)
        if not args.quiet:
            print(f"wrote {len(exported)} scene(s), {sum(len(e.samples) for e in exported)} samples, as nuScenes "
                  f"{args.nuscenes_version} to {out} in {time.monotonic() - t0:.1f} s")
        return 0
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

    p = sub.add_parser("demo", help="run the main job on the embedded default (node + bundled drive + checkpoint)")
    _add_config_args(p)
    p.add_argument("--mode", choices=["replay", "offline"], default="replay")
    p.add_argument("--out", default="runs/demo", help="report and pictures folder")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("eval", help="evaluate a drive bag with nuScenes metrics (replay to the node or offline)")
    _add_config_args(p)
    p.add_argument("--bag", required=True, action="append",
                   help="rosbag2 folder (ground truth: <bag>.gt.json beside it), or a folder of such bags; "
                        "repeat it, or give a folder, to pool many bags into one score (with each bag's beside it)")
    p.add_argument("--gt", help="ground truth JSON (default: <bag>.gt.json)")
    p.add_argument("--checkpoint", help="model checkpoint (default: the bundled one)")
    p.add_argument("--node-params", help="the node's ROS parameter file (topic names, frames, cameras; "
                                         "replaces the config's node section)")
    p.add_argument("--mode", choices=["replay", "offline"], default="replay")
    p.add_argument("--rate", type=float, help="replay at this factor of the bag's pace, as a vehicle feeds the node "
                                              "(eval.replay_rate; default 0: stepwise, every sweep answered); "
                                              "unanswered sweeps are counted and not scored")
    p.add_argument("--device", default="cpu")
    p.add_argument("--record", help="also write the replay as one rosbag2 MCAP folder: the inputs as played, the "
                                    "node's outputs and markers, /diagnostics, the ground-truth markers")
    p.add_argument("--out", help="output folder (default eval.output_dir/<bag name>)")
    p.add_argument("--submission", help="also write the answers in the nuScenes submission format (a scene "
                                        "converted with nuscenes2bag)")
    p.add_argument("--devkit-eval", metavar="DATAROOT", help="also score the submission with the devkit's "
                                                            "DetectionEval against this nuScenes dataset")
    p.add_argument("--nuscenes-version", default="v1.0-mini", help="the dataset's version (with --devkit-eval)")
    p.add_argument("--eval-set", default="mini_val", help="the devkit split DetectionEval scores (with --devkit-eval)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("robustness", help="AQR vs baseline on held-out drives under sensor corruptions")
    _add_config_args(p)
    p.add_argument("--checkpoint", help="AQR model (default: the bundled one)")
    p.add_argument("--baseline", action="append", metavar="[NAME=]CHECKPOINT",
                   help="a baseline checkpoint, e.g. the no-AQR one (repeatable; NAME labels its columns, "
                        "default 'baseline')")
    p.add_argument("--bag", action="append", help="your own bag (ground truth: <bag>.gt.json beside it) or a "
                                                  "folder of them, instead of synthetic drives: each condition "
                                                  "runs on a corrupted copy (repeatable; no fog: it needs depth)")
    p.add_argument("--drives", type=int, default=2)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--seed", type=int, default=1100, help="first held-out seed")
    p.add_argument("--conditions", nargs="*", help="subset of conditions")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="runs/robustness")
    p.set_defaults(func=cmd_robustness)

    p = sub.add_parser("synth", help="generate synthetic drives as rosbag2 files")
    _add_config_args(p)
    p.add_argument("--drives", dest="num_drives", type=int, help="number of drives (synth.num_drives)")
    p.add_argument("--frames", dest="frames_per_drive", type=int, help="LiDAR sweeps per drive")
    p.add_argument("--seed", type=int, help="seed of the first drive (drive i uses seed + i)")
    p.add_argument("--corruption", help="clean, no_lidar, reduced_lidar, no_intensity, no_cameras, "
                                        "one_camera_missing, dark, fog, time_offset")
    p.add_argument("--out", help="output folder (default synth.output_dir)")
    p.add_argument("--no-pictures", action="store_true", help="skip the PNG per drive")
    p.add_argument("--format", choices=["bag", "nuscenes"], default="bag",
                   help="bag: a rosbag2 + .gt.json per drive; nuscenes: one nuScenes-format dataset in --out "
                        "(tables, .pcd.bin sweeps, JPEGs), a scene per drive named scene-<seed>")
    p.add_argument("--nuscenes-version", default="v1.0-mini", help="table folder of --format nuscenes")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("node", help="run the ROS 2 node; arguments after it go to ROS (--ros-args ...)", add_help=False)
    p.add_argument("ros_args", nargs=argparse.REMAINDER)   # listed for --help; main() dispatches

    p = sub.add_parser("train", help="train the detector (see `aqr-perception train --help`)", add_help=False)
    p.add_argument("train_args", nargs=argparse.REMAINDER)   # listed for --help; main() dispatches

    p = sub.add_parser("play", help="replay a rosbag2 over DDS (see `aqr-perception play --help`)",
                       add_help=False)
    p.add_argument("play_args", nargs=argparse.REMAINDER)    # listed for --help; main() dispatches

    p = sub.add_parser("nuscenes2bag", help="nuScenes scenes -> rosbag2 drives (see `aqr-perception nuscenes2bag "
                                            "--help`)", add_help=False)
    p.add_argument("convert_args", nargs=argparse.REMAINDER)  # listed for --help; main() dispatches

    p = sub.add_parser("import-cmt", help="import the published CMT weights (mmcv .pth) into a checkpoint")
    p.add_argument("checkpoint", help="the official file, e.g. voxel0075_vov_1600x640_epoch20.pth")
    p.add_argument("--config", required=True, help="config of the same architecture (config/cmt_aqr_vov_1600x640.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", required=True, help="checkpoint to write (.pt)")
    p.add_argument("--allow-missing", action="append", default=[], metavar="GROUP|PREFIX",
                   help="leave these weights of ours at their initial values: 'aqr' (the routers, which CMT "
                        "lacks; they start neutral) or a key prefix (repeatable)")
    p.add_argument("--trust-file", action="store_true",
                   help="unpickle the file fully (only for a file you trust, if the safe reader refuses it)")
    p.set_defaults(func=cmd_import_cmt)

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


#: Subcommands that hand their arguments to another entry point unchanged.
PASSTHROUGH = {"train": "aqr_perception.training.train", "play": "aqr_perception.ros.player",
               "node": "aqr_perception.ros.node", "nuscenes2bag": "aqr_perception.data.nuscenes2bag"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in PASSTHROUGH:
        import importlib

        rest = argv[1:]
        if rest[:1] == ["--"]:
            rest = rest[1:]
        entry = importlib.import_module(PASSTHROUGH[argv[0]]).main
        try:
            return int(entry([sys.argv[0], *rest]) if argv[0] == "node" else entry(rest) or 0)
        except KeyboardInterrupt:       # node, play and train stop on Ctrl-C themselves
            print(f"aqr-perception {argv[0]}: interrupted", file=sys.stderr)
            return 130
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except cfgmod.ConfigError as exc:
        print(f"aqr-perception: {cfgmod.one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:           # Ctrl-C: what was running (a replay's node too) has been stopped
        print(f"aqr-perception {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
