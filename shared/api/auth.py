"""Who is calling (:func:`authenticate`) and whether their role may (:func:`require`).

Credentials: an API key (``Authorization: Api-Key <key>`` or ``X-API-Key``) or a Google
ID token (``Authorization: Bearer <token>``). 401 without credentials or with bad
ones (``WWW-Authenticate`` says which schemes); 403 for a role that may not."""

from __future__ import annotations

from typing import Callable

from fastapi import Depends, HTTPException, Request

from shared.api.permissions import Permission, Principal

CHALLENGE = {"WWW-Authenticate": 'Api-Key, Bearer realm="axiom-flow"'}


def authenticate(request: Request) -> Principal:
    """The caller, from the request's credentials; 401 when there are none that hold."""
    raise HTTPException(401, "no valid credentials: send an API key (Authorization: Api-Key <key>)",
                        headers=CHALLENGE)


def require(permission: Permission) -> Callable[..., Principal]:
    """A route dependency: the caller, if their role has ``permission``; else 403."""

    def check(principal: Principal = Depends(authenticate)) -> Principal:
        if not principal.may(permission):
            raise HTTPException(403, f"role {principal.role.value} may not {permission.value}")
        return principal

    check.permission = permission  # read by the role x route test from the app's routes
    return check
