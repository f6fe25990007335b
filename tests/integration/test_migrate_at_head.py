"""`aisha run` upgrades at every start: on a database already at the newest migration that is a
check of one row, without loading Alembic; anything else is still Alembic's to do (or to report)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory

from aisha.db.migrate import MIGRATIONS_DIR, newest_migration, up_to_date, upgrade


def _alembic_head() -> str | None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(config).get_current_head()


def test_the_newest_migration_is_the_one_alembic_calls_head() -> None:
    assert newest_migration() is not None
    assert newest_migration() == _alembic_head()


async def test_only_a_database_at_the_newest_migration_is_up_to_date(tmp_path: Path) -> None:
    fresh = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    behind = f"sqlite+aiosqlite:///{tmp_path / 'behind.db'}"
    assert not await asyncio.to_thread(up_to_date, fresh)
    await asyncio.to_thread(upgrade, fresh)
    assert await asyncio.to_thread(up_to_date, fresh)

    await asyncio.to_thread(upgrade, behind, "0006")
    assert not await asyncio.to_thread(up_to_date, behind)
    await asyncio.to_thread(upgrade, behind)  # Alembic applies what is missing
    assert await asyncio.to_thread(up_to_date, behind)


def test_a_database_out_of_reach_is_left_to_alembic() -> None:
    assert not up_to_date("postgresql+asyncpg://nobody@127.0.0.1:1/none")


def test_upgrading_a_database_at_the_newest_migration_loads_no_alembic(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'at_head.db'}"
    upgrade(url)
    code = (
        "import json, sys\n"
        "from aisha.db.migrate import upgrade\n"
        f"upgrade({url!r})\n"
        "print(json.dumps('alembic' in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(out.stdout) is False
