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

    type: SourceType = Field(description="How the instance arrived: a listener (`cstore`), `stow`, a poller's "
                                         "type, or `bucket` (a file dropped into the ingest bucket).")
    id: str | None = Field(default=None, examples=["main"],
                           description="Only the listener, source or STOW endpoint with this id; none: any of the type.")


class Rule(Doc):
    """One rule: when its condition matches (and its schedule is open), its actions change
    the instance and it is sent to its destinations."""

    id: str = Field(examples=["ct-to-pacs"],
                    description="Id of the rule, unique within its ruleset (the seeds' spelling `name` is accepted).")
    enabled: bool = Field(default=True, description="Apply this rule; false skips it.")
    when: Condition | None = Field(
        default=None, examples=[{"tag": "Modality", "op": "eq", "value": "CT"}],
        description="The condition an instance must meet; none: every instance. The seeds' spelling `conditions` "
                    "(a list, all of which must hold) is accepted.")
    schedule: str | None = Field(default=None, examples=["nights"],
                                 description="Id of a schedule; the rule applies only while it is open; none: always.")
    actions: list[Action] = Field(default_factory=list, description="Changes to the instance, applied in order.")
    destinations: list[str] = Field(
        default_factory=list, examples=[["pacs", "archive"]],
        description="Ids of the destinations the instance is sent to (the seeds' spelling `storage_backends` is "
                    "accepted).")

    @model_validator(mode="before")
    @classmethod
    def _seeds_spelling(cls, data):
        return aliases.rule(data)


class Ruleset(Doc):
    """An ordered group of rules, applied to the instances of its sources."""

    id: str = Field(examples=["main"], description="Unique id of the ruleset (the seeds' spelling `name` is accepted).")
    enabled: bool = Field(default=True, description="Apply this ruleset; false skips all its rules.")
    priority: int = Field(default=100, description="Order among rulesets: lower runs first (ties by id).")
    mode: Literal["FIRST_MATCH", "ALL_MATCHES"] = Field(
        default="ALL_MATCHES",
        description="`FIRST_MATCH`: only the first matching rule of this ruleset applies; `ALL_MATCHES`: every "
                    "matching rule does "
                    "(the seeds' spelling `execution_mode` is accepted).")
    sources: list[SourceScope] = Field(default_factory=list, examples=[[{"type": "cstore", "id": "main"}]],
                                       description="The inputs this ruleset applies to; empty: every input.")
    log_original_attributes: bool | None = Field(
        default=None, description="Override `settings.log_original_attributes` for this ruleset's rules; none: "
                                  "the setting applies.")
    rules: list[Rule] = Field(default_factory=list, description="The rules, in the order they are tried.")

    @model_validator(mode="before")
    @classmethod
    def _seeds_spelling(cls, data):
        return aliases.ruleset(data)


class DefaultRoute(Doc):
    """What happens to an instance no rule matches: sent to these destinations, or,
    with none, held with an exception record. Never a silent drop."""

    destinations: list[str] = Field(default_factory=list, examples=[["archive"]],
                                    description="Ids of the destinations an unmatched instance is sent to; empty: "
                                                "it is held.")
