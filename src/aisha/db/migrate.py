"""Run Alembic migrations from the installed package (no alembic.ini needed).

`aisha run` upgrades at every start, and almost always finds the database up to date. Alembic
(its import, reading every migration, its own engine) costs about 0.3 s of CPU for that no-op, a
tenth of the process's whole start: so the stored revision is compared with the newest migration
file first, and Alembic is only loaded when they differ or either can't be read plainly.
"""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text

from aisha.db.session import create_engine

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Blocking: call it from a thread when inside an event loop."""
    if revision == "head" and up_to_date(database_url):
        return
    from alembic import command

    command.upgrade(alembic_config(database_url), revision)


def make_revision(database_url: str, message: str) -> None:
    from alembic import command

    command.revision(alembic_config(database_url), message=message, autogenerate=True)


def up_to_date(database_url: str) -> bool:
    """True when the database is known to be at the newest migration; False when it isn't, or when
    that can't be told without Alembic (no version table yet, an unreachable database: Alembic then
    does the work, or reports the error, as it always has)."""
    head = newest_migration()
    return head is not None and asyncio.run(_stored_revisions(database_url)) == {head}


def newest_migration() -> str | None:
    """The revision no migration names as its parent, read from the files' `revision` and
    `down_revision` lines; None unless the history is one plain chain (no merge, nothing unusual)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in sorted((MIGRATIONS_DIR / "versions").glob("*.py")):
        found = _revision_lines(path.read_text(encoding="utf-8"))
        revision, parent = found.get("revision"), found.get("down_revision", ...)
        if not isinstance(revision, str) or not (parent is None or isinstance(parent, str)):
            return None
        revisions.add(revision)
        if parent is not None:
            parents.add(parent)
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def _revision_lines(source: str) -> dict[str, object]:
    found: dict[str, object] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            if node.value is not None and {"revision", "down_revision"} & set(names):
                try:
                    found[names[0]] = ast.literal_eval(node.value)
                except ValueError:
                    found[names[0]] = ...  # not a literal: let Alembic decide
    return found


async def _stored_revisions(database_url: str) -> set[str] | None:
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(text("SELECT version_num FROM alembic_version"))
            return {str(row[0]) for row in rows}
    except Exception:  # no version table, no database, a bad URL: Alembic's to handle and report
        return None
    finally:
        await engine.dispose()
