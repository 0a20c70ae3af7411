"""Crosswalk data sources: the SQL databases a crosswalk map looks its values up in
(served by :mod:`shared.adapters.crosswalk_databases`). The maps themselves are
:class:`shared.config.actions.CrosswalkTable` documents that name a source."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from shared.config.base import Doc
from shared.config.peers import SecretRef

# SQLAlchemy's own pattern for the `:name` bound parameters of text() (sqlalchemy.sql.elements)
_BIND_PARAM = re.compile(r"(?<![:\w\x5c]):(\w+)(?!:)", re.UNICODE)


def query_parameters(query: str) -> set[str]:
    """The names of the bound parameters (``:name``) in a crosswalk query."""
    return set(_BIND_PARAM.findall(query))


# The default port of each kind of server (none for Cloud SQL: the connector picks it).
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


class CrosswalkSource(Doc):
    """A database that crosswalk maps read from, reached through SQLAlchemy with one
    connection pool per source."""

    id: str = Field(examples=["mpi"], description="Unique id of the source; crosswalk maps name it.")
    type: Literal["postgresql", "mysql", "mssql", "cloudsql"] = Field(
        examples=["postgresql"],
        description="The kind of server: `postgresql`, `mysql` (MySQL or MariaDB), `mssql` (SQL Server) or "
                    "`cloudsql` (Google Cloud SQL through its Python connector).")
    host: str | None = Field(default=None, examples=["mpi-db.hospital.local"],
                             description="Host name or address of the server (not used for `cloudsql`).")
    port: int | None = Field(default=None, ge=1, le=65535, examples=[5432],
                             description="TCP port of the server; none: the usual port of its type.")
    database: str = Field(examples=["mpi"], description="Name of the database the maps' tables are in.")
    user: str = Field(examples=["axiom_reader"], description="User name to log in with (read access is enough).")
    password: SecretRef | None = Field(
        default=None, examples=["gsm:projects/p/secrets/mpi-db/versions/latest"],
        description="Where the password is read from (`env:NAME`, `file:/path` or `gsm:...`); none: no password.")
    instance: str | None = Field(
        default=None, examples=["my-project:europe-west1:mpi"],
        description="For `cloudsql`: the instance connection name, `project:region:instance`.")
    engine: Literal["postgresql", "mysql", "mssql"] = Field(
        default="postgresql",
        description="For `cloudsql`: the database engine of the instance.")
    ip_type: Literal["public", "private", "psc"] = Field(
        default="private", description="For `cloudsql`: which address of the instance to connect to.")
    pool_size: int = Field(default=4, ge=1, le=64, description="Connections kept open to the server.")
    connect_timeout_s: float = Field(default=5.0, gt=0, le=120,
                                     description="Seconds to wait for a connection before retrying later.")

    @model_validator(mode="after")
    def _reachable(self):
        if self.type == "cloudsql":
            if not self.instance:
                raise ValueError("a cloudsql source needs `instance` (project:region:instance)")
        elif not self.host:
            raise ValueError(f"a {self.type} source needs `host`")
        return self

    @property
    def effective_port(self) -> int | None:
        return self.port if self.port is not None else DEFAULT_PORTS.get(self.type)
