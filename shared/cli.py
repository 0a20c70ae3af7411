"""``axiom-flow`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from shared.config import ConfigError, dump_yaml, load_yaml


def _serve(args) -> int:
    from shared.runtime.local import EmbeddedRuntime

    config = load_yaml(args.config)
    runtime = EmbeddedRuntime(config, Path(args.data_dir), http_host=args.http_host,
                              http_port=None if args.http_port == 0 else args.http_port,
                              pipeline_processes=args.pipeline_processes, route_processes=args.route_processes)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    runtime.start()
    status = runtime.status()
    print(f"axiom-flow serving: DICOM listeners {status['listeners']}, data in {runtime.data_dir}", flush=True)
    stop.wait()
    runtime.stop()
    return 0


def _validate(args) -> int:
    config = load_yaml(args.config)
    if args.print:
        sys.stdout.write(dump_yaml(config))
    else:
        print(f"{args.config}: ok ({len(config.rulesets)} ruleset(s), {len(config.destinations)} destination(s))")
    return 0


def _rules_test(args) -> int:
    import json
    from datetime import datetime

    from shared.dryrun import dry_run
    from shared.messages import IngestMetadata

    config = load_yaml(args.config)
    ingest = IngestMetadata(source_type=args.source_type, source_id=args.source_id or "",
                            calling_ae=args.calling_ae or "", called_ae=args.called_ae or "",
                            peer_ip=args.source_ip or "",
                            **({"received_at": datetime.fromisoformat(args.at)} if args.at else {}))
    for path in args.files:
        print(json.dumps(dry_run(config, Path(path), ingest), indent=2, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="axiom-flow", description="DICOM router")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run gateway, pipeline and HTTP endpoints in one process")
    serve.add_argument("--config", required=True, help="YAML config file")
    serve.add_argument("--data-dir", required=True, help="where blobs, queue and state live")
    serve.add_argument("--http-host", default="127.0.0.1")
    serve.add_argument("--http-port", type=int, default=8080, help="0 disables HTTP")
    serve.add_argument("--pipeline-processes", type=int, default=int(os.environ.get("AXIOM_PIPELINE_PROCESSES", "0")),
                       help="run the stage workers in N child processes (0: in this process)")
    serve.add_argument("--route-processes", type=int, default=int(os.environ.get("AXIOM_ROUTE_PROCESSES", "0")),
                       help="run route's workers in M child processes of their own (0: with the other stages)")
    serve.set_defaults(func=_serve)

    validate = sub.add_parser("validate", help="check a config file")
    validate.add_argument("config")
    validate.add_argument("--print", action="store_true", help="print the normalized config")
    validate.set_defaults(func=_validate)

    rules = sub.add_parser("rules", help="work with rules").add_subparsers(dest="rules_command", required=True)
    test = rules.add_parser("test", help="dry-run the rules on files: matches, reasons, tag diff, destinations (JSON)")
    test.add_argument("files", nargs="+", metavar="FILE")
    test.add_argument("--config", required=True)
    test.add_argument("--calling-ae")
    test.add_argument("--called-ae")
    test.add_argument("--source-ip")
    test.add_argument("--source-type", default="cstore")
    test.add_argument("--source-id")
    test.add_argument("--at", help="evaluate schedules at this ISO time (default: now)")
    test.set_defaults(func=_rules_test)

    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per HTTP request
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"axiom-flow: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
