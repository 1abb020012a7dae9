"""Settings come from APEX_* variables, typed, with a default and a doc each."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from apex.config import REPO_ROOT, Settings, settings_table


def test_defaults_point_at_the_local_stack() -> None:
    settings = Settings.from_env({})

    assert settings.home == REPO_ROOT / "var"
    assert settings.kafka_bootstrap == "127.0.0.1:19092"
    assert settings.sqlalchemy_url == "postgresql+asyncpg://apex:apex@127.0.0.1:15432/apex"
    assert settings.asyncpg_dsn == "postgresql://apex:apex@127.0.0.1:15432/apex"
    assert settings.topic("events") == "apex.events"


def test_environment_values_are_parsed_to_the_field_type() -> None:
    settings = Settings.from_env(
        {
            "APEX_KAFKA_PORT": "29092",
            "APEX_HOME": "~/apex-home",
            "APEX_STACK_TIMEOUT": "12.5",
            "APEX_TOPIC_PREFIX": "acme.",
            "UNRELATED": "x",
        }
    )

    assert settings.kafka_port == 29092
    assert settings.home == Path("~/apex-home").expanduser()
    assert settings.stack_timeout == 12.5
    assert settings.topic("commands") == "acme.commands"


def test_explicit_urls_win_over_the_local_stack() -> None:
    settings = Settings.from_env(
        {
            "APEX_BOOTSTRAP_SERVERS": "kafka-1:9092,kafka-2:9092",
            "APEX_DATABASE_URL": "postgresql+asyncpg://u:p@db:5432/x",
        }
    )

    assert settings.kafka_bootstrap == "kafka-1:9092,kafka-2:9092"
    assert settings.asyncpg_dsn == "postgresql://u:p@db:5432/x"


def test_overrides_apply_after_the_environment() -> None:
    settings = Settings.from_env({"APEX_PG_PORT": "1"}, pg_port=2)

    assert settings.pg_port == 2


def test_a_malformed_number_names_the_variable() -> None:
    with pytest.raises(ValueError, match="APEX_KAFKA_PORT='ninety'"):
        Settings.from_env({"APEX_KAFKA_PORT": "ninety"})


def test_every_setting_has_an_apex_env_name_and_a_doc() -> None:
    rows = settings_table()

    assert len(rows) == len(fields(Settings))
    assert len({env for env, _, _ in rows}) == len(rows)
    for env, _, doc in rows:
        assert env.startswith("APEX_")
        assert doc.strip()
    assert ("APEX_HOME", "var", "Folder for the local stack's data, logs and pid files.") in rows


def test_readme_settings_table_is_generated_from_the_settings() -> None:
    from apex.cli.dev import README_BEGIN, README_END
    from apex.config import settings_markdown

    readme = (REPO_ROOT / "README.md").read_text()
    block = readme.partition(README_BEGIN)[2].partition(README_END)[0]

    assert block.strip() == settings_markdown().strip(), (
        "README.md's settings table is stale: run `.venv/bin/apex dev settings --readme`"
    )


def test_to_env_reproduces_the_settings_in_a_child_process() -> None:
    from pathlib import Path

    from apex.config import Settings

    settings = Settings.from_env({}, topic_prefix="t.x.", partitions=3, home=Path("/tmp/h"))
    assert Settings.from_env(settings.to_env()) == settings
