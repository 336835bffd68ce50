"""Loading agent_config.json: every fault names the key and the file."""

import json

import pytest

from htcgrid.config import load_config
from htcgrid.errors import ConfigError

REAL_DEPLOYMENT = {
    "region": "eu-west-1",
    "grid_storage_service": "S3",
    "s3_bucket": "htc-stdout-bucket-main",
    "redis_url": "cache.example.internal",
    "public_api_gateway_url": "https://abc.execute-api.eu-west-1.amazonaws.com/v1",
    "private_api_gateway_url": "https://def.execute-api.eu-west-1.amazonaws.com/v1",
    "api_gateway_key": "k3y",
    "user_pool_id": "eu-west-1_AbCdEf",
    "cognito_userpool_client_id": "client123",
    "dynamodb_results_pull_interval_sec": 0.5,
    "task_input_passed_via_external_storage": 1,
    "ddb_state_table": "htc_tasks_state_table-main",
    "agent_task_visibility_timeout_sec": 3600,
    "some_future_key": {"nested": True},
}


def write(tmp_path, data):
    path = tmp_path / "agent_config.json"
    path.write_text(json.dumps(data))
    return path


def test_a_real_deployments_file_loads_and_unknown_keys_are_kept_raw(tmp_path, monkeypatch):
    monkeypatch.delenv("INTRA_VPC", raising=False)

    config = load_config(write(tmp_path, REAL_DEPLOYMENT))

    assert config.region == "eu-west-1"
    assert config.api_url == "https://abc.execute-api.eu-west-1.amazonaws.com/v1"
    assert config.results_pull_interval_sec == 0.5
    assert config.private is False
    assert config.is_local is False
    assert config.get("some_future_key") == {"nested": True}
    assert "k3y" not in repr(config)


def test_private_mode_from_intra_vpc(monkeypatch):
    monkeypatch.setenv("INTRA_VPC", "1")

    config = load_config(REAL_DEPLOYMENT)

    assert config.private is True
    assert config.api_url == "https://def.execute-api.eu-west-1.amazonaws.com/v1"
    assert load_config(REAL_DEPLOYMENT, private=False).private is False


def test_path_from_agent_config_file(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENT_CONFIG_FILE", str(write(tmp_path, REAL_DEPLOYMENT)))

    assert load_config().s3_bucket == "htc-stdout-bucket-main"


def test_no_source_at_all_says_what_to_set(monkeypatch):
    monkeypatch.delenv("AGENT_CONFIG_FILE", raising=False)

    with pytest.raises(ConfigError, match="set AGENT_CONFIG_FILE"):
        load_config()


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.json does not exist"):
        load_config(tmp_path / "nope.json")


def test_file_that_is_not_json(tmp_path):
    path = tmp_path / "agent_config.json"
    path.write_text("{region: eu-west-1")

    with pytest.raises(ConfigError, match=r"agent_config\.json is not valid JSON \(line 1"):
        load_config(path)


def test_missing_key_names_key_and_file(tmp_path):
    data = dict(REAL_DEPLOYMENT)
    del data["s3_bucket"]
    path = write(tmp_path, data)

    with pytest.raises(ConfigError, match=rf"{path} has no 's3_bucket' key"):
        load_config(path, private=False)


def test_mistyped_key(tmp_path):
    data = dict(REAL_DEPLOYMENT, region=["eu-west-1"])

    with pytest.raises(ConfigError, match="'region' must be a string, not list"):
        load_config(write(tmp_path, data), private=False)


def test_bad_pull_interval(tmp_path):
    data = dict(REAL_DEPLOYMENT, dynamodb_results_pull_interval_sec="soon")

    with pytest.raises(ConfigError, match="'dynamodb_results_pull_interval_sec' must be a number"):
        load_config(write(tmp_path, data), private=False)


def test_unknown_storage_service(tmp_path):
    data = dict(REAL_DEPLOYMENT, grid_storage_service="FTP")

    with pytest.raises(ConfigError, match="'grid_storage_service' is 'FTP'; expected one of"):
        load_config(write(tmp_path, data), private=False)


def test_private_mode_needs_the_api_key(tmp_path):
    data = dict(REAL_DEPLOYMENT)
    del data["api_gateway_key"]

    assert load_config(data, private=False).api_key == ""
    with pytest.raises(ConfigError, match="no 'api_gateway_key' key"):
        load_config(data, private=True)


def test_config_is_immutable():
    config = load_config(REAL_DEPLOYMENT, private=False)

    with pytest.raises(AttributeError):
        config.region = "us-east-1"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.raw["region"] = "us-east-1"  # type: ignore[index]


def test_every_missing_key_is_named_at_once(tmp_path):
    path = write(tmp_path, {"region": "eu-west-1"})

    with pytest.raises(ConfigError) as caught:
        load_config(path, private=False)

    assert str(caught.value) == (
        f"{path} has no 'grid_storage_service', 's3_bucket', 'public_api_gateway_url', "
        "'user_pool_id', 'cognito_userpool_client_id' keys"
    )


def test_a_missing_file_named_by_the_environment_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENT_CONFIG_FILE", str(tmp_path / "gone.json"))

    with pytest.raises(ConfigError, match=r"gone\.json \(named by \$AGENT_CONFIG_FILE\) does not"):
        load_config()
