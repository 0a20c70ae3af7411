"""The config reference (docs/config-reference.md) against the models it is generated
from: current, every field described, its YAML example and every field's examples
accepted by the real validation."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

import shared.config as config_package
from shared.config import Doc
from shared.config.loading import parse_yaml
from shared.config.reference import COMMAND, MINIMAL_EXAMPLE, fields_without_description, reachable_models, render

ROOT = Path(__file__).parents[2]
REFERENCE = ROOT / "docs" / "config-reference.md"


def test_the_committed_reference_is_current():
    assert REFERENCE.read_text() == render(), f"docs/config-reference.md is out of date: run `{COMMAND}`"


def test_the_cli_prints_the_reference():
    done = subprocess.run([sys.executable, "-m", "shared.cli", "config", "reference"], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == render()


def test_every_field_of_every_model_has_a_description():
    missing = fields_without_description()
    assert not missing, f"fields without Field(description=...): {', '.join(missing)}"


def _doc_models() -> set[type]:
    """Every document model defined in shared.config (Doc and its subclasses, at any depth)."""
    found, todo = set(), [Doc]
    while todo:
        model = todo.pop()
        found.add(model)
        todo.extend(model.__subclasses__())
    return {m for m in found if m.__module__.startswith(config_package.__name__ + ".")}


def test_every_document_model_is_documented_or_a_base_of_one():
    """A model no walk reaches (a union the walker does not understand) fails here."""
    documented = set(reachable_models())
    for model in _doc_models() - documented:
        assert model is Doc or any(issubclass(d, model) for d in documented), f"{model.__name__} is not in the reference"


def test_the_reference_names_every_field_of_every_model():
    text = REFERENCE.read_text()
    for model in reachable_models():
        section = text if model.__name__ == "AppConfig" else text.split(f"\n### {model.__name__}\n", 1)[1]
        for name, info in model.model_fields.items():
            assert f"| `{info.alias or name}` |" in section.split("\n### ", 1)[0], (model.__name__, name)


def test_the_yaml_example_in_the_reference_loads_with_the_real_loader():
    blocks = re.findall(r"```yaml\n(.*?)```", REFERENCE.read_text(), re.S)
    assert blocks and blocks[0] == MINIMAL_EXAMPLE
    config = parse_yaml(blocks[0], "example", complete=True)
    assert [d.id for d in config.destinations] == ["archive", "pacs"]
    assert config.default_route.destinations == ["archive"]
    assert config.rulesets[0].rules[0].when.tag == "Modality"


def _examples() -> list[tuple[type[BaseModel], str, object]]:
    return [(model, name, example) for model in reachable_models() for name, info in model.model_fields.items()
            for example in info.examples or []]


def test_some_fields_have_examples():
    assert len(_examples()) > 40


@pytest.mark.parametrize(("model", "name", "example"), _examples(),
                         ids=lambda v: v.__name__ if isinstance(v, type) else str(v) if isinstance(v, str) else None)
def test_every_example_is_valid_for_its_field(model, name, example):
    """The field's type and constraints, then the model's own validators of that field."""
    info = model.model_fields[name]
    field_type = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
    value = TypeAdapter(field_type).validate_python(example)
    for decorator in model.__pydantic_decorators__.field_validators.values():
        if name in decorator.info.fields and decorator.info.mode == "after":
            value = decorator.func(value)


def test_an_invalid_example_would_fail_that_check():
    """The check above refuses what the model refuses (a name template leaving its folder)."""
    from shared.config import FilesystemDestination

    with pytest.raises((ValidationError, ValueError)):
        test_every_example_is_valid_for_its_field(FilesystemDestination, "name_template", "../{SOPInstanceUID}")
    with pytest.raises(ValidationError):
        test_every_example_is_valid_for_its_field(FilesystemDestination, "max_concurrency", 0)
