"""A throwaway PostgreSQL cluster for the tests: ``initdb`` in a temporary directory, a server on a unix socket there
and on a free loopback port, stopped at the end of the session.

The ``postgres`` fixture (session scope) yields a :class:`PostgresServer`; :meth:`PostgresServer.create_database`
hands out fresh databases as ``postgresql+psycopg://`` URLs. Where the PostgreSQL binaries (``initdb``, ``pg_ctl``:
on PATH or under ``/usr/lib/postgresql/*/bin``) or the ``psycopg`` driver are missing, or the server does not start,
the tests that use it skip with the reason; with ``PRVR_REQUIRE_POSTGRES=1`` (CI, once it installed PostgreSQL) they
fail instead. As root the server runs as the ``postgres`` (else ``nobody``) user: PostgreSQL refuses to run as root.

Import the fixture into a test module: ``from pg import postgres  # noqa: F401``.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

__all__ = ["ADMIN", "PostgresServer", "postgres"]

ADMIN = "prvr_admin"  # the cluster's superuser (trusted on the socket and the loopback)
REQUIRE_ENV = "PRVR_REQUIRE_POSTGRES"  # "1": fail instead of skipping when no server can run
START_TIMEOUT_S = 30

# trust for the superuser, passwords (SCRAM) for every other role: the ${VAR} expansion test needs a real check
PG_HBA = """\
local all {admin} trust
host  all {admin} 127.0.0.1/32 trust
local all all scram-sha-256
host  all all 127.0.0.1/32 scram-sha-256
"""


def _unavailable(reason: str) -> None:
    """Skip (or, when CI requires PostgreSQL, fail) the requesting test."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"PostgreSQL tests required ({REQUIRE_ENV}=1) but {reason}", pytrace=False)
    pytest.skip(f"no PostgreSQL for these tests: {reason}")


def find_bin_dir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``: PATH first, then Debian's ``/usr/lib/postgresql/<v>/bin``."""
    initdb = shutil.which("initdb")
    if initdb is not None:
        directory = Path(os.path.realpath(initdb)).parent
        if (directory / "pg_ctl").is_file():
            return directory
    versions = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin") if Path(p).parent.name.isdigit()]
    for candidate in sorted(versions, key=lambda p: int(p.parent.name), reverse=True):  # the newest first
        if (candidate / "initdb").is_file() and (candidate / "pg_ctl").is_file():
            return candidate
    return None


def _server_user() -> pwd.struct_passwd | None:
    """The unprivileged user to run the server as when the tests run as root; None when not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    _unavailable("the tests run as root and there is no 'postgres' or 'nobody' user to run the server as")
    raise AssertionError("unreachable")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PostgresServer:
    """A running throwaway cluster.

    Attributes:
        socket_dir: the directory of its unix socket.
        port: its loopback TCP port (also the socket's name, ``.s.PGSQL.<port>``).
    """

    socket_dir: Path
    port: int
    _names: Iterator[int] = field(default_factory=itertools.count, repr=False)

    def url(self, database: str, *, user: str = ADMIN, password: str | None = None, tcp: bool = False) -> str:
        """A SQLAlchemy URL: over the unix socket (default) or the loopback (``tcp``); ``password`` is written
        as given (``${VAR}`` stays text for the index to expand)."""
        credentials = user if password is None else f"{user}:{password}"
        if tcp:
            return f"postgresql+psycopg://{credentials}@127.0.0.1:{self.port}/{database}"
        return f"postgresql+psycopg://{credentials}@/{database}?host={quote(str(self.socket_dir))}&port={self.port}"

    def execute(self, *statements: str, database: str = "postgres") -> None:
        """Run statements as the superuser in autocommit mode (CREATE DATABASE cannot run in a transaction)."""
        import psycopg

        with psycopg.connect(host=str(self.socket_dir), port=self.port, user=ADMIN, dbname=database,
                             autocommit=True) as connection:
            for statement in statements:
                connection.execute(statement)

    def create_database(self, name: str | None = None, *, owner: str = ADMIN) -> str:
        """A new empty database (default name ``test_<n>``), as the superuser's socket URL."""
        name = name or f"test_{next(self._names)}"
        self.execute(f'CREATE DATABASE "{name}" OWNER "{owner}"')
        return self.url(name)


def _run(command: list[str], user: pwd.struct_passwd | None, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    options: dict[str, Any] = {}
    if user is not None:
        options = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False, **options)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL cluster for the session (skips, or fails under ``PRVR_REQUIRE_POSTGRES=1``, when none
    can run here)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("the psycopg driver is not installed (pip install 'psycopg[binary]')")
    bin_dir = find_bin_dir()
    if bin_dir is None:
        _unavailable("initdb / pg_ctl not on PATH nor under /usr/lib/postgresql/*/bin (apt-get install postgresql)")
    user = _server_user()
    root = Path(tempfile.mkdtemp(prefix="prvr-pg-"))  # short: a unix socket path has ~100 characters at most
    data, log = root / "data", root / "server.log"
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    pg_ctl = str(bin_dir / "pg_ctl")
    started = False
    try:
        init = _run([str(bin_dir / "initdb"), "-D", str(data), "-U", ADMIN, "--auth=trust", "-E", "UTF8",
                     "--locale=C", "--no-sync"], user, root, START_TIMEOUT_S * 4)
        if init.returncode != 0:
            _unavailable(f"initdb failed ({init.returncode}): {(init.stderr or init.stdout).strip()[-800:]}")
        (data / "pg_hba.conf").write_text(PG_HBA.format(admin=ADMIN), encoding="utf-8")
        port = _free_port()
        options = (f"-k {root} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
                   "-c full_page_writes=off -c shared_buffers=16MB -c max_connections=60")
        start = _run([pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", str(START_TIMEOUT_S), "-o", options,
                      "start"], user, root, START_TIMEOUT_S + 10)
        started = start.returncode == 0
        if not started:
            tail = log.read_text(encoding="utf-8", errors="replace")[-800:] if log.is_file() else start.stderr
            _unavailable(f"the server did not start ({start.returncode}): {tail.strip()}")
        yield PostgresServer(root, port)
    finally:
        if started:
            _run([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], user, root, START_TIMEOUT_S)
        shutil.rmtree(root, ignore_errors=True)
