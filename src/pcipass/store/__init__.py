"""The store: the only code that writes the database (SQLAlchemy, Alembic; SQLite or PostgreSQL).

Everything leaves it as plain records (:mod:`pcipass.records`) and every database failure as
an error of :mod:`pcipass.errors`.
"""

from pcipass.store.store import Store

__all__ = ["Store"]
