"""Options of every command, accepted before or after it; ``config show``; the commands
that only read the state file refuse a missing one and make none."""

import tomllib

import pytest

from sync_worker.app.cli import build_parser, main
from sync_worker.ops.config_show import MASK
from sync_worker.sandbox.worker_process import run_worker
from sync_worker.state.db import open_database
from tests.conftest import write_config
from tests.sync_worker.ops.test_check import listing


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "c.toml", "--log-level", "debug", "status"],
        ["status", "--config", "c.toml", "--log-level", "debug"],
        ["--log-level", "debug", "status", "--config", "c.toml"],
        ["config", "show", "--config", "c.toml", "--log-level", "debug"],
    ],
)
def test_global_options_are_taken_before_or_after_the_command(argv):
    args = build_parser().parse_args(argv)
    assert (args.config, args.log_level, args.log_format) == ("c.toml", "debug", "auto")


def test_an_option_given_before_the_command_is_not_reset_after_it():
    args = build_parser().parse_args(["--tenant", "a", "check", "--log-format", "json"])
    assert (args.tenant, args.log_format, args.config) == ("a", "json", None)


def test_status_with_the_config_after_the_command(sandbox, tmp_path, config, capsys):
    open_database(config.state.database).close()
    assert main(["status", "--config", str(tmp_path / "config.toml")]) == 0
    assert "Archives: none" in capsys.readouterr().out


def test_config_show_masks_secrets_and_names_each_source(sandbox, tmp_path, config):
    path = write_config(tmp_path, sandbox)
    path.write_text(path.read_text().replace(f'api_key = "{sandbox.api_key}"\n', ""))
    env = {"FLEXPERTO_API_KEY": sandbox.api_key, "SYNC_WORKER_FLEXPERTO_PAGE_SIZE": "50"}
    result = run_worker("config", "show", "--config", str(path), env={"PATH": "", **env})
    assert result.returncode == 0, result.stderr
    shown = result.stdout
    for secret in filter(None, config.secrets()):
        assert secret not in shown + result.stderr
    lines = {line.split(" = ")[0]: line for line in shown.splitlines() if " = " in line}
    assert lines["api_key"] == f'api_key = "{MASK}"  # env FLEXPERTO_API_KEY'
    assert lines["page_size"] == "page_size = 50  # env SYNC_WORKER_FLEXPERTO_PAGE_SIZE"
    assert lines["interval_seconds"] == "interval_seconds = 300  # default"
    effective = tomllib.loads(shown)
    assert effective["state"]["database"] == str(config.state.database)
    assert effective["totalexpert"]["client_secret"] == MASK
    assert effective["flexperto"]["base_url"] == config.flexperto.base_url


def test_config_show_of_tenants_is_one_loadable_file(tmp_path, capsys):
    path = tmp_path / "tenants.toml"
    path.write_text(
        '[flexperto]\nbase_url = "https://x.test.flexperto.com"\napi_key = "fx-key"\n'
        '[totalexpert]\nclient_id = "i"\nclient_secret = "s"\n'
        'shared_budget = "budget.db"\n'
        '[[tenant]]\nname = "a"\n[tenant.state]\ndatabase = "a.db"\n'
        '[tenant.storage]\narchive_dir = "a"\n'
        '[[tenant]]\nname = "b"\n[tenant.state]\ndatabase = "b.db"\n'
        '[tenant.storage]\narchive_dir = "b"\n'
    )
    assert main(["config", "show", "--config", str(path)]) == 0
    effective = tomllib.loads(capsys.readouterr().out)
    assert effective["schedule"]["interval_seconds"] == 300
    assert [t["name"] for t in effective["tenant"]] == ["a", "b"]
    assert effective["tenant"][1]["state"]["database"] == str(tmp_path / "b.db")
    assert effective["tenant"][0]["flexperto"]["api_key"] == MASK


def test_a_mistyped_environment_override_exits_2_naming_it(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        '[flexperto]\nbase_url = "https://x.test.flexperto.com"\napi_key = "k"\n'
        '[totalexpert]\nclient_id = "i"\nclient_secret = "s"\n'
    )
    env = {"PATH": "", "SYNC_WORKER_FLEXPERTO_PAGESIZE": "50"}
    result = run_worker("--config", str(path), "check", "--offline", env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "sync-worker: configuration error: unknown environment variable "
        "SYNC_WORKER_FLEXPERTO_PAGESIZE (did you mean SYNC_WORKER_FLEXPERTO_PAGE_SIZE?)"
    )


def test_audit_at_a_mistyped_state_path_fails_and_makes_nothing(sandbox, tmp_path, config, capsys):
    before = listing(tmp_path)
    assert main(["--config", str(tmp_path / "config.toml"), "audit", "--all"]) == 1
    assert f"no state file at {config.state.database}" in capsys.readouterr().err
    assert listing(tmp_path) == before
