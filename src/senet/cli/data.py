"""``senet data pack|verify|shapes``: tar shards of an image folder, their check, and the shapes data set."""

from __future__ import annotations

import argparse
import sys
import typing

from senet.cli.flags import add_command_group, flag_values, int_at_least, nonnegative_int, positive_int


def add_data(commands: typing.Any) -> None:
    summary = "pack an image folder into tar shards (to train from), verify them; make the shapes data set"
    data_commands = add_command_group(
        commands, "data", "pack|verify|shapes", summary, usage="pack|verify|shapes"
    )
    pack = data_commands.add_parser(
        "pack", help="ROOT/{train,val}/CLASS/* -> WebDataset-style tar shards and index.json"
    )
    pack.add_argument("folder", metavar="FOLDER", help="image folder ROOT with train/ and val/")
    pack.add_argument("--out", required=True, metavar="DIR", help="folder for the shards and index.json")
    pack.add_argument(
        "--images-per-shard", type=positive_int, default=5000, metavar="N", help="at most N images a shard"
    )
    pack.add_argument(
        "--seed", type=nonnegative_int, default=0, metavar="S", help="the one shuffle before sharding"
    )
    pack.add_argument("--overwrite", action="store_true", help="replace the shards and index in --out")
    pack.set_defaults(run=data_pack_command)
    verify = data_commands.add_parser(
        "verify", help="read every shard: SHA-256, size, members and labels against the index"
    )
    verify.add_argument("index", metavar="INDEX", help="index.json (or its folder); a path or fsspec URL")
    verify.set_defaults(run=data_verify_command)
    shapes = data_commands.add_parser(
        "shapes",
        help="write a small COCO-format detection data set of drawn shapes "
        "(to try senet's detection offline)",
    )
    shapes.add_argument(
        "out", metavar="OUT", help="folder: OUT/annotations/instances_{train,val}2017.json, ..."
    )
    shapes.add_argument("--train", type=positive_int, default=64, metavar="N", help="training images")
    shapes.add_argument("--val", type=positive_int, default=16, metavar="M", help="validation images")
    shapes.add_argument("--size", type=int_at_least(32), default=128, metavar="PX", help="image side")
    shapes.add_argument("--seed", type=nonnegative_int, default=0, metavar="S", help="same seed, same files")
    shapes.add_argument("--format", choices=("png", "jpg"), default="png", help="image files (default: png)")
    shapes.add_argument("--overwrite", action="store_true", help="replace a data set already in OUT")
    shapes.set_defaults(run=data_shapes_command)


def data_pack_command(args: argparse.Namespace) -> int:
    from senet.data.shards import pack_folder, read_counts

    def progress(name: str, count: int) -> None:
        print(f"wrote {name} ({count} images)", file=sys.stderr)

    options = flag_values(args, "images_per_shard", "seed", "overwrite")
    index = pack_folder(args.folder, args.out, on_shard=progress, **options)
    classes, counts = read_counts(str(index))
    splits = ", ".join(
        f"{split} {images} images in {shards} shards" for split, (images, shards) in counts.items()
    )
    print(f"wrote {index}: {classes} classes; {splits}")
    return 0


def data_verify_command(args: argparse.Namespace) -> int:
    from senet.data.shards import verify_shards

    def progress(report: typing.Any) -> None:
        print(f"ok {report.name} ({report.samples} images)", file=sys.stderr)

    reports = verify_shards(args.index, on_shard=progress)
    images = sum(report.samples for report in reports)
    print(f"{args.index}: all {len(reports)} shards match the index ({images} images)")
    return 0


def data_shapes_command(args: argparse.Namespace) -> int:
    from senet.detection.shapes import make_shapes

    options = flag_values(args, "train", "val", "size", "seed", "overwrite")
    root = make_shapes(args.out, image_format=args.format, **options)
    print(f"wrote {root}: {args.train} train and {args.val} val images ({args.size} px), COCO's layout")
    return 0
