"""The ``featbench`` command line."""

from __future__ import annotations

import argparse
import os
import sys

from tabulate import tabulate

from featbench.core.errors import FeatbenchError


def _cmd_tasks(args: argparse.Namespace) -> None:
    from featbench.data.storage import is_built, variant_refs
    from featbench.data.suites import ORIGINAL, list_suites, load_suite

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


def _cmd_init_suite(args: argparse.Namespace) -> None:
    from featbench.data.custom_suites import init_suite

    backbones = None
    if args.backbone:
        if args.layers and len(args.backbone) > 1:
            raise FeatbenchError("--layers goes with one --backbone; for several, write --backbone NAME:L1,L2")
        backbones = {}
        for entry in args.backbone:
            name, _, layers = entry.partition(":")
            backbones[name] = layers.split(",") if layers else args.layers
    suite = init_suite(args.images, args.out, base=args.base, name=args.name, backbones=backbones,
                       n_test=args.n_test, test_fraction=args.test_fraction, labels=args.labels,
                       weights=dict(args.weights or []), float64=args.float64 or ())
    n_train = suite.images["n_images"] - suite.n_test
    print(f"wrote {args.out}: suite {suite.name}, {suite.images['n_images']} images ({n_train} train / {suite.n_test} "
          f"test), labels {suite.images['labels']}, manifest sha256 {suite.images['manifest_sha256']}")
    print(f"{len(suite.select(track='map'))} map + {len(suite.select(track='invert'))} invert tasks on "
          f"{', '.join(f'{b} ({len(ls)} layers{_precision_note(suite, b)})' for b, ls in suite.backbones.items())}")
    print(f"next: featbench build --suite {args.out}   then   featbench run --suite {args.out} --out-dir leaderboard")


def _precision_note(suite, backbone: str) -> str:
    precision = suite.precision_of(backbone)
    return "" if precision == "float32" else f", maps computed in {precision}"


def _cmd_backbones(args: argparse.Namespace) -> None:
    import textwrap

    from featbench.zoo.backbones import BACKBONES, list_backbones, weights_source

    def field(label: str, text: str) -> str:
        # Wrapped under its label; a no-break space (\xa0) in `text` joins two words on one line.
        return textwrap.fill(text, 100, initial_indent=f"  {label:<9}", subsequent_indent=" " * 11).replace("\xa0", " ")

    for name in list_backbones():
        spec, source = BACKBONES[name], weights_source(name)
        print(f"{name} ({spec.preprocessing.crop} px): {spec.description}")
        print(field("weights:", source.route.replace("--weights ", "--weights\xa0")))
        print(field("here:", "yes, " + source.at_hand if source.at_hand else "no (fetched on first use from the source above)"))
        print(field("layers:", ", ".join(f"{layer}\xa0{'×'.join(map(str, shape))}" for layer, shape in spec.layers.items())))


def _cmd_build(args: argparse.Namespace) -> None:
    from featbench.board.hashes import HASHES_FILE, TaskHashes
    from featbench.board.leaderboard import default_root
    from featbench.data.storage import build_suite
    from featbench.data.suites import load_suite

    suite = load_suite(args.suite)
    built, report = build_suite(suite, images=args.images, custom=args.custom, batch_size=args.batch_size,
                                compile=not args.no_compile, backbones=args.backbone or None, device=args.device)
    if not report.ranks.is_main:  # under torchrun: rank 0 speaks for all
        return
    print(report.summary())
    ledger = default_root(built.name) / HASHES_FILE
    if ledger.is_file():
        try:  # a suite file being edited no longer matches its ledger's spec; the data built stay
            line = TaskHashes.read(built, ledger).agreement(
                [t for t in built.tasks if not args.backbone or t.backbone in args.backbone])
        except FeatbenchError as exc:
            line = f"task hashes: not compared with the leaderboard's: {exc}"
        if line:
            print(line)
    if built.name != suite.name:
        print(f"note: built the custom suite {built.name} (images differ from {suite.name}'s pinned manifest); "
              f"score it with `featbench run --suite {built.name}` (its file: {built.path})")


def _use_threads(threads: int | None) -> None:
    """torch's CPU threads in this process, where the command was given ``--threads``."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def _warn_if_busy(threads: int) -> None:
    """Say so where other work already holds the cores this run's fits need: a fit's time budget is
    wall time, so on a busy machine training ends early on the budget (each record says so)."""
    if not hasattr(os, "getloadavg"):  # not on every platform
        return
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load + threads > cores + 0.5:  # half a core of slack: the load average counts short-lived work too
        print(f"featbench: this machine is busy (load {load:.1f} on {cores} CPUs; this run's fits take {threads} "
              "thread(s)): fits with a time budget may stop early, recorded as stopped_by: time_budget", file=sys.stderr)


def _cmd_run(args: argparse.Namespace) -> None:
    from featbench.core.results import result_path
    from featbench.data.suites import load_suite
    from featbench.scoring.isolation import Isolation
    from featbench.scoring.executors import make_executor
    from featbench.scoring.run import evaluate
    from featbench.scoring.summaries import invert_summary_table, map_summary_table

    # The scoring here (tails, LPIPS) keeps to the threads a fit gets, and the records say so.
    _use_threads(args.threads)
    suite = load_suite(args.suite)
    invert = args.track == "invert"
    models = args.model or (suite.run_defaults.get("invert_models", _INVERT_MODELS) if invert
                            else suite.run_defaults.get("models"))
    if not models:
        raise FeatbenchError(f"suite {suite.name} names no default models; pass --model")
    if args.out and len(models) > 1:
        raise FeatbenchError("--out names one file; run one --model at a time with it")
    isolation = Isolation("none" if args.no_isolation else args.isolation, wall_s=args.wall_limit,
                          threads=args.threads, memory_gb=args.memory_limit)
    executor = make_executor(args.executor, args.ray_address, args.cpus_per_task, args.gpus_per_task)
    if args.executor == "local":
        _warn_if_busy(isolation.thread_count())
    results = []
    for spec in models:
        out = args.out or result_path(args.out_dir, spec, suite.name)
        results.append(evaluate(spec, suite, args.tasks, track=args.track, out=out, seed=args.seed,
                                n_boot=args.n_boot, time_budget_s=args.time_budget, isolation=isolation,
                                executor=executor, require_image_scores=args.require_image_scores,
                                reuse=tuple(args.reuse or ())))
        print(f"wrote {out}")
    print((invert_summary_table if invert else map_summary_table)(results))


_INVERT_MODELS = ["decoder", "featinv-tiny"]


def _cmd_train_inverter(args: argparse.Namespace) -> None:
    import torch
    import yaml

    from featbench.scoring.image_scores import export_pinned
    from featbench.scoring.invert_track import train_inverter
    from featbench.data.suites import load_suite

    _use_threads(args.threads)
    suite = load_suite(args.suite)
    report = train_inverter(suite, args.backbone, args.layer, args.preset, seed=args.seed,
                            max_steps=args.max_steps, max_minutes=args.max_minutes, restart=args.restart)
    print(f"{args.preset} on {args.suite} {args.backbone}/{args.layer}: {report.summary()}")
    if args.export is not None:
        if not report.finished:
            raise FeatbenchError(f"not exported: the training stopped at step {report.step} of {report.max_steps}; "
                                 "run the same command again to finish it")
        entry = export_pinned(suite, args.backbone, args.layer, args.preset, args.export or None, seed=args.seed,
                              dtype=getattr(torch, args.export_dtype))
        print(f"exported to {entry['checkpoint']} (beside {suite.path}); pin it in the suite file's "
              f"invert.image_scores (n_images: test images scored in image space):\n"
              f"  - {yaml.safe_dump(entry, default_flow_style=True, sort_keys=False, width=10**6).strip()}")
    elif report.weights_sha256:
        print(f"checkpoint sha256 (to pin in the suite's invert.image_scores): {report.weights_sha256}")


def _cmd_show(args: argparse.Namespace) -> None:
    from featbench.viz.show import models_by_name, models_from_results, show
    from featbench.data.suites import load_suite

    _use_threads(args.threads)
    suite = load_suite(args.suite)
    models = (models_from_results(args.models_from, suite) if args.models_from else []) + \
        models_by_name(args.model or [], suite, seed=args.seed, time_budget_s=args.time_budget)
    if not models:
        raise FeatbenchError("name the models to show: --model NAME (repeatable) or --models-from leaderboard/S/results")
    print(f"wrote {show(suite, args.tasks, args.images, models, args.out, preset=args.preset)}")


def _cmd_edit(args: argparse.Namespace) -> None:
    import shlex
    import textwrap
    from pathlib import Path

    import yaml

    from featbench.data.editing import default_folder, edit_label, edit_suite
    from featbench.data.suites import load_suite
    from featbench.zoo.editors import load_editor

    suite = load_suite(args.suite)
    label = edit_label(args.prompt, args.name)
    out = Path(args.out or default_folder(suite, args.editor, label)).resolve()
    editor = load_editor(args.editor, pipeline_dir=args.pipeline_dir, revision=args.revision, device=args.device)
    where = (["--pipeline-dir", editor.origin["pipeline_dir"]] if "pipeline_dir" in editor.origin
             else ["--revision", editor.origin["revision"]])
    command = shlex.join(["featbench", "edit", "--suite", suite.cli_name, "--editor", args.editor, "--prompt",
                          args.prompt, "--name", label, "--out", str(out), *where])
    report = edit_suite(suite, editor, args.prompt, out, label=label, limit=args.limit, command=command)
    print(report.summary())
    print("to score these edits, list them among a suite's manipulations (once published: source hf:ID@REVISION):")
    print(textwrap.indent(yaml.safe_dump([report.suite_entry()], sort_keys=False), "  "), end="")


def _cmd_validate(args: argparse.Namespace) -> None:
    from featbench.core.results import read_result
    from featbench.data.suites import load_suite

    suite = load_suite(args.suite) if args.suite else None
    for path in args.files:
        res = read_result(path)
        if suite is not None and res["suite"]["spec_sha256"] != suite.spec_sha256():
            raise FeatbenchError(f"{path} was scored on suite {res['suite']['name']} (spec "
                                 f"{res['suite']['spec_sha256'][:12]}…), not on {suite.name} (spec {suite.spec_sha256()[:12]}…)")
        print(f"{path}: valid ({res['model']['name']} {res['model']['version']} on "
              f"{res['suite']['name']} v{res['suite']['version']}, {len(res['tasks'])} tasks)")


def _cmd_leaderboard_build(args: argparse.Namespace) -> None:
    from featbench.board.leaderboard import build
    from featbench.data.suites import load_suite

    suite = load_suite(args.suite)
    report = build(suite, args.root, args.out, use_built_data=not args.no_built_data)
    print(report.summary())
    if args.screenshot:
        from featbench.board.browser import screenshot

        print(f"wrote {screenshot(report.out_dir / 'index.html', report.out_dir / 'screenshot.png')}")


def _cmd_leaderboard_show(args: argparse.Namespace) -> None:
    from featbench.board.leaderboard import show
    from featbench.data.suites import load_suite

    print(show(load_suite(args.suite), args.root, track=args.track, sort=args.sort,
               use_built_data=not args.no_built_data, wide=args.wide))


def _cmd_leaderboard_compare(args: argparse.Namespace) -> None:
    from featbench.board.leaderboard import compare
    from featbench.data.suites import load_suite

    print(compare(load_suite(args.suite), args.models.split(","), args.metrics.split(","), args.root,
                  track=args.track, use_built_data=not args.no_built_data, intervals=args.intervals))


def _cmd_submit_check(args: argparse.Namespace) -> None:
    from featbench.board.submit_check import submit_check

    from featbench.scoring.isolation import Isolation

    report = submit_check(args.file, suite=args.suite, model=args.model, sample=args.sample, seed=args.seed,
                          atol=args.atol, rtol=args.rtol, isolation=Isolation(args.isolation))
    print(report.summary())
    if not report.ok:
        raise FeatbenchError(f"{args.file}: {len(report.mismatches)} score(s) do not match the re-run")


def _cmd_publish(args: argparse.Namespace) -> None:
    from featbench.board.publish import publish
    from featbench.data.suites import load_suite

    out = publish(load_suite(args.suite), args.repo, dry_run=args.dry_run, leaderboard_root=args.leaderboard,
                  private=args.private)
    print(out.summary() if args.dry_run else f"published: {out}")


SUITE_HELP = "a suite name (featbench tasks lists them) or a suite file (featbench init-suite writes one)"


def _weights_arg(value: str) -> tuple[str, str]:
    backbone, sep, file = value.partition("=")
    if not sep or not backbone or not file:
        raise argparse.ArgumentTypeError(f"expected BACKBONE=FILE, got {value!r}")
    return backbone, file


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="featbench", description=__doc__)
    parser.add_argument("--weights", metavar="BACKBONE=FILE", action="append", type=_weights_arg,
                        help="load this backbone's weights from FILE (a timm state dict; repeatable): for "
                             "backbones featbench does not ship, offline; init-suite writes them into the suite")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tasks", help="list suites and their tasks with data keys")
    p.add_argument("--suite", help="list this suite's tasks: " + SUITE_HELP)
    p.add_argument("--tasks", help="only tasks matching this glob or substring")
    p.set_defaults(func=_cmd_tasks)

    p = sub.add_parser("init-suite", help="write a suite file for a folder of your own images (then build, run, "
                                          "leaderboard with --suite FILE)")
    p.add_argument("--images", required=True, help="image folder (sub-folders too), or hf:ORG/NAME@REVISION")
    p.add_argument("-o", "--out", required=True, help="the suite file to write, e.g. my-suite.yaml")
    p.add_argument("--from", dest="base", default="featbench-v1",
                   help="suite whose design (backbones, layers, manipulations, views) to take (default featbench-v1)")
    p.add_argument("--name", help="suite name (default: the file name without .yaml)")
    p.add_argument("--backbone", action="append",
                   help="a backbone to use instead of the design's (repeatable); NAME or NAME:LAYER1,LAYER2")
    p.add_argument("--layers", nargs="+", help="layers of the one --backbone (default: the design's, else all)")
    split = p.add_mutually_exclusive_group()
    split.add_argument("--n-test", type=int, help="test images to hold out")
    split.add_argument("--test-fraction", type=float, help="fraction of the images to hold out (default 0.2)")
    p.add_argument("--labels", help="label scheme (default: inferred from the folder): none, imagenet-wnid, "
                                    "class-id, imagefolder or csv:FILE")
    p.add_argument("--float64", action="append", metavar="BACKBONE",
                   help="compute this backbone's maps in float64 before their float16 storage (repeatable), so that "
                        "a build on any machine gives the same task hashes; slower, eager (README: precision)")
    p.set_defaults(func=_cmd_init_suite)

    p = sub.add_parser("backbones", help="list the registered backbones: layers, weight sources, weights on this machine")
    p.set_defaults(func=_cmd_backbones)

    p = sub.add_parser("build", help="extract and cache a suite's task data (under torchrun, sharded over its processes)")
    p.add_argument("--suite", required=True, help=SUITE_HELP)
    p.add_argument("--images", help="image folder (default: the suite's pinned location)")
    p.add_argument("--custom", action="store_true",
                   help="accept images that differ from the suite's pinned manifest (builds a custom suite)")
    p.add_argument("--backbone", action="append", help="only this backbone (repeatable)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (faster start, slower run)")
    p.add_argument("--device", help="run the forward passes on cuda, cuda:1, ... (default: the CPU; under a "
                                    "launcher, cuda means each rank's LOCAL_RANK GPU)")
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser("run", help="fit and score models on a suite's map tasks, write result files")
    p.add_argument("--model", action="append",
                   help="registered name (linear), module.path:Class or file.py:Class; repeatable. "
                        "Default: the suite's reference baselines")
    p.add_argument("--suite", default="mini", help=SUITE_HELP + "; default: mini, the embedded demo suite")
    p.add_argument("--tasks", help="only tasks matching this glob or substring")
    p.add_argument("--out", help="result file (default: <out-dir>/<suite>/results/<model>.json)")
    p.add_argument("--out-dir", default="results", help="default: ./results")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the 95 %% intervals")
    p.add_argument("--time-budget", type=float, help="seconds per task fit (default: the suite's)")
    p.add_argument("--track", choices=["map", "invert"], default="map",
                   help="map (default) or invert: reconstruct images from maps (models: registered inverters, "
                        "default decoder and featinv-tiny)")
    p.add_argument("--isolation", choices=["auto", "sandbox", "process", "none"], default="auto",
                   help="where each fit and predict runs (README, Trusted scoring): auto (default: a bubblewrap "
                        "sandbox where bwrap works, else a plain child process, with a warning), sandbox "
                        "(required), process, none (in this process)")
    p.add_argument("--no-isolation", action="store_true", help="same as --isolation none (for debugging)")
    p.add_argument("--wall-limit", type=float, help="seconds a scoring process may run (default: the fit budget "
                                                    "+ 600 s, or 6 h without a budget)")
    p.add_argument("--memory-limit", type=float, help="GiB of address space per scoring process "
                                                      "(default: 3/4 of this machine's memory)")
    p.add_argument("--threads", type=int, help="CPU threads per scoring process (default: torch's)")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local (default): the fits one after another here; ray: fanned out over a Ray cluster "
                        "(pip install 'featbench[ray]'; the cache must be on a file system all nodes share)")
    p.add_argument("--ray-address", help="the Ray cluster's head, HOST:PORT (default: $RAY_ADDRESS, a cluster "
                                         "`ray start` left on this machine, else a Ray started here)")
    p.add_argument("--cpus-per-task", type=int, help="ray: CPUs (and torch threads) per fit (default: this "
                                                     "process's torch threads)")
    p.add_argument("--gpus-per-task", type=float, default=0, help="ray: GPUs per fit (default 0)")
    p.add_argument("--require-image-scores", action="store_true",
                   help="fail where the suite pins an image-score inverter checkpoint that is not at hand (by "
                        "default those tasks are scored at map level, with a note saying why)")
    p.add_argument("--reuse", action="append", metavar="RESULTS",
                   help="a result file, or a folder of them (e.g. leaderboard/featbench-v2/results), whose records "
                        "of the same model, seed and budget on tasks with the same task hash are copied instead of "
                        "fitted again, noted 'reused from'; repeatable")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("train-inverter", help="train an inverter preset on one backbone and layer, with "
                                              "checkpoints and resume (for `run --track invert`)")
    p.add_argument("--suite", required=True, help=SUITE_HELP)
    p.add_argument("--backbone", required=True)
    p.add_argument("--layer", required=True)
    p.add_argument("--preset", required=True, help="a registered inverter with train(): decoder, featinv-tiny, featinv-sd")
    p.add_argument("--max-steps", type=int, help="train to this many steps in all (default: the preset's)")
    p.add_argument("--max-minutes", type=float, help="stop (with a checkpoint) after this many minutes")
    p.add_argument("--seed", type=int, default=0, help="as `run --seed`: a run resumes only its own seed's training")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--restart", action="store_true", help="delete this preset's checkpoints first")
    p.add_argument("--export", nargs="?", const="", metavar="DIR",
                   help="then write the checkpoint to ship with the suite into DIR (default: checkpoints/<suite>/"
                        "<backbone>/<layer>/<preset> beside the suite file) and print its invert.image_scores entry")
    p.add_argument("--export-dtype", choices=["float16", "float32"], default="float16",
                   help="the exported weights' dtype (default float16; the optimizer state is never exported)")
    p.set_defaults(func=_cmd_train_inverter)

    p = sub.add_parser("show", help="write a PNG grid: original, manipulated, inverted target and each model's "
                                    "inverted prediction, for chosen map tasks and test images")
    p.add_argument("--suite", required=True, help=SUITE_HELP)
    p.add_argument("--tasks", required=True, help="map tasks matching this glob or substring")
    p.add_argument("--images", type=int, default=4, help="test images per task (the first of the image-score subset)")
    p.add_argument("--model", action="append", help="a model to re-fit and show, as for run; repeatable")
    p.add_argument("--models-from", help="re-fit the models of these result files (e.g. leaderboard/S/results), "
                                         "each with its recorded seed and time budget")
    p.add_argument("--preset", help="an inverter preset with a trained checkpoint, for tasks the suite pins none for")
    p.add_argument("--seed", type=int, default=0, help="seed for --model fits")
    p.add_argument("--time-budget", type=float, help="seconds per --model fit (default: the suite's)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--out", required=True, help="the PNG file to write")
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser("edit", help="edit a suite's images once with a generative editor (a GPU and the hub), "
                                    "writing an edit-pair dataset that a suite scores as edit_pairs.LABEL")
    p.add_argument("--suite", required=True, help=SUITE_HELP)
    p.add_argument("--prompt", required=True, help='the edit instruction, e.g. "make the car body blue"')
    p.add_argument("--editor", default="qwen-image-edit",
                   help="qwen-image-edit (default: FeatMap's Qwen-Image-Edit-2511 and settings) or instruct-pix2pix")
    p.add_argument("--name", help="the label: the suite names these edits edit_pairs.LABEL (default: from the prompt)")
    p.add_argument("--out", help="the edit-pair folder (default: <cache>/edit_pairs/<suite>/<editor>.<label>); "
                                 "a rerun into it resumes")
    p.add_argument("--limit", type=int, help="edit only the first N images (by image id), to try the settings")
    p.add_argument("--pipeline-dir", help="a local copy of the editor's diffusers pipeline (offline)")
    p.add_argument("--revision", help="the model's revision on the hub (default: the preset's; the commit is recorded)")
    p.add_argument("--device", help="cuda, cuda:1, cpu... (default: cuda where there is one)")
    p.set_defaults(func=_cmd_edit)

    p = sub.add_parser("validate", help="check result files against the schema and their hashes")
    p.add_argument("files", nargs="+")
    p.add_argument("--suite", help="also check that each file was scored on this suite (its spec hash): " + SUITE_HELP)
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("leaderboard", help="build or show a suite's leaderboard from its result files")
    lb = p.add_subparsers(dest="leaderboard_command", required=True)
    q = lb.add_parser("build", help="check leaderboard/<suite>/results/*.json and write LEADERBOARD.md, "
                                    "leaderboard.csv, leaderboard.json, index.html")
    q.add_argument("--suite", required=True, help=SUITE_HELP)
    q.add_argument("--root", help="leaderboard folder with results/ (default: leaderboard/<suite>)")
    q.add_argument("--out", help="write the files here (default: the leaderboard folder)")
    q.add_argument("--no-built-data", action="store_true",
                   help="take expected task hashes only from task_hashes.json and the results, not from built data")
    q.add_argument("--screenshot", action="store_true", help="also write screenshot.png (needs headless Chromium)")
    q.set_defaults(func=_cmd_leaderboard_build)
    q = lb.add_parser("show", help="print the leaderboard table in the terminal")
    q.add_argument("--suite", default="featbench-v1", help=SUITE_HELP)
    q.add_argument("--track", choices=["map", "invert"])
    q.add_argument("--sort", help="rank (default), model, params, fit_s, predict_per_s, a headline score "
                                  "(mean over tasks) or CATEGORY/SCORE, e.g. geometric/r2")
    q.add_argument("--root", help="leaderboard folder with results/ (default: leaderboard/<suite>)")
    q.add_argument("--wide", action="store_true", help="one column per category and score (as LEADERBOARD.md)")
    q.add_argument("--no-built-data", action="store_true", help="as for build")
    q.set_defaults(func=_cmd_leaderboard_show)
    q = lb.add_parser("compare", help="models side by side per category and layer (a Markdown table)")
    q.add_argument("--suite", default="featbench-v1", help=SUITE_HELP)
    q.add_argument("--models", default="identity,linear,mlp,transformer", help="comma-separated")
    q.add_argument("--metrics", default="r2,top1_agree", help="comma-separated")
    q.add_argument("--track", choices=["map", "invert"], default="map")
    q.add_argument("--root", help="leaderboard folder with results/ (default: leaderboard/<suite>)")
    q.add_argument("--no-built-data", action="store_true", help="as for build")
    q.add_argument("--intervals", action="store_true",
                   help="each mean with its interval: the mean of its tasks' 95 %% interval ends")
    q.set_defaults(func=_cmd_leaderboard_compare)

    p = sub.add_parser("submit-check", help="re-run a random sample of a result file's tasks and compare scores")
    p.add_argument("file")
    p.add_argument("--suite", help="suite name or YAML file (default: the result's suite)")
    p.add_argument("--model", help="the model, as for run (default: the result's model.metadata.class)")
    p.add_argument("--sample", type=int, default=3, help="tasks to re-run (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random choice of tasks")
    p.add_argument("--atol", type=float, default=0.01)
    p.add_argument("--rtol", type=float, default=0.02)
    p.add_argument("--isolation", choices=["auto", "sandbox", "process", "none"], default="auto",
                   help="how the re-run scores, as for run (default auto)")
    p.set_defaults(func=_cmd_submit_check)

    p = sub.add_parser("publish", help="push a suite's task data and leaderboard to the Hugging Face Hub")
    p.add_argument("--suite", required=True, help=SUITE_HELP)
    p.add_argument("--repo", required=True, help="dataset repository ORG/NAME")
    p.add_argument("--dry-run", metavar="DIR", help="write what would be uploaded into DIR, upload nothing")
    p.add_argument("--leaderboard", help="leaderboard folder to include (default: leaderboard/<suite>)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.set_defaults(func=_cmd_publish)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.weights:
            from featbench.zoo.backbones import use_weights_file

            for backbone, file in args.weights:
                use_weights_file(backbone, file)
        args.func(args)
    except FeatbenchError as exc:
        print(f"featbench: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
