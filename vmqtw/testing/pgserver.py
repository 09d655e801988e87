"""
A throwaway PostgreSQL server (for the ``postgresql`` message store's tests
and for ``benchmarks/store_bench.py``): ``initdb`` in a temporary
directory, ``pg_ctl start`` on a free port of 127.0.0.1 (so real nodes can
reach it too), removed by :meth:`PostgresServer.stop`.

PostgreSQL refuses to run as root, so as root the server runs as the
``postgres`` user the Debian package creates.  The pytest fixtures over it
are in ``tests/pgserver.py``.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from typing import List, Optional

__all__ = ["INSTALL_HINT", "PostgresServer", "postgres_bindir"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


INSTALL_HINT = ("PostgreSQL is not installed: the tests of the postgresql message store need "
                "it (apt-get install postgresql)")


def postgres_bindir() -> Optional[str]:
    """Where initdb and pg_ctl are, or None."""
    found = shutil.which("pg_config")
    if found:
        out = subprocess.run([found, "--bindir"], capture_output=True, text=True)
        bindir = out.stdout.strip()
        if os.path.exists(os.path.join(bindir, "initdb")):
            return bindir
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return os.path.dirname(candidates[0]) if candidates else None


class PostgresServer:
    """One server for one test session (or one pytest worker)."""

    def __init__(self, durable: bool = False) -> None:
        bindir = postgres_bindir()
        if bindir is None:
            raise RuntimeError(INSTALL_HINT)
        self.bindir = bindir
        self.directory = tempfile.mkdtemp(prefix="vmqtw-pg-")
        self.data = os.path.join(self.directory, "data")
        self.port = _free_port()
        self.user: Optional[str] = None
        if os.geteuid() == 0:
            self.user = "postgres"
            entry = pwd.getpwnam(self.user)
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
        self.started = False
        #: False (tests): no fsync, asynchronous commit -- fast, and a
        #: crash of the test machine loses nothing anyone needs.  True
        #: (benchmarks): PostgreSQL's defaults, a commit is on disk.
        self.durable = durable

    def _run(self, *argv: str) -> None:
        command: List[str] = list(argv)
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.directory)
        if done.returncode != 0:
            raise RuntimeError("%s failed: %s%s" % (argv[0], done.stdout, done.stderr))

    def start(self) -> "PostgresServer":
        self._run(os.path.join(self.bindir, "initdb"), "-D", self.data, "-A", "trust",
                  "-U", "vmqtw", "-E", "UTF8", "--no-sync")
        self.resume()
        return self

    def pause(self) -> None:
        """Stop the server (its data stays): the database goes away."""
        self._run(os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-m", "fast", "-w",
                  "stop")
        self.started = False

    def resume(self) -> None:
        """Start it again on the same port."""
        options = "-p %d -c listen_addresses=127.0.0.1 -k %s" % (self.port, self.directory)
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-o", options, "-w",
                  "-l", os.path.join(self.directory, "log"), "start")
        self.started = True

    def dsn(self, database: str = "postgres", schema: Optional[str] = None) -> str:
        dsn = "host=127.0.0.1 port=%d user=vmqtw dbname=%s" % (self.port, database)
        if schema is not None:
            dsn += " options='-c search_path=%s'" % (schema,)
        return dsn

    def new_schema(self) -> str:
        """A fresh, empty schema; its name."""
        import psycopg
        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.dsn(), autocommit=True) as connection:
            connection.execute("CREATE SCHEMA %s" % (name,))
        return name

    def stop(self) -> None:
        try:
            if self.started:
                self._run(os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-m",
                          "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)
