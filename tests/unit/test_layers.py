"""The layers of docs/architecture.md, held against the code: every import (at module
level or inside a function, not under TYPE_CHECKING) of a project module goes to the
same layer or a lower one, and the core imports no adapter, runtime, cloud client,
network library or database."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PACKAGES = ("shared", "functions", "scp_gateway")
# the core (layers 1 to CORE_LAYER) decides and changes; it must run with none of these importable
CORE_LAYER = 4
NOT_IN_CORE = ("shared.adapters", "shared.runtime", "shared.inputs", "shared.destinations", "shared.stages",
               "shared.http", "shared.api", "google", "pynetdicom", "httpx", "sqlite3", "flask", "waitress", "fastapi",
               "starlette", "a2wsgi", "functions_framework", "sqlalchemy", "psycopg", "pymysql", "cachetools")


def layers() -> list[tuple[int, tuple[str, ...]]]:
    """(layer, module prefixes) from the table under "## Layers" in docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("\n## Layers", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        m = re.match(r"\|\s*(\d+)\b[^|]*\|([^|]*)\|", line)
        if m:
            rows.append((int(m.group(1)), tuple(re.findall(r"`([\w.]+)`", m.group(2)))))
    assert rows, "docs/architecture.md has no layer table under '## Layers'"
    return rows


def layer_of(module: str, table) -> int | None:
    best = None
    for layer, prefixes in table:
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > len(best[1]):
                    best = (layer, prefix)
    return best[0] if best else None


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path) -> set[str]:
    """Modules ``path`` imports, wherever in the file, except under ``if TYPE_CHECKING``;
    ``from a import b`` counts as ``a.b`` when ``a.b`` is a module, else ``a``."""
    tree = ast.parse(path.read_text())
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for n in ast.walk(node) if n is not node.test}
    known = modules()
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                found.add(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module)
    return found


def test_every_module_has_a_layer():
    table = layers()
    assert [m for m in modules() if layer_of(m, table) is None] == []


@pytest.mark.parametrize("module", sorted(modules()))
def test_no_module_imports_a_higher_layer(module):
    table = layers()
    own = layer_of(module, table)
    upward = [(target, layer_of(target, table)) for target in sorted(imports(modules()[module]))
              if target.split(".")[0] in PACKAGES and (layer_of(target, table) or 0) > own]
    assert upward == [], f"{module} (layer {own}) imports higher layers"


def test_the_core_is_what_the_issue_names():
    """Rules, morph, config models, messages and the DICOM helpers are core."""
    table = layers()
    for module in ("shared.rules", "shared.morph", "shared.config.actions", "shared.messages", "shared.dicom.io",
                   "shared.dicom.tags", "shared.ports"):
        assert layer_of(module, table) <= CORE_LAYER, module


@pytest.mark.parametrize("module", sorted(m for m in modules() if (layer_of(m, layers()) or 99) <= CORE_LAYER))
def test_the_core_imports_no_adapter_runtime_or_client(module):
    banned = [target for target in sorted(imports(modules()[module]))
              if any(target == b or target.startswith(b + ".") for b in NOT_IN_CORE)]
    assert banned == [], f"{module} is core and imports {banned}"
