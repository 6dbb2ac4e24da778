"""Settings: parsing, validation messages that name the input, URL building."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from factories import BASE_INPUTS
from hypothesis import given
from hypothesis import strategies as st

from bastion_action import settings
from bastion_action.errors import SettingsError, Stage


def base_inputs(**overrides: str) -> dict[str, str]:
    raw = BASE_INPUTS | overrides
    return {name: value for name, value in raw.items() if value is not None}


def parse(**overrides: str) -> settings.Settings:
    return settings.parse(base_inputs(**overrides), environ={"GITHUB_WORKSPACE": "/ws"})


def error_of(**overrides: str) -> SettingsError:
    with pytest.raises(SettingsError) as info:
        parse(**overrides)
    assert info.value.stage is Stage.SETTINGS
    return info.value


def test_defaults_follow_the_contract() -> None:
    parsed = parse()
    assert parsed.ssh.port == 22
    assert parsed.db.port == 5432
    assert parsed.db.sslmode == "prefer"
    assert parsed.db.local_port == 0
    assert parsed.app.database_url_env == "DATABASE_URL"
    assert parsed.app.fake_initial is True
    assert parsed.app.working_directory == Path("/ws")
    assert parsed.app.python == "python"
    assert parsed.lock


@pytest.mark.parametrize(
    "name",
    ["ssh-host", "ssh-user", "db-host", "db-name", "db-user", "db-password"],
)
@pytest.mark.parametrize("empty", ["", "   "], ids=["empty", "blank"])
def test_missing_required_input_is_named(name: str, empty: str) -> None:
    error = error_of(**{name: empty})
    assert error.message.startswith(f"{name}: required")


def test_neither_password_nor_key() -> None:
    error = error_of(**{"ssh-password": ""})
    assert "ssh-password or ssh-private-key" in error.message


def test_host_verification_is_required_unless_skipped_explicitly() -> None:
    error = error_of(**{"ssh-host-fingerprint": ""})
    assert "ssh-known-hosts or ssh-host-fingerprint" in error.message
    parsed = parse(**{"ssh-host-fingerprint": "", "ssh-insecure-skip-host-key-check": "true"})
    assert parsed.ssh.insecure_skip_host_key_check


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        pytest.param("ssh-port", "abc", "ssh-port: expected a port number 1-65535, got 'abc'", id="port-text"),
        pytest.param("ssh-port", "0", "ssh-port: expected a port number 1-65535, got '0'", id="port-zero"),
        pytest.param("db-port", "65536", "db-port: expected a port number 1-65535, got '65536'", id="port-high"),
        pytest.param("local-port", "-1", "local-port: expected a port number 0-65535, got '-1'", id="local-neg"),
        pytest.param(
            "mode", "kubernetes", "mode: expected one of lightweight | docker | compare, got 'kubernetes'", id="mode"
        ),
        pytest.param("pull", "sometimes", "pull: expected one of always | missing | never", id="pull"),
        pytest.param("command", "makemigrations", "command: expected one of probe", id="command"),
        pytest.param("timeout", "0", "timeout: expected a number of seconds greater than 0, got '0'", id="t-zero"),
        pytest.param("timeout", "-5", "timeout: expected a number of seconds greater than 0", id="t-negative"),
        pytest.param("connect-timeout", "nan", "connect-timeout: expected a number of seconds", id="t-nan"),
        pytest.param("fake-initial", "maybe", "fake-initial: expected true or false, got 'maybe'", id="bool"),
        pytest.param("db-sslmode", "sometimes", "db-sslmode: expected one of disable", id="sslmode"),
        pytest.param("ssh-host-fingerprint", "MD5:ab:cd", "ssh-host-fingerprint: expected SHA256:", id="fp"),
        pytest.param("extra-env", "not a pair", "extra-env: line 1: expected NAME=value", id="extra-env"),
        pytest.param("database-url-env", "1BAD", "database-url-env: expected a valid environment", id="url-env"),
        pytest.param("args", "'unbalanced", "args: expected shell-words", id="args"),
    ],
)
def test_bad_values_are_named(name: str, value: str, expected: str) -> None:
    assert error_of(**{name: value}).message.startswith(expected)


@pytest.mark.parametrize(
    ("name", "value", "suggestion"),
    [
        pytest.param("command", "migrat", "did you mean 'migrate'?", id="command"),
        pytest.param("mode", "dokcer", "did you mean 'docker'?", id="mode"),
        pytest.param("pull", "alway", "did you mean 'always'?", id="pull"),
        pytest.param("mode", "Lightweigth", "did you mean 'lightweight'?", id="case-and-swap"),
    ],
)
def test_a_near_miss_of_a_choice_is_answered(name: str, value: str, suggestion: str) -> None:
    message = error_of(**{name: value}).message
    assert message.startswith(f"{name}: expected one of ")
    assert message.endswith(f", got {value.lower()!r}; {suggestion} (from the step's input {name})")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("command", "makemigrations", id="another-django-command"),
        pytest.param("mode", "kubernetes", id="far"),
    ],
)
def test_nothing_is_suggested_for_a_far_miss(name: str, value: str) -> None:
    assert error_of(**{name: value}).message.endswith(f", got {value!r} (from the step's input {name})")


@pytest.mark.parametrize(
    ("value", "use"),
    [
        pytest.param("python manage.py migrate", "use command: migrate", id="migrate"),
        pytest.param("./manage.py showmigrations", "use command: showmigrations", id="showmigrations"),
        pytest.param("python manage.py migrate --plan", "use command: plan", id="plan"),
        pytest.param("manage.py migrate --noinput app 0003", "use command: migrate and args: app 0003", id="args"),
        pytest.param(
            "python manage.py collectstatic --noinput",
            "use command: custom and args: python manage.py collectstatic --noinput",
            id="custom",
        ),
        pytest.param("./manage.py", "use command: custom and args: ./manage.py", id="a-path"),
    ],
)
def test_a_command_line_in_command_points_to_the_input_that_runs_it(value: str, use: str) -> None:
    message = error_of(command=value).message
    assert message.startswith(
        f"command: expected one of probe | showmigrations | plan | check | migrate | rollback | lint | custom, "
        f"got {value!r}"
    )
    assert message.endswith(f"; it looks like a command line: {use} (from the step's input command)")


def test_docker_mode_needs_an_image() -> None:
    error = error_of(mode="docker")
    assert error.message.startswith("image: required")


@pytest.mark.parametrize(
    ("image", "tag", "expected", "registry"),
    [
        pytest.param(
            "registry.digitalocean.com/meatscentral/projectmeats-backend",
            "dev-abc",
            "registry.digitalocean.com/meatscentral/projectmeats-backend:dev-abc",
            "registry.digitalocean.com",
            id="do-tag-appended",
        ),
        pytest.param("reg.lab:5443/team/app:v1", "ignored", "reg.lab:5443/team/app:v1", "reg.lab:5443", id="own-tag"),
        pytest.param("ubuntu", "latest", "ubuntu:latest", "docker.io", id="hub"),
        pytest.param(
            "localhost:5000/x@sha256:" + "a" * 64,
            "t",
            "localhost:5000/x@sha256:" + "a" * 64,
            "localhost:5000",
            id="digest",
        ),
    ],
)
def test_image_references(image: str, tag: str, expected: str, registry: str) -> None:
    parsed = parse(mode="docker", image=image, **{"image-tag": tag})
    assert parsed.image is not None
    assert str(parsed.image.reference) == expected
    assert parsed.image.registry == registry


@pytest.mark.parametrize("image", ["UPPER/case", "a//b", "x:", "x@sha256:zz", "http://x/y", "app:bad tag"])
def test_malformed_image_reference(image: str) -> None:
    assert error_of(mode="docker", image=image).message.startswith("image: expected an image reference")


def test_registry_credentials_come_in_pairs_and_are_secret() -> None:
    error = error_of(mode="docker", image="r.io/a", **{"registry-username": "u"})
    assert "expected both or neither" in error.message
    parsed = parse(mode="docker", image="r.io/a", **{"registry-username": "tok", "registry-password": "tok-secret"})
    assert "tok-secret" in parsed.secrets


@pytest.mark.parametrize(
    ("image", "registry"),
    [
        pytest.param("ghcr.io/team/app", "GHCR.io", id="case"),
        pytest.param("team/app", "index.docker.io", id="hub-alias"),
        pytest.param("reg.lab:5443/team/app", "reg.lab:5443", id="port"),
    ],
)
def test_registry_naming_the_image_host_is_accepted(image: str, registry: str) -> None:
    credentials = {"registry-username": "u", "registry-password": "p"}
    parsed = parse(mode="docker", image=image, registry=registry, **credentials)
    assert parsed.image is not None
    assert parsed.image.password == "p"


@pytest.mark.parametrize(
    ("image", "registry", "host"),
    [
        pytest.param("127.0.0.1:5000/team/app:1", "registry.digitalocean.com", "127.0.0.1:5000", id="do"),
        pytest.param("reg.lab:5443/team/app", "reg.lab", "reg.lab:5443", id="port-differs"),
        pytest.param("team/app", "ghcr.io", "docker.io", id="hub"),
    ],
)
def test_registry_other_than_the_image_host_is_refused_with_credentials(image: str, registry: str, host: str) -> None:
    credentials = {"registry-username": "u", "registry-password": "pw-secret"}
    error = error_of(mode="docker", image=image, registry=registry, **credentials)
    assert error.message == (
        f"registry and image: registry is {registry} but image is on {host}; the credentials would be sent to {host}"
        " (from the step's input registry, the step's input image)"
    )
    assert "pw-secret" not in str(error)
    without = parse(mode="docker", image=image, registry=registry)
    assert without.image is not None, "without credentials nothing would be sent: nothing to refuse"


def test_unknown_input_is_refused() -> None:
    with pytest.raises(SettingsError, match="unknown input"):
        settings.parse({**base_inputs(), "zzz": "x"}, environ={})


@pytest.mark.parametrize(
    ("unknown", "suggestion"),
    [
        pytest.param(["ssh-hots"], "unknown input(s): ssh-hots; did you mean 'ssh-host'?", id="typo"),
        pytest.param(["db_user"], "unknown input(s): db_user; did you mean 'db-user'?", id="underscores"),
        pytest.param(
            ["dbuser", "ssh_host", "zzz"],
            "unknown input(s): dbuser, ssh_host, zzz; did you mean 'db-user' for 'dbuser', 'ssh-host' for 'ssh_host'?",
            id="several",
        ),
    ],
)
def test_an_unknown_input_names_the_nearest_input(unknown: list[str], suggestion: str) -> None:
    with pytest.raises(SettingsError) as info:
        settings.parse({**base_inputs(), **dict.fromkeys(unknown, "x")}, environ={})
    assert info.value.message == suggestion


def test_secret_values_never_appear_in_errors() -> None:
    error = error_of(**{"db-password": "p@ss", "db-port": "x"})
    assert "p@ss" not in str(error)


def test_extra_env_and_args() -> None:
    parsed = parse(**{"extra-env": "# comment\nFOO=bar=baz\n\nEMPTY=", "args": "app_a 0002 --database 'x y'"})
    assert parsed.app.extra_env == {"FOO": "bar=baz", "EMPTY": ""}
    assert parsed.args == ("app_a", "0002", "--database", "x y")


def test_relative_working_directory_resolves_against_workspace() -> None:
    assert parse(**{"working-directory": "backend"}).app.working_directory == Path("/ws/backend")
    assert parse(**{"working-directory": "/abs"}).app.working_directory == Path("/abs")


def test_secrets_cover_derived_forms() -> None:
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk\nAAAAB3\n-----END OPENSSH PRIVATE KEY-----\n"
    parsed = parse(**{"ssh-private-key": key, "secret-key": "django-key"})
    secrets = set(parsed.secrets)
    assert {"p@ss:w/rd#%x", "p%40ss%3Aw%2Frd%23%25x", "s3cret:pw", "django-key", "b3BlbnNzaC1rZXk"} <= secrets
    assert any(secret.startswith("postgresql://migrator:p%40ss") for secret in secrets)
    assert all(secret.strip() for secret in secrets)


def test_url_is_percent_encoded() -> None:
    url = parse().db.url(5433)
    assert url == "postgresql://migrator:p%40ss%3Aw%2Frd%23%25x@127.0.0.1:5433/app?sslmode=prefer"


@given(password=st.text(min_size=1), user=st.text(min_size=1), name=st.text(min_size=1))
def test_any_credentials_round_trip_through_the_url(password: str, user: str, name: str) -> None:
    db = settings.DatabaseSettings(
        host="db", port=5432, name=name, user=user, password=password, sslmode="require", local_port=0
    )
    parts = urlsplit(db.url(6000))
    assert parts.scheme == "postgresql"
    assert parts.hostname == "127.0.0.1"
    assert parts.port == 6000
    assert unquote(parts.username or "") == user
    assert unquote(parts.password or "") == password
    assert unquote(parts.path[1:]) == name
    assert parts.query == "sslmode=require"


def test_raw_from_environ_reads_only_known_inputs() -> None:
    raw = settings.raw_from_environ({"INPUT_SSH_HOST": "h", "INPUT_SOMETHING_ELSE": "x", "HOME": "/root"})
    assert raw == {"ssh-host": "h"}


input_names = st.sampled_from([spec.name for spec in settings.INPUTS])


@given(raw=st.dictionaries(input_names, st.text(max_size=40), max_size=12))
def test_any_input_either_parses_or_names_what_is_wrong(raw: dict[str, str]) -> None:
    """Fuzzing the parser: nothing but a SettingsError (with an input's name in it) ever comes out."""
    try:
        settings.parse({**base_inputs(), **raw}, environ={"GITHUB_WORKSPACE": "/nonexistent-ws"})
    except SettingsError as error:
        message = error.message
    else:
        return
    assert ":" in message, "every settings error starts with what it is about"


def test_databases_fan_out() -> None:
    parsed = parse(**{"db-name": "", "databases": "tenant_a, other.host:6543/tenant_b\n10.0.0.9/tenant_c"})
    assert [(t.host, t.port, t.name) for t in parsed.targets] == [
        ("10.0.0.5", 5432, "tenant_a"),
        ("other.host", 6543, "tenant_b"),
        ("10.0.0.9", 5432, "tenant_c"),
    ]
    assert all(t.user == "migrator" and t.password == "p@ss:w/rd#%x" for t in parsed.targets)
    assert parse().targets == ()
    assert parse(concurrency="8").concurrency == 8


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param({"databases": "a, a"}, "databases: expected each database once", id="twice"),
        pytest.param({"databases": "h:99999/a"}, "databases: expected [host[:port]/]name", id="port"),
        pytest.param({"databases": "a b"}, "databases: expected [host[:port]/]name", id="space"),
        pytest.param({"databases": "a", "local-port": "5433"}, "local-port: expected 0 with databases", id="local"),
        pytest.param({"databases": "a", "mode": "compare", "image": "r.io/x"}, "databases: expected one", id="cmp"),
        pytest.param({"concurrency": "0"}, "concurrency: expected a number of databases at once, 1-32", id="c0"),
        pytest.param({"concurrency": "33"}, "concurrency: expected", id="c33"),
    ],
)
def test_databases_errors(overrides: dict[str, str], expected: str) -> None:
    assert error_of(**{"command": "showmigrations", **overrides}).message.startswith(expected)


def test_server_side_bounds_and_stale_lock_defaults_and_values() -> None:
    parsed = parse()
    assert parsed.app.bounds == settings.SessionBounds(idle_in_transaction=300, lock=0, statement=0)
    assert parsed.lock_break_stale is False
    parsed = parse(
        **{
            "db-idle-in-transaction-timeout": "0",
            "db-lock-timeout": "2.5",
            "db-statement-timeout": "600",
            "lock-break-stale": "true",
        }
    )
    assert parsed.app.bounds == settings.SessionBounds(idle_in_transaction=0, lock=2.5, statement=600)
    assert parsed.lock_break_stale is True


@pytest.mark.parametrize("name", ["db-idle-in-transaction-timeout", "db-lock-timeout", "db-statement-timeout"])
@pytest.mark.parametrize("value", ["-1", "abc", "nan", "inf", "2147484"])
def test_server_side_bounds_name_the_input(name: str, value: str) -> None:
    expected = f"{name}: expected a number of seconds up to 2147483, or 0 for off, got {value!r}"
    expected += f" (from the step's input {name})"
    assert error_of(**{name: value}).message == expected
