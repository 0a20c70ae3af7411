"""The whole configuration, with the checks that span documents (:mod:`shared.config.checks`):
unique ids, one listener per port, and every reference (destination, schedule,
crosswalk table) naming something configured."""

from __future__ import annotations

from pydantic import Field, model_validator

from shared.config.actions import CrosswalkTable
from shared.config.base import Doc
from shared.config.checks import LIST_COLLECTIONS, readable, reference_problems
from shared.config.conditions import Schedule
from shared.config.crosswalk import CrosswalkSource
from shared.config.destinations import Destination
from shared.config.rulesets import DefaultRoute, Ruleset
from shared.config.settings import Settings
from shared.config.sources import Listener, Source, StowInput
from shared.config.spanner import Spanner

# Each list is a collection of documents keyed by id; the singletons are documents in
# the "settings" collection (see shared.config.loading.to_documents).
SETTINGS_DOCUMENTS = {"global": "settings", "default_route": "default_route", "stow": "stow"}
CONFIG_COLLECTIONS = ("settings", *LIST_COLLECTIONS)


class AppConfig(Doc):
    """The whole configuration: one YAML document, or one document per item in the
    config store."""

    settings: Settings = Field(default_factory=Settings,
                                description="Settings that apply to every instance and every stage.")
    listeners: list[Listener] = Field(default_factory=list,
                                      description="DICOM listeners that receive instances by C-STORE.")
    destinations: list[Destination] = Field(default_factory=list,
                                            description="Where instances are sent, each chosen by its `type`.")
    rulesets: list[Ruleset] = Field(
        default_factory=list,
        description="The rules: which instances go where, changed how; rulesets run in `priority` order.")
    schedules: list[Schedule] = Field(default_factory=list,
                                      description="Time windows that rules can be limited to.")
    crosswalks: list[CrosswalkTable] = Field(default_factory=list,
                                             description="Lookup tables for the `crosswalk` action.")
    crosswalk_sources: list[CrosswalkSource] = Field(
        default_factory=list, description="Databases that crosswalk maps look their values up in.")
    sources: list[Source] = Field(default_factory=list,
                                  description="Servers polled for new studies, each chosen by its `type`.")
    spanners: list[Spanner] = Field(default_factory=list,
                                    description="Spanned views: one QIDO-RS query answered from several sources.")
    stow: StowInput = Field(default_factory=StowInput, description="The STOW-RS endpoint that receives instances "
                                                                   "over HTTP.")
    default_route: DefaultRoute = Field(default_factory=DefaultRoute,
                                        description="Where an instance goes when no rule matches it.")

    @model_validator(mode="after")
    def _references(self):
        data = self.model_dump(mode="json", by_alias=True)
        problems = reference_problems(data)
        if problems:
            raise ValueError("; ".join(f"{readable(loc, data)}: {msg}" for loc, msg in problems))
        return self

    def destination(self, destination_id: str):
        for d in self.destinations:
            if d.id == destination_id:
                return d
        raise KeyError(destination_id)

    def why_not_deliverable(self, destination_id: str) -> str | None:
        """Why a delivery to ``destination_id`` must wait (the reason of its held
        record), or None when the destination is configured and enabled."""
        try:
            dest = self.destination(destination_id)
        except KeyError:
            return f"destination {destination_id} is not configured"
        return None if dest.enabled else f"destination {destination_id} is disabled"

    def active_rulesets(self) -> list[Ruleset]:
        return sorted((rs for rs in self.rulesets if rs.enabled), key=lambda rs: (rs.priority, rs.id))
