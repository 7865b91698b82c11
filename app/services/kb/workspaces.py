"""Workspaces by name or id: what `--workspace` and the API's `workspace` resolve to."""

from __future__ import annotations

import uuid
from typing import Any

from app.db import Database
from app.db import dashboard as reads
from app.db.workspaces import create_named_workspace, require_workspace, workspaces_named
from app.errors import BadInput, NotFound

MAX_NAME = 200


async def resolve_workspace(db: Database, ref: str | uuid.UUID, *, create: bool = False) -> uuid.UUID:
    """A workspace id from an id or a name. A name that no workspace has is created when
    `create` (import, sync), else an error; a name that several share is ambiguous."""
    if isinstance(ref, uuid.UUID):
        if not create:
            await require_workspace(db, ref)
        return ref
    text = ref.strip()
    try:
        return await resolve_workspace(db, uuid.UUID(text), create=create)
    except ValueError:
        pass
    if not text or len(text) > MAX_NAME or "\x00" in text:
        raise BadInput(f"not a workspace name: {text[:40]!r} (1 to {MAX_NAME} characters)")
    found = await workspaces_named(db, text)
    if len(found) > 1:
        ids = ", ".join(str(r["id"]) for r in found[:5])
        raise BadInput(f"{len(found)} workspaces are named {text!r} ({ids}); pass --workspace-id")
    if found:
        return uuid.UUID(str(found[0]["id"]))
    if create:
        return await create_named_workspace(db, text)
    raise NotFound(f"no workspace is named {text!r}; `kb workspaces` lists them (kb import --workspace NAME "
                   "creates one)")


async def list_workspaces(db: Database, limit: int = 1000) -> list[dict[str, Any]]:
    """Workspaces, newest first, with their run and active trial counts."""
    rows = await reads.workspaces(db, limit)
    return [{"id": str(r["id"]), "name": r["name"], "created_at": r["created_at"].isoformat(),
             "runs": int(r["runs"]), "trials": int(r["trials"])} for r in rows]
