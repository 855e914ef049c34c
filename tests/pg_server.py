"""A throwaway PostgreSQL server for tests: initdb into a temporary directory, postgres on a free 127.0.0.1 port
(its unix socket in that directory too), password authentication over TCP, stopped and removed at the end.

PostgreSQL refuses to run as root: under root the server runs as `nobody` (or $DLTRAIN_TEST_PG_USER), in a
directory of its own under the system's temporary directory (pytest's are private to root); as any other user it
runs as that user. `start()` raises Unavailable, with the reason, where no server can be started here.
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
from pathlib import Path

USER, PASSWORD = "dltrain", "s3cret-pw"


class Unavailable(Exception):
    """No PostgreSQL server can be started here (the message says why)."""


def find_bindir() -> Path | None:
    """The directory of initdb, pg_ctl and postgres: `pg_config --bindir`, Debian's /usr/lib/postgresql/*/bin
    (newest first), or PATH."""
    candidates = []
    if shutil.which("pg_config"):
        try:
            out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10)
            candidates.append(out.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(versions, key=lambda p: [int(x) for x in Path(p).parent.name.split(".") if x.isdigit()],
                         reverse=True)
    if shutil.which("initdb"):
        candidates.append(str(Path(shutil.which("initdb")).parent))
    for directory in candidates:
        if directory and all((Path(directory) / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(directory)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self):
        self.dir = None
        self.port = None
        self.bindir = None
        self._as = {}

    def start(self) -> PostgresServer:
        self.bindir = find_bindir()
        if self.bindir is None:
            raise Unavailable("no PostgreSQL server binaries (initdb, pg_ctl, postgres) found via pg_config --bindir, "
                              "/usr/lib/postgresql/*/bin or PATH (apt-get install postgresql)")
        try:
            import psycopg2  # noqa: F401
        except ImportError:
            raise Unavailable("psycopg2 is not installed (pip install psycopg2-binary)") from None
        self.dir = Path(tempfile.mkdtemp(prefix="dltrain-pg-"))
        if os.geteuid() == 0:  # postgres refuses root: run it as an unprivileged user
            name = os.environ.get("DLTRAIN_TEST_PG_USER", "nobody")
            try:
                account = pwd.getpwnam(name)
            except KeyError:
                raise Unavailable(f"running as root and there is no user {name!r} to run postgres as "
                                  f"(set DLTRAIN_TEST_PG_USER)") from None
            os.chown(self.dir, account.pw_uid, account.pw_gid)
            self._as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        (self.dir / "pw").write_text(PASSWORD + "\n")
        if self._as:
            os.chown(self.dir / "pw", self._as["user"], self._as["group"])
        data = self.dir / "data"
        self._run("initdb", "-D", data, "-U", USER, "--pwfile", self.dir / "pw", "--auth-local=trust",
                  "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync")
        self.port = free_port()
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off "
                   f"-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "-D", data, "-l", self.dir / "log", "-o", options, "-w", "-t", "60", "start")
        return self

    def _run(self, tool: str, *args) -> None:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "HOME": str(self.dir)}
        try:
            result = subprocess.run([str(self.bindir / tool), *map(str, args)], capture_output=True, text=True,
                                    timeout=120, cwd=self.dir, env=env, **self._as)
        except (OSError, subprocess.SubprocessError) as exc:
            raise Unavailable(f"{tool} could not run: {exc}") from None
        if result.returncode != 0:
            log = (self.dir / "log").read_text(errors="replace")[-2000:] if (self.dir / "log").is_file() else ""
            raise Unavailable(f"{tool} failed ({result.returncode}): {result.stderr.strip()[-2000:]} {log}")

    def url(self, database: str, driver: str = "postgresql+psycopg2", password: str = PASSWORD) -> str:
        return f"{driver}://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new, empty database; returns its name."""
        import psycopg2

        name = "db_" + uuid.uuid4().hex[:12]
        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user=USER, password=PASSWORD,
                                      dbname="postgres")
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE {name}")
        finally:
            connection.close()
        return name

    def stop(self) -> None:
        if self.dir is None:
            return
        if self.port is not None and (self.dir / "data" / "postmaster.pid").is_file():
            try:
                self._run("pg_ctl", "-D", self.dir / "data", "-m", "immediate", "-w", "-t", "60", "stop")
            except Unavailable:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None
