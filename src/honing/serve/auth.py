"""API keys: ``hone-<random>``, stored as sha256 hashes, each scoped to one project; :data:`Project`, the
dependency every router takes the caller's project from."""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select

from honing.serve.db import ApiKey, new_id, now
from honing.serve.errors import APIError

PROJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def check_project_name(name: str) -> str:
    from honing.errors import ConfigError

    if not PROJECT_RE.match(name or ""):
        raise ConfigError(f"project: {name!r} must be 1-64 letters, digits, '_', '.' or '-' (starting with a "
                          "letter or digit)")
    return name


def create_key(Session, project: str) -> str:
    """A new key for ``project``; the secret is returned once and only its hash is stored."""
    check_project_name(project)
    key = "hone-" + secrets.token_urlsafe(24)
    with Session.begin() as s:
        s.add(ApiKey(id=new_id("key"), project=project, key_hash=hash_key(key), prefix=key[:9], created_at=now()))
    return key


def project_for(Session, authorization: str | None, *, no_auth: bool, default_project: str) -> str:
    """The project a request acts for, from its ``Authorization: Bearer <key>`` header."""
    token = None
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            token = value.strip()
    if token is None:
        if no_auth:
            return default_project
        raise APIError(401, "Missing API key: send 'Authorization: Bearer <key>' (create one with "
                            "`hone serve keys create --project NAME`).", code="missing_api_key")
    with Session() as s:
        row = s.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(token), ApiKey.revoked.is_(False)))
    if row is None:
        if no_auth:
            return default_project
        raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
    return row.project


bearer = HTTPBearer(auto_error=False, description="An API key: `hone serve keys create --project NAME`.")


def project_of(request: Request,
               creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)] = None) -> str:
    st = request.app.state
    header = f"Bearer {creds.credentials}" if creds else None
    return project_for(st.Session, header, no_auth=st.settings.no_auth,
                       default_project=st.settings.default_project)


# A handler's ``project: Project`` parameter: the caller's project (401 without a valid key).
Project = Annotated[str, Depends(project_of)]
