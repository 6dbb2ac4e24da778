"""db-sslrootcert as the file libpq reads: written for the command's run, and copied into its container."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from bastion_action.errors import SettingsError

FILE_NAME = "root.crt"


@contextlib.contextmanager
def written(pem: str | None) -> Iterator[str | None]:
    """A file holding ``pem`` (0600, in a directory of its own), removed on exit; None when there is no CA."""
    if not pem:
        yield None
        return
    parent = os.environ.get("RUNNER_TEMP") or None
    try:
        directory = tempfile.mkdtemp(prefix="bastion-migrate-ca-", dir=parent)
    except OSError as exc:
        raise _unwritable(parent, exc) from exc
    try:
        path = Path(directory) / FILE_NAME
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as file:
                file.write(pem.strip() + "\n")
        except OSError as exc:
            raise _unwritable(parent, exc) from exc
        yield str(path)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _unwritable(parent: str | None, exc: OSError) -> SettingsError:
    """The runner cannot take the CA file (its disk full, RUNNER_TEMP not writable): before any connection."""
    where = f"RUNNER_TEMP ({parent})" if parent else f"the temporary directory ({tempfile.gettempdir()})"
    return SettingsError(
        f"db-sslrootcert: the CA certificate could not be written to {where} for the command to read: {exc}",
        hint="The runner's disk is full, or that directory is not writable: free space on the runner (an earlier "
        "step, or a larger runner) and re-run.",
        inputs=("db-sslrootcert",),
    )


def archive_for(database_url: str) -> bytes | None:
    """A tar that puts the URL's ``sslrootcert`` file at the same path in a container (extracted at ``/``).

    Copied through the daemon rather than bind-mounted: a remote daemon, or one serving a runner that
    is itself a container, does not see the runner's files. A CA certificate is public: 0644, so the
    image's user reads it whoever that is.
    """
    paths = parse_qs(urlsplit(database_url).query).get("sslrootcert")
    if not paths:
        return None
    path = Path(paths[-1])
    data = path.read_bytes()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        directory = tarfile.TarInfo(str(path.parent).lstrip("/"))
        directory.type, directory.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(directory)
        member = tarfile.TarInfo(str(path).lstrip("/"))
        member.size, member.mode = len(data), 0o644
        tar.addfile(member, io.BytesIO(data))
    return buffer.getvalue()
