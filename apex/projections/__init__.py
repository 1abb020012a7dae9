"""Read models in PostgreSQL, built from ``apex.events`` and rebuildable from it alone.

* :mod:`apex.projections.rows` — the rows as a pure fold of the log (``project``);
* :mod:`apex.projections.schema` — the tables (SQLAlchemy metadata; Alembic owns the DDL
  in ``migrations/``, :mod:`apex.projections.migrate` runs it);
* :mod:`apex.projections.store` — the store port and its two PostgreSQL backends;
* :mod:`apex.projections.rebuild` — replay into a fresh schema, swap it in atomically.

The live projector is ``streams/projector.py``; audits are in :mod:`apex.audit`.
"""
