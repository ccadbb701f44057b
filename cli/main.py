"""`bnlab`: serve the API (plus an embedded Celery worker), run a worker, apply migrations,
manage API keys."""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from cli.client_commands import register as register_client_commands
from config.logging import configure_logging
from config.settings import BaseBnlabSettings
from models.queueing import QUEUES

app = typer.Typer(help="bnlab: train small PyTorch networks described as JSON.",
                  no_args_is_help=True, add_completion=False)
log = logging.getLogger("bnlab.cli")
register_client_commands(app)  # submit, watch, ls, status, ...: the HTTP client's commands
keys_app = typer.Typer(help="API keys (stored hashed in the database; shown once).",
                       no_args_is_help=True)
app.add_typer(keys_app, name="keys")

# Time a worker gets on shutdown (SIGTERM: its job checkpoints at the end of the current
# epoch and goes back to the queue) before it is killed; a killed worker's job is resumed from
# its last checkpoint by the next worker.
WORKER_STOP_GRACE_S = 20.0
EMBEDDED_NODE = "embedded@%h"


def celery_worker_argv(*, queues: str, concurrency: int, pool: str, name: str,
                       loglevel: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
            "-Q", queues, "-c", str(concurrency), "-P", pool, "-n", name,
            "--loglevel", loglevel, "--without-gossip", "--without-mingle"]


def release_dead_worker_jobs(settings: BaseBnlabSettings, node: str, pid: int) -> list[str]:
    """The embedded worker process `pid` died: worker.reaper releases its jobs at once."""
    from models.db import make_engine, session_factory
    from worker.reaper import release_dead_process

    engine = make_engine(settings.sqlalchemy_url)
    try:
        return release_dead_process(session_factory(engine), node=node, pid=pid)
    finally:
        engine.dispose()


def _migrate(settings: BaseBnlabSettings) -> None:
    from models.db.migrate import upgrade

    settings.prepare_dirs()
    upgrade(settings.sqlalchemy_url)


class EmbeddedWorker:
    """A real `celery worker` subprocess that lives and dies with `bnlab serve`.

    It gets its own process group so a terminal's Ctrl-C reaches only the server, which then
    shuts the worker down in order; if the worker dies on its own it is started again.
    """

    def __init__(self, argv: list[str], env: dict[str, str],
                 on_death: Callable[[int], object] | None = None) -> None:
        self.argv = argv
        self.env = env
        self.on_death = on_death
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._watch = threading.Thread(target=self._supervise, name="worker-watch", daemon=True)

    def start(self) -> None:
        self._spawn()
        self._watch.start()

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env, start_new_session=True)
        log.info("embedded worker started (pid %d)", self.proc.pid)

    def _supervise(self) -> None:
        while not self._stopping.wait(1.0):
            if self.proc is not None and self.proc.poll() is not None:
                log.warning("embedded worker exited with %s; restarting it", self.proc.returncode)
                if self.on_death is not None:
                    try:
                        self.on_death(self.proc.pid)
                    except Exception:
                        log.warning("could not release the dead worker's jobs", exc_info=True)
                if self._stopping.wait(2.0):
                    return
                self._spawn()

    def stop(self, grace: float = WORKER_STOP_GRACE_S) -> None:
        self._stopping.set()
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        # SIGTERM: Celery's warm shutdown (finish the current task); then SIGKILL the group.
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            log.warning("embedded worker did not stop in %.0fs; killing it", grace)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses; a hostname or 0.0.0.0 / :: is not."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def auth_enabled(settings: BaseBnlabSettings) -> bool:
    """What the API will decide: keys in BNLAB_API_KEYS, or any key in the database."""
    from api.settings import ApiSettings
    from models.db import make_engine, session_factory
    from models.db import repository as repo

    if ApiSettings().api_key_list:
        return True
    engine = make_engine(settings.sqlalchemy_url)
    try:
        with session_factory(engine)() as session:
            return repo.any_api_key(session)
    finally:
        engine.dispose()


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    log_level: Annotated[str | None, typer.Option(
        help="API and worker log level (default BNLAB_LOG_LEVEL or info); BNLAB_LOG_FORMAT "
             "picks json or text lines.")] = None,
    insecure: Annotated[bool, typer.Option(
        "--insecure", help="Allow a non-loopback --host with authentication off (anyone who "
                           "can reach the port can train and read everything).")] = False,
) -> None:
    """Run the API. Embedded default (no BNLAB_BROKER_URL): also a Celery worker process."""
    import uvicorn

    settings = BaseBnlabSettings()
    log_level = (log_level or settings.log_level).lower()
    configure_logging(settings.log_format, log_level)
    # SIGTERM must unwind through `finally` so the worker is stopped too (uvicorn restores
    # this handler and re-raises the signal after its own graceful shutdown).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    _migrate(settings)
    if not is_loopback(host) and not auth_enabled(settings):
        if not insecure:
            typer.echo(
                f"refusing to listen on {host}: authentication is off, so anyone who can reach "
                "this port could run training jobs and read every job and dataset. Turn it on "
                "with BNLAB_API_KEYS=<key>[,<key>...] or `bnlab keys create`, bind 127.0.0.1, "
                "or pass --insecure if the network is trusted.", err=True)
            raise typer.Exit(2)
        log.warning("listening on %s with authentication OFF (--insecure)", host)
    worker: EmbeddedWorker | None = None
    if settings.embedded:
        env = {**os.environ, "BNLAB_HOME": str(Path(settings.home).resolve())}
        node = EMBEDDED_NODE.replace("%h", socket.gethostname())
        worker = EmbeddedWorker(celery_worker_argv(
            queues=",".join(QUEUES), concurrency=1, pool="solo", name=node,
            loglevel=log_level.upper()), env,
            on_death=lambda pid: release_dead_worker_jobs(settings, node, pid))
        log.info("embedded mode: SQLite and filesystem broker under %s", settings.home)
        worker.start()
    try:
        # log_config=None: uvicorn's lines go through configure_logging's handler; the app
        # writes its own access line (bnlab.access: route, status, duration, request id).
        uvicorn.run("api.main:app", host=host, port=port, log_level=log_level, log_config=None,
                    access_log=False)
    except KeyboardInterrupt:
        pass
    finally:
        if worker is not None:
            worker.stop()


@app.command()
def worker(
    queues: Annotated[str | None, typer.Option(
        help="Comma-separated queues: cpu, gpu (default BNLAB_WORKER_QUEUES or cpu).")] = None,
    concurrency: Annotated[int | None, typer.Option(
        help="Pool processes; keep 1 per GPU.")] = None,
    pool: Annotated[str, typer.Option(help="Celery pool: prefork or solo.")] = "prefork",
    name: Annotated[str | None, typer.Option(help="Node name (celery -n).")] = None,
    loglevel: Annotated[str | None, typer.Option(
        help="Log level (default BNLAB_LOG_LEVEL or INFO).")] = None,
) -> None:
    """Run a Celery worker for the configured broker (replaces this process)."""
    from worker.settings import WorkerSettings

    settings = WorkerSettings()
    queues = queues or settings.worker_queues
    argv = celery_worker_argv(
        queues=queues, concurrency=concurrency or settings.worker_concurrency, pool=pool,
        name=name or settings.worker_name or f"{queues.replace(',', '-')}@%h",
        loglevel=(loglevel or settings.log_level).upper())
    os.execv(sys.executable, argv)


@app.command()
def migrate() -> None:
    """Apply database migrations (alembic upgrade head) to BNLAB_DATABASE_URL or the SQLite file."""
    settings = BaseBnlabSettings()
    _migrate(settings)
    typer.echo(f"database at head: {settings.sqlalchemy_url.split('@')[-1]}")


@keys_app.command("create")
def keys_create(
    name: Annotated[str | None, typer.Option(help="A label to tell keys apart.")] = None,
) -> None:
    """Make an API key and print it once (only its hash is stored). Auth is on from now on."""
    from api.auth import hash_key, new_key
    from models.db import make_engine, session_factory
    from models.db import repository as repo

    settings = BaseBnlabSettings()
    _migrate(settings)
    engine = make_engine(settings.sqlalchemy_url)
    key = new_key()
    try:
        with session_factory(engine).begin() as session:
            row = repo.create_api_key(session, key_hash=hash_key(key), prefix=key[:10],
                                      name=name)
            key_id = row.id
    finally:
        engine.dispose()
    typer.echo(key)
    typer.echo(f"key id {key_id}: keep the key now, it cannot be shown again; send it as "
               "`Authorization: Bearer <key>` (BNLAB_API_KEY for the CLI and client)", err=True)


@keys_app.command("list")
def keys_list() -> None:
    """Every key: id, name, first characters, created, revoked."""
    from models.db import make_engine, session_factory
    from models.db import repository as repo

    settings = BaseBnlabSettings()
    _migrate(settings)
    engine = make_engine(settings.sqlalchemy_url)
    try:
        with session_factory(engine)() as session:
            rows = repo.list_api_keys(session)
            for r in rows:
                revoked = f"revoked {r.revoked_at:%Y-%m-%d %H:%M}" if r.revoked_at else "active"
                typer.echo(f"{r.id}  {r.prefix}...  {r.created_at:%Y-%m-%d %H:%M}  {revoked}  "
                           f"{r.name or ''}".rstrip())
    finally:
        engine.dispose()
    if not rows:
        typer.echo("no keys: `bnlab keys create` makes one (BNLAB_API_KEYS keys are not listed)",
                   err=True)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The id `keys list` shows.")]) -> None:
    """Revoke a key at once; what it created stays (unreachable). Auth stays on."""
    from models.db import make_engine, session_factory
    from models.db import repository as repo

    settings = BaseBnlabSettings()
    _migrate(settings)
    engine = make_engine(settings.sqlalchemy_url)
    try:
        with session_factory(engine).begin() as session:
            done = repo.revoke_api_key(session, key_id=key_id)
    finally:
        engine.dispose()
    if not done:
        typer.echo(f"no active key with id '{key_id}' (see `bnlab keys list`)", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {key_id}")


if __name__ == "__main__":
    app()
