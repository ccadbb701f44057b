"""Persistence: tables, engines and sessions, migrations, and the repository functions.

`from models.db import repository as repo` gives every data-access function.
"""

from models.db.engine import make_engine, normalize_url, session_factory
from models.db.migrate import current_revision, is_up_to_date, upgrade

__all__ = [
    "current_revision",
    "is_up_to_date",
    "make_engine",
    "normalize_url",
    "session_factory",
    "upgrade",
]
