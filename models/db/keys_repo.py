"""API keys: only a key's sha256 is stored; the key itself is shown once, at creation."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.db.tables import ApiKey, utcnow


def create_api_key(session: Session, *, key_hash: str, prefix: str, name: str | None = None
                   ) -> ApiKey:
    """Add a key row (flushed, not committed); its id becomes the owner of what it creates."""
    row = ApiKey(key_hash=key_hash, prefix=prefix, name=name)
    session.add(row)
    session.flush()
    return row


def find_api_key(session: Session, *, key_hash: str) -> ApiKey | None:
    """The unrevoked key with this hash, or None."""
    return session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash,
                                               ApiKey.revoked_at.is_(None)))


def any_api_key(session: Session) -> bool:
    """True once any key was ever created, revoked ones included: revoking the last key must
    not silently turn authentication off."""
    return session.scalar(select(ApiKey.id).limit(1)) is not None


def list_api_keys(session: Session) -> list[ApiKey]:
    """Every key, oldest first (revoked ones too, with revoked_at set)."""
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)))


def revoke_api_key(session: Session, *, key_id: str) -> bool:
    """Revoke a key (its jobs stay, owned by its id, but nobody can reach them); False when
    there is no such key or it was revoked already."""
    row = session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    session.flush()
    return True
