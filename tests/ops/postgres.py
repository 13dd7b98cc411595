"""A throwaway PostgreSQL server on loopback for the ops store tests, from Debian's server
programs (`scripts/ensure-postgres.sh` installs them): its own data folder, port and socket,
trust authentication for the test user, no fsync; stopped and removed at the end."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

USER = "cdp"


def server_programs() -> Path:
    """The newest installed PostgreSQL's bin folder."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    if not found:
        raise RuntimeError(
            "PostgreSQL's server programs are not installed (/usr/lib/postgresql/<v>/bin): "
            "`make test` installs them (scripts/ensure-postgres.sh), or apt-get install postgresql"
        )
    return found[-1].parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server; yields the admin URL (database `postgres`)."""
    programs = server_programs()
    root = Path(tempfile.mkdtemp(prefix="cdp-postgres-"))
    # PostgreSQL refuses to run as root: as root, run it as the package's `postgres` user.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", _free_port()

    def run(*args: str | Path) -> None:
        done = subprocess.run(
            [*as_user, *map(str, args)], capture_output=True, text=True, check=False
        )
        if done.returncode:
            log = root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{args[0]} failed: {done.stderr or done.stdout}\n{tail}")

    run(programs / "initdb", "-D", data, "-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(programs / "pg_ctl", "-D", data, "-l", root / "server.log", "-o", options, "-w", "start")
    try:
        yield f"postgresql://{USER}@127.0.0.1:{port}/postgres"
    finally:
        run(programs / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def new_database(admin_url: str) -> str:
    """A fresh, empty database on the server; its SQLAlchemy URL."""
    name = f"ops_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    host = admin_url.removeprefix("postgresql://").rsplit("/", 1)[0]
    return f"postgresql+psycopg://{host}/{name}"
