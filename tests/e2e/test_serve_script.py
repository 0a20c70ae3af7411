"""``scripts/serve.sh`` and the README's "Run it": the script installs once, so a later
start calls no pip and needs no package index (an offline hospital server must
restart), while a changed pyproject.toml or a new extra installs again; the README's
storescu commands send compressed files too."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from pydicom import dcmread

from tests.support.procs import REPO, AxiomServer, free_port, storescu

SOURCES = ("pyproject.toml", "README.md", "shared", "scp_gateway", "functions", "scripts", "examples")


def _copy_project(dst: Path) -> Path:
    dst.mkdir()
    for name in SOURCES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(src, dst / name)
    return dst


def _serve_help(root: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(root / "scripts" / "serve.sh"), "--help"], capture_output=True, text=True,
                          env=env, timeout=600)


def test_serve_sh_installs_once_and_then_starts_without_a_package_index(tmp_path):
    root = _copy_project(tmp_path / "project")
    # a venv whose dependencies come from this test run's environment, so the install
    # below only has to build and install the project itself
    subprocess.run([sys.executable, "-m", "venv", str(root / ".venv")], check=True, timeout=300)
    venv_site = subprocess.run([str(root / ".venv" / "bin" / "python"), "-c",
                                "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip()
    Path(venv_site, "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("AXIOM_")}
    base_env["PYTHON"] = sys.executable

    first = _serve_help(root, base_env)  # pip as this machine has it configured
    assert first.returncode == 0, first.stderr
    assert "installing Axiom Flow" in first.stderr
    assert "usage: axiom-flow serve" in first.stdout
    assert (root / ".venv" / ".axiom-flow-installed").read_text().split()[0]

    # from now on every package index is a closed port, and no pip configuration applies
    closed = {k: v for k, v in base_env.items() if not k.startswith("PIP_")}
    closed.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=f"http://127.0.0.1:{free_port()}/simple",
                  PIP_RETRIES="0", PIP_TIMEOUT="2")
    second = _serve_help(root, closed)
    assert second.returncode == 0, second.stderr
    assert "usage: axiom-flow serve" in second.stdout
    assert second.stderr == ""  # no install announced, no pip output

    # what pip would have done there: fail (an extra never installed needs pip)
    extra = _serve_help(root, {**closed, "EXTRAS": "gcp"})
    assert extra.returncode != 0 and "installing Axiom Flow [gcp]" in extra.stderr
    assert "usage:" not in extra.stdout
    again = _serve_help(root, closed)  # that failure changed nothing for the next start
    assert again.returncode == 0 and again.stderr == "" and "usage: axiom-flow serve" in again.stdout

    with open(root / "pyproject.toml", "a") as fh:
        fh.write("# changed\n")
    changed = _serve_help(root, closed)
    assert changed.returncode != 0 and "installing Axiom Flow" in changed.stderr
    assert "usage:" not in changed.stdout


# README "Run it" table row (start of the syntax name) -> the sample of that syntax
README_ROWS = {"JPEG Baseline": "jpeg-baseline", "JPEG Lossless, SV1": "jpeg-lossless", "JPEG-LS": "jpeg-ls",
               "JPEG 2000": "jpeg-2000", "RLE": "rle", "Deflated": "deflated"}


def _readme_storescu_options() -> dict[str, str]:
    """Transfer syntax row -> the (first) storescu option the README gives for it."""
    text = (REPO / "README.md").read_text()
    table = text[text.index("| transfer syntax | `storescu` option |"):].split("\n\n")[0]
    options = {}
    for row in table.splitlines()[2:]:
        name, option = (cell.strip() for cell in row.strip("|").split("|"))
        options[name] = option.split("`")[1]
    return options


def test_readme_first_image_commands_send_compressed_files(tmp_path, ts_samples):
    options = _readme_storescu_options()
    config = {"destinations": [{"id": "archive", "type": "filesystem", "path": "out"}],
              "rulesets": [{"id": "main", "rules": [{"id": "all", "destinations": ["archive"]}]}]}
    with AxiomServer(tmp_path / "data", config) as server:
        jpeg = ts_samples["jpeg-baseline"][0]
        plain = storescu(server.dicom_port, [jpeg], check=False)  # the README's first command, as is
        assert plain.returncode != 0 and b"unable to convert dataset from 'JPEG Baseline'" in plain.stderr + plain.stdout
        sent = {}
        for prefix, sample in README_ROWS.items():
            option = next(opt for name, opt in options.items() if name.startswith(prefix))
            path = ts_samples[sample][0]
            storescu(server.dicom_port, [path], extra=[option])
            sent[dcmread(path, stop_before_pixels=True).SOPInstanceUID] = path
        server.wait_idle()
        arrived = {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in (server.data_dir / "out").rglob("*.dcm")}
        assert set(arrived) == set(sent)
        for uid, path in sent.items():
            assert (dcmread(arrived[uid], stop_before_pixels=True).file_meta.TransferSyntaxUID
                    == dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
