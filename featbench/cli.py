"""The ``featbench`` command line."""

from __future__ import annotations

import argparse
import sys

from tabulate import tabulate

from featbench.errors import FeatbenchError


def _cmd_tasks(args: argparse.Namespace) -> None:
    from featbench.storage import is_built, variant_refs
    from featbench.suites import ORIGINAL, list_suites, load_suite

    names = [args.suite] if args.suite else list_suites()
    for name in names:
        suite = load_suite(name)
        print(f"{suite.name} (version {suite.version}, spec {suite.spec_sha256()[:12]}): "
              f"{len(suite.select(track='map'))} map + {len(suite.select(track='invert'))} invert tasks")
        if args.suite is None:
            continue
        rows = []
        refs = {}
        for task in suite.select(args.tasks):
            key = (task.backbone, task.layer)
            if key not in refs:
                refs[key] = variant_refs(suite, *key)
            variant = task.manipulation.name if task.manipulation else ORIGINAL
            ref = refs[key][variant]
            built = is_built(refs[key][ORIGINAL]) and is_built(ref)
            rows.append([task.id, task.category or "-", task.version, ref.key[:12], "yes" if built else "no"])
        print(tabulate(rows, headers=["task", "category", "version", "data key", "built"]))


def _cmd_build(args: argparse.Namespace) -> None:
    from featbench.storage import build_suite
    from featbench.suites import load_suite

    suite = load_suite(args.suite)
    built, report = build_suite(suite, images=args.images, custom=args.custom, batch_size=args.batch_size,
                                compile=not args.no_compile, backbones=args.backbone or None)
    print(report.summary())
    if built.name != suite.name:
        print(f"note: built the custom suite {built.name} (images differ from {suite.name}'s pinned manifest)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="featbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tasks", help="list suites and their tasks with data keys")
    p.add_argument("--suite", help="list this suite's tasks")
    p.add_argument("--tasks", help="only tasks matching this glob or substring")
    p.set_defaults(func=_cmd_tasks)

    p = sub.add_parser("build", help="extract and cache a suite's task data")
    p.add_argument("--suite", required=True)
    p.add_argument("--images", help="image folder (default: the suite's pinned location)")
    p.add_argument("--custom", action="store_true",
                   help="accept images that differ from the suite's pinned manifest (builds a custom suite)")
    p.add_argument("--backbone", action="append", help="only this backbone (repeatable)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (faster start, slower run)")
    p.set_defaults(func=_cmd_build)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except FeatbenchError as exc:
        print(f"featbench: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
