"""A real PostgreSQL for the tests: a cluster made by initdb in a temporary directory, started and stopped
with pg_ctl (as the `postgres` user when the tests run as root, since PostgreSQL refuses to run as root),
password-protected (the password must never show in a log or an error body)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port

USER, PASSWORD, DATABASE = "tokenyard", "pg-test-password-4711", "postgres"


def _binary(name: str) -> str:
    """initdb and pg_ctl: on PATH, or where Debian's postgresql package puts them."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise AssertionError(f"{name} is missing: `make tools` installs PostgreSQL (Debian package postgresql)")
    return found


class PostgresServer:
    def __init__(self) -> None:
        self.as_postgres = os.geteuid() == 0
        self.workdir = Path(tempfile.mkdtemp(prefix="tokenyard-pg-"))
        self.data, self.socket_dir = self.workdir / "data", self.workdir
        self.port = free_port()
        self.url = f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{DATABASE}"
        if self.as_postgres:
            owner = pwd.getpwnam("postgres")
            os.chown(self.workdir, owner.pw_uid, owner.pw_gid)

    def _run(self, *args: str) -> None:
        command = list(args)
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def init(self) -> PostgresServer:
        password_file = self.workdir / "password"
        password_file.write_text(PASSWORD)
        if self.as_postgres:
            owner = pwd.getpwnam("postgres")
            os.chown(password_file, owner.pw_uid, owner.pw_gid)
        self._run(
            _binary("initdb"),
            "-D",
            str(self.data),
            "-U",
            USER,
            "--pwfile",
            str(password_file),
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "-E",
            "UTF8",
        )
        password_file.unlink()
        return self

    def start(self) -> PostgresServer:
        options = f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            _binary("pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.workdir / "log"), "-w", "start"
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        """`immediate`: as a crash, no clean shutdown; `fast`: connections are cut and it shuts down cleanly."""
        self._run(_binary("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self.stop("immediate")
            except subprocess.CalledProcessError:
                pass
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer().init().start()
    try:
        yield server
    finally:
        server.destroy()
