"""Layered settings: flags > EXESDB_* environment > TOML file > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from exesdb_broker import BrokerConfig, load_config
from exesdb_sdk import ConfigError
from exesdb_sdk.endpoints import is_loopback, validate_endpoint
from exesdb_sdk.settings import check_settings


def test_each_layer_overrides_the_one_below(tmp_path: Path) -> None:
    config = tmp_path / "exesdb.toml"
    config.write_text('[broker]\nhwm = 11\nnode = "file"\nlog_level = "debug"\nmetrics_interval = 2\n')
    env = {"EXESDB_HWM": "22", "EXESDB_NODE": "env"}
    settings = load_config({"hwm": 33, "node": None}, config_file=config, env=env)
    assert settings.hwm == 33  # flag
    assert settings.node == "env"  # environment, flag not given
    assert settings.log_level == "debug"  # file
    assert settings.metrics_interval == 2.0  # file, an int accepted for a float
    assert settings.frontend == BrokerConfig().frontend  # default


def test_config_file_from_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "exesdb.toml"
    config.write_text('[broker]\nlog_format = "json"\n[other]\nignored = true\n')
    assert load_config(env={"EXESDB_CONFIG": str(config)}).log_format == "json"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EXESDB_HWM": "many"}, "EXESDB_HWM: 'many' is not a valid int"),
        ({"EXESDB_METRICS_INTERVAL": "-1"}, "EXESDB_METRICS_INTERVAL: -1.0 is not greater than zero"),
        ({"EXESDB_LOG_FORMAT": "xml"}, "EXESDB_LOG_FORMAT: 'xml' is not one of text, json"),
        ({"EXESDB_FRONTEND": "tcp://127.0.0.1"}, "EXESDB_FRONTEND: 'tcp://127.0.0.1' needs HOST:PORT"),
    ],
)
def test_bad_environment_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env=env)
    assert str(caught.value) == message


def test_settings_built_in_code_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"BrokerConfig.hwm: -5 is not greater than zero"):
        check_settings(BrokerConfig(hwm=-5))
    with pytest.raises(ConfigError, match=r"BrokerConfig.hwm: expected int, got str"):
        check_settings(BrokerConfig(hwm="5"))  # type: ignore[arg-type]


def test_endpoint_validation() -> None:
    for good in (
        "tcp://127.0.0.1:7100",
        "tcp://[::1]:7100",
        "tcp://localhost:1",
        "ipc:///tmp/x",
        "inproc://a",
    ):
        assert validate_endpoint(good) == good
    assert validate_endpoint("tcp://127.0.0.1:*", bind=True)
    for bad in ("127.0.0.1:7100", "udp://127.0.0.1:1", "tcp://127.0.0.1:*", "tcp://127.0.0.1:0", "ipc://"):
        with pytest.raises(ConfigError):
            validate_endpoint(bad)
    assert is_loopback("tcp://127.0.0.1:1") and is_loopback("tcp://[::1]:1") and is_loopback("ipc:///x")
    assert not is_loopback("tcp://0.0.0.0:1") and not is_loopback("tcp://192.168.1.1:1")
