"""Rulesets: which inputs they apply to, their rules (condition, schedule, actions,
destinations), and the default route for an instance no rule matches."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from shared.config import aliases
from shared.config.actions import Action
from shared.config.base import Doc
from shared.config.conditions import Condition
from shared.messages import SourceType


class SourceScope(Doc):
    """Limit a ruleset to one input: a source type, optionally one source id."""

    type: SourceType
    id: str | None = None


class Rule(Doc):
    id: str
    enabled: bool = True
    when: Condition | None = None  # None: every instance
    schedule: str | None = None  # id of a Schedule; None: always active when enabled
    actions: list[Action] = Field(default_factory=list)
    destinations: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _seeds_spelling(cls, data):
        return aliases.rule(data)


class Ruleset(Doc):
    id: str
    enabled: bool = True
    priority: int = 100  # lower runs first
    mode: Literal["FIRST_MATCH", "ALL_MATCHES"] = "ALL_MATCHES"
    sources: list[SourceScope] = Field(default_factory=list)  # empty: every input
    log_original_attributes: bool | None = None  # None: settings.log_original_attributes
    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _seeds_spelling(cls, data):
        return aliases.ruleset(data)


class DefaultRoute(Doc):
    """What happens to an instance no rule matches: sent to these destinations, or,
    with none, held with an exception record. Never a silent drop."""

    destinations: list[str] = Field(default_factory=list)
