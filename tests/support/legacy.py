"""An existing install as releases up to 0.1.0 made it (tests/support/legacy_schema), to upgrade."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine

LEGACY_SCHEMA = Path(__file__).with_name("legacy_schema")


def build_legacy_install(engine: Engine, revision: str = "0004") -> None:
    """Migrate an empty database with 0.1.0's own migrations: everything in `public`."""
    config = Config()
    config.set_main_option("script_location", str(LEGACY_SCHEMA))
    config.set_main_option("version_table", "tentman_alembic_version")
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
