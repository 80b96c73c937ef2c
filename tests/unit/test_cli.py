import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from datacreek_assets.cli import cli


def all_commands(group: click.Group, prefix=()):
    yield prefix
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from all_commands(command, prefix + (name,))
        else:
            yield prefix + (name,)


@pytest.mark.parametrize("path", list(all_commands(cli)), ids=lambda p: " ".join(p) or "datacreek")
def test_every_command_has_help(path):
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and len(result.output.splitlines()) > 3


@pytest.mark.parametrize("bad", ["../x", "A", "a_b", "-a", "a;b", "ünï", "a" * 41, ""])
def test_tenant_commands_refuse_hostile_ids_before_touching_any_store(bad, tmp_path):
    # Ports point at nothing: a command that got past validation would fail with exit 3.
    env = {"DATACREEK_STATE_DIR": str(tmp_path), "DATACREEK_NEO4J_PORT": "1", "DATACREEK_FALKORDB_PORT": "1"}
    for command in (["tenant", "add", "--", bad], ["tenant", "remove", "--force", "--", bad]):
        result = CliRunner().invoke(cli, command, env=env)
        assert result.exit_code == 2, result.output
        assert "lowercase DNS label" in result.output
    assert not (tmp_path / "registry.db").exists()


def test_unknown_profile_is_a_config_error(tmp_path):
    result = CliRunner().invoke(cli, ["tenant", "list"], env={"DATACREEK_PROFILE": "staging"})
    assert result.exit_code == 3 and "DATACREEK_PROFILE" in result.output


def test_missing_services_give_one_clear_line(tmp_path):
    env = {"DATACREEK_STATE_DIR": str(tmp_path), "DATACREEK_NEO4J_PORT": "1", "DATACREEK_FALKORDB_PORT": "1"}
    result = CliRunner().invoke(cli, ["tenant", "add", "acme"], env=env)
    assert result.exit_code == 3
    assert "Neo4j is not reachable" in result.output and "datacreek services up" in result.output
    assert "Traceback" not in result.output


def test_the_serving_control_api_needs_its_secret_and_its_variables_only(tmp_path):
    # local: no control secret is configured (release steps drive Ray themselves)
    result = CliRunner().invoke(cli, ["serving", "control-api"], env={"DATACREEK_STATE_DIR": str(tmp_path)})
    assert result.exit_code == 3 and "DATACREEK_SERVING_CONTROL_SECRET" in result.output
    # prod: serving's and the registry's variables are named as missing, no other store's
    result = CliRunner().invoke(cli, ["--profile", "prod", "serving", "control-api"],
                                env={"DATACREEK_STATE_DIR": str(tmp_path), "DATACREEK_SERVE_PORT": None,
                                     "DATACREEK_POSTGRES_URL": None, "DATACREEK_NEO4J_URI": None})
    assert result.exit_code == 3 and "DATACREEK_SERVE_PORT" in result.output and "DATACREEK_POSTGRES_URL" in result.output
    assert "DATACREEK_NEO4J_URI" not in result.output and "Traceback" not in result.output


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "datacreek_assets.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "Exit codes" in " ".join(out.stdout.split())


def test_credit_commands_top_up_price_and_balance(tmp_path):
    from datacreek_assets.settings import LocalSettings
    from datacreek_assets.tenant_registry import TenantRegistry

    env = {"DATACREEK_STATE_DIR": str(tmp_path), "DATACREEK_NEO4J_PORT": "1", "DATACREEK_FALKORDB_PORT": "1"}
    runner = CliRunner()
    for command in (["balance", "acme"], ["top-up", "acme", "25"], ["set-price", "acme", "1"]):
        unknown = runner.invoke(cli, ["tenant", *command], env=env)  # no account opened for an unknown id
        assert unknown.exit_code == 2 and "not registered" in unknown.output
    registry = TenantRegistry(LocalSettings.from_env(env).registry_url)
    registry.add("acme")
    registry.close()
    assert runner.invoke(cli, ["tenant", "top-up", "acme", "25"], env=env).exit_code == 0
    assert runner.invoke(cli, ["tenant", "set-price", "acme", "0.5"], env=env).exit_code == 0
    result = runner.invoke(cli, ["tenant", "balance", "acme", "--json"], env=env)
    assert result.exit_code == 0 and '"balance": 125.0' in result.output and '"gpu_price": 0.5' in result.output
    refused = runner.invoke(cli, ["tenant", "top-up", "acme", "--", "-3"], env=env)
    assert refused.exit_code == 2 and "positive" in refused.output
    assert runner.invoke(cli, ["tenant", "balance", "ACME"], env=env).exit_code == 2
    assert runner.invoke(cli, ["billing", "serve"], env={**env, "DATACREEK_ADMIN_TOKEN": "short"}).exit_code == 3


def test_api_key_commands(tmp_path):
    from datacreek_assets.serving.release_store import ServingStore
    from datacreek_assets.tenant_registry import TenantRegistry

    env = {"DATACREEK_STATE_DIR": str(tmp_path), "DATACREEK_NEO4J_PORT": "1", "DATACREEK_FALKORDB_PORT": "1"}
    runner = CliRunner()
    unknown = runner.invoke(cli, ["tenant", "issue-key", "acme"], env=env)
    assert unknown.exit_code == 2 and "not registered" in unknown.output
    TenantRegistry(f"sqlite:///{tmp_path / 'registry.db'}").add("acme")
    issued = runner.invoke(cli, ["tenant", "issue-key", "acme"], env=env)
    assert issued.exit_code == 0, issued.output
    key_id, key = issued.output.split()[2], issued.output.splitlines()[-1]
    store = ServingStore(f"sqlite:///{tmp_path / 'serving.db'}")
    assert store.tenant_for_key(key) == "acme"
    assert runner.invoke(cli, ["tenant", "revoke-key", "globex", key_id], env=env).exit_code == 2
    assert runner.invoke(cli, ["tenant", "revoke-key", "acme", key_id], env=env).exit_code == 0
    assert store.tenant_for_key(key) is None
    listed = runner.invoke(cli, ["tenant", "releases", "acme"], env=env)
    assert listed.exit_code == 0 and "nothing released yet" in listed.output


def test_curator_key_and_tau_commands(tmp_path):
    from datacreek_assets.curation.review_store import ReviewStore
    from datacreek_assets.tenant_registry import TenantRegistry

    env = {"DATACREEK_STATE_DIR": str(tmp_path), "DATACREEK_NEO4J_PORT": "1", "DATACREEK_FALKORDB_PORT": "1"}
    runner = CliRunner()
    unknown = runner.invoke(cli, ["curate", "issue-key", "acme", "ada"], env=env)
    assert unknown.exit_code == 2 and "not registered" in unknown.output
    TenantRegistry(f"sqlite:///{tmp_path / 'registry.db'}").add("acme")
    assert runner.invoke(cli, ["curate", "issue-key", "acme", "ada;drop"], env=env).exit_code == 2
    issued = runner.invoke(cli, ["curate", "issue-key", "acme", "ada"], env=env)
    assert issued.exit_code == 0, issued.output
    key_id, key = issued.output.split()[2], issued.output.splitlines()[-1]
    store = ReviewStore(f"sqlite:///{tmp_path / 'curation.db'}")
    assert store.curator_for_key(key) == ("acme", "ada")
    assert key_id in runner.invoke(cli, ["curate", "keys", "acme"], env=env).output
    assert runner.invoke(cli, ["curate", "revoke-key", "globex", key_id], env=env).exit_code == 2
    assert runner.invoke(cli, ["curate", "revoke-key", "acme", key_id], env=env).exit_code == 0
    assert store.curator_for_key(key) is None
    assert runner.invoke(cli, ["curate", "set-tau", "acme", "--", "-1"], env=env).exit_code == 2
    assert runner.invoke(cli, ["curate", "set-tau", "acme", "0.02"], env=env).exit_code == 0
    assert store.tau("acme", 1e-3) == 0.02 and store.tau("globex", 1e-3) == 1e-3
    listed = runner.invoke(cli, ["curate", "queue", "acme"], env=env)
    assert listed.exit_code == 0 and "0 open edges" in listed.output
