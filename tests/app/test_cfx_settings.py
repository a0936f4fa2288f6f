"""PCB_CFX_* settings: parsed into the broker target, refused at startup in one line when they
cannot work (before any model loads), and off when unset."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.config import Settings
from app.serve import StartupError, preflight
from app.services.cfx_publisher import AmqpTarget
from tests.helpers.app import tiny_settings


def test_off_when_unset_or_empty() -> None:
    assert not Settings().cfx_enabled
    assert not Settings(cfx_broker_url="  ").cfx_enabled


def test_url_user_and_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    target = AmqpTarget.from_settings(Settings(
        cfx_broker_url="amqps://me:inurl@broker.example", cfx_password_file=secret,
        cfx_address="/amq/queue/mes"))
    # The file wins over the URL's password, which the target's URL (shown to admins) drops.
    assert (target.url, target.user, target.password, target.tls, target.address) == (
        "amqps://broker.example:5671", "me", "from-file", True, "/amq/queue/mes")
    plain = AmqpTarget.from_settings(Settings(cfx_broker_url="amqp://u:p%40ss@10.0.0.5"))
    assert (plain.url, plain.user, plain.password, plain.tls) == (
        "amqp://10.0.0.5:5672", "u", "p@ss", False)


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"cfx_broker_url": "http://broker:80"}, "PCB_CFX_BROKER_URL must be amqp://"),
    ({"cfx_broker_url": "amqp://u:secret@"}, "received 'amqp://u:***@'"),
    ({"cfx_broker_url": "amqp://h", "cfx_password_file": "/nonexistent/pw"},
     "PCB_CFX_PASSWORD_FILE /nonexistent/pw cannot be read"),
])
def test_unusable_settings_fail_preflight_naming_them(
        tiny_weights: Path, overrides: dict[str, str], expected: str) -> None:
    with pytest.raises(StartupError) as err:
        preflight(tiny_settings(tiny_weights, **overrides))
    assert expected in str(err.value) and "secret" not in str(err.value)
