"""Where inputs come from: precedence, the secrets JSON by prefix, the YAML topology file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bastion_action import settings, sources
from bastion_action.errors import SettingsError
from bastion_action.inputs import INPUTS, InputSpec

FINGERPRINT = "SHA256:" + "B" * 43
TEAM_SECRETS = {
    "UAT_HOST": "uat-bastion.example.com",
    "UAT_USER": "deploy",
    "UAT_SSH_PASSWORD": "uat-ssh-pw",
    "UAT_DB_HOST": "10.1.0.5",
    "UAT_DB_PORT": "25060",
    "UAT_DB_USER": "doadmin",
    "UAT_DB_PASSWORD": "uat-db-pw",
    "UAT_DB_NAME": "defaultdb",
    "UAT_DJANGO_SETTINGS_MODULE": "projectmeats.settings.uat",
    "UAT_SECRET_KEY": "uat-django-key",
    "DO_ACCESS_TOKEN": "dop_v1_token",
    "PROD_DB_PASSWORD": "prod-db-pw",
    "github_token": "ghs_unrelated",
}
CONFIG = """
defaults:
  mode: docker
  image: registry.digitalocean.com/meatscentral/projectmeats-backend
  image-tag: "{environment}-{short_sha}"
  ssh-host-fingerprint: SHA256:BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB
  db-sslmode: require
environments:
  uat:
    ssh-host: from-file.example.com
    db-port: 5432
    lock-timeout: 60
  prod:
    ssh-jump-hosts: [ops@jump1.example.com, jump2.example.com:2222]
"""


def workspace(tmp_path: Path, text: str = CONFIG) -> dict[str, str]:
    (tmp_path / ".github").mkdir(exist_ok=True)
    (tmp_path / ".github/bastion-migrate.yml").write_text(text)
    return {"GITHUB_WORKSPACE": str(tmp_path), "GITHUB_SHA": "0123456789abcdef"}


def test_team_secrets_by_prefix_with_file_topology(tmp_path: Path) -> None:
    environ = workspace(tmp_path)
    parsed = settings.parse(
        {"environment": "uat", "command": "migrate", "secrets": json.dumps(TEAM_SECRETS)}, environ=environ
    )
    assert parsed.ssh.host == "uat-bastion.example.com", "the secret beats the file"
    assert parsed.db.port == 25060, "the secret beats the file"
    assert parsed.db.name == "defaultdb"
    assert parsed.db.sslmode == "require", "from the file's defaults"
    assert parsed.lock_timeout == 60, "from the file's environment section"
    assert parsed.image is not None
    assert str(parsed.image.reference) == "registry.digitalocean.com/meatscentral/projectmeats-backend:uat-0123456"
    assert parsed.image.username == parsed.image.password == "dop_v1_token"
    for value in ("uat-ssh-pw", "uat-db-pw", "uat-django-key", "dop_v1_token", "10.1.0.5", "deploy"):
        assert value in parsed.secrets, f"{value} came from the secrets JSON, so it is masked"
    assert "prod-db-pw" not in parsed.secrets


def test_explicit_input_beats_secret_and_file(tmp_path: Path) -> None:
    environ = workspace(tmp_path)
    raw = {"environment": "uat", "secrets": json.dumps(TEAM_SECRETS), "ssh-host": "explicit.example.com"}
    raw |= {"db-port": "6543", "image-tag": "v1.2.3"}
    parsed = settings.parse(raw, environ=environ)
    assert parsed.ssh.host == "explicit.example.com"
    assert parsed.db.port == 6543
    assert parsed.image is not None
    assert parsed.image.reference.tag == "v1.2.3"


def test_missing_secret_is_named_in_full(tmp_path: Path) -> None:
    environ = workspace(tmp_path)
    team = {key: value for key, value in TEAM_SECRETS.items() if key != "UAT_DB_HOST"}
    with pytest.raises(SettingsError) as info:
        settings.parse({"environment": "uat", "secrets": json.dumps(team)}, environ=environ)
    assert info.value.message == (
        "db-host: required, expected the database host as seen from the bastion, got nothing "
        "(not set: input db-host, secret UAT_DB_HOST or DB_HOST, .github/bastion-migrate.yml)"
    )


def test_plain_environment_secrets_fill_what_the_prefix_does_not(tmp_path: Path) -> None:
    """GitHub environment secrets (jobs.<id>.environment: uat) have plain names: HOST, DB_PASSWORD, ..."""
    environ = workspace(tmp_path)
    plain = {key.removeprefix("UAT_"): value for key, value in TEAM_SECRETS.items()}
    plain |= {"UAT_DB_PASSWORD": "prefixed-wins", "DB_PASSWORD": "plain-loses"}
    raw = {"environment": "uat", "command": "migrate", "secrets": json.dumps(plain)}
    parsed = settings.parse(raw, environ=environ)
    assert parsed.ssh.host == "uat-bastion.example.com"
    assert parsed.db.user == "doadmin"
    assert parsed.db.password == "prefixed-wins"
    assert parsed.app.secret_key == "uat-django-key"
    assert "uat-ssh-pw" in parsed.secrets
    assert "plain-loses" in sources.early_masks(raw, environ), "every value of the secrets JSON is masked"


def test_plain_names_are_never_read_from_the_process_environment(tmp_path: Path) -> None:
    environ = {**workspace(tmp_path), "HOST": "a-machines-own-hostname", "USER": "root"}
    environ |= {key: value for key, value in TEAM_SECRETS.items() if key not in {"UAT_HOST", "UAT_USER"}}
    with pytest.raises(SettingsError) as info:
        settings.parse({"environment": "uat"}, environ=environ)
    assert info.value.message.startswith("ssh-user: required")


def test_secret_prefix_overrides_the_environment(tmp_path: Path) -> None:
    environ = workspace(tmp_path, "")
    team = {key.replace("UAT_", "STAGING_"): value for key, value in TEAM_SECRETS.items()}
    raw = {"environment": "uat", "secret-prefix": "STAGING", "secrets": json.dumps(team)}
    raw |= {"mode": "lightweight", "ssh-host-fingerprint": FINGERPRINT}
    assert settings.parse(raw, environ=environ).ssh.host == "uat-bastion.example.com"


def test_environment_variables_are_the_local_source(tmp_path: Path) -> None:
    environ = {**workspace(tmp_path), **TEAM_SECRETS}
    parsed = settings.parse({"environment": "uat"}, environ=environ)
    assert parsed.db.password == "uat-db-pw"
    assert "uat-db-pw" in parsed.secrets


def test_lists_in_the_file(tmp_path: Path) -> None:
    environ = {**workspace(tmp_path), **{k.replace("UAT_", "PROD_"): v for k, v in TEAM_SECRETS.items()}}
    parsed = settings.parse({"environment": "prod"}, environ=environ)
    assert [str(hop) for hop in parsed.ssh.jump_hosts] == ["ops@jump1.example.com:22", "deploy@jump2.example.com:2222"]


@pytest.mark.parametrize(
    ("key", "meant"),
    [
        pytest.param("db_user", "db-user", id="underscores"),
        pytest.param("dbuser", "db-user", id="no-dash"),
        pytest.param("ssh-hots", "ssh-host", id="typo"),
        pytest.param("DB-NAME", "db-name", id="upper-case"),
    ],
)
def test_an_unknown_key_names_the_nearest_key(tmp_path: Path, key: str, meant: str) -> None:
    message = file_error(tmp_path, f"defaults: {{{key}: x}}")
    assert f"defaults.{key}: unknown key (did you mean {meant!r}?); expected one of: " in message


def file_error(tmp_path: Path, text: str) -> str:
    environ = workspace(tmp_path, text)
    with pytest.raises(SettingsError) as info:
        settings.parse({"environment": "uat", "secrets": json.dumps(TEAM_SECRETS)}, environ=environ)
    return info.value.message


def test_a_far_key_gets_no_suggestion(tmp_path: Path) -> None:
    assert "defaults.colour: unknown key; expected one of: " in file_error(tmp_path, "defaults: {colour: x}")


@pytest.mark.parametrize("key", ["db_password", "db-pasword", "ssh_passphrase"])
def test_no_suggestion_names_a_secret_input(tmp_path: Path, key: str) -> None:
    message = file_error(tmp_path, f"defaults: {{{key}: x}}")
    assert "did you mean" not in message
    assert "password" not in message.replace(key, "")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("defaults: {db-password: x}", "defaults.db-password: secrets do not belong", id="secret-key"),
        pytest.param("environments: {uat: {ssh-private-key: x}}", "ssh-private-key: secrets do not", id="key"),
        pytest.param("defaults: {db_password: x}", "defaults.db_password: secrets do not", id="secret-looking"),
        pytest.param("environments: {uat: {registry-token: x}}", "registry-token: secrets do not", id="token"),
        pytest.param("defaults: {ssh-insecure-skip-host-key-check: true}", "unknown key", id="not-a-file-key"),
        pytest.param("defaults: {db-prot: 5432}", "defaults.db-prot: unknown key", id="typo"),
        pytest.param("environments: {uat: {ssh-hots: x}}", "environments.uat.ssh-hots: unknown key", id="typo-env"),
        pytest.param("defaults: [1, 2]", "defaults: expected a mapping", id="not-mapping"),
        pytest.param("envs: {}", "expected a mapping with 'defaults' and/or 'environments'", id="top-level"),
        pytest.param("defaults: {ssh-host: {a: b}}", "defaults.ssh-host: expected a text", id="nested"),
        pytest.param("defaults: {image-tag: '{branch}'}", "image-tag: unknown placeholder", id="placeholder"),
        pytest.param("defaults: {mode: [unclosed", "is not valid YAML at line 1", id="invalid-yaml"),
        pytest.param("environments: {dev: {}}", "environment: 'uat' is not in", id="unknown-environment"),
    ],
)
def test_file_errors_name_the_file_and_the_key(tmp_path: Path, text: str, expected: str) -> None:
    environ = workspace(tmp_path, text)
    with pytest.raises(SettingsError) as info:
        settings.parse({"environment": "uat", "secrets": json.dumps(TEAM_SECRETS)}, environ=environ)
    assert expected in info.value.message
    assert ".github/bastion-migrate.yml" in info.value.message


@pytest.mark.parametrize("spec", [spec for spec in INPUTS if spec.secret], ids=lambda spec: spec.name)
def test_every_secret_input_is_refused_in_the_file(tmp_path: Path, spec: InputSpec) -> None:
    environ = workspace(tmp_path, f"environments: {{uat: {{{spec.name}: x}}}}")
    with pytest.raises(SettingsError) as info:
        settings.parse({"environment": "uat", "secrets": json.dumps(TEAM_SECRETS)}, environ=environ)
    assert info.value.message.endswith(f"environments.uat.{spec.name}: secrets do not belong in the config file")


def test_missing_default_file_is_fine_but_a_named_one_is_not(tmp_path: Path) -> None:
    environ = {"GITHUB_WORKSPACE": str(tmp_path)}
    raw = {"environment": "uat", "secrets": json.dumps(TEAM_SECRETS), "mode": "lightweight"}
    with pytest.raises(SettingsError, match="ssh-known-hosts or ssh-host-fingerprint"):
        settings.parse(raw, environ=environ)  # got past the missing default file
    with pytest.raises(SettingsError, match=r"config-file: .*missing\.yml does not exist"):
        settings.parse({**raw, "config-file": "missing.yml"}, environ=environ)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '"a string"'])
def test_secrets_that_are_not_a_json_object(text: str) -> None:
    with pytest.raises(SettingsError) as info:
        settings.parse({"secrets": text}, environ={})
    assert info.value.message.startswith("secrets: expected a JSON object")
    assert text not in info.value.message


def test_early_masks_cover_the_whole_json_before_validation() -> None:
    masks = sources.early_masks({"secrets": json.dumps(TEAM_SECRETS), "environment": "uat"}, {})
    assert "ghs_unrelated" in masks
    assert "prod-db-pw" in masks
    in_table_order = ["HOST", "USER", "SSH_PASSWORD", "DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD"]
    in_table_order += ["DJANGO_SETTINGS_MODULE", "SECRET_KEY"]
    assert sources.early_masks({"environment": "uat"}, TEAM_SECRETS) == [
        TEAM_SECRETS[f"UAT_{suffix}"] for suffix in in_table_order
    ] + ["dop_v1_token", "dop_v1_token"]


def test_do_token_is_only_sent_to_digitalocean(tmp_path: Path) -> None:
    environ = workspace(tmp_path, "")
    raw = {"environment": "uat", "secrets": json.dumps(TEAM_SECRETS), "mode": "docker"}
    raw |= {"ssh-host-fingerprint": FINGERPRINT, "image": "ghcr.io/team/app:v1"}
    elsewhere = settings.parse(raw, environ=environ)
    assert elsewhere.image is not None
    assert elsewhere.image.username is None
    assert elsewhere.image.password is None
    on_do = settings.parse({**raw, "image": "registry.digitalocean.com/team/app:v1"}, environ=environ)
    assert on_do.image is not None
    assert on_do.image.password == "dop_v1_token"


@pytest.mark.parametrize(
    ("image", "registry"),
    [
        pytest.param("127.0.0.1:5000/team/app:1", "registry.digitalocean.com", id="registry-names-do"),
        pytest.param("ghcr.io/team/app:1", "registry.digitalocean.com", id="ghcr"),
        pytest.param("team/app:1", "registry.digitalocean.com", id="hub"),
    ],
)
def test_do_token_is_refused_when_registry_is_not_the_image_host(tmp_path: Path, image: str, registry: str) -> None:
    raw = {"environment": "uat", "secrets": json.dumps(TEAM_SECRETS), "mode": "docker", "image": image}
    raw |= {"ssh-host-fingerprint": FINGERPRINT, "registry": registry}
    with pytest.raises(SettingsError) as info:
        settings.parse(raw, environ=workspace(tmp_path, ""))
    host = settings.parse_image_reference(image, "x").registry
    assert info.value.message.startswith(f"registry and image: registry is {registry} but image is on {host}")
    assert "dop_v1_token" not in str(info.value)
    assert "image's own registry" in info.value.hint


@pytest.mark.parametrize(
    "image", ["registry.digitalocean.com.evil.io/team/app", "evil.digitalocean.com/team/app", "team/app"]
)
def test_do_token_is_not_offered_to_look_alikes(tmp_path: Path, image: str) -> None:
    raw = {"environment": "uat", "secrets": json.dumps(TEAM_SECRETS), "mode": "docker", "image": image}
    parsed = settings.parse({**raw, "ssh-host-fingerprint": FINGERPRINT}, environ=workspace(tmp_path, ""))
    assert parsed.image is not None
    assert (parsed.image.username, parsed.image.password) == (None, None)
    assert "dop_v1_token" in parsed.secrets, "still masked: every value given as a secret counts"


def test_do_token_from_the_environment_follows_the_same_rule(tmp_path: Path) -> None:
    environ = {**workspace(tmp_path, ""), **TEAM_SECRETS, "DO_ACCESS_TOKEN": "dop_v1_env"}
    raw = {"environment": "uat", "mode": "docker", "ssh-host-fingerprint": FINGERPRINT}
    elsewhere = settings.parse({**raw, "image": "ghcr.io/team/app"}, environ=environ)
    assert elsewhere.image is not None
    assert elsewhere.image.password is None
    on_do = settings.parse({**raw, "image": "REGISTRY.digitalocean.com/team/app"}, environ=environ)
    assert on_do.image is not None
    assert on_do.image.password == "dop_v1_env"


def test_either_or_errors_name_the_unset_secrets(tmp_path: Path) -> None:
    environ = workspace(tmp_path, "")
    team = {k: v for k, v in TEAM_SECRETS.items() if k != "UAT_SSH_PASSWORD"}
    with pytest.raises(SettingsError) as info:
        settings.parse({"environment": "uat", "secrets": json.dumps(team)}, environ=environ)
    either = info.value.problems[0].message
    assert either.startswith("ssh-password or ssh-private-key: one is required, got neither")
    assert "secret UAT_SSH_PASSWORD or SSH_PASSWORD" in either
    assert "secret UAT_SSH_PRIVATE_KEY or SSH_PRIVATE_KEY" in either
    with pytest.raises(SettingsError) as info:
        settings.parse(
            {"environment": "uat", "secrets": json.dumps(TEAM_SECRETS), "mode": "lightweight"}, environ=environ
        )
    assert "secret UAT_SSH_KNOWN_HOSTS or SSH_KNOWN_HOSTS" in info.value.message
