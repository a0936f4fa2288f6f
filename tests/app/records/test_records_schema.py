"""Migrations: upgrade of an empty database, the startup check, and models == migrations."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from app.records import (
    SchemaError,
    check_schema,
    current_revision,
    head_revision,
    main_db,
    make_engine,
    upgrade,
)
from app.records.models import Base


def test_upgrade_creates_schema_and_check_passes(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        assert current_revision(engine) == head_revision()
        assert check_schema(engine) == head_revision()
        # The models describe exactly what the migrations made.
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
    finally:
        engine.dispose()


def test_empty_sqlite_is_refused_naming_url_and_revisions(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/records.db"
    engine = make_engine(url)
    try:
        with pytest.raises(SchemaError) as err:
            check_schema(engine)
        msg = str(err.value)
        assert url in msg and repr(head_revision()) in msg
        assert "no schema" in msg and "pcb-inspect db upgrade" in msg
        assert err.value.found is None and err.value.expected == head_revision()
    finally:
        engine.dispose()


def test_upgrade_empty_creates_the_schema(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/records.db")
    try:
        assert check_schema(engine, upgrade_empty=True) == head_revision()
        assert check_schema(engine) == head_revision()
    finally:
        engine.dispose()


def test_behind_and_unknown_revisions_are_refused(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = 'ffff'"))
        with pytest.raises(SchemaError, match="'ffff' is unknown to this version"):
            check_schema(engine, upgrade_empty=True)
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM alembic_version"))
        # Tables but no revision: upgrade_empty must not touch a database that has data.
        with pytest.raises(SchemaError, match="no schema") as err:
            check_schema(engine, upgrade_empty=True)
        assert err.value.found is None
    finally:
        engine.dispose()


def test_db_cli_upgrade_and_current(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path}/new/records.db"
    assert main_db(["current", "--url", url]) == 1
    assert "pcb-inspect db upgrade" in capsys.readouterr().out
    assert main_db(["upgrade", "--url", url]) == 0
    assert f"upgraded from empty to revision {head_revision()}" in capsys.readouterr().out
    assert main_db(["upgrade", "--url", url]) == 0
    assert "already at revision" in capsys.readouterr().out
    assert main_db(["current", "--url", url]) == 0
    assert "up to date" in capsys.readouterr().out


def test_db_cli_default_url_is_the_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("PCB_DATABASE_URL", raising=False)
    monkeypatch.setenv("PCB_DATA_DIR", str(tmp_path / "d"))
    assert main_db(["upgrade"]) == 0
    assert (tmp_path / "d" / "records.db").is_file()
    assert str(tmp_path / "d" / "records.db") in capsys.readouterr().out


def test_sqlite_connections_use_wal(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
    finally:
        engine.dispose()


def test_migrations_ship_as_package_data() -> None:
    import tomllib

    root = Path(__file__).resolve().parents[3]
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    globs = data["package-data"]["app.records"]
    folder = root / "app" / "records"
    shipped = {p for g in globs for p in folder.glob(g)}
    assert folder / "migrations" / "env.py" in shipped
    assert folder / "migrations" / "script.py.mako" in shipped
    assert all(p in shipped for p in (folder / "migrations" / "versions").glob("v*.py"))
    assert upgrade  # imported for the API surface
