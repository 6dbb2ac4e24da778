"""Checks a pushed release tag vX.Y.Z, writes its release notes, and moves the vX and vX.Y tags to it.

    python scripts/release.py v1.2.3 --notes notes.md [--repo DIR] [--remote origin] [--dry-run]

The tag must be semver, equal pyproject.toml's `[project] version` and have a
`## [X.Y.Z]` section in CHANGELOG.md, all read from the tagged commit, and the
remote must hold the same tag (a dry run only warns when it has none yet). vX and vX.Y are lightweight tags: they are
pointers that move, not records of a release (the vX.Y.Z tag is that), so they
need no tagger identity on the runner, and `git describe` keeps naming the
release tag. A tag is moved only forward: a patch release of an older minor
(v1.2.5 after v1.3.0) moves v1.2 but leaves v1 on v1.3.0.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

_SEMVER_TAG = re.compile(r"v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)")
_HEADING = re.compile(r"^## ", re.MULTILINE)
_LINK_DEFINITION = re.compile(r"^\[[^\]]+\]:\s", re.MULTILINE)


class RefusalError(Exception):
    """A release that must not go ahead; the message names what is wrong and the fix."""


@dataclass(frozen=True)
class Version:
    major: int
    minor: int
    patch: int

    @classmethod
    def from_tag(cls, tag: str) -> Version | None:
        match = _SEMVER_TAG.fullmatch(tag)
        if match is None:
            return None
        return cls(int(match[1]), int(match[2]), int(match[3]))

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.patch)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


@dataclass(frozen=True)
class Git:
    repo: Path

    def run(self, *args: str) -> str:
        try:
            done = subprocess.run(["git", "-C", str(self.repo), *args], capture_output=True, text=True, check=False)
        except FileNotFoundError as exc:
            raise RefusalError("git is not installed or not on PATH: install git") from exc
        if done.returncode != 0:
            detail = done.stderr.strip().splitlines()
            raise RefusalError(f"git {' '.join(args)} failed: {detail[-1] if detail else f'exit {done.returncode}'}")
        return done.stdout

    def commit_of(self, ref: str) -> str | None:
        done = subprocess.run(
            ["git", "-C", str(self.repo), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
            capture_output=True,
            text=True,
            check=False,
        )
        return done.stdout.strip() if done.returncode == 0 else None

    def file_at(self, commit: str, path: str) -> str | None:
        done = subprocess.run(
            ["git", "-C", str(self.repo), "show", f"{commit}:{path}"], capture_output=True, text=True, check=False
        )
        return done.stdout if done.returncode == 0 else None


def changelog_entry(changelog: str, version: Version) -> str | None:
    """The text of CHANGELOG.md's `## [X.Y.Z]` section, without its heading; None when there is none."""
    heading = re.compile(rf"^## \[{re.escape(str(version))}\][^\n]*\n", re.MULTILINE)
    match = heading.search(changelog)
    if match is None:
        return None
    rest = changelog[match.end() :]
    ends = [found.start() for found in (_HEADING.search(rest), _LINK_DEFINITION.search(rest)) if found]
    return rest[: min(ends, default=len(rest))].strip()


def remote_commit(git: Git, remote: str, tag: str) -> str | None:
    """The commit the remote's tag points at (peeled when annotated); None when the remote has no such tag."""
    refs = {}
    for line in git.run("ls-remote", "--tags", remote, f"refs/tags/{tag}", f"refs/tags/{tag}^{{}}").splitlines():
        sha, _, ref = line.partition("\t")
        refs[ref] = sha
    return refs.get(f"refs/tags/{tag}^{{}}") or refs.get(f"refs/tags/{tag}")


def newest_release(git: Git, pattern: str) -> Version | None:
    """The highest vX.Y.Z tag matching a glob, ignoring tags that are not semver."""
    versions = [Version.from_tag(tag) for tag in git.run("tag", "--list", pattern).split()]
    return max((v for v in versions if v is not None), key=lambda v: v.key, default=None)


def check(git: Git, tag: str, remote: str, *, dry_run: bool) -> tuple[Version, str, str]:
    """The tag's version, commit and release notes, or a refusal; a dry run also checks a tag not pushed yet."""
    version = Version.from_tag(tag)
    if version is None:
        raise RefusalError(f"tag {tag!r} is not a release tag vX.Y.Z (e.g. v1.2.3): tag the release as vX.Y.Z")
    commit = git.commit_of(f"refs/tags/{tag}")
    if commit is None:
        raise RefusalError(f"tag {tag} does not exist in {git.repo}: create it (git tag {tag}) or fetch it")
    pyproject = git.file_at(commit, "pyproject.toml")
    if pyproject is None:
        raise RefusalError(f"pyproject.toml is missing at {tag}: tag the commit that holds the release")
    try:
        declared = tomllib.loads(pyproject).get("project", {}).get("version")
    except tomllib.TOMLDecodeError as exc:
        raise RefusalError(f"pyproject.toml at {tag} is not valid TOML ({exc}): fix it and tag again") from exc
    if declared != str(version):
        raise RefusalError(
            f"tag {tag} does not match pyproject.toml's version {declared!r}: "
            f"set [project] version = {str(version)!r} and tag that commit, or tag v{declared} instead"
        )
    changelog = git.file_at(commit, "CHANGELOG.md")
    notes = None if changelog is None else changelog_entry(changelog, version)
    if not notes:
        raise RefusalError(
            f"CHANGELOG.md at {tag} has no entry for {version}: "
            f"add a non-empty '## [{version}] - YYYY-MM-DD' section and tag that commit"
        )
    pushed = remote_commit(git, remote, tag)
    if pushed is None and dry_run:
        print(f"remote {remote} does not have {tag} yet: push it before the release")
    elif pushed != commit:
        state = "does not have it" if pushed is None else f"has it on {pushed[:12]}, here it is on {commit[:12]}"
        raise RefusalError(f"remote {remote} {state}: push the tag first (git push {remote} refs/tags/{tag})")
    return version, commit, notes


def tags_to_move(git: Git, version: Version) -> list[str]:
    """vX and vX.Y, each only when no later release of its series exists."""
    moves = []
    for alias in (f"v{version.major}", f"v{version.major}.{version.minor}"):
        newest = newest_release(git, f"{alias}.*")
        if newest is None or newest.key <= version.key:
            moves.append(alias)
        else:
            print(f"{alias} stays: v{newest} is a later release of that series")
    return moves


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("tag", help="the pushed release tag, vX.Y.Z")
    parser.add_argument("--repo", type=Path, default=Path.cwd(), help="the repository (default: the current directory)")
    parser.add_argument("--remote", default="origin", help="the remote to push vX and vX.Y to (default: origin)")
    parser.add_argument("--notes", type=Path, help="write the release notes here (default: print them)")
    parser.add_argument("--dry-run", action="store_true", help="check and print what would be done; change nothing")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    git = Git(args.repo)
    try:
        version, commit, notes = check(git, args.tag, args.remote, dry_run=args.dry_run)
        moves = tags_to_move(git, version)
    except RefusalError as exc:
        print(f"release: refused: {exc}", file=sys.stderr)
        return 1
    prefix = "would " if args.dry_run else ""
    if args.notes is None:
        print(notes)
    elif args.dry_run:
        print(f"would write the release notes for {version} to {args.notes}:\n{notes}")
    else:
        args.notes.write_text(notes + "\n", encoding="utf-8")
        print(f"release notes for {version} written to {args.notes}")
    if not moves:
        return 0
    for alias in moves:
        print(f"{prefix}move {alias} to {args.tag} ({commit[:12]})")
    push = ["push", "--force", args.remote, *(f"refs/tags/{alias}" for alias in moves)]
    if args.dry_run:
        print(f"would run: git {' '.join(push)}")
        return 0
    try:
        for alias in moves:
            git.run("tag", "--force", alias, commit)
        git.run(*push)
    except RefusalError as exc:
        print(f"release: failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
