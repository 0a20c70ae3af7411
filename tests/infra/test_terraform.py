"""terraform/ against the code: every entry point deployed, every subscription with a
dead-letter policy, every service account with exactly the roles of docs/gcp-iam.md,
and the topic, bucket, collection and environment variable names the code uses.
``terraform validate``/``plan`` need the providers (a registry): Cloud Build runs them."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest

hcl2 = pytest.importorskip("hcl2")

ROOT = Path(__file__).resolve().parents[2]
TF = ROOT / "terraform"
CHECKOV_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "axiom-checkov"
# read by code another change adds (structured logs, issue 15); drop once it lands
ENV_PENDING: set[str] = set()  # names Terraform sets before the code reads them
def unq(value):
    """A python-hcl2 string without the quotes some versions keep."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if isinstance(value, list):
        return [unq(v) for v in value]
    if isinstance(value, dict):
        return {unq(k): unq(v) for k, v in value.items()}
    return value


@cache
def parsed(path: Path) -> dict:
    with open(path) as f:
        return unq(hcl2.load(f))


def tf_files():
    return sorted(TF.rglob("*.tf"))


def blocks(kind: str):
    """(file, type, name, body) of every resource (kind="resource") or module in terraform/."""
    for path in tf_files():
        for entry in parsed(path).get(kind, []):
            for rtype, named in entry.items():
                if kind == "module":
                    yield path, "module", rtype, named
                else:
                    for name, body in named.items():
                        yield path, rtype, name, body


@cache
def root_locals() -> dict:
    out = {}
    for path in TF.glob("*.tf"):
        for entry in parsed(path).get("locals", []):
            out.update(entry)
    return out


def variable(name: str) -> dict:
    for entry in parsed(TF / "variables.tf")["variable"]:
        if name in entry:
            return entry[name]
    raise KeyError(name)


def entry_points() -> dict[str, tuple[str, str]]:
    """The entry points of the bundle's entry modules (functions/main.py, api.py) ->
    (their file, 'push' (CloudEvent) or 'http')."""
    found = {}
    for source in ("main.py", "api.py"):
        tree = ast.parse((ROOT / "functions" / source).read_text())
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for dec in node.decorator_list:
                    name = ast.unparse(dec)
                    if name.startswith("functions_framework."):
                        found[node.name] = (source, "push" if name.endswith("cloud_event") else "http")
    return found


def test_fmt_clean():
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip("terraform is not installed")
    result = subprocess.run([terraform, "fmt", "-check", "-recursive", "-diff"], cwd=TF, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_entry_point_is_deployed_with_its_trigger():
    code = entry_points()
    assert {"match", "morph", "route", "dead_letter", "api", "stow"} <= set(code)
    declared = {e: (spec["source"], spec["trigger"]) for e, spec in root_locals()["entry_points"].items()}
    assert declared == code
    assert code["api"] == ("api.py", "http")
    [function] = [body for _, _, name, body in blocks("module") if name == "function"]
    assert function["source"] == "./modules/function"
    assert "local.deployed_entry_points" in function["for_each"]
    assert function["entry_point"] == "${each.key}"
    assert function["source_file"] == "${each.value.source}"
    [built] = [body for _, rtype, _, body in blocks("resource") if rtype == "google_cloudfunctions2_function"]
    assert built["build_config"][0]["environment_variables"] == {"GOOGLE_FUNCTION_SOURCE": "${var.source_file}"}
    resources = [rtype for path, rtype, _, _ in blocks("resource") if path.parent.name == "function"]
    assert "google_cloudfunctions2_function" in resources


def test_every_cloud_event_function_has_a_push_subscription_and_every_subscription_a_dead_letter_policy():
    subs = root_locals()["subscriptions"]
    # the healthcare subscription sits in a for-expression (it exists only with the store)
    fed = {s["function"] for s in subs[0].values()} if isinstance(subs, list) else set()
    text = (TF / "main.tf").read_text()
    for entry, (_, trigger) in entry_points().items():
        if trigger == "push":
            assert f'function = "{entry}"' in text, f"no subscription pushes to {entry}"
    assert fed <= set(entry_points())
    subscriptions = [(rtype, name, body) for _, rtype, name, body in blocks("resource")
                     if rtype == "google_pubsub_subscription"]
    assert subscriptions
    for _, name, body in subscriptions:
        [policy] = body["dead_letter_policy"]
        # the crosswalk stage waits out a database outage: Pub/Sub's most attempts
        assert policy["dead_letter_topic"] and policy["max_delivery_attempts"] == (
            '${each.key == "crosswalk" ? 100 : var.pubsub.max_delivery_attempts}'), name
        assert body["retry_policy"] and body["message_retention_duration"], name


def test_max_delivery_attempts_validated_against_destination_retries():
    conditions = [v["condition"] for v in variable("pubsub")["validation"]]
    assert any("var.pubsub.max_delivery_attempts >= var.destination_retry_attempts" in c for c in conditions)


def iam_table() -> set[tuple[str, str, str]]:
    text = (ROOT / "docs" / "gcp-iam.md").read_text()
    section = text.split("| Service account | Role | On | Why |", 1)[1].split("\n\n", 1)[0]
    rows = set()
    for line in section.strip().splitlines()[1:]:
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        rows.add((cells[0], cells[1], cells[2]))
    return rows


def test_service_accounts_hold_exactly_the_documented_roles():
    terraform = {(sa, role, on) for sa, rows in root_locals()["service_account_roles"].items() for role, on in rows}
    assert terraform == iam_table()
    assert set(root_locals()["service_account_roles"]) == set(entry_points()) | {"gateway", "spanner_job"}
    # the modules grant what the table says, and nothing else
    for path, _, name, body in blocks("module"):
        if path.parent == TF:
            assert body["roles"].startswith("${local.role_bindings["), name
    for path, rtype, name, body in blocks("resource"):
        if path.parent.name in ("function", "gateway", "job") and rtype.endswith("_iam_member") and "role" in body:
            assert body["role"] in ("${each.value.role}", "roles/run.invoker"), (path, name)


def test_topics_match_the_code():
    from shared.messages import TOPICS
    from shared.runtime.gcp import DEFAULT_TOPIC_PREFIX

    assert tuple(root_locals()["stage_topics"]) == TOPICS
    assert variable("topic_prefix")["default"] == DEFAULT_TOPIC_PREFIX
    text = (TF / "main.tf").read_text()
    for stage_topic, function in (("ingest", "match"), ("planned", "morph"), ("deliver", "route"),
                                  ("dead-letter", "dead_letter")):
        assert re.search(rf'topic = "{stage_topic}", function = "{function}"', text), stage_topic
    assert 'event_types    = ["OBJECT_FINALIZE"]' in text and 'topic["ingest"]' in text


def test_buckets_match_the_settings():
    from shared.config.settings import Settings

    kinds = {name.removesuffix("_bucket") for name in Settings.model_fields if name.endswith("_bucket")}
    assert set(root_locals()["bucket_retention_days"]) == kinds
    assert set(re.findall(r"^    (\w+) = optional\(object", (TF / "variables.tf").read_text(), re.M)) >= kinds
    assert 'for kind in ["ingest", "processed", "quarantine"]' in (TF / "main.tf").read_text()


def code_collections() -> set[str]:
    """Collection names the code hands to the DocumentStore port (shared/ports.py)."""
    methods = {"get", "set", "create", "delete", "list", "count", "increment"}
    constants, used = {}, set()
    trees = [ast.parse(p.read_text()) for p in (ROOT / "shared").rglob("*.py")]
    for tree in trees:
        for node in tree.body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        constants[target.id] = node.value.value
    for tree in trees:
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in methods
                    and node.args and "docs" in ast.unparse(node.func.value).split(".")[-1]):
                arg = node.args[0]
                name = arg.id if isinstance(arg, ast.Name) else arg.attr if isinstance(arg, ast.Attribute) else None
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    used.add(arg.value)
                elif name in constants:
                    used.add(constants[name])
    from shared.config import CONFIG_COLLECTIONS

    return used | set(CONFIG_COLLECTIONS)


def test_firestore_indexes_name_collections_the_code_uses():
    indexes = json.loads((TF / "firestore_indexes.json").read_text())
    collections = code_collections()
    assert {"exceptions", "audit", "counters"} <= collections
    for index in indexes:
        assert index["collection"] in collections, index
        assert len(index["fields"]) >= 2, "one field needs no composite index (Firestore indexes each field)"
        assert all(f["order"] in ("ASCENDING", "DESCENDING") for f in index["fields"])
    main = (TF / "main.tf").read_text()
    assert 'collection = "${var.firestore.collection_prefix}${each.value.collection}"' in main


def code_env_names() -> set[str]:
    names = set()
    for folder in ("shared", "functions", "scp_gateway"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                        and re.fullmatch(r"AXIOM_[A-Z_]+|GOOGLE_CLOUD_PROJECT", node.value):
                    names.add(node.value)
    return names


def test_environment_names_are_the_codes():
    code = code_env_names()
    env = root_locals()
    for block in ("function_environment", "api_environment", "spanner_environment", "gateway_environment"):
        assert set(env[block]) <= code | ENV_PENDING, (block, set(env[block]) - code)
    gcp_reads = {n for n in re.findall(r'env\.get\("([A-Z_]+)"|env\["([A-Z_]+)"\]|"(GOOGLE_CLOUD_PROJECT)"',
                                       (ROOT / "shared/runtime/gcp.py").read_text()) for n in n if n}
    # AXIOM_BASE_DIR: only filesystem destinations, whose default (/tmp) is the only writable place
    # AXIOM_SPANNER_JOB: the spanner function's only (the job is not its own runner)
    assert gcp_reads - {"AXIOM_BASE_DIR"} <= set(env["function_environment"]) | set(env["spanner_environment"])
    assert "AXIOM_SPANNER_JOB" not in env["function_environment"]
    assert "AXIOM_API_AUDIENCE" in env["api_environment"]
    assert {"AXIOM_INGEST_BUCKET", "AXIOM_SPOOL_DIR", "GOOGLE_CLOUD_PROJECT", "AXIOM_FIRESTORE_DATABASE",
            "AXIOM_COLLECTION_PREFIX"} <= set(env["gateway_environment"])


def checkov_binary() -> str | None:
    if os.environ.get("CHECKOV"):
        return os.environ["CHECKOV"]
    candidate = CHECKOV_VENV / "bin" / "checkov"
    return str(candidate) if candidate.exists() else None


@pytest.mark.timeout(900)
def test_monitoring_reads_the_fields_the_stage_lines_carry():
    """monitoring.tf's log fields, labels and failure outcomes are those of the
    ``stage_done`` line shared/logs.py writes (a JSON line's fields are its jsonPayload)."""
    import io

    from shared import logs

    stream = io.StringIO()
    logs.configure("INFO", "json", stream=stream, force=True)
    try:
        with logs.stage_run("route", sop_uid="1.2.3", destination="pacs", rule="main/all"):
            logs.note_outcome("failed")
    finally:
        logs.configure("INFO", "text", force=True)
    line = json.loads(stream.getvalue().splitlines()[-1])
    labels = line["logging.googleapis.com/labels"]
    found = root_locals()
    for name, value in found.items():
        if name.startswith("log_field_"):
            assert value.removeprefix("jsonPayload.") in line, (name, value)
        elif name.startswith("log_label_"):
            assert value.removeprefix("labels.") in labels, (name, value)
    assert set(found["outcome_failed"]) <= logs._WARNING_OUTCOMES


def test_checkov_passes_or_each_skip_is_justified():
    checkov = checkov_binary()
    if checkov is None:
        pytest.skip("no checkov: set CHECKOV or create its venv (.ci/run does)")
    result = subprocess.run([checkov, "-d", str(TF), "--skip-download", "--framework", "terraform", "-o", "json",
                             "--quiet", "--compact"], capture_output=True, text=True, timeout=850)
    reports = json.loads(result.stdout or "[]")
    reports = reports if isinstance(reports, list) else [reports]
    failed = [(c["check_id"], c["resource"], c["file_path"])
              for r in reports for c in r.get("results", {}).get("failed_checks", [])]
    assert not failed, failed
    for path in tf_files():
        for reason in re.findall(r"#checkov:skip=CKV\w*_\d+:(.*)", path.read_text()):
            assert len(reason.strip()) > 20, (path, reason)


def test_spanner_job_runs_the_task_command_once_per_task_with_the_functions_environment():
    """The job the spanner function starts (AXIOM_SPANNER_JOB: the job's full name, as
    CloudRunJobs sends it) runs ``python -m shared.cli spanner run-task`` in the gateway
    image, with the stages' environment, no retries, and the PACS's VPC connector."""
    from shared.cli import build_parser

    [job] = [body for _, _, name, body in blocks("module") if name == "spanner_query"]
    assert job["source"] == "./modules/job"
    assert job["command"][:3] == ["python", "-m", "shared.cli"]
    assert build_parser().parse_args(job["command"][3:]).spanner_command == "run-task"
    assert job["image"] == "${coalesce(var.spanner.job.image, var.gateway_image, var.gateway.image)}"
    assert job["environment"] == "${local.function_environment}"
    assert job["vpc_connector"] == "${var.spanner.vpc_connector}"
    assert job["roles"] == '${local.role_bindings["spanner_job"]}'
    [run] = [body for _, rtype, _, body in blocks("resource") if rtype == "google_cloud_run_v2_job"]
    [task] = run["template"][0]["template"]
    assert task["max_retries"] == 0 and task["timeout"] == "${var.task_timeout_s}s"
    assert task["service_account"] == "${google_service_account.job.email}"
    env = root_locals()
    assert env["spanner_environment"] == {"AXIOM_SPANNER_JOB": "${module.spanner_query.id}"}
    assert "local.spanner_environment" in env["function_environments"]["spanner"]
    assert '"job:spanner" = module.spanner_query.name' in (TF / "main.tf").read_text()
    function = (TF / "main.tf").read_text()
    assert 'each.key == "spanner" ? var.spanner.vpc_connector' in function
