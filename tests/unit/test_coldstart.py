"""The Cloud Functions entry module imports none of the heavy libraries: each function
imports what it uses on its first call (docs/architecture.md, "Cold start"). How long
the import takes is measured by bench/coldstart.py, not here."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.procs import REPO

# What made the import take 850 ms: pydicom (and numpy, which it imports for its pixel
# handlers when installed), pynetdicom, the Google clients (gRPC, protobuf), FastAPI,
# the pydantic models and httpx.
HEAVY = ("numpy", "pydicom", "pynetdicom", "grpc", "google.protobuf", "google.cloud.firestore",
         "google.cloud.pubsub", "google.cloud.storage", "google.cloud.secretmanager", "fastapi", "pydantic",
         "httpx", "yaml", "shared.config", "shared.messages", "shared.stages")


def loaded_by_importing(module: str) -> list[str]:
    """sys.modules after importing ``module`` in a fresh interpreter, laid out as the
    bundle lays it out: the entry modules next to the shared package."""
    script = (f"import json, sys; sys.path[:0] = [{str(REPO / 'functions')!r}, {str(REPO)!r}]; import {module}; "
              "print(json.dumps(sorted(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def heavy_among(loaded: list[str], heavy: tuple[str, ...] = HEAVY) -> list[str]:
    return sorted(m for m in loaded if any(m == h or m.startswith(h + ".") for h in heavy))


def test_importing_the_entry_module_imports_no_heavy_library():
    loaded = loaded_by_importing("main")
    assert "main" in loaded and "functions_framework" in loaded
    # nor Starlette and asyncio: only the api function (api.py) is served on ASGI
    assert heavy_among(loaded, HEAVY + ("starlette", "asyncio", "functions_framework.aio")) == []


def test_importing_the_api_entry_module_imports_no_heavy_library():
    loaded = loaded_by_importing("api")
    assert "api" in loaded and "functions_framework.aio" in loaded
    assert heavy_among(loaded) == []
