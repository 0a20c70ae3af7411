"""cloudbuild.yaml read as Cloud Build reads it: every substitution it uses exists on
a manual ``gcloud builds submit`` (no trigger-only ones such as SHORT_SHA, every user
one defined), the files its steps name exist, apply runs only behind ``_APPLY``,
and the gateway image is one name everywhere, handed to Terraform as ``gateway_image``
with the functions' bundle as ``function_source``."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
import yaml

from tests.support.procs import REPO

BUILD = yaml.safe_load((REPO / "cloudbuild.yaml").read_text())
STEPS = {step["id"]: step for step in BUILD["steps"]}
# what every build has, triggered or not (Cloud Build, "Substituting variable values")
ALWAYS_AVAILABLE = {"PROJECT_ID", "BUILD_ID", "PROJECT_NUMBER", "LOCATION", "SERVICE_ACCOUNT_EMAIL", "SERVICE_ACCOUNT"}
# $NAME or ${NAME}, not the $$ escape of a shell variable
SUBSTITUTION = re.compile(r"(?<!\$)\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
IMAGE = "${_REGION}-docker.pkg.dev/${PROJECT_ID}/${_AR_REPOSITORY}/scp-gateway:${_TAG}"


def strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


def used_substitutions(node) -> set[str]:
    return {a or b for text in strings(node) for a, b in SUBSTITUTION.findall(text.replace("$$", ""))}


def step_text(step_id: str) -> str:
    return "\n".join(strings(STEPS[step_id]))


def test_every_substitution_exists_on_a_manual_submit():
    defined = set(BUILD["substitutions"])
    used = used_substitutions([BUILD["steps"], BUILD["images"]]) | used_substitutions(BUILD["substitutions"])
    assert not {u for u in used if not u.startswith("_")} - ALWAYS_AVAILABLE  # e.g. SHORT_SHA: empty on a manual submit
    assert not {u for u in used if u.startswith("_")} - defined
    assert BUILD["substitutions"]["_TAG"] == "${BUILD_ID}" and BUILD["options"]["dynamicSubstitutions"] is True


def test_the_files_the_steps_name_exist():
    named = set()
    for text in strings(BUILD["steps"]):
        named |= set(re.findall(r"(?:scripts|scp_gateway|functions|tests)/[\w./-]*\w", text))
    assert {"scripts/build_function_bundle.py", "scp_gateway/Dockerfile", "tests/unit"} <= named
    assert [n for n in named if not (REPO / n).exists()] == []
    assert {s.get("dir") for s in BUILD["steps"] if "terraform" in s["name"]} == {"terraform"}


def test_apply_runs_only_behind_the_gate_and_the_gate_is_closed_by_default():
    assert BUILD["substitutions"]["_APPLY"] == "false"
    applying = [sid for sid in STEPS if "terraform apply" in step_text(sid) or STEPS[sid].get("args", [None])[0] == "apply"]
    assert applying == ["terraform-apply"]
    script = STEPS["terraform-apply"]["args"][-1]
    gate, applied = script.index('if [ "${_APPLY}" = "true" ]; then'), script.index("terraform apply")
    assert gate < applied < script.index("else")
    assert "tfplan" in script and "-out=tfplan" in step_text("terraform-plan")  # applies what was planned
    order = list(STEPS)
    assert order.index("terraform-fmt") < order.index("terraform-validate") < order.index("terraform-plan") < order.index(
        "terraform-apply")
    assert STEPS["terraform-fmt"]["args"][:2] == ["fmt", "-check"]


def test_the_gateway_image_is_one_name_built_pushed_and_given_to_terraform():
    assert BUILD["images"] == [IMAGE]
    build_args = STEPS["gateway-image"]["args"]
    assert build_args[build_args.index("-t") + 1] == IMAGE
    assert "scp_gateway/Dockerfile" in build_args and "--build-arg=BASE=${_GATEWAY_BASE}" in build_args
    assert STEPS["push-gateway-image"]["args"] == ["push", IMAGE]
    order = list(STEPS)
    assert order.index("artifact-registry") < order.index("push-gateway-image") < order.index("terraform-plan")


def test_terraform_gets_the_bundle_and_the_image_under_its_variable_names():
    script = STEPS["upload-function-bundle"]["args"][-1]
    printf = script[script.index("printf"):script.index("> build.auto.tfvars.json")]
    template = re.search(r"'(\{.*\})\\n'", printf).group(1)
    values = json.loads(template.replace("%s", "X"))
    assert set(values) == {"function_source", "gateway_image"} and set(values["function_source"]) == {"bucket", "object"}
    assert printf.rstrip(" \\\n").endswith(f'"{IMAGE}"')  # the third %s
    assert "-var-file=../build.auto.tfvars.json" in step_text("terraform-plan")
    assert "build_function_bundle.py --out-dir build > build.function-bundle-path" in step_text("function-bundle")


def test_terraform_state_goes_to_a_gcs_backend_or_the_build_stops():
    script = STEPS["terraform-init"]["args"][-1]
    assert """grep -q 'backend "gcs"' *.tf""" in script
    assert script.index("exit 1") < script.index("terraform init") and "-backend-config=\"bucket=${_TF_STATE_BUCKET}\"" in script


def test_the_artifact_registry_repository_is_created_or_required_explicitly():
    script = STEPS["artifact-registry"]["args"][-1]
    assert "gcloud artifacts repositories describe" in script and "gcloud artifacts repositories create" in script
    assert script.index('"${_CREATE_REPOSITORY}" != "true"') < script.index("exit 1") < script.index("repositories create")


def test_terraform_declares_the_variables_the_build_sets():
    variables = "\n".join(p.read_text() for p in (REPO / "terraform").glob("*.tf"))
    if not variables:
        pytest.skip("terraform/ has no .tf files yet")
    for name in ("function_source", "gateway_image"):
        assert re.search(rf'variable\s+"{name}"', variables), f"terraform/ declares no variable {name}"


def render(text: str, **overrides: str) -> str:
    """``text`` after Cloud Build's substitution: defaults, then ``overrides``, built-ins
    of a manual submit; ``$$`` becomes ``$``."""
    values = {"PROJECT_ID": "proj", "BUILD_ID": "b-123", **BUILD["substitutions"], **overrides}
    values = {k: v.replace("${BUILD_ID}", "b-123") for k, v in values.items()}  # dynamic substitutions
    escaped = text.replace("$$", "\0")
    return SUBSTITUTION.sub(lambda m: values[m.group(1) or m.group(2)], escaped).replace("\0", "$")


def test_the_shell_steps_parse():
    for step_id, step in STEPS.items():
        shell = step.get("entrypoint")
        if shell in ("bash", "sh"):
            script = render(step["args"][-1])
            checked = subprocess.run([shell, "-n", "-c", script], capture_output=True, text=True)
            assert checked.returncode == 0, f"{step_id}: {checked.stderr}"


def test_the_upload_step_writes_terraforms_values_for_the_bundle_it_uploaded(tmp_path):
    """Run with a gcloud that records its arguments: the object is the bundle's name."""
    (tmp_path / "bin").mkdir()
    gcloud = tmp_path / "bin" / "gcloud"
    gcloud.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/gcloud.args\n')
    gcloud.chmod(0o755)
    bundle = "build/functions-" + "ab" * 32 + ".zip"
    (tmp_path / "build.function-bundle-path").write_text(bundle + "\n")
    script = render(STEPS["upload-function-bundle"]["args"][-1], _FUNCTION_SOURCE_BUCKET="src-bucket")
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"})
    assert done.returncode == 0, done.stderr
    object_name = "functions/functions-" + "ab" * 32 + ".zip"
    assert (tmp_path / "gcloud.args").read_text().split() == ["storage", "cp", "--no-clobber", bundle,
                                                               f"gs://src-bucket/{object_name}"]
    assert json.loads((tmp_path / "build.auto.tfvars.json").read_text()) == {
        "function_source": {"bucket": "src-bucket", "object": object_name},
        "gateway_image": "europe-west4-docker.pkg.dev/proj/axiom-flow/scp-gateway:b-123"}
    unset = subprocess.run(["bash", "-c", render(STEPS["upload-function-bundle"]["args"][-1])], cwd=tmp_path,
                           capture_output=True, text=True)
    assert unset.returncode == 1 and "set _FUNCTION_SOURCE_BUCKET" in unset.stderr
