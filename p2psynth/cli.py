"""The ``p2psynth`` command.

Each subcommand is a thin layer over a library function: it parses arguments,
calls the function, and prints a summary. Errors the product raises on purpose
(``P2PSynthError``) are printed as one line and exit with status 1; argument
errors exit with status 2 (argparse's convention).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from p2psynth import __version__
from p2psynth.errors import P2PSynthError

log = logging.getLogger("p2psynth")

EXIT_ERROR = 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    default_level = "INFO" if getattr(args, "handler", None) is _run_node else "WARNING"
    _configure_logging(args.log_level or default_level)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return handler(args)
    except P2PSynthError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (for example `| head`); not an error of ours.
        sys.stderr.close()
        return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2psynth",
        description="Decentralized synthetic data from differentially private marginals.",
    )
    parser.add_argument("--version", action="version", version=f"p2psynth {__version__}")
    parser.add_argument(
        "--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level for messages on stderr (default: INFO for 'node run', WARNING otherwise)",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    init = commands.add_parser("init", help="create a node folder: key, store, node.toml")
    init.add_argument("folder", type=Path, help="folder to create the node in (must not hold a node)")
    init.add_argument("--name", help="display name of the node (default: the folder name)")
    init.add_argument("--data", default="", help="path of the private table (CSV or Parquet)")
    init.add_argument("--schema", default="", help="path of the network's schema TOML")
    init.add_argument("--network-id", default="p2psynth-local", help="name of the network (default: %(default)s)")
    init.add_argument("--lifetime-epsilon", type=float, default=4.0,
                      help="total epsilon the node may ever spend (default: %(default)s)")
    init.add_argument("--release-epsilon", type=float, default=1.0,
                      help="epsilon of one release (default: %(default)s)")
    init.add_argument("--delta", type=float, default=1e-9, help="delta of the guarantee (default: %(default)s)")
    init.add_argument("--api-port", type=int, default=8470, help="TCP port of the local HTTP API on 127.0.0.1")
    init.set_defaults(handler=_run_init)

    measure = commands.add_parser("measure", help="measure the private table and write a signed release")
    _add_config_argument(measure)
    measure.add_argument("--epsilon", type=float, help="epsilon of this release (default: privacy.release_epsilon)")
    measure.add_argument("--data", type=Path, help="data file to measure (default: data.path of node.toml)")
    measure.add_argument("--out", type=Path, help="release file to write (default: a file in releases/)")
    measure.set_defaults(handler=_run_measure)

    inspect = commands.add_parser("inspect", help="verify release files and summarize them")
    inspect.add_argument("releases", type=Path, nargs="+", metavar="RELEASE", help="release files (.p2pr)")
    inspect.add_argument("--schema", type=Path, help="schema TOML to check the release against")
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON")
    inspect.set_defaults(handler=_run_inspect)

    budget = commands.add_parser("budget", help="show the privacy budget spent and remaining")
    _add_config_argument(budget)
    budget.add_argument("--json", action="store_true", help="print the budget as JSON")
    budget.set_defaults(handler=_run_budget)

    node = commands.add_parser("node", help="run the node daemon")
    node_commands = node.add_subparsers(title="node commands", metavar="NODE_COMMAND")
    run = node_commands.add_parser("run", help="run the daemon in the foreground until SIGINT or SIGTERM")
    _add_config_argument(run)
    run.add_argument("--no-api", action="store_true", help="do not serve the local HTTP API")
    run.add_argument("--anti-entropy-s", type=float, nargs=2, metavar=("MIN", "MAX"), default=(5.0, 10.0),
                     help="interval between anti-entropy rounds, in seconds (default: 5 10)")
    run.add_argument("--model-debounce-s", type=float, nargs=2, metavar=("ALL", "INCOMPLETE"), default=(0.5, 3.0),
                     help="seconds without a new release before refitting the model, when every member has a "
                          "release and while some have none (default: 0.5 3)")
    run.add_argument("--redial-interval-s", type=float, default=30.0,
                     help="seconds between redials of a disconnected bootstrap peer (default: 30)")
    run.set_defaults(handler=_run_node)
    node.set_defaults(handler=lambda args: _print_help(node))

    status = commands.add_parser("status", help="show the running daemon's status")
    _add_config_argument(status)
    status.add_argument("--json", action="store_true", help="print the full status as JSON")
    status.set_defaults(handler=_run_status)

    publish = commands.add_parser("publish", help="ask the running daemon to measure and publish a release")
    _add_config_argument(publish)
    publish.add_argument("--epsilon", type=float, help="epsilon of this release (default: privacy.release_epsilon)")
    publish.set_defaults(handler=_run_publish)

    assemble = commands.add_parser("assemble", help="fit the global model from release files")
    assemble.add_argument("releases", type=Path, nargs="+", help="release files (.p2pr)")
    assemble.add_argument("--schema", type=Path, required=True, help="the network's schema TOML")
    assemble.add_argument("--out", type=Path, required=True, help="model file to write (.p2pm)")
    assemble.add_argument("--drop-cliques-over-cap", action="store_true",
                          help="leave out the least weighted measured cliques that exceed the memory caps "
                               "instead of failing")
    assemble.set_defaults(handler=_run_assemble)

    sample = commands.add_parser("sample", help="write synthetic rows, from a model file or the running daemon")
    source = sample.add_mutually_exclusive_group()
    source.add_argument("--model", type=Path, help="model file from 'p2psynth assemble' (needs --schema)")
    source.add_argument("--config", type=Path, help="node.toml of a running daemon (default: ./node.toml)")
    sample.add_argument("--schema", type=Path, help="schema TOML (with --model)")
    sample.add_argument("--rows", type=_non_negative_int, required=True, help="number of rows (0 or more)")
    sample.add_argument("--where", action="append", default=[], metavar="COND",
                        help="condition COL=VALUE or 'COL in {A, B}'; repeat for several")
    sample.add_argument("--seed", type=int, help="seed for reproducible rows")
    sample.add_argument("--format", choices=["csv", "parquet", "json"], help="output format (default: from --out)")
    sample.add_argument("--out", type=Path, required=True, help="file to write")
    sample.set_defaults(handler=_run_sample)

    evaluate = commands.add_parser("evaluate", help="compare synthetic rows with real rows")
    evaluate.add_argument("--real", type=Path, required=True, help="real data file (CSV or Parquet)")
    evaluate.add_argument("--synthetic", type=Path, required=True, help="synthetic data file")
    evaluate.add_argument("--schema", type=Path, required=True, help="schema TOML both files follow")
    evaluate.add_argument("--target", help="column to predict for the ML efficacy score")
    evaluate.add_argument("--real-skip-rows", type=_non_negative_int, default=0,
                          help="junk lines to skip at the top of the real file (1 for UCI adult.test)")
    evaluate.add_argument("--out", type=Path, default=Path("evaluation"), help="report folder (default: ./evaluation)")
    evaluate.set_defaults(handler=_run_evaluate)

    demo = commands.add_parser(
        "demo", help="run a 5-node network on the bundled UCI Adult data and report (see 'p2psynth demo --help')",
        add_help=False,
    )
    demo.add_argument("demo_args", nargs=argparse.REMAINDER)
    demo.set_defaults(handler=_run_demo)

    simulate = commands.add_parser("simulate", help="run a simulated network scenario (TOML) and write a report")
    simulate.add_argument("scenario", type=Path, help="scenario file, e.g. simulations/scenarios/baseline-10.toml")
    simulate.add_argument("--out", type=Path, help="report folder (default: simulation-output/<scenario name>)")
    simulate.add_argument("--seed", type=int, help="seed overriding the scenario's own")
    simulate.set_defaults(handler=_run_simulate)

    schema = commands.add_parser("schema", help="schema tools")
    schema_commands = schema.add_subparsers(title="schema commands", metavar="SCHEMA_COMMAND")
    draft = schema_commands.add_parser("draft", help="write a draft schema from a data file")
    draft.add_argument("data", type=Path, help="CSV or Parquet file")
    draft.add_argument("--out", type=Path, help="file to write (default: print to stdout)")
    draft.add_argument("--bins", type=int, default=10, help="number of bins of numeric columns (default: 10)")
    draft.set_defaults(handler=_run_schema_draft)
    schema.set_defaults(handler=lambda args: _print_help(schema))

    return parser


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; give 0 or more")
    return value


def _add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, default=Path("node.toml"),
        help="the node's node.toml (default: ./node.toml)",
    )


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _configure_logging(level: str) -> None:
    # libp2p replaces its logger's handlers when imported; the root handler
    # set here still receives every other module's records.
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


# Handlers ----------------------------------------------------------------


def _run_init(args: argparse.Namespace) -> int:
    from p2psynth.nodefolder import init_node
    from p2psynth.release import author_fingerprint
    from p2psynth.identity import load_private_key, public_key_bytes

    config = init_node(
        args.folder,
        name=args.name,
        data_path=args.data,
        schema_path=args.schema,
        network_id=args.network_id,
        lifetime_epsilon=args.lifetime_epsilon,
        release_epsilon=args.release_epsilon,
        delta=args.delta,
        api_port=args.api_port,
    )
    public = public_key_bytes(load_private_key(config.key_file))
    print(f"created node {config.name!r} in {config.folder}")
    print(f"  config:      {config.path}")
    print(f"  public key:  {public.hex()}")
    print(f"  fingerprint: {author_fingerprint(public)}")
    print("Back up node.key and store.sqlite together; share only the public key.")
    return 0


def _run_measure(args: argparse.Namespace) -> int:
    from p2psynth.accounting import epsilon_from_rho
    from p2psynth.nodefolder import measure_and_publish, open_node
    from p2psynth.release import release_id

    with open_node(args.config) as node:
        published = measure_and_publish(node, epsilon=args.epsilon, data_path=args.data, out_path=args.out)
        status = node.ledger.status()

    release = published.release
    print(published.load_summary)
    print(f"release {release_id(published.data).hex()} written to {published.path}")
    print(f"  sequence {release.sequence}, epoch {release.epoch}, {len(release.measurements)} marginals, "
          f"{len(published.data)} bytes")
    print(f"  epsilon {epsilon_from_rho(release.rho, status.delta):.4g} (rho {release.rho:.6g}) at delta {status.delta:g}")
    print(f"  budget: spent epsilon {status.epsilon_spent:.4g} of {status.epsilon_limit:g} "
          f"(rho {status.rho_spent:.6g} of {status.rho_limit:.6g}); the remaining rho is epsilon "
          f"{status.epsilon_remaining:.4g} if spent in one release")
    return 0


def _run_inspect(args: argparse.Namespace) -> int:
    from p2psynth.inspection import summarize_release_file

    summaries = [summarize_release_file(path, schema_path=args.schema) for path in args.releases]
    if args.json:
        # One file gives one object, as before; several give a list.
        facts = [summary.as_dict() for summary in summaries]
        print(json.dumps(facts[0] if len(facts) == 1 else facts, indent=2))
    else:
        print("\n\n".join(summary.as_text() for summary in summaries))
    return 0


def _run_budget(args: argparse.Namespace) -> int:
    from p2psynth.nodefolder import open_node

    with open_node(args.config) as node:
        status = node.ledger.status()
    values = {
        "lifetime_epsilon": status.epsilon_limit,
        "delta": status.delta,
        "releases": status.releases,
        "rho_limit": status.rho_limit,
        "rho_spent": status.rho_spent,
        "rho_remaining": status.rho_remaining,
        "epsilon_spent": status.epsilon_spent,
        "epsilon_remaining_if_spent_alone": status.epsilon_remaining,
    }
    if args.json:
        print(json.dumps(values, indent=2))
        return 0
    print(f"releases:          {status.releases}")
    print(f"lifetime budget:   epsilon {status.epsilon_limit:g} at delta {status.delta:g} (rho {status.rho_limit:.6g})")
    print(f"spent:             epsilon {status.epsilon_spent:.4g} (rho {status.rho_spent:.6g})")
    print(f"remaining:         rho {status.rho_remaining:.6g} "
          f"(epsilon {status.epsilon_remaining:.4g} if spent in one release)")
    return 0


def _run_schema_draft(args: argparse.Namespace) -> int:
    from p2psynth.schema_draft import draft_schema

    text = draft_schema(args.data, bins=args.bins)
    print(
        "WARNING: categories and bounds in this draft were read from the data itself. Publishing them "
        "leaks private values; replace them with public knowledge before the network uses the schema.",
        file=sys.stderr,
    )
    if args.out is None:
        sys.stdout.write(text)
    else:
        if args.out.exists():
            print(f"error: {args.out} exists; choose another --out file", file=sys.stderr)
            return EXIT_ERROR
        args.out.write_text(text, encoding="utf-8")
        print(f"draft schema written to {args.out}")
    return 0


def _run_node(args: argparse.Namespace) -> int:
    from p2psynth.daemon import DaemonOptions, run_daemon

    low, high = args.anti_entropy_s
    complete, incomplete = args.model_debounce_s
    options = DaemonOptions(
        serve_api=not args.no_api,
        anti_entropy_min_interval_s=low,
        anti_entropy_max_interval_s=high,
        model_debounce_s=complete,
        model_incomplete_debounce_s=incomplete,
        redial_interval_s=args.redial_interval_s,
    )
    return run_daemon(args.config, options=options)


def _run_status(args: argparse.Namespace) -> int:
    from p2psynth.daemon import read_status

    status = read_status(args.config)
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0
    model = status.get("model") or {}
    rejections = (status.get("rejections") or {}).get("by_reason") or {}
    state = "running" if status.get("running") else "not running"
    print(f"node {status.get('node')} ({state}, pid {status.get('pid')})")
    print(f"  public key:  {status.get('public_key')} (fingerprint {status.get('fingerprint')})")
    print(f"  peer id:     {status.get('peer_id')}")
    for address in status.get("addresses") or []:
        print(f"  address:     {address}")
    print(f"  peers:       {len(status.get('peers') or [])}")
    releases = status.get("releases") or {}
    print(f"  releases:    {releases.get('stored')} stored; latest sequence per member: "
          f"{json.dumps(releases.get('latest_sequence_by_member'))}")
    print(f"  rejections:  {json.dumps(rejections) if rejections else 'none'}")
    print(f"  model:       {model.get('model_id') or 'none'}"
          + (f" ({model.get('error')})" if model.get("error") else ""))
    rounds = status.get("rounds") or {}
    if rounds.get("epoch") is not None:
        line = f"epoch {rounds['epoch']}, round {rounds.get('round')} {rounds.get('state')}"
        if rounds.get("waiting_for"):
            line += f", waiting for {', '.join(rounds['waiting_for'])}"
            if rounds.get("deadline_at_ms"):
                remaining_s = max(0, round(rounds["deadline_at_ms"] / 1000 - time.time()))
                line += f" (goes on without them in {remaining_s} s)"
        if rounds.get("error"):
            line += f" ({rounds['error']})"
        print(f"  rounds:      {line}")
    return 0


def _run_publish(args: argparse.Namespace) -> int:
    from p2psynth.client import Client

    with Client.from_node_config(args.config) as client:
        result = client.publish(epsilon=args.epsilon)
    print(f"published release {result['release_id']} (sequence {result['sequence']}, {result['size_bytes']} bytes)")
    if result.get("rounds_to_follow"):
        print(f"this is round 1 of epoch {result['epoch']}; the daemon publishes rounds "
              f"{' and '.join(str(r) for r in result['rounds_to_follow'])} once the other members' releases arrive "
              "(see 'p2psynth status')")
    return 0


def _run_assemble(args: argparse.Namespace) -> int:
    from p2psynth.assembly import assemble_model, decode_entries
    from p2psynth.errors import ModelError
    from p2psynth.nodefolder import write_file_atomically
    from p2psynth.schema import load_schema

    schema = load_schema(args.schema)
    blobs = []
    for path in args.releases:
        try:
            blobs.append(path.read_bytes())
        except OSError as exc:
            raise ModelError(f"cannot read release file {path}: {exc}") from exc
    model = assemble_model(
        decode_entries(blobs), schema_fingerprint=schema.fingerprint, domain=schema.domain,
        drop_cliques_over_cap=args.drop_cliques_over_cap,
    )
    dropped = model.fit_summary.dropped_cliques if model.fit_summary else ()
    if dropped:
        print(f"left out {len(dropped)} cliques over the caps: {', '.join('x'.join(c) for c in dropped)}")
    write_file_atomically(args.out, model.to_bytes())
    members = model.provenance.get("members", {})
    print(f"model {model.model_id} written to {args.out}")
    print(f"  {len(model.provenance.get('releases', []))} releases from {len(members)} members, "
          f"about {model.total:.0f} rows")
    return 0


def _run_sample(args: argparse.Namespace) -> int:
    from p2psynth.synthesize import format_from_path

    fmt = format_from_path(args.out, args.format)
    if args.model is not None:
        from p2psynth.errors import ModelError
        from p2psynth.model import GraphicalModel
        from p2psynth.schema import load_schema
        from p2psynth.synthesize import describe_conditions, parse_where, sample_chunks, write_rows

        if args.schema is None:
            raise ModelError("--model needs --schema: the schema the model's releases were made for")
        schema = load_schema(args.schema)
        try:
            model = GraphicalModel.from_bytes(args.model.read_bytes())
        except OSError as exc:
            raise ModelError(f"cannot read model file {args.model}: {exc}") from exc
        conditions = parse_where(schema, args.where)
        if conditions:
            print(f"conditions (numeric values select their whole bin): {describe_conditions(schema, conditions)}")
        seed = args.seed if args.seed is not None else int.from_bytes(__import__("os").urandom(7), "big")
        size = write_rows(args.out, sample_chunks(model, schema, rows=args.rows, seed=seed, conditions=conditions), fmt)
    else:
        from p2psynth.client import Client
        from p2psynth.synthesize import split_where

        where = split_where(args.where)
        with Client.from_node_config(args.config or Path("node.toml")) as client:
            client.sample_to_file(args.out, rows=args.rows, where=where, seed=args.seed, format=fmt)
        size = args.out.stat().st_size
    print(f"{args.rows} synthetic rows written to {args.out} ({fmt}, {size} bytes)")
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from p2psynth.evaluation_report import evaluate_files

    summary = evaluate_files(
        args.real, args.synthetic, schema_path=args.schema, target=args.target, out_dir=args.out,
        real_skip_rows=args.real_skip_rows,
    )
    print(summary)
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from p2psynth.demo import main as demo_main

    return demo_main(args.demo_args)


def _run_simulate(args: argparse.Namespace) -> int:
    from p2psynth.simulate import run_scenario

    out = args.out or Path("simulation-output") / args.scenario.stem
    report = run_scenario(args.scenario, out_dir=out, seed=args.seed)
    print(f"report written to {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
