"""``GET /me``: who the credentials sent belong to, and what their role may do."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from shared.api.auth import authenticate
from shared.api.permissions import PERMISSIONS, Principal

router = APIRouter(tags=["me"])


class Me(BaseModel):
    user_id: str
    email: str
    role: str
    via: str
    permissions: list[str]


@router.get("/me", response_model=Me, summary="The caller and their permissions")
def me(principal: Principal = Depends(authenticate)) -> Me:
    return Me(user_id=principal.user_id, email=principal.email, role=principal.role.value, via=principal.via,
              permissions=sorted(p.value for p in PERMISSIONS[principal.role]))
