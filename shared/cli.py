"""``axiom-flow`` command line.

A user's mistake (a missing file, a bad choice, a bad time, an invalid config, a port
already taken) ends in one line on stderr and a non-zero exit: 2 for what is wrong on
the command line or in the config, 1 for what the system refused (files, ports). Any
other exception is a bug and keeps its traceback."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import sys
import threading
import typing
from datetime import datetime
from importlib import metadata
from pathlib import Path

from shared.cli_exceptions import add_commands as add_exceptions_commands
from shared.config import AppConfig, ConfigError, dump_yaml, load_yaml
from shared.logs import LOG_FORMATS
from shared.logs import configure as configure_logging
from shared.messages import SourceType

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (argparse prints the whole usage first)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, except where there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


def _version() -> str:
    try:
        return metadata.version("axiom-flow")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _readable_file(value: str) -> str:
    """An argparse type: the path of a file that exists and can be read."""
    path = Path(value)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{value}: is a directory, not a file")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{value}: {exc.strerror.lower() if exc.strerror else exc}") from None
    return value


def _count(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number >= 0")
    return n


def _port(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = -1
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number (0-65535)")
    return n


def _host_names(value: str) -> list[str]:
    """An argparse type: comma-separated host names, each with an optional :port."""
    from shared.http import HostCheck

    try:
        return HostCheck.parse(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _ip_address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an IPv4 or IPv6 address, e.g. 10.0.0.7") from None


def _iso_time(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an ISO 8601 time, e.g. 2024-05-01T14:30 (UTC) or 2024-05-01T14:30+02:00") from None


def _load_config(path: str, *, complete: bool = False) -> AppConfig:
    try:
        return load_yaml(path, complete=complete)
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not a YAML text file (not UTF-8)"]) from None


def _serve(args) -> int:
    from shared.runtime.local import EmbeddedRuntime

    config = _load_config(args.config)
    runtime = EmbeddedRuntime(config, Path(args.data_dir), config_name=args.config, http_host=args.http_host,
                              http_port=None if args.http_port == 0 else args.http_port,
                              pipeline_processes=args.pipeline_processes, route_processes=args.route_processes,
                              http_allowed_hosts=args.http_allowed_hosts, http_tls=args.tls)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        try:
            runtime.start()
        except OSError as exc:
            if exc.filename is None:  # a socket: the DICOM listeners are what start() binds
                where = ", ".join(f"{lsn.host}:{lsn.port}" for lsn in runtime.config().listeners)
                raise OSError(exc.errno, f"{exc.strerror} (DICOM listeners on {where})") from None
            raise
        status = runtime.status()
        scheme = "https" if args.tls else "http"
        http = f"{scheme}://{args.http_host}:{args.http_port}" if args.http_port else "off"
        banner = (f"axiom-flow serving: DICOM listeners {status['listeners']}, HTTP {http}, "
                  f"{len(status['pipeline_processes'])} pipeline child process(es), data in {runtime.data_dir}")
        if args.log_format == "json":  # every line of the output is then a JSON object
            logging.getLogger("axiom.serve").info(banner)
        else:
            print(banner, flush=True)
        stop.wait()
    finally:
        runtime.stop()
    return 0


def _validate(args) -> int:
    config = _load_config(args.config, complete=True)
    if args.print:
        sys.stdout.write(dump_yaml(config))
    else:
        print(f"{args.config}: ok ({len(config.rulesets)} ruleset(s), {len(config.destinations)} destination(s))")
    return 0


def _rules_test(args) -> int:
    import json

    from shared.adapters.secrets import LocalSecrets
    from shared.adapters.sqlite import SQLiteDatabase, SQLiteDocumentStore
    from shared.dryrun import dry_run
    from shared.messages import IngestMetadata
    from shared.stages import live_services

    config = _load_config(args.config)
    ingest = IngestMetadata(source_type=args.source_type, source_id=args.source_id or "",
                            calling_ae=args.calling_ae or "", called_ae=args.called_ae or "",
                            peer_ip=args.source_ip or "",
                            **({"received_at": args.at} if args.at else {}))
    # the standardizer's cache and budget: serve's, when its data dir exists
    state = Path(args.data_dir) / "state.db"
    docs = SQLiteDocumentStore(SQLiteDatabase(state if state.exists() else Path(":memory:")))
    services = live_services(config, docs, LocalSecrets(), ask_model=not args.dry_run)
    try:
        for path in args.files:
            print(json.dumps(dry_run(config, Path(path), ingest, services=services), indent=2, default=str))
    finally:
        close = getattr(services.crosswalk, "close", None)
        if close is not None:
            close()
    return 0


def _config_store(args):
    """The config documents ``config export|import`` work on: the embedded runtime's
    data dir, or with ``--gcp`` Firestore (shared/runtime/gcp.py's environment)."""
    from shared.config.store import ConfigStore

    if args.gcp:
        from shared.runtime.gcp import document_store

        return ConfigStore(document_store())
    from shared.adapters.sqlite import SQLiteDatabase, SQLiteDocumentStore

    return ConfigStore(SQLiteDocumentStore(SQLiteDatabase(Path(args.data_dir) / "state.db")))


def _config_export(args) -> int:
    sys.stdout.write(_config_store(args).export_yaml())
    return 0


def _config_reference(args) -> int:
    from shared.config.reference import render

    text = render()
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _config_import(args) -> int:
    from shared.api.audit import record
    from shared.config.store import diff_text

    store = _config_store(args)
    before = None if args.dry_run else store.export_yaml()
    try:
        text = Path(args.file).read_text()
    except UnicodeDecodeError:
        raise ConfigError([f"{args.file}: not a YAML text file (not UTF-8)"]) from None
    changes = store.import_yaml(text, dry_run=args.dry_run, name=args.file)
    sys.stdout.write(diff_text(changes))
    if not args.dry_run and changes:
        from types import SimpleNamespace

        # the audit log is a collection of the same store (record reads ports.docs only)
        record(SimpleNamespace(docs=store.docs), None, "config.import", "config", before=before,
               after=store.export_yaml())
        print(f"imported {args.file}")
    return 0


def default_pipeline_processes() -> int:
    """``serve --pipeline-processes`` by default: 1 with more than one core (and then
    ``--route-processes`` 1 too), so the gateway, the stages and route each have a
    process of their own and use separate cores rather than take turns at one
    interpreter lock (bench/route.py: about 2.5-4 times the throughput on 2 cores);
    0 (everything in one process) on one core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 1 if cores > 1 else 0


def default_route_processes(pipeline_processes: int) -> int:
    """``serve --route-processes`` by default: route in a process of its own whenever
    the other stages are in child processes, never when everything is in one."""
    return min(pipeline_processes, 1)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="axiom-flow", description="DICOM router: receive, apply rules, morph tags, deliver.",
                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS,
                        help="log messages of this level and above (case does not matter)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(parent, name: str, help: str) -> argparse.ArgumentParser:
        return parent.add_parser(name, help=help, description=help, formatter_class=_HelpFormatter)

    env_config = os.environ.get("AXIOM_CONFIG") or None
    config_help = "YAML config file (default: $AXIOM_CONFIG" + (f", now {env_config})" if env_config else ", not set)")

    serve = command(sub, "serve", "run gateway, pipeline and HTTP endpoints (one command; the pipeline may use "
                                  "child processes)")
    serve.add_argument("--config", type=_readable_file, default=env_config, metavar="FILE", help=config_help)
    serve.add_argument("--data-dir", metavar="DIR", default=os.environ.get("AXIOM_DATA_DIR") or "data",
                       help="where blobs, queue and state live ($AXIOM_DATA_DIR)")
    serve.add_argument("--http-host", metavar="HOST", default=os.environ.get("AXIOM_HTTP_HOST") or "127.0.0.1",
                       help="address of the HTTP endpoints: the API (/api/v1), STOW-RS, /healthz ($AXIOM_HTTP_HOST)")
    serve.add_argument("--http-port", type=_port, metavar="PORT", default=os.environ.get("AXIOM_HTTP_PORT") or "8080",
                       help="port of the HTTP endpoints, 0 turns HTTP off ($AXIOM_HTTP_PORT)")
    serve.add_argument("--http-allowed-hosts", type=_host_names, metavar="NAMES",
                       default=os.environ.get("AXIOM_HTTP_ALLOWED_HOSTS") or "",
                       help="more names (comma-separated, each NAME or NAME:PORT) under which the API (/api/v1) "
                            "answers, besides localhost and the HTTP address; others get 421, against DNS rebinding "
                            "($AXIOM_HTTP_ALLOWED_HOSTS)")
    serve.add_argument("--tls-cert", type=_readable_file, metavar="FILE", default=os.environ.get("AXIOM_TLS_CERT") or None,
                       help="serve the HTTP endpoints as HTTPS with this PEM certificate (the server's, then any "
                            "intermediates); needs --tls-key ($AXIOM_TLS_CERT)")
    serve.add_argument("--tls-key", type=_readable_file, metavar="FILE", default=os.environ.get("AXIOM_TLS_KEY") or None,
                       help="the unencrypted PEM private key of --tls-cert ($AXIOM_TLS_KEY)")
    serve.add_argument("--pipeline-processes", type=_count, metavar="N",
                       default=os.environ.get("AXIOM_PIPELINE_PROCESSES") or str(default_pipeline_processes()),
                       help="run the stage workers in N child processes; 0 runs everything in this one process "
                            "($AXIOM_PIPELINE_PROCESSES; otherwise 1 on a machine with more than one core, 0 on one "
                            "core)")
    serve.add_argument("--route-processes", type=_count, metavar="M", default=os.environ.get("AXIOM_ROUTE_PROCESSES"),
                       help="run route's workers in M child processes of their own; 0 routes with the other stages "
                            "($AXIOM_ROUTE_PROCESSES; otherwise 1 when the stage workers run in child processes, "
                            "else 0)")
    serve.add_argument("--log-format", type=str.lower, choices=LOG_FORMATS,
                       default=os.environ.get("AXIOM_LOG_FORMAT") or "text",
                       help="text lines, or JSON lines in Cloud Logging's structured format (severity, message, "
                            "labels: stage, sop_uid, destination, rule), also in the pipeline child processes "
                            "($AXIOM_LOG_FORMAT)")
    serve.set_defaults(func=_serve, parser=serve)

    validate = command(sub, "validate", "check a config file")
    validate.add_argument("config", type=_readable_file, metavar="FILE", help="YAML config file")
    validate.add_argument("--print", action="store_true", help="print the normalized config")
    validate.set_defaults(func=_validate)

    cfg = command(sub, "config", "export or import the whole config of a deployment; print the config reference"
                  ).add_subparsers(
        dest="config_command", required=True, metavar="COMMAND")
    store_help = ("where blobs, queue and state live ($AXIOM_DATA_DIR): the embedded runtime's config")

    def where(cmd) -> None:
        group = cmd.add_mutually_exclusive_group()
        group.add_argument("--data-dir", metavar="DIR", default=os.environ.get("AXIOM_DATA_DIR") or "data",
                           help=store_help)
        group.add_argument("--gcp", action="store_true",
                           help="Firestore of the GCP deployment ($GOOGLE_CLOUD_PROJECT, $AXIOM_FIRESTORE_DATABASE, "
                                "$AXIOM_COLLECTION_PREFIX)")

    export = command(cfg, "export", "print the whole config as YAML")
    where(export)
    export.set_defaults(func=_config_export)
    imp = command(cfg, "import", "replace the whole config with a YAML file, validated as one unit; prints the "
                                 "differences")
    imp.add_argument("file", type=_readable_file, metavar="FILE", help="YAML config file")
    imp.add_argument("--dry-run", action="store_true", help="only print the differences, write nothing")
    where(imp)
    imp.set_defaults(func=_config_import)
    ref = command(cfg, "reference", "print the config reference (Markdown), generated from the config models")
    ref.add_argument("-o", "--output", metavar="FILE", help="write it to FILE instead (docs/config-reference.md)")
    ref.set_defaults(func=_config_reference)

    rules = command(sub, "rules", "work with rules").add_subparsers(dest="rules_command", required=True,
                                                                     metavar="COMMAND")
    test = command(rules, "test", "dry-run the rules on files: matches, reasons, tag diff, destinations, the values "
                                  "looked up and where they came from (JSON)")
    test.add_argument("files", nargs="+", metavar="FILE", type=_readable_file, help="DICOM Part 10 files")
    test.add_argument("--config", type=_readable_file, default=env_config, metavar="FILE", help=config_help)
    test.add_argument("--calling-ae", metavar="AE", help="as if sent by this calling AE title")
    test.add_argument("--called-ae", metavar="AE", help="as if sent to this called AE title")
    test.add_argument("--source-ip", type=_ip_address, metavar="IP", help="as if sent from this IP address")
    test.add_argument("--source-type", default="cstore", choices=typing.get_args(SourceType),
                      help="how the instance arrived")
    test.add_argument("--source-id", metavar="ID", help="the id of the source (a poller's, or stow.id)")
    test.add_argument("--at", type=_iso_time, metavar="TIME", help="evaluate schedules at this ISO 8601 time (naive: UTC; "
                                                   "default: now)")
    test.add_argument("--data-dir", metavar="DIR", default=os.environ.get("AXIOM_DATA_DIR") or "data",
                      help="serve's data dir, whose AI standardizer cache and budget the test uses (default: "
                           "$AXIOM_DATA_DIR or ./data; none there: an empty cache)")
    test.add_argument("--dry-run", action="store_true",
                      help="ask no model: AI standardization answers from the cache only (each value's source "
                           "says whether it was cached); databases are still read")
    test.set_defaults(func=_rules_test, parser=test)

    from shared.cli_users import add_commands as add_user_commands

    add_user_commands(sub, command)
    from shared.cli_crosswalk import add_commands as add_crosswalk_commands

    add_crosswalk_commands(sub, command)
    from shared.cli_spanner import add_commands as add_spanner_commands

    add_spanner_commands(sub, command)
    add_exceptions_commands(sub, command)
    return parser


def _tls(args):
    """serve's HTTPS context from --tls-cert/--tls-key, None without them; a usage
    error when only one is given or the files are not a certificate and its key."""
    if not args.tls_cert and not args.tls_key:
        return None
    if not (args.tls_cert and args.tls_key):
        args.parser.error("--tls-cert and --tls-key go together: give both (or set both AXIOM_TLS_CERT and "
                          "AXIOM_TLS_KEY)")
    from shared.http import tls_context

    try:
        return tls_context(args.tls_cert, args.tls_key)
    except ValueError as exc:
        args.parser.error(str(exc))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line with every default resolved; a mistake exits (argparse)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "parser", None) and args.config is None:
        args.parser.error("a config file is needed: --config FILE, or set AXIOM_CONFIG")
    if hasattr(args, "tls_cert"):
        args.tls = _tls(args)
    # serve's --log-format; the other commands' logs follow $AXIOM_LOG_FORMAT
    args.log_format = getattr(args, "log_format", None) or (os.environ.get("AXIOM_LOG_FORMAT") or "text").lower()
    if args.log_format not in LOG_FORMATS:  # from $AXIOM_LOG_FORMAT: argparse checks no default
        parser.error(f"AXIOM_LOG_FORMAT={args.log_format}: one of {', '.join(LOG_FORMATS)}")
    if getattr(args, "route_processes", 0) is None:
        args.route_processes = default_route_processes(args.pipeline_processes)
    return args


def main(argv: list[str] | None = None) -> int:
    from shared.cli_users import CliError

    args = parse_args(argv)
    # text, or JSON lines in Cloud Logging's format; no tag values in either (shared/logs.py)
    configure_logging(args.log_level, args.log_format)
    try:
        return args.func(args)
    except ConfigError as exc:
        if len(exc.errors) > 1:  # every problem at once, one a line
            print("axiom-flow: invalid config:\n" + "\n".join(f"  {e}" for e in exc.errors), file=sys.stderr)
        else:
            print(f"axiom-flow: {exc}", file=sys.stderr)
        return 2
    except CliError as exc:
        print(f"axiom-flow: {exc}", file=sys.stderr)
        return exc.status
    except BrokenPipeError:  # stdout's reader stopped early (| head): nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush is quiet too
        return 1
    except OSError as exc:  # a file, directory or port the system refused
        where = f": {exc.filename}" if exc.filename else ""
        print(f"axiom-flow: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
