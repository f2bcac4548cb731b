import io
from pathlib import Path

import pytest

from sync_worker.config import (
    ConfigError,
    example_toml,
    keys,
    load_config,
    load_tenants,
    markdown_table,
    validate_base_url,
)
from sync_worker.core import logs

pytestmark = pytest.mark.fast

MINIMAL = """
[flexperto]
base_url = "https://demo.test.flexperto.com"
api_key = "fx-key"
[totalexpert]
client_id = "te-id"
client_secret = "te-secret"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_defaults_and_relative_paths_resolve_against_the_config_folder(tmp_path):
    config = load_config(write(tmp_path, MINIMAL), env={})
    assert config.flexperto.page_size == 100
    assert config.totalexpert.base_url == "https://public.totalexpert.net/v1"
    assert config.totalexpert.requests_per_minute == 1000
    assert config.totalexpert.token_requests_per_hour == 2
    assert config.storage.archive_dir == tmp_path / "archives"
    assert config.state.database == tmp_path / "state.db"
    assert config.schedule.interval_seconds == 300


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key flexperto\.api_kee"):
        load_config(write(tmp_path, MINIMAL.replace("api_key", "api_kee")), env={})


def test_unknown_section_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config section \[extra\]"):
        load_config(write(tmp_path, MINIMAL + "[extra]\nx = 1\n"), env={})


def test_missing_required_key_is_named(tmp_path):
    with pytest.raises(
        ConfigError, match=r"missing required config key totalexpert\.client_secret"
    ):
        load_config(write(tmp_path, MINIMAL.replace('client_secret = "te-secret"', "")), env={})


def test_wrong_type_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"flexperto\.page_size must be int"):
        load_config(
            write(tmp_path, MINIMAL.replace("[totalexpert]", "page_size = 'x'\n[totalexpert]")),
            env={},
        )


def test_secrets_from_environment(tmp_path):
    text = MINIMAL.replace('api_key = "fx-key"', "").replace('client_secret = "te-secret"', "")
    config = load_config(
        write(tmp_path, text),
        env={"FLEXPERTO_API_KEY": "from-env", "TOTALEXPERT_CLIENT_SECRET": "s3"},
    )
    assert config.flexperto.api_key == "from-env"
    assert config.totalexpert.client_secret == "s3"


def test_secrets_from_systemd_credentials_directory(tmp_path):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "flexperto_api_key").write_text("from-credential\n")
    text = MINIMAL.replace('api_key = "fx-key"', "")
    config = load_config(write(tmp_path, text), env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert config.flexperto.api_key == "from-credential"


def test_file_value_wins_over_secret_environment(tmp_path):
    config = load_config(write(tmp_path, MINIMAL), env={"FLEXPERTO_API_KEY": "env"})
    assert config.flexperto.api_key == "fx-key"


def test_environment_override_of_any_key(tmp_path):
    config = load_config(
        write(tmp_path, MINIMAL),
        env={"SYNC_WORKER_SCHEDULE_INTERVAL_SECONDS": "60", "SYNC_WORKER_FLEXPERTO_API_KEY": "o"},
    )
    assert config.schedule.interval_seconds == 60
    assert config.flexperto.api_key == "o"


def test_bad_environment_override_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"schedule\.interval_seconds must be int"):
        load_config(write(tmp_path, MINIMAL), env={"SYNC_WORKER_SCHEDULE_INTERVAL_SECONDS": "x"})


def test_non_positive_limits_are_refused(tmp_path):
    text = MINIMAL + "requests_per_minute = 0\n"
    with pytest.raises(ConfigError, match=r"totalexpert\.requests_per_minute must be positive"):
        load_config(write(tmp_path, text), env={})


@pytest.mark.parametrize(
    ("value", "error"), [("0", "must be positive"), ("33", "must be at most 32")]
)
def test_parts_in_flight_per_upload_are_bounded(tmp_path, value, error):
    env = {"SYNC_WORKER_STORAGE_UPLOAD_CONCURRENCY": value}
    with pytest.raises(ConfigError, match=rf"storage\.upload_concurrency {error}"):
        load_config(write(tmp_path, MINIMAL), env=env)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml", env={})


def test_invalid_toml_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[flexperto\n"), env={})


@pytest.mark.parametrize(
    "url",
    [
        "https://demo.test.flexperto.com",
        "http://127.0.0.1:8080",
        "http://127.5.6.7",
        "http://localhost:9000/v1",
        "http://[::1]:8080",
    ],
)
def test_accepted_base_urls(url):
    assert validate_base_url(url, "x") == url.rstrip("/")


@pytest.mark.parametrize(
    "url",
    [
        "http://demo.test.flexperto.com",
        "http://10.0.0.1",
        "ftp://127.0.0.1",
        "demo.test.flexperto.com",
        "https://user:pw@host.example",
        "http://localhost.evil.example",
    ],
)
def test_refused_base_urls(url):
    with pytest.raises(ConfigError):
        validate_base_url(url, "flexperto.base_url")


def between(text: str, name: str) -> str:
    return text.split(f"<!-- {name}:start -->\n")[1].split(f"<!-- {name}:end -->")[0]


def test_the_manual_shows_the_declared_keys():
    page = (Path(__file__).parents[3] / "docs" / "configuration.md").read_text()
    assert between(page, "config-table") == markdown_table(), (
        "docs/configuration.md's config table is stale: run make docs-config"
    )
    assert between(page, "config-example") == f"```toml\n{example_toml()}```\n", (
        "docs/configuration.md's example config is stale: run make docs-config"
    )


def test_the_example_loads_and_states_every_default(tmp_path):
    secrets = {
        "FLEXPERTO_API_KEY": "k",
        "TOTALEXPERT_CLIENT_ID": "i",
        "TOTALEXPERT_CLIENT_SECRET": "s",
    }
    config = load_config(write(tmp_path, example_toml()), env=secrets)
    assert config.http.timeout_seconds == 30.0
    assert config.storage.archive_dir == Path("/var/lib/sync-worker/archives")
    declared = {f"{section}.{key.name}" for section, key in keys()}
    assert declared == {line.split("`")[1] for line in markdown_table().splitlines()[2:]}


def test_path_keys_may_not_be_empty(tmp_path):
    with pytest.raises(ConfigError, match=r"storage\.archive_dir must not be empty"):
        load_config(write(tmp_path, MINIMAL + '[storage]\narchive_dir = ""\n'), env={})


TENANTS = """
[totalexpert]
client_id = "te-id"
client_secret = "te-secret"
shared_budget = "te-budget.db"
[[tenant]]
name = "bank-a"
[tenant.flexperto]
base_url = "https://bank-a.live.flexperto.com"
api_key = "fx-a"
[tenant.state]
database = "a/state.db"
[tenant.storage]
archive_dir = "a/archives"
[[tenant]]
name = "bank-b"
[tenant.flexperto]
base_url = "https://bank-b.live.flexperto.com"
[tenant.state]
database = "b/state.db"
[tenant.storage]
archive_dir = "b/archives"
"""


def test_a_file_without_tenants_is_one_unnamed_tenant(tmp_path):
    (config,) = load_tenants(write(tmp_path, MINIMAL), env={})
    assert config.tenant == ""
    assert load_config(write(tmp_path, MINIMAL), env={}) == config


def test_tenants_take_their_own_keys_over_the_top_level_ones(tmp_path):
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "bank-b.flexperto_api_key").write_text("fx-b\n")
    env = {"CREDENTIALS_DIRECTORY": str(credentials), "FLEXPERTO_API_KEY": "fx-everyone"}
    a, b = load_tenants(write(tmp_path, TENANTS), env=env)
    assert (a.tenant, b.tenant) == ("bank-a", "bank-b")
    assert (a.flexperto.api_key, b.flexperto.api_key) == ("fx-a", "fx-b")
    assert a.state.database == tmp_path / "a" / "state.db"
    assert a.totalexpert.client_id == b.totalexpert.client_id == "te-id"
    assert a.totalexpert.shared_budget == b.totalexpert.shared_budget == tmp_path / "te-budget.db"
    assert load_config(write(tmp_path, TENANTS), env=env, tenant="bank-b") == b


def test_a_command_for_one_tenant_must_name_it(tmp_path):
    path = write(tmp_path, TENANTS)
    env = {"FLEXPERTO_API_KEY": "k"}
    with pytest.raises(ConfigError, match=r"several tenants \(bank-a, bank-b\).*--tenant"):
        load_config(path, env=env)
    with pytest.raises(ConfigError, match="no \\[\\[tenant\\]\\] named 'bank-c'"):
        load_config(path, env=env, tenant="bank-c")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('database = "b/state.db"', 'database = "a/state.db"'), "same state.database"),
        (('archive_dir = "b/archives"', 'archive_dir = "a/archives"'), "same storage.archive_dir"),
        (('name = "bank-b"', 'name = "bank-a"'), "same name"),
        (('name = "bank-b"', 'name = "Bank B"'), "needs a name"),
        (('shared_budget = "te-budget.db"', ""), "give them one totalexpert.shared_budget"),
        (("[tenant.state]", "[tenant.schedule]\ninterval_seconds = 5\n[tenant.state]"), "whole"),
        (('api_key = "fx-a"', 'api_kee = "fx-a"'), r"unknown config key tenant\.bank-a\."),
        (('api_key = "fx-a"', "api_key = 5"), r"tenant\.bank-a\.flexperto\.api_key must be"),
        (
            ('archive_dir = "a/archives"', 'backend = "s3"'),
            r"tenant bank-a: config key storage\.bucket is required",
        ),
    ],
)
def test_tenants_are_kept_apart(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        load_tenants(write(tmp_path, TENANTS.replace(*change)), env={"FLEXPERTO_API_KEY": "k"})


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ('[metrics]\nlisten = "0.0.0.0:9464"', r"loopback .*set metrics\.allow_remote = true"),
        ('[metrics]\nlisten = "0.0.0.0:9464"\nallow_remote = "yes"', "allow_remote"),
        ('[webhook]\nlisten = "0.0.0.0:8787"\npublic_url = "https://h.example.com"', "loopback"),
        ('[metrics]\nlisten = "127.0.0.1"', "HOST:PORT"),
        ('[webhook]\nlisten = "127.0.0.1:8787"', "public_url is required"),
        ('[webhook]\nlisten = "[::1]:8787"\npublic_url = "http://hooks.example.com"', "https://"),
    ],
)
def test_listening_addresses_are_loopback_only(tmp_path, section, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, MINIMAL + section), env={})


def test_a_mistyped_environment_override_is_an_error_with_a_suggestion(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"unknown environment variable SYNC_WORKER_FLEXPERTO_PAGESIZE "
        r"\(did you mean SYNC_WORKER_FLEXPERTO_PAGE_SIZE\?\)",
    ):
        load_config(write(tmp_path, MINIMAL), env={"SYNC_WORKER_FLEXPERTO_PAGESIZE": "50"})


def test_known_environment_variables_are_accepted(tmp_path):
    env = {
        "SYNC_WORKER_CONFIG": str(tmp_path / "config.toml"),
        "SYNC_WORKER_FLEXPERTO_PAGE_SIZE": "50",
        "FLEXPERTO_API_KEY": "from-env",
        "SYNC_WORKERS": "not ours: no SYNC_WORKER_ prefix",
    }
    assert load_config(write(tmp_path, MINIMAL), env=env).flexperto.page_size == 50


def test_an_unknown_environment_variable_far_from_any_key_has_no_suggestion(tmp_path):
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, MINIMAL), env={"SYNC_WORKER_ZZZ": "1"})
    assert str(raised.value) == "unknown environment variable SYNC_WORKER_ZZZ"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (MINIMAL.replace("api_key", "api_kee"), r"flexperto\.api_kee \(did you mean api_key\?\)"),
        (MINIMAL + "[schedul]\n", r"section \[schedul\] \(did you mean \[schedule\]\?\)"),
    ],
)
def test_unknown_keys_in_the_file_get_a_suggestion(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), env={})


def test_each_value_keeps_where_it_came_from(tmp_path):
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "totalexpert_client_secret").write_text("from-credential\n")
    text = MINIMAL.replace('client_secret = "te-secret"\n', "")
    env = {
        "SYNC_WORKER_FLEXPERTO_PAGE_SIZE": "50",
        "TOTALEXPERT_CLIENT_ID": "ignored: the file has one",
        "CREDENTIALS_DIRECTORY": str(credentials),
    }
    origins = load_config(write(tmp_path, text), env=env).origins
    assert origins["flexperto.page_size"] == "env SYNC_WORKER_FLEXPERTO_PAGE_SIZE"
    assert origins["flexperto.base_url"] == "file"
    assert origins["totalexpert.client_id"] == "file"
    assert origins["totalexpert.client_secret"] == "credential totalexpert_client_secret"
    assert origins["schedule.interval_seconds"] == "default"


def test_metrics_leave_loopback_only_when_the_operator_says_so(tmp_path):
    section = '[metrics]\nlisten = "0.0.0.0:9464"\nallow_remote = true\n'
    config = load_config(write(tmp_path, MINIMAL + section), env={})
    assert (config.metrics.listen, config.metrics.allow_remote) == ("0.0.0.0:9464", True)
    assert load_config(write(tmp_path, MINIMAL), env={}).metrics.allow_remote is False


DSN = "host=db.internal dbname=sync_worker user=sync_worker password=hunter2"
POSTGRES = (
    MINIMAL
    + '[storage]\nbackend = "s3"\nbucket = "archives"\n'
    + f'[state]\nbackend = "postgresql"\ndsn = "{DSN}"\n'
)


def test_the_state_is_a_sqlite_file_unless_the_config_says_otherwise(tmp_path):
    state = load_config(write(tmp_path, MINIMAL), env={}).state
    assert (state.backend, state.dsn, state.shared) == ("sqlite", "", False)
    assert load_config(write(tmp_path, POSTGRES), env={}).state.shared is True


def test_a_postgresql_state_needs_a_dsn(tmp_path):
    text = POSTGRES.replace(f'dsn = "{DSN}"\n', "")
    with pytest.raises(ConfigError, match=r"state\.dsn is required with backend postgresql"):
        load_config(write(tmp_path, text), env={})


def test_a_postgresql_state_needs_the_archives_in_a_bucket(tmp_path):
    text = POSTGRES.replace('[storage]\nbackend = "s3"\nbucket = "archives"\n', "")
    with pytest.raises(ConfigError, match=r"state\.backend postgresql .* use storage\.backend s3"):
        load_config(write(tmp_path, text), env={})


def test_a_postgresql_state_keeps_te_budget_itself_not_in_a_shared_budget_file(tmp_path):
    text = POSTGRES.replace(
        'client_secret = "te-secret"', 'client_secret = "te-secret"\nshared_budget = "te-budget.db"'
    )
    with pytest.raises(
        ConfigError, match=r"totalexpert\.shared_budget is a file of one host.*totalexpert\.egress"
    ):
        load_config(write(tmp_path, text), env={})


def test_tenant_tables_are_refused_with_a_postgresql_state(tmp_path):
    tenants = "".join(
        f'[[tenant]]\nname = "bank-{n}"\n[tenant.storage]\nbucket = "archives-{n}"\n'
        for n in ("a", "b")
    )
    with pytest.raises(
        ConfigError, match=r"\[\[tenant\]\] tables with state\.backend postgresql are not supported"
    ):
        load_tenants(write(tmp_path, POSTGRES + tenants), env={})


def test_the_dsn_may_come_from_the_environment_and_is_masked_in_logs(tmp_path):
    variable = "SYNC_WORKER_STATE_DSN"
    text = POSTGRES.replace(f'dsn = "{DSN}"\n', "")
    config = load_config(write(tmp_path, text), env={variable: DSN})
    assert config.state.dsn == DSN
    assert config.origins["state.dsn"] == f"env {variable}"
    assert DSN in config.secrets()
    logs.configure("json", "info", stream=io.StringIO(), secrets=config.secrets())
    assert "hunter2" not in logs.mask(f"cannot connect to {DSN}")


def test_the_dsn_may_come_from_a_systemd_credential(tmp_path):
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "state_dsn").write_text(DSN + "\n")
    text = POSTGRES.replace(f'dsn = "{DSN}"\n', "")
    config = load_config(write(tmp_path, text), env={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert config.state.dsn == DSN
    assert config.origins["state.dsn"] == "credential state_dsn"
