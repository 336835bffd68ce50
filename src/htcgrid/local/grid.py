"""The embedded grid: a small HTC-Grid on this machine, in a handful of child processes.

:class:`LocalGrid` starts moto's AWS services, provisions the grid's resources there, starts
the API gateway, the heartbeat checker and the agents, and writes an ``agent_config.json``
that any HTC-Grid client can use. Every child process lives only as long as the pipe to its
standard input that the grid holds: if the Python process that started them dies, they exit.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

import boto3

from ..config import GridConfig, load_config
from ..errors import LocalGridError
from .processes import (
    ChildProcess,
    announcement,
    kill_all,
    spawn,
    terminate,
    write_private,
)
from .provision import new_tag, preload_models, provision
from .settings import KEY_AGENTS, SERVICE_GROUPS, GridSettings

logger = logging.getLogger(__name__)

CONFIG_FILE = "agent_config.json"
CREDENTIALS_FILE = "credentials.env"


class LocalGrid:
    """An embedded HTC-Grid: moto's AWS services, an API gateway, a checker and agents.

    Parameters
    ----------
    agents : int, optional
        Agent processes to start; the number of CPUs by default.
    handler : str, optional
        The agents' worker handler as ``"module:function"``; the settings' handler (the mock
        compute engine) by default.
    workdir : str or Path, optional
        Where the configuration, credentials and logs go; a fresh temporary directory by
        default, removed again by :meth:`stop`.
    settings : GridSettings or mapping, optional
        Timings of the agents, checker and gateway, or a mapping of fields to change in the
        defaults (e.g. ``{"heartbeat_expiry_sec": 3}``).
    results_pull_interval_sec : float
        How often clients of this grid poll /result.
    extra_pythonpath : sequence of str or Path, optional
        Directories put first on the agents' ``PYTHONPATH``, where the handler's module lives.
    keep_workdir : bool
        Keep a temporary workdir (logs included) after :meth:`stop`.

    Examples
    --------
    >>> with LocalGrid(agents=2) as grid:  # doctest: +SKIP
    ...     config = grid.config
    ...     print(grid.api_url)
    http://127.0.0.1:40123/v1
    """

    def __init__(
        self,
        *,
        agents: int | None = None,
        handler: str | None = None,
        workdir: str | os.PathLike[str] | None = None,
        settings: GridSettings | Mapping[str, Any] | None = None,
        results_pull_interval_sec: float = 0.2,
        extra_pythonpath: Sequence[str | os.PathLike[str]] | None = None,
        keep_workdir: bool = False,
    ) -> None:
        if isinstance(settings, Mapping):
            settings = replace(GridSettings(), **settings)
        settings = settings or GridSettings()
        if handler is not None:
            settings = replace(settings, handler=handler)
        self.settings: GridSettings = settings
        self._target_agents = (os.cpu_count() or 1) if agents is None else agents
        if self._target_agents < 0:
            raise ValueError("agents must be 0 or more")
        if results_pull_interval_sec <= 0:
            raise ValueError("results_pull_interval_sec must be positive")
        self._results_pull_interval_sec = results_pull_interval_sec
        self._workdir_arg = None if workdir is None else Path(workdir)
        self._extra_pythonpath = [str(Path(p).resolve()) for p in extra_pythonpath or ()]
        self._keep_workdir = keep_workdir

        self._lock = threading.RLock()
        self._running = False
        self._workdir: Path | None = None
        self._owns_workdir = False
        self._config_data: dict[str, Any] = {}
        self._config: GridConfig | None = None
        self._username = ""
        self._password = ""
        self._services: list[ChildProcess] = []
        self._gateway: ChildProcess | None = None
        self._checker: ChildProcess | None = None
        self._agents: list[ChildProcess] = []
        self._next_agent = 0

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> LocalGrid:
        """Start every process of the grid and write its configuration; return the grid.

        Raises
        ------
        LocalGridError
            A process did not start (the message ends with its log) or provisioning failed.
        """
        with self._lock:
            if self._running:
                return self
            started = time.perf_counter()
            atexit.register(self._stop_at_exit)
            try:
                self._start()
            except BaseException:
                self.stop()
                raise
            self._running = True
        logger.info(
            "embedded grid started in %.2f s: API %s, %d agent(s), workdir %s",
            time.perf_counter() - started,
            self.api_url,
            len(self._agents),
            self._workdir,
        )
        return self

    def _start(self) -> None:
        if self._workdir_arg is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="htcgrid-"))
            self._owns_workdir = True
        else:
            self._workdir = self._workdir_arg
            self._workdir.mkdir(parents=True, exist_ok=True)
            self._owns_workdir = False
        config_path = self._workdir / CONFIG_FILE
        # The gateway starts at once and waits for this file: it must not find an old one.
        config_path.unlink(missing_ok=True)

        # While the services and the gateway start, load the AWS models provisioning needs.
        session = boto3.session.Session()
        with ThreadPoolExecutor(1, thread_name_prefix="htcgrid-preload") as pool:
            preloaded = pool.submit(preload_models, session)
            self._services = [
                self._spawn(f"services-{group}", "htcgrid.local.services")
                for group in SERVICE_GROUPS
            ]
            self._gateway = self._spawn(
                "gateway", "htcgrid.local.gateway", "--config", config_path
            )
            endpoint = {
                service: url
                for child, services in zip(self._services, SERVICE_GROUPS.values())
                for url in [announcement(child, "endpoint")]
                for service in services
            }
            preloaded.result()
        try:
            made = provision(
                endpoint,
                new_tag(),
                settings=self.settings,
                results_pull_interval_sec=self._results_pull_interval_sec,
                session=session,
            )
        except Exception as exc:
            raise LocalGridError(
                f"cannot create the embedded grid's resources at {endpoint}: {exc}"
            ) from exc
        self._username, self._password = made.username, made.password
        self._config_data = {**made.config, KEY_AGENTS: self._target_agents}
        write_private(
            self._workdir / CREDENTIALS_FILE,
            f"USERNAME={made.username}\nPASSWORD={made.password}\n",
        )
        self._write_config()

        url = announcement(self._gateway, "url")
        self._config_data["public_api_gateway_url"] = url
        self._config_data["private_api_gateway_url"] = url
        self._write_config()
        self._config = load_config(config_path, private=False)

        self._checker = self._spawn("checker", "htcgrid.local.checker", "--config", config_path)
        for _ in range(self._target_agents):
            self._agents.append(self._spawn_agent())

    def stop(self) -> None:
        """Stop every process of the grid; safe to call twice, and at interpreter exit.

        Agents and the checker go first, then the gateway and the AWS services (so that no
        agent outlives the services it writes to). Each group gets its standard input closed
        and SIGTERM, then SIGKILL for its whole process group after a few seconds.
        """
        with self._lock:
            groups = [
                [*self._agents, *([self._checker] if self._checker else [])],
                [*([self._gateway] if self._gateway else []), *self._services],
            ]
            everyone = [child for group in groups for child in group]
            self._agents, self._checker, self._gateway, self._services = [], None, None, []
            was_running, self._running, self._config = self._running, False, None
            try:
                for group in groups:
                    terminate(group)
            except BaseException:
                # Interrupted while waiting (Ctrl-C): leave nothing behind, then let it rise.
                kill_all(everyone)
                raise
            finally:
                atexit.unregister(self._stop_at_exit)
                self._remove_workdir()
            if was_running:
                logger.info("embedded grid stopped")

    def _stop_at_exit(self) -> None:
        try:
            self.stop()
        except Exception:
            logger.exception("could not stop the embedded grid at exit")

    def _remove_workdir(self) -> None:
        if self._workdir is not None and self._owns_workdir and not self._keep_workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> LocalGrid:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # --- agents --------------------------------------------------------------------------

    def scale_agents(self, n: int) -> None:
        """Start or stop agents until ``n`` are running.

        Agents beyond ``n`` are stopped newest first; a task one of them held is retried by
        the checker once its heartbeat expires.
        """
        if n < 0:
            raise ValueError("the number of agents must be 0 or more")
        with self._lock:
            self._require_running()
            gone = [agent for agent in self._agents if not agent.alive]
            self._agents = [agent for agent in self._agents if agent.alive]
            while len(self._agents) < n:
                self._agents.append(self._spawn_agent())
            extra, self._agents = self._agents[n:], self._agents[:n]
            self._target_agents = n
            self._config_data[KEY_AGENTS] = n
            self._write_config()
            terminate([*gone, *extra])

    def _spawn_agent(self) -> ChildProcess:
        agent_id = f"agent-{self._next_agent}"
        self._next_agent += 1
        return self._spawn(
            agent_id, "htcgrid.local.agent", "--config", self.config_path, "--agent-id", agent_id
        )

    # --- child processes -----------------------------------------------------------------

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        paths = [*self._extra_pythonpath]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        if paths:
            env["PYTHONPATH"] = os.pathsep.join(paths)
        # Log lines reach the files as they are written, not when a buffer fills.
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _spawn(self, name: str, module: str, *args: str | Path) -> ChildProcess:
        assert self._workdir is not None
        return spawn(name, module, args, self._workdir, self._environment())

    def _write_config(self) -> None:
        write_private(self.config_path, json.dumps(self._config_data, indent=2) + "\n")

    def _require_running(self) -> None:
        if not self._running:
            raise LocalGridError(
                "the embedded grid is not running: call start() or use it in a with-block"
            )

    # --- what clients need ---------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._running

    @property
    def workdir(self) -> Path:
        """The directory holding the configuration, credentials and logs."""
        if self._workdir is None:
            self._require_running()
        assert self._workdir is not None
        return self._workdir

    @property
    def config_path(self) -> Path:
        """The grid's ``agent_config.json``."""
        return self.workdir / CONFIG_FILE

    @property
    def config(self) -> GridConfig:
        """The grid's configuration, as :func:`htcgrid.config.load_config` reads it."""
        self._require_running()
        assert self._config is not None
        return self._config

    @property
    def username(self) -> str:
        """The user-pool user that clients sign in as."""
        self._require_running()
        return self._username

    @property
    def password(self) -> str:
        """That user's password (also in ``credentials.env`` in the workdir)."""
        self._require_running()
        return self._password

    @property
    def endpoint(self) -> str:
        """The URL of the grid's default AWS endpoint (its queues and user pool)."""
        return str(self.config.aws_endpoint_url)

    @property
    def endpoints(self) -> dict[str, str]:
        """The URL of each local AWS service, by boto3 service name."""
        return dict(self.config.service_endpoints)

    @property
    def api_url(self) -> str:
        """The API stage URL, ``http://127.0.0.1:PORT/v1``."""
        return self.config.public_api_url

    @property
    def agents(self) -> int:
        """The number of agent processes running now."""
        with self._lock:
            return sum(agent.alive for agent in self._agents)

    @property
    def pids(self) -> dict[str, int]:
        """Process id of each running child, by name (``services``, ``gateway``, ...)."""
        with self._lock:
            children = [*self._services, self._gateway, self._checker, *self._agents]
            return {c.name: c.process.pid for c in children if c is not None and c.alive}

    def __repr__(self) -> str:
        if not self._running:
            return "LocalGrid(stopped)"
        return (
            f"LocalGrid(api_url={self.api_url!r}, agents={self.agents}, "
            f"workdir={str(self._workdir)!r})"
        )
