"""The whole configuration, with the checks that span documents: unique ids, and every
reference (destination, schedule, crosswalk table) naming something configured."""

from __future__ import annotations

from pydantic import Field, model_validator

from shared.config.actions import CrosswalkAction, CrosswalkTable
from shared.config.base import Doc
from shared.config.conditions import Schedule
from shared.config.destinations import Destination
from shared.config.rulesets import DefaultRoute, Ruleset
from shared.config.settings import Settings
from shared.config.sources import Listener, Source, StowInput

# Each list is a collection of documents keyed by id; the singletons are documents in
# the "settings" collection (see shared.config.loading.to_documents).
LIST_COLLECTIONS = ("listeners", "destinations", "rulesets", "schedules", "crosswalks", "sources")
SETTINGS_DOCUMENTS = {"global": "settings", "default_route": "default_route", "stow": "stow"}
CONFIG_COLLECTIONS = ("settings", *LIST_COLLECTIONS)


class AppConfig(Doc):
    settings: Settings = Field(default_factory=Settings)
    listeners: list[Listener] = Field(default_factory=list)
    destinations: list[Destination] = Field(default_factory=list)
    rulesets: list[Ruleset] = Field(default_factory=list)
    schedules: list[Schedule] = Field(default_factory=list)
    crosswalks: list[CrosswalkTable] = Field(default_factory=list)
    sources: list[Source] = Field(default_factory=list)
    stow: StowInput = Field(default_factory=StowInput)
    default_route: DefaultRoute = Field(default_factory=DefaultRoute)

    @model_validator(mode="after")
    def _references(self):
        for kind in LIST_COLLECTIONS:
            ids = [item.id for item in getattr(self, kind)]
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            if dupes:
                raise ValueError(f"{kind}: duplicate id(s) {dupes}")
        known = {d.id for d in self.destinations}
        schedules = {s.id for s in self.schedules}
        tables = {t.id for t in self.crosswalks}
        for rs in self.rulesets:
            for rule in rs.rules:
                where = f"rulesets[{rs.id}].rules[{rule.id}]"
                if rule.schedule is not None and rule.schedule not in schedules:
                    raise ValueError(f"{where}.schedule: unknown schedule {rule.schedule!r}")
                for n, action in enumerate(rule.actions):
                    if isinstance(action, CrosswalkAction) and action.table not in tables:
                        raise ValueError(f"{where}.actions[{n}].table: unknown crosswalk table {action.table!r}")
                for dest in rule.destinations:
                    if dest not in known:
                        raise ValueError(
                            f"rulesets[{rs.id}].rules[{rule.id}].destinations: unknown destination {dest!r}"
                        )
        for dest in self.default_route.destinations:
            if dest not in known:
                raise ValueError(f"default_route.destinations: unknown destination {dest!r}")
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
