"""A private, throwaway PostgreSQL cluster for the tests that stop the database server or reach
it over another link: never the machine's shared server, which other tests use meanwhile."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg

from devtools.procs import free_port
from tests.support.services import unavailable


def pg_bin() -> Path | None:
    """The newest installed PostgreSQL's bin folder (Debian: /usr/lib/postgresql/<v>/bin)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    return found[-1].parent if found else None


@dataclass
class Cluster:
    """Data and socket under `root`; TCP on `listen` addresses, port `port`."""

    bin: Path
    root: Path
    port: int
    listen: Sequence[str] = ("127.0.0.1",)

    def url(self, host: str = "127.0.0.1", database: str = "bnlab") -> str:
        return f"postgresql://postgres@{host}:{self.port}/{database}"

    def _run(self, tool: str, *args: str) -> None:
        # The server refuses to run as root: as the postgres user, in a folder it owns.
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        done = subprocess.run([*as_postgres, str(self.bin / tool), *args], cwd=self.root,
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, f"{tool} {args}: {done.stdout}\n{done.stderr}\n{self.log()}"

    def init(self, trust: Sequence[str] = ()) -> None:
        """initdb with trust auth; `trust` adds networks (CIDR) allowed in over TCP."""
        data = self.root / "data"
        self._run("initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
        with (data / "pg_hba.conf").open("a") as hba:
            for net in trust:
                hba.write(f"host all all {net} trust\n")

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.root} -c listen_addresses={','.join(self.listen)} "
                   "-c fsync=off")  # a test's data: nothing to recover after a crash
        self._run("pg_ctl", "-D", str(self.root / "data"), "-l", str(self.root / "server.log"),
                  "-o", options, "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        return (self.root / "data" / "postmaster.pid").exists()

    def log(self) -> str:
        with contextlib.suppress(FileNotFoundError):
            return (self.root / "server.log").read_text(errors="replace")[-4000:]
        return ""



@contextlib.contextmanager
def private_cluster(*, listen: Sequence[str] = ("127.0.0.1",),
                    trust: Sequence[str] = ()) -> Iterator[Cluster]:
    """A running cluster with an empty, migrated database "bnlab"; stopped and deleted
    afterwards, however the test ends."""
    from models.db.migrate import upgrade

    bin_dir = pg_bin()
    if bin_dir is None:
        unavailable("PostgreSQL's server binaries are missing (/usr/lib/postgresql/<version>/bin)")
    assert bin_dir is not None
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        unavailable("runuser is missing (to run PostgreSQL as the postgres user)")
    # Not under pytest's tmp_path: its folders are private to root.
    root = Path(tempfile.mkdtemp(prefix="bnlab-pg-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
    pg = Cluster(bin_dir, root, free_port(), listen)
    try:
        pg.init(trust)
        pg.start()
        with psycopg.connect(pg.url(database="postgres"), autocommit=True) as conn:
            conn.execute('CREATE DATABASE "bnlab"')
        upgrade(pg.url())
        yield pg
    finally:
        if pg.running():
            with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
                pg.stop()
        shutil.rmtree(root, ignore_errors=True)
