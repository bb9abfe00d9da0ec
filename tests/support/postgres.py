"""A throwaway PostgreSQL for the fleet's tests, or the one `STELLA_TEST_DATABASE_URL` names.

`start_postgres()` makes a cluster of Debian's PostgreSQL (`/usr/lib/postgresql/<v>/bin`) in a new
directory under /tmp (mode 755: postgres must traverse it; short, for the unix socket), with `initdb
-A trust`, and starts it on 127.0.0.1 and a free port with fsync off. Its settings are written into
`postgresql.auto.conf`, never passed with `-o` (a later plain `pg_ctl start` would come up on 5432);
pg_ctl gets a log file (`-l`) and stdout/stderr on /dev/null (the postmaster would otherwise hold a
pipe of ours open forever). Run as root, initdb and pg_ctl run as the `postgres` user (`runuser`):
PostgreSQL refuses to run as root. `PostgresServer.stop()` stops it (`-m immediate`) and removes the
directory; `restart()` (`pg_ctl -m fast restart`), `halt()` (`-m immediate`) and `start()` stop and
start it in place, on the same port, for tests of a database that goes away.

`external_postgres()` uses `STELLA_TEST_DATABASE_URL` instead (a role that may create databases and
roles). Either way `new_database()` makes a fresh database per test and `drop_database()` removes it
(`WITH (FORCE)`) with the test's service role.

A missing PostgreSQL raises `ToolMissing`, whose message says to run `make setup`; tests must fail on
it, never skip. Nothing here touches a cluster it did not start, except the database it created.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .registry import ToolMissing, free_port

PG_GLOB = "/usr/lib/postgresql/*/bin/initdb"
SETUP_HINT = "run `make setup` (it installs Debian's postgresql)"
URL_ENV = "STELLA_TEST_DATABASE_URL"
START_TIMEOUT = 60


def find_pg_bin() -> Path:
    """The newest `/usr/lib/postgresql/<v>/bin` with initdb and pg_ctl, or `ToolMissing`."""
    found = sorted(
        glob.glob(PG_GLOB), key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0
    )
    for initdb in reversed(found):
        bin_dir = Path(initdb).parent
        if os.access(initdb, os.X_OK) and os.access(bin_dir / "pg_ctl", os.X_OK):
            return bin_dir
    raise ToolMissing(f"PostgreSQL is not installed (looked for {PG_GLOB}): {SETUP_HINT}")


@dataclass
class PostgresServer:
    """A PostgreSQL server whose superuser URL is `admin_url` (a database to connect to for admin)."""

    admin_url: str
    data_dir: Path | None = None
    root: Path | None = None
    bin_dir: Path | None = None

    def url(self, dbname: str) -> str:
        from psycopg.conninfo import make_conninfo

        return make_conninfo(self.admin_url, dbname=dbname)

    def new_database(self) -> ScratchDatabase:
        """A fresh, empty database and a service role name of its own (not created here)."""
        import psycopg
        from psycopg import sql

        suffix = secrets.token_hex(4)
        name, role = f"stella_test_{suffix}", f"stella_svc_{suffix}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return ScratchDatabase(self, name, role)

    def stop(self) -> None:
        """Stop the cluster this started (not an external one) and remove its directory."""
        if self.data_dir is None or self.root is None or self.bin_dir is None:
            return
        subprocess.run(
            [
                *_as_postgres(),
                str(self.bin_dir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=START_TIMEOUT,
            check=False,
        )
        shutil.rmtree(self.root, ignore_errors=True)

    def restart(self) -> None:
        """`pg_ctl -m fast restart` of the cluster this started: every session is ended, and it comes back
        on the same port and socket (its settings are in postgresql.auto.conf, not in `-o`)."""
        self._pg_ctl("-m", "fast", "restart")

    def halt(self) -> None:
        """Stop the cluster this started as a crash would (`-m immediate`: sessions end at once, no
        checkpoint), keeping its directory: `start()` brings it back."""
        self._pg_ctl("-m", "immediate", "stop")

    def start(self) -> None:
        """Start again the cluster `halt()` stopped, on the same port and socket."""
        self._pg_ctl("start")

    def _pg_ctl(self, *args: str) -> None:
        if self.data_dir is None or self.root is None or self.bin_dir is None:
            raise RuntimeError("only a cluster start_postgres() made can be stopped and started")
        log = self.root / "sock" / "postgres.log"
        pg_ctl = [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(log), "-w"]
        command = [*_as_postgres(), *pg_ctl, "-t", str(START_TIMEOUT), *args]
        try:  # pg_ctl gives up first (-t), so that its failure, not ours, is reported
            done = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=START_TIMEOUT + 30,
                check=False,
            )
            failure = f"exit {done.returncode}" if done.returncode != 0 else ""
        except subprocess.TimeoutExpired:
            failure = f"no answer in {START_TIMEOUT + 30} s"
        if failure:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(command)}: {failure}; the server's log ends with:\n{tail}")


@dataclass
class ScratchDatabase:
    """One test's database (`url`: as the superuser) and the service role name its fleet uses."""

    server: PostgresServer
    name: str
    role: str

    @property
    def url(self) -> str:
        return self.server.url(self.name)

    def drop(self) -> None:
        """Drop the database and the test's service role (gone with its only database)."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.server.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name)))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(self.role)))


def _as_postgres() -> list[str]:
    """The prefix that runs a command as the `postgres` user when we are root (PostgreSQL refuses root)."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def external_postgres() -> PostgresServer | None:
    """The server `STELLA_TEST_DATABASE_URL` names, when it is set."""
    url = os.environ.get(URL_ENV)
    return PostgresServer(url) if url else None


def start_postgres() -> PostgresServer:
    """A new cluster under /tmp on 127.0.0.1 and a free port, ready for connections."""
    bin_dir = find_pg_bin()
    root = Path(tempfile.mkdtemp(prefix="stella-pg-"))
    try:
        root.chmod(0o755)  # postgres must traverse it (a 700 root-owned parent: "Permission denied")
        data, sock = root / "data", root / "sock"
        data.mkdir()
        sock.mkdir()
        if os.geteuid() == 0:
            for path in (data, sock):
                shutil.chown(path, "postgres", "postgres")
        initdb = [
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        ]
        _run([*_as_postgres(), *initdb], root)
        port = free_port()
        settings = {
            "port": str(port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{sock}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        with open(data / "postgresql.auto.conf", "a", encoding="utf-8") as fh:
            fh.writelines(f"{key} = {value}\n" for key, value in settings.items())
        log = sock / "postgres.log"  # a directory postgres owns: pg_ctl fails silently otherwise
        _run(
            [*_as_postgres(), str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "start"],
            root,
            log,
        )
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    admin = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    return PostgresServer(admin, data_dir=data, root=root, bin_dir=bin_dir)


def _run(command: list[str], root: Path, log: Path | None = None) -> None:
    done = subprocess.run(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE if log is None else subprocess.DEVNULL,
        timeout=START_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace") if done.stderr else ""
        if log is not None and log.exists():
            detail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}) in {root}: {detail}")
