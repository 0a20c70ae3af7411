"""The functions' source bundle (scripts/build_function_bundle.py): what it holds,
that one commit gives the same bytes, and that its pinned requirements (the lock,
functions/requirements.lock) still satisfy what pyproject.toml asks for. Installing
and calling it: tests/gcp/test_function_bundle.py."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.procs import REPO

spec = importlib.util.spec_from_file_location("build_function_bundle", REPO / "scripts" / "build_function_bundle.py")
build_function_bundle = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build_function_bundle)

LOCK = REPO / "functions" / "requirements.lock"
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)", re.M)


def pins() -> dict[str, str]:
    return {canonicalize_name(name): version for name, version in PIN.findall(LOCK.read_text())}


def test_the_bundle_holds_main_at_its_root_the_core_package_and_the_lock(tmp_path):
    out = tmp_path / "f.zip"
    build_function_bundle.write_bundle(out)
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        assert zf.read("main.py") == (REPO / "functions" / "main.py").read_bytes()
        assert zf.read("api.py") == (REPO / "functions" / "api.py").read_bytes()
        assert zf.read("requirements.txt") == LOCK.read_bytes()
        assert zf.read("shared/stages.py") == (REPO / "shared" / "stages.py").read_bytes()
    assert names == sorted(names)
    shipped_modules = {n for n in names if n.startswith("shared/") and n.endswith(".py")}
    assert shipped_modules == {p.relative_to(REPO).as_posix() for p in (REPO / "shared").rglob("*.py")}
    assert not [n for n in names if n.split("/")[0] in {"tests", "bench", "docs", "functions", "scp_gateway"}
                or "__pycache__" in n or n.endswith(".pyc")]


def test_one_tree_gives_the_same_bytes_whatever_the_files_times_and_modes(tmp_path):
    copy = tmp_path / "checkout"
    shutil.copytree(REPO / "shared", copy / "shared", ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "functions").mkdir()
    for name in ("main.py", "api.py", "requirements.lock"):
        shutil.copy2(REPO / "functions" / name, copy / "functions" / name)
    first = build_function_bundle.write_bundle(tmp_path / "a.zip", copy)
    stages = copy / "shared" / "stages.py"
    os.utime(stages, (0, stages.stat().st_mtime + 3600))  # another checkout's times and umask
    os.chmod(stages, 0o755)
    second = build_function_bundle.write_bundle(tmp_path / "b.zip", copy)
    assert first == second == hashlib.sha256((tmp_path / "b.zip").read_bytes()).hexdigest()
    assert first == build_function_bundle.write_bundle(tmp_path / "c.zip")  # the same as the repository's


def test_the_out_dir_name_carries_the_hash(tmp_path, capsys):
    assert build_function_bundle.main(["--out-dir", str(tmp_path)]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path.name == f"functions-{hashlib.sha256(path.read_bytes()).hexdigest()}.zip"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_the_lock_pins_every_dependency_of_the_core_and_the_gcp_and_databases_extras_within_pyproject_ranges():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = [Requirement(r) for r in project["dependencies"] + extras["gcp"] + extras["databases"]]
    pinned = pins()
    unmet = [f"{r} (lock: {pinned.get(canonicalize_name(r.name))})" for r in wanted
             if canonicalize_name(r.name) not in pinned or pinned[canonicalize_name(r.name)] not in r.specifier]
    assert not unmet, ("functions/requirements.lock is stale; regenerate it with the command in its header: "
                       + ", ".join(unmet))


def test_every_pin_carries_hashes():
    """pip --require-hashes (the gateway image) refuses a lock with a pin without one."""
    blocks = re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text())
    assert [b.split()[0] for b in blocks if PIN.match(b) and "--hash=sha256:" not in b] == []
