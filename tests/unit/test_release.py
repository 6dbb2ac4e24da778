"""scripts/release.py against a real bare remote and clone: vX and vX.Y move to each release, refusals move nothing."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("release_script", ROOT / "scripts/release.py")
assert _spec is not None
assert _spec.loader is not None
release = importlib.util.module_from_spec(_spec)
# dataclasses look their module up in sys.modules while the class is built.
sys.modules[_spec.name] = release
_spec.loader.exec_module(release)

CHANGELOG = """\
# Changelog

## [Unreleased]

## [{version}] - 2026-11-30

### Fixed

- Release {version} fixes things.

## [1.0.0] - 2026-01-01

### Added

- The first release.

[Unreleased]: https://example.invalid/compare/v{version}...HEAD
"""


@pytest.fixture(autouse=True)
def _git_identity(monkeypatch):
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", "Release Test")
        monkeypatch.setenv(f"GIT_{role}_EMAIL", "release@example.invalid")
    # The user's own git configuration (signing, hooks, default branch) stays out of the test.
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", "/dev/null")
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repos(tmp_path):
    """A bare remote and a clone of it with one commit on main."""
    bare, work = tmp_path / "remote.git", tmp_path / "work"
    git(tmp_path, "-c", "init.defaultBranch=main", "init", "--quiet", "--bare", str(bare))
    git(tmp_path, "-c", "init.defaultBranch=main", "clone", "--quiet", str(bare), str(work))
    return bare, work


def commit_release(work: Path, version: str, *, changelog_version: str | None = None, tag: str | None = None) -> str:
    """Commit pyproject.toml at version and a changelog, tag it and push both; the tag's commit."""
    (work / "pyproject.toml").write_text(f'[project]\nname = "demo"\nversion = "{version}"\n')
    (work / "CHANGELOG.md").write_text(CHANGELOG.format(version=changelog_version or version))
    git(work, "add", "pyproject.toml", "CHANGELOG.md")
    git(work, "commit", "--quiet", "-m", f"Release {version}")
    tag = tag or f"v{version}"
    git(work, "tag", "-a", "-m", tag, tag)
    git(work, "push", "--quiet", "origin", "main", f"refs/tags/{tag}")
    return git(work, "rev-parse", "HEAD")


def commit_of(repo: Path, ref: str) -> str | None:
    done = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], cwd=repo, capture_output=True, text=True
    )
    return done.stdout.strip() if done.returncode == 0 else None


def run(work: Path, tag: str, notes: Path, *extra: str) -> int:
    return release.main([tag, "--repo", str(work), "--notes", str(notes), *extra])


def test_a_release_moves_vx_and_vxy_on_the_remote_and_writes_its_notes(repos, tmp_path, capsys):
    bare, work = repos
    notes = tmp_path / "notes.md"
    first = commit_release(work, "1.2.3")

    assert run(work, "v1.2.3", notes) == 0

    assert commit_of(bare, "v1") == first
    assert commit_of(bare, "v1.2") == first
    assert notes.read_text() == "### Fixed\n\n- Release 1.2.3 fixes things.\n"
    assert "move v1 to v1.2.3" in capsys.readouterr().out

    second = commit_release(work, "1.2.4")
    assert run(work, "v1.2.4", notes) == 0

    assert commit_of(bare, "v1") == second
    assert commit_of(bare, "v1.2") == second
    assert commit_of(bare, "v1.2.3") == first
    assert "Release 1.2.4" in notes.read_text()


def test_a_patch_to_an_older_minor_moves_only_its_minor_tag(repos, tmp_path):
    bare, work = repos
    notes = tmp_path / "notes.md"
    newer = commit_release(work, "1.3.0")
    assert run(work, "v1.3.0", notes) == 0
    backport = commit_release(work, "1.2.5")

    assert run(work, "v1.2.5", notes) == 0

    assert commit_of(bare, "v1") == newer
    assert commit_of(bare, "v1.2") == backport


def test_dry_run_checks_and_moves_nothing(repos, tmp_path, capsys):
    bare, work = repos
    notes = tmp_path / "notes.md"
    commit_release(work, "1.2.3")

    assert run(work, "v1.2.3", notes, "--dry-run") == 0

    out = capsys.readouterr().out
    assert "would run: git push --force origin refs/tags/v1 refs/tags/v1.2" in out
    assert "Release 1.2.3 fixes things." in out
    assert not notes.exists()
    assert commit_of(bare, "v1") is None
    assert commit_of(work, "v1") is None


@pytest.mark.parametrize(
    ("version", "changelog_version", "tag", "message"),
    [
        pytest.param(
            "1.2.3", None, "v1.2.4", "tag v1.2.4 does not match pyproject.toml's version '1.2.3'", id="version-mismatch"
        ),
        pytest.param("1.2.3", "1.2.2", None, "CHANGELOG.md at v1.2.3 has no entry for 1.2.3", id="no-changelog-entry"),
        pytest.param("1.2.3", None, "1.2.3", "tag '1.2.3' is not a release tag vX.Y.Z", id="not-semver"),
        pytest.param("1.2.3", None, "v1.2.3-rc1", "tag 'v1.2.3-rc1' is not a release tag vX.Y.Z", id="prerelease"),
    ],
)
def test_a_refusal_names_the_problem_and_moves_nothing(
    repos, tmp_path, capsys, version, changelog_version, tag, message
):
    bare, work = repos
    notes = tmp_path / "notes.md"
    commit_release(work, version, changelog_version=changelog_version, tag=tag)
    capsys.readouterr()

    assert run(work, tag or f"v{version}", notes) == 1

    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not notes.exists()
    for repo in (bare, work):
        assert commit_of(repo, "v1") is None
        assert commit_of(repo, "v1.2") is None


def test_a_tag_the_remote_does_not_have_is_refused(repos, tmp_path, capsys):
    bare, work = repos
    commit_release(work, "1.2.3")
    git(work, "push", "--quiet", "origin", ":refs/tags/v1.2.3")

    assert run(work, "v1.2.3", tmp_path / "notes.md") == 1

    assert "remote origin does not have it: push the tag first" in capsys.readouterr().err
    assert commit_of(bare, "v1") is None


def test_dry_run_before_the_push_only_warns_about_the_remote(repos, tmp_path, capsys):
    bare, work = repos
    commit_release(work, "1.2.3")
    git(work, "push", "--quiet", "origin", ":refs/tags/v1.2.3")

    assert run(work, "v1.2.3", tmp_path / "notes.md", "--dry-run") == 0

    assert "remote origin does not have v1.2.3 yet: push it before the release" in capsys.readouterr().out
    assert commit_of(bare, "v1") is None


def test_the_script_runs_as_a_command(repos, tmp_path):
    bare, work = repos
    first = commit_release(work, "1.2.3")
    notes = tmp_path / "notes.md"

    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts/release.py"), "v1.2.3", "--notes", str(notes)],
        cwd=work,
        capture_output=True,
        text=True,
    )

    assert done.returncode == 0, done.stderr
    assert commit_of(bare, "v1.2") == first
