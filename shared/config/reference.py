"""The config reference, ``docs/config-reference.md``, generated from the models: every
field of every model reachable from :class:`~shared.config.app.AppConfig`, with its type,
default, description and examples, read from pydantic's own field information (so a
field added to a model appears by itself). ``axiom-flow config reference`` prints it;
tests/unit/test_config_reference.py fails when the committed file is out of date."""

from __future__ import annotations

import inspect
import re
import types
from collections import deque
from dataclasses import dataclass, field
from datetime import date, time
from typing import Annotated, Any, Iterator, Literal, Union, get_args, get_origin

import annotated_types
import yaml
from pydantic import BaseModel, Discriminator, Tag
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from shared.config import aliases
from shared.config.app import AppConfig
from shared.config.base import ActionTagAddress, Regex, TagAddress, VRName
from shared.config.peers import SecretRef

COMMAND = "axiom-flow config reference -o docs/config-reference.md"

# A config that loads with the real loader (checked by tests/unit/test_config_reference.py).
MINIMAL_EXAMPLE = """\
listeners:
  - id: main
    ae_title: AXIOM
    port: 11112
destinations:
  - id: archive
    type: filesystem
    path: out                    # relative to the data dir
  - id: pacs
    type: cstore
    ae_title: PACS
    host: 10.0.0.5
    port: 104
rulesets:
  - id: main
    rules:
      - id: ct-to-pacs
        when: {tag: Modality, op: eq, value: CT}
        actions:
          - {action: set, tag: InstitutionName, value: AXIOM FLOW}
        destinations: [pacs]
default_route:
  destinations: [archive]        # what no rule matches is archived, never dropped
"""

# Value types with a name of their own: (annotation, what the type column says, anchor of
# their explanation under "Value types"). The more specific first.
NAMED_TYPES: tuple[tuple[Any, str, str], ...] = (
    (ActionTagAddress, "tag address", "tag-addresses"),
    (TagAddress, "tag address", "tag-addresses"),
    (VRName, "VR name", "vr-names"),
    (Regex, "regular expression", "regular-expressions"),
    (SecretRef, "secret reference", "secret-references"),
)

VALUE_TYPES = """\
### Tag addresses
An attribute by keyword (`PatientID`), by tag (`(0010,0020)` or `00100020`), inside a
sequence item (`ReferencedStudySequence[0].ReferencedSOPInstanceUID`; `[*]` for every
item), or a private attribute by its creator (`(0019,"SIEMENS MR HEADER",08)`). Actions
cannot change file meta information (group 0002) or pixel data (group 7FE0).

### Secret references
Secrets are named, never written into the config: `env:NAME` (an environment
variable), `file:/path` (a file), or `gsm:projects/P/secrets/S/versions/V` (Google
Secret Manager).

### Templates
Action values and `name_template`s may insert other attributes' values:
`{PatientID}-{AccessionNumber}`, `{PatientName|upper}` (or `|lower`); `{{` and `}}` are
literal braces.

### VR names
A value representation of PS3.5 section 6.2: `LO`, `SH`, `DA`, `UI`, ...

### Regular expressions
RE2 syntax (linear time, so no pattern can stall a worker): no backreferences or
look-around.

### Environment variables
Anywhere in a YAML config, `${VAR}` and `${VAR:-default}` are replaced from the
environment; a variable that is not set and has no default is an error.
"""


@dataclass
class Variant:
    """How a model is chosen in a union: by ``key`` (a field's value, or a condition's
    leading key) being ``label``."""

    key: str
    label: str


@dataclass
class Section:
    """One top-level key of AppConfig and the models first reached under it."""

    key: str
    info: FieldInfo
    models: list[type[BaseModel]] = field(default_factory=list)


# --- walking the models -------------------------------------------------------------


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _strip(tp: Any) -> tuple[Any, tuple]:
    """``tp`` without Annotated, and the metadata it had."""
    meta: tuple = ()
    while get_origin(tp) is Annotated:
        tp, *more = get_args(tp)
        meta = (*meta, *more)
    return tp, meta


def _union_args(tp: Any) -> tuple | None:
    return get_args(tp) if get_origin(tp) in (Union, types.UnionType) else None


def _discriminator(meta: tuple) -> str | Discriminator | None:
    for m in meta:
        if isinstance(m, Discriminator):
            return m
        if isinstance(m, FieldInfo) and m.discriminator is not None:
            return m.discriminator
    return None


def _variants(tp: Any, meta: tuple) -> list[tuple[type[BaseModel], Variant | None]] | None:
    """The models of a union of models, each with how it is chosen; None if ``tp`` is
    not one."""
    args = _union_args(tp)
    if args is None:
        return None
    disc = _discriminator(meta)
    found = []
    for arg in args:
        model, arg_meta = _strip(arg)
        if not _is_model(model):
            return None
        tag = next((m.tag for m in arg_meta if isinstance(m, Tag)), None)
        if tag is not None:
            found.append((model, Variant("key", tag)))
        elif isinstance(disc, str):
            found.append((model, Variant(disc, get_args(model.model_fields[disc].annotation)[0])))
        else:
            found.append((model, None))
    return found


def models_in(tp: Any) -> Iterator[tuple[type[BaseModel], Variant | None]]:
    """The models an annotation names, in order, each with how it is chosen in a union."""
    tp, meta = _strip(tp)
    variants = _variants(tp, meta)
    if variants is not None:
        yield from variants
    elif _is_model(tp):
        yield tp, None
    else:
        for arg in get_args(tp):
            if get_origin(tp) is not Literal:
                yield from models_in(arg)


def sections() -> list[Section]:
    """The top-level keys, each with the models first reached under it (breadth first)."""
    seen: set[type] = {AppConfig}
    found = []
    for key, info in AppConfig.model_fields.items():
        section = Section(key, info)
        queue = deque([info.annotation])
        while queue:
            for model, _ in models_in(queue.popleft()):
                if model not in seen:
                    seen.add(model)
                    section.models.append(model)
                    queue.extend(f.annotation for f in model.model_fields.values())
        found.append(section)
    return found


def reachable_models() -> list[type[BaseModel]]:
    """AppConfig and every model reachable from it."""
    return [AppConfig, *(m for s in sections() for m in s.models)]


def _variant_of() -> dict[type, Variant]:
    found: dict[type, Variant] = {}
    for model in reachable_models():
        for info in model.model_fields.values():
            for sub, variant in models_in(info.annotation):
                if variant is not None:
                    found.setdefault(sub, variant)
    return found


# --- types, defaults and examples as text ----------------------------------------------


def _anchor(model: type) -> str:
    return model.__name__.lower()


def _link(model: type) -> str:
    return f"[{model.__name__}](#{_anchor(model)})"


def _named(tp: Any, meta: tuple) -> tuple[str, str] | None:
    for named, label, anchor in NAMED_TYPES:
        base, named_meta = _strip(named)
        if tp == named or (tp == base and named_meta and all(m in meta for m in named_meta)):
            return label, anchor
    return None


def _bounds(meta: tuple) -> str:
    low = next((f"{m.ge}" for m in meta if isinstance(m, annotated_types.Ge)), None)
    high = next((f"{m.le}" for m in meta if isinstance(m, annotated_types.Le)), None)
    if low is not None and high is not None:
        return f" {low}–{high}"
    parts = [f"{sign} {getattr(m, attr)}" for m in meta for kind, sign, attr in (
        (annotated_types.Ge, "≥", "ge"), (annotated_types.Gt, ">", "gt"),
        (annotated_types.Le, "≤", "le"), (annotated_types.Lt, "<", "lt")) if isinstance(m, kind)]
    return " " + ", ".join(parts) if parts else ""


def _lengths(meta: tuple, unit: str) -> list[str]:
    found = []
    for m in meta:
        if isinstance(m, annotated_types.MinLen) and m.min_length:
            found.append(f"at least {m.min_length} {unit}")
        if isinstance(m, annotated_types.MaxLen):
            found.append(f"at most {m.max_length} {unit}")
    return found


_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean",
            date: "date (YYYY-MM-DD)", time: "time (HH:MM or HH:MM:SS)"}


def type_text(tp: Any, meta: tuple = ()) -> str:
    """An annotation as an operator reads it: ``integer 0–65535``, ``list of tag address``."""
    named = _named(tp, meta)
    if named:
        return f"[{named[0]}](#{named[1]})"
    if get_origin(tp) is Annotated:
        inner, *more = get_args(tp)
        return type_text(inner, (*more, *meta))
    variants = _variants(tp, meta)
    if variants is not None and all(v is not None for _, v in variants):
        key = variants[0][1].key
        by = "its key" if key == "key" else f"`{key}`"
        return f"one of, by {by}: " + ", ".join(f"[`{v.label}`](#{_anchor(m)})" for m, v in variants)
    args = _union_args(tp)
    if args is not None:
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # an optional value: its constraints are the field's
            return type_text(options[0], meta)
        options = [type_text(a) for a in options]
        return ", ".join(options[:-1]) + " or " + options[-1]
    origin = get_origin(tp)
    if origin is Literal:
        if len(get_args(tp)) == 1:
            return f"`{get_args(tp)[0]}`"
        return "one of: " + ", ".join(f"`{v}`" for v in get_args(tp))
    if origin is list:
        limits = _lengths(meta, "item(s)")
        return f"list of {type_text(get_args(tp)[0])}" + (f" ({', '.join(limits)})" if limits else "")
    if origin is dict:
        key, value = get_args(tp)
        return f"mapping of {type_text(key)} to {type_text(value)}"
    if _is_model(tp):
        return _link(tp)
    text = _SCALARS.get(tp, getattr(tp, "__name__", str(tp)))
    if tp in (int, float):
        return text + _bounds(meta)
    extra = _lengths(meta, "characters") if tp is str else []
    extra += [f"matching `{m.pattern}`" for m in meta if getattr(m, "pattern", None)]
    return text + (f" ({', '.join(extra)})" if extra else "")


def value_text(value: Any) -> str:
    """A value as it is written in YAML, on one line."""
    text = yaml.safe_dump(to_jsonable_python(value), default_flow_style=True, width=1 << 20, sort_keys=False)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def default_text(info: FieldInfo) -> str:
    if info.is_required():
        return "**required**"
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "none"
    if isinstance(value, BaseModel):
        return "its defaults"
    return f"`{value_text(value)}`"


def _doc_text(text: str | None) -> str:
    """A docstring (reStructuredText) as Markdown: ``x`` and :role:`x` as code."""
    if not text:
        return ""
    text = inspect.cleandoc(text)
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def field_row(name: str, info: FieldInfo) -> str:
    examples = ", ".join(f"`{value_text(e)}`" for e in info.examples or [])
    cells = [f"`{info.alias or name}`", type_text(info.annotation, tuple(info.metadata)), default_text(info),
             info.description or "", examples]
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _spellings_table() -> list[str]:
    """The table of the aliases module's docstring (reStructuredText), as Markdown."""
    lines = inspect.cleandoc(aliases.__doc__ or "").splitlines()
    borders = [n for n, line in enumerate(lines) if re.fullmatch(r"=+\s+=+", line)]
    if len(borders) < 3:
        return []
    split = re.match(r"=+\s+", lines[borders[0]]).end()
    rows = [lines[borders[0] + 1]] + lines[borders[1] + 1:borders[2]]
    out = []
    for n, row in enumerate(rows):
        cells = [_cell(_doc_text(row[:split])), _cell(_doc_text(row[split:]))]
        out.append(f"| {cells[0]} | {cells[1]} |")
        if n == 0:
            out.append("|---|---|")
    return out


# --- the document ------------------------------------------------------------------------


def _section_anchor(key: str) -> str:
    """GitHub's anchor of the heading ``## `key` (top level)``."""
    return f"{key}-top-level"


def render() -> str:
    """The whole reference, as Markdown."""
    found = sections()
    variant_of = _variant_of()
    out = [
        "# Config reference",
        "",
        f"<!-- Generated from the models in shared/config/ by `{COMMAND}`: do not edit by hand. -->",
        "",
        "Every key of an Axiom Flow config, generated from the models that validate it "
        "(`shared/config/`). The same documents are read from YAML (`axiom-flow serve --config`, "
        "`axiom-flow validate`) and written through the config API (`/api/v1/config/...`).",
        "",
        "A minimal working config: a listener, two destinations, one rule and a default route.",
        "",
        "```yaml",
        MINIMAL_EXAMPLE.rstrip("\n"),
        "```",
        "",
        "## Contents",
        "",
    ]
    out.append("- [The top level](#the-top-level)")
    for section in found:
        out.append(f"- [`{section.key}`](#{_section_anchor(section.key)})")
        out.extend(f"  - {_link(m)}" for m in section.models)
    out += ["- [Value types](#value-types)", "- [Accepted spellings](#accepted-spellings)", ""]
    out += ["## The top level", "", _doc_text(AppConfig.__doc__), "", *_table(AppConfig), ""]
    for section in found:
        out += [f"## `{section.key}` (top level)", "", section.info.description or "", "",
                f"Type: {_cell(type_text(section.info.annotation, tuple(section.info.metadata)))}; "
                f"default: {default_text(section.info)}.", ""]
        for model in section.models:
            out += [f"### {model.__name__}", ""]
            variant = variant_of.get(model)
            if variant is not None:
                by = f"`{variant.label}` key" if variant.key == "key" else f"`{variant.key}: {variant.label}`"
                out += [f"Chosen by {by}.", ""]
            if model.__doc__:
                out += [_doc_text(model.__doc__), ""]
            out += [*_table(model, variant), ""]
    out += ["## Value types", "", VALUE_TYPES.rstrip("\n"), "",
            "## Accepted spellings", "",
            "Rulesets are also accepted in the spelling of the original seeds; they are converted "
            "to the canonical form on input (so stored documents and error messages use the canonical "
            "names). A field given in both spellings is an error.", "",
            *_spellings_table(), ""]
    return "\n".join(out)


def _table(model: type[BaseModel], variant: Variant | None = None) -> list[str]:
    """The fields of ``model``, the one that chooses it in a union first."""
    fields = sorted(model.model_fields.items(), key=lambda item: variant is None or item[0] != variant.key)
    return ["| Field | Type | Default | Description | Examples |", "|---|---|---|---|---|",
            *(field_row(name, info) for name, info in fields)]


def fields_without_description() -> list[str]:
    """``Model.field`` for every field of a reachable model that has no description."""
    return [f"{model.__name__}.{name}" for model in reachable_models()
            for name, info in model.model_fields.items() if not (info.description or "").strip()]
