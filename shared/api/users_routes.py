"""``/users`` and their API keys (admins: ``users:manage``). Every change is written
to the audit log; a new key is shown once, in the answer that creates it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from shared.api import audit, keys, users
from shared.api.app import get_ports
from shared.api.auth import require
from shared.api.permissions import Permission, Principal, Role

router = APIRouter(tags=["users"])
Admin = Annotated[Principal, Depends(require(Permission.USERS_MANAGE))]


class UserOut(BaseModel):
    id: str
    email: str
    role: Role
    created: str
    disabled: bool


class UserPage(BaseModel):
    items: list[UserOut]
    next_cursor: str | None = Field(None, description="pass as `cursor` for the next page; null on the last")


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str
    role: Role
    disabled: bool = False


class UserPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str | None = None
    role: Role | None = None
    disabled: bool | None = None


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, max_length=200, description="a label, e.g. what the key is for")
    expires_at: datetime | None = Field(None, description="when the key stops working (naive: UTC)")
    expires_in_days: int | None = Field(None, gt=0, le=3650, description="or: this many days from now")


class KeyOut(BaseModel):
    prefix: str
    user_id: str
    name: str | None
    created: str
    expires_at: str | None
    last_used: str | None
    revoked: bool
    revoked_at: str | None


class KeyCreated(KeyOut):
    key: str = Field(description="the key, shown this once: only a hash of it is kept")


def _failed(exc: users.UserError) -> HTTPException:
    return HTTPException(exc.status, str(exc))


def _user_out(user: users.User) -> UserOut:
    return UserOut(id=user.id, email=user.email, role=user.role, created=user.created, disabled=user.disabled)


@router.get("/users", response_model=UserPage, summary="List users")
def list_users(request: Request, _: Admin, role: Role | None = None,
               email: str | None = Query(None, description="only emails containing this (any case)"),
               limit: int = Query(100, ge=1, le=1000), cursor: str | None = None) -> UserPage:
    found = [u for u in users.all_users(get_ports(request).docs)
             if (role is None or u.role is role) and (not email or email.lower() in u.email)
             and (cursor is None or u.id > cursor)]
    page = found[:limit]
    return UserPage(items=[_user_out(u) for u in page], next_cursor=page[-1].id if len(found) > limit else None)


@router.post("/users", response_model=UserOut, status_code=201, summary="Create a user")
def create_user(request: Request, principal: Admin, body: UserCreate) -> UserOut:
    ports = get_ports(request)
    try:
        user = users.create(ports.docs, body.email, body.role, disabled=body.disabled)
    except users.UserError as exc:
        raise _failed(exc) from None
    audit.record(ports, principal, "users.create", f"users/{user.id}", after=user.to_doc())
    return _user_out(user)


@router.get("/users/{user_id}", response_model=UserOut, summary="One user")
def get_user(request: Request, _: Admin, user_id: str) -> UserOut:
    user = users.get(get_ports(request).docs, user_id)
    if user is None:
        raise HTTPException(404, "no such user")
    return _user_out(user)


@router.patch("/users/{user_id}", response_model=UserOut, summary="Change a user's email, role or disabled flag")
def patch_user(request: Request, principal: Admin, user_id: str, body: UserPatch) -> UserOut:
    ports = get_ports(request)
    try:
        before, after = users.update(ports.docs, user_id, email=body.email, role=body.role, disabled=body.disabled)
    except users.UserError as exc:
        raise _failed(exc) from None
    audit.record(ports, principal, "users.update", f"users/{user_id}", before=before.to_doc(), after=after.to_doc())
    return _user_out(after)


@router.delete("/users/{user_id}", status_code=204, summary="Delete a user and revoke their keys")
def delete_user(request: Request, principal: Admin, user_id: str) -> Response:
    ports = get_ports(request)
    try:
        user = users.delete(ports.docs, user_id)
    except users.UserError as exc:
        raise _failed(exc) from None
    audit.record(ports, principal, "users.delete", f"users/{user_id}", before=user.to_doc())
    for prefix in keys.revoke_all(ports.docs, user_id):
        audit.record(ports, principal, "keys.revoke", f"keys/{prefix}", after={"revoked": True, "user_id": user_id})
    return Response(status_code=204)


@router.post("/users/{user_id}/keys", response_model=KeyCreated, status_code=201,
             summary="Make an API key for a user: the answer holds the key, shown this once")
def create_key(request: Request, principal: Admin, user_id: str,
               body: Annotated[KeyCreate | None, Body()] = None) -> KeyCreated:
    ports = get_ports(request)
    body = body or KeyCreate()
    if body.expires_at and body.expires_in_days:
        raise HTTPException(422, "give expires_at or expires_in_days, not both")
    try:
        key, made = keys.create(ports.docs, user_id, name=body.name,
                                expires_at=body.expires_at or keys.expiry(body.expires_in_days))
    except users.UserError as exc:
        raise _failed(exc) from None
    audit.record(ports, principal, "keys.create", f"keys/{made['prefix']}", after=made)
    return KeyCreated(key=key, **made)


@router.get("/users/{user_id}/keys", response_model=list[KeyOut], summary="A user's API keys (never the keys)")
def list_keys(request: Request, _: Admin, user_id: str) -> list[KeyOut]:
    docs = get_ports(request).docs
    if users.get(docs, user_id) is None:
        raise HTTPException(404, "no such user")
    return [KeyOut(**k) for k in keys.of_user(docs, user_id)]


@router.delete("/keys/{prefix}", response_model=KeyOut, summary="Revoke an API key (by its prefix)")
def revoke_key(request: Request, principal: Admin, prefix: str) -> KeyOut:
    ports = get_ports(request)
    try:
        before, after = keys.revoke(ports.docs, prefix)
    except KeyError:
        raise HTTPException(404, "no such key") from None
    if not before["revoked"]:
        audit.record(ports, principal, "keys.revoke", f"keys/{prefix}", before=before, after=after)
    return KeyOut(**after)
