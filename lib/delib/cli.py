"""The `delib` command line: `delib run` runs a recipe's stages; other subcommands use single stages' tools.

Bad input prints one clear line to stderr and exits 2; a failing stage exits 1.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Optional, Sequence

from delib.spec.document import SpecError
from delib.run.config import ParamsError
from delib.run.runner import UsageError
from delib.run.sweep import SweepError


def _cmd_run(args: argparse.Namespace) -> int:
    from delib.run.runner import StageFailed, run  # late: papermill is slow to import; `delib spec` needs none of it

    try:
        rdir = run(args.params, stages=args.stages, resume=args.resume, force=args.force,
                   command=["delib", *sys.argv[1:]], check=not args.no_preflight, engine=args.engine)
    except StageFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: the manifest records how far the run got; re-run with --resume", file=sys.stderr)
        return 130
    print(f"done: {rdir} (manifest: {rdir / 'manifest.json'})")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from delib.evaluation.sweep_summary import summarise
    from delib.run.runner import run
    from delib.run.sweep import load_sweep, run_sweep

    sweep = load_sweep(args.sweep)
    print(f"sweep {sweep.name}: {len(sweep.runs)} runs, summary in {sweep.folder}")
    try:
        status = run_sweep(sweep, run, check=not args.no_preflight)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to pick up where the sweep stopped", file=sys.stderr)
        return 130
    e = sweep.runs[0].params
    summarise(sweep.folder, status, e.evaluate.bootstrap_resamples, e.seed, e.evaluate.confidence)
    failed = [r["run"] for r in status if r["status"] != "ok"]
    print(f"done: {sweep.folder / 'report.html'}" + (f" ({len(failed)} run(s) failed: {', '.join(failed)})"
                                                     if failed else ""))
    return 1 if failed else 0


def _cmd_spec(args: argparse.Namespace) -> int:
    import json

    from delib.spec.document import count_tokens, load_spec, spec_for_category

    spec = load_spec(args.spec, args.mapping)
    if args.category:
        if args.category not in spec.categories:
            raise SpecError(f"{args.spec}: no category {args.category!r} (categories: "
                            f"{', '.join(spec.categories) or 'none: the spec has no mapping'})")
        text = spec_for_category(spec, args.category)
        tokens = count_tokens(text)
        if args.json:
            print(json.dumps({"category": args.category, "tokens": tokens, "text": text}, indent=2))
        else:
            print(text)
            print(f"-- {tokens} tokens (embedded model's tokenizer)", file=sys.stderr)
        return 0
    owner = spec.section_category()
    rows = [{"id": s.id, "title": s.title, "level": s.level, "line": s.line, "words": len(s.body.split()),
             "category": owner.get(s.id)} for s in spec.sections.values()]
    if args.json:
        print(json.dumps({"source": spec.source, "sections": rows,
                          "categories": {c.id: {"title": c.title, "sections": c.sections, "levels": c.levels}
                                         for c in spec.categories.values()}}, indent=2))
        return 0
    width = max(len(r["id"]) for r in rows) if rows else 2
    print(f"{'id':<{width}}  lvl  words  category          title")
    for r in rows:
        print(f"{r['id']:<{width}}  {r['level']:>3}  {r['words']:>5}  {r['category'] or '-':<16}  "
              f"{'  ' * (r['level'] - 1)}{r['title']}")
    print(f"{len(rows)} sections, {len(spec.categories)} categories", file=sys.stderr)
    return 0


def _cmd_label(args: argparse.Namespace) -> int:
    from delib.judging.row_labels import label_rows, read_rows, summary, write_rows

    try:
        rows = read_rows(args.input)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from None
    labelled = label_rows(rows, propositions=args.propositions)
    out = write_rows(labelled, args.output)
    print(f"labelled {len(labelled)} rows -> {out} ({summary(labelled)})")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import time

    from delib.evaluation.serve_variant import ServeError, find_variant, run_params, server_for, write_system_prompts
    from delib.models.servers import ServerError, install_handlers

    install_handlers()  # SIGTERM or SIGHUP (the terminal closed) stop the server too
    try:
        params = run_params(args.run)
        variant = find_variant(params, args.variant)
        server = server_for(variant, params, log_dir=args.log_dir)
    except (ServeError, ServerError) as err:
        raise UsageError(str(err)) from None
    try:
        try:
            server.start(port=args.port)
        except ServerError as err:
            raise UsageError(str(err)) from None
        model = getattr(server, "alias", None) or getattr(server, "folder", variant.name)
        print(f"serving {variant.name} ({variant.label}) of run {params.run_name!r}: {variant.describe()['model']}")
        print(f"base_url: {server.base_url}")
        print(f"model: {model}")
        if variant.system_prompt:
            path = write_system_prompts(variant, server.log_dir)
            by = "by category; \"*\": prompts without one" if variant.category_prompts else "one for every prompt"
            print(f"note: this variant is the base model asked with the spec as system prompt; stage 06's system "
                  f"prompts ({by}) are in {path}: send the prompt's own as the first message")
        print(f"try: curl {server.base_url}/chat/completions -H 'Content-Type: application/json' -d "
              f"'{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'")
        print("Ctrl-C stops it", flush=True)
        while server.alive():
            time.sleep(0.5)
        print(f"error: the server stopped (log {server.log_path}):\n{server.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopped")
        return 0
    finally:
        server.stop()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="delib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a recipe's stages in order (their notebooks, with papermill)")
    p.add_argument("params", help="params YAML file, e.g. params/default.yaml")
    p.add_argument("--engine", choices=("notebook", "python"), default="notebook",
                   help="notebook: execute each stage's notebook with papermill, kept in the run folder (default); "
                        "python: call each stage's run() in this process, no Jupyter kernel; the same files either way")
    p.add_argument("--stages", help="which stages: 02-03, 02,05, generate (default: all)")
    p.add_argument("--resume", action="store_true", help="continue an existing run; skip up-to-date stages")
    p.add_argument("--force", action="store_true", help="re-run the selected stages even if up to date")
    p.add_argument("--no-preflight", dest="no_preflight", action="store_true",
                   help="skip the checks of model servers, keys and GPUs before the first stage")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("sweep", help="run a base recipe under a grid or list of overrides, then compare the runs")
    p.add_argument("sweep", help="sweep YAML file, e.g. params/ablations.yaml")
    p.add_argument("--no-preflight", dest="no_preflight", action="store_true",
                   help="skip the checks of model servers, keys and GPUs before each run")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("serve", help="serve a trained variant of a run on an OpenAI-compatible port of 127.0.0.1")
    p.add_argument("run", help="a run folder (outputs/default), a run name, or the run's params file")
    p.add_argument("variant", help="base, spec_prompt, sft, sft_rl, or an extra model's name")
    p.add_argument("--port", type=int, help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("--log-dir", dest="log_dir", help="where the server's log goes (default: a temporary folder)")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("spec", help="show a spec's sections, or what the generator sees for one category")
    p.add_argument("spec", help="the Markdown spec")
    p.add_argument("--mapping", help="category mapping YAML (default: the spec's front matter)")
    p.add_argument("--category", help="render spec_for_category for this category")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_spec)

    p = sub.add_parser("label", help="label (prompt, completion) rows: refusal class, response type, and propositions if asked")
    p.add_argument("--input", required=True, help="CSV or JSONL with prompt and completion (text or chat lists)")
    p.add_argument("--output", required=True, help="where to write the labelled rows (.csv or .jsonl)")
    p.add_argument("--propositions", action="store_true", help="add one boolean column per proposition")
    p.set_defaults(func=_cmd_label)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGINT (Ctrl-C) stops every command, even one started with SIGINT ignored (a background job of a
    # non-interactive shell: Python then installs no KeyboardInterrupt handler, and `delib serve` would run on)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return args.func(args)
    except (ParamsError, UsageError, SpecError, SweepError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `delib spec ... | head`: the reader left; that is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
