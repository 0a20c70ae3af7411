"""``axiom-flow spanner run-task``: one task of an async spanner query
(:mod:`shared.spanner.job`), as a Cloud Run job's container runs it: the query from
``$AXIOM_SPANNER_QUERY_ID``, the task from ``$CLOUD_RUN_TASK_INDEX`` and
``$CLOUD_RUN_TASK_COUNT``, over the GCP deployment (shared/runtime/gcp.py's
environment). The embedded runtime runs its tasks in threads instead."""

from __future__ import annotations

import argparse
import os
from typing import Callable

from shared.cli_users import CliError


def _run_task(args) -> int:
    from shared.spanner.job import run_task

    query_id = args.query or os.environ.get("AXIOM_SPANNER_QUERY_ID")
    if not query_id:
        raise CliError("which query? --query ID or $AXIOM_SPANNER_QUERY_ID")
    index = int(os.environ.get("CLOUD_RUN_TASK_INDEX", "0")) if args.index is None else args.index
    count = int(os.environ.get("CLOUD_RUN_TASK_COUNT", "1")) if args.count is None else args.count
    if not 0 <= index < count:
        raise CliError(f"task {index} of {count}: the index must be below the count")
    from shared.spanner import workers

    # a task asks its few sources once and ends: threads, not worker processes to start
    os.environ.setdefault(workers.PROCESSES_ENV, "0")
    try:
        from shared.runtime import gcp

        gcp.configure_logging()
        asked = run_task(gcp.ports(), query_id, index, count)
    except LookupError as exc:
        raise CliError(str(exc)) from None
    print(f"spanner query {query_id}: task {index} of {count} asked {asked} source(s)")
    return 0


def add_commands(sub, command: Callable[..., argparse.ArgumentParser]) -> None:
    spanner = command(sub, "spanner", "work with spanned queries").add_subparsers(
        dest="spanner_command", required=True, metavar="COMMAND")
    task = command(spanner, "run-task", "run one task of an async spanner query (a Cloud Run job's task)")
    task.add_argument("--query", metavar="ID", help="the query's id (default: $AXIOM_SPANNER_QUERY_ID)")
    task.add_argument("--index", type=int, metavar="N", help="this task's index (default: $CLOUD_RUN_TASK_INDEX, 0)")
    task.add_argument("--count", type=int, metavar="N", help="the number of tasks (default: $CLOUD_RUN_TASK_COUNT, 1)")
    task.set_defaults(func=_run_task)
