"""A local Flower deployment: one SuperLink and N SuperNodes as real processes.

``python -m fedrec_flwr.ops.deploy up --supernodes 2`` starts ``flower-superlink``
and ``flower-supernode`` processes on 127.0.0.1 (each SuperNode with its own
Runtime API port and ``--node-config``), writes the SuperLink connection into
``$FLWR_HOME/config.toml`` (where Flower 1.42 keeps connections) and the pids
into a state file; ``python -m fedrec_flwr.ops.deploy down`` stops them all by pid.
Then ``flwr run . local-deploy --stream`` trains on the deployment.

With ``--secure`` the SuperLink serves TLS (a throw-away CA from
:mod:`fedrec_flwr.ops.certs`) and accepts only SuperNodes whose public key was
registered (``flwr supernode register``): each SuperNode then keeps its node id
across restarts (Flower maps the key to the id), so ``restart`` brings a node
back as the same node, and messages waiting for it reach it.

Every process gets its own ``FLWR_HOME`` under the state directory (as separate
machines would have) and runs from that neutral directory, in its own session
(a Ctrl-C in the shell that ran ``up`` does not reach it), with telemetry, the
update check and runtime dependency installation off. ``down`` also stops the
``flower-superexec``/``flwr-serverapp``/``flwr-clientapp`` children Flower
starts: they inherit that ``FLWR_HOME``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..paths import fedrec_home
from .processes import FLOWER_ENV, flower_env, free_port

__all__ = [
    "DEFAULT_CONNECTION",
    "FLOWER_ENV",
    "Deployment",
    "default_state_dir",
    "down",
    "main",
    "node_config",
    "restart",
    "up",
]

DEFAULT_CONNECTION = "local-deploy"
STATE_FILE = "deploy.json"


@dataclass
class Deployment:
    """What ``up`` started, as saved in the state file.

    Attributes
    ----------
    state_dir : str
        Directory holding the state file, one ``FLWR_HOME`` and one log per process.
    connection : str
        Name of the SuperLink connection written into ``$FLWR_HOME/config.toml``.
    address : str
        SuperLink address (``host:port``: Fleet, Control and ServerAppIo APIs).
    flwr_home : str
        The ``FLWR_HOME`` whose ``config.toml`` holds the connection.
    secure : bool
        TLS and SuperNode authentication (``up(secure=True)``).
    processes : dict of str to dict
        Per process name (``superlink``, ``supernode-0`` ...): ``pid``,
        ``start-time`` (from ``/proc``, guards against a reused pid), ``log``,
        ``port`` and, for SuperNodes, ``node-config``.
    """

    state_dir: str
    connection: str
    address: str
    flwr_home: str
    secure: bool = False
    processes: dict[str, dict[str, object]] = field(default_factory=dict)

    @property
    def pids(self) -> dict[str, int]:
        """Process name -> pid."""
        return {name: int(str(p["pid"])) for name, p in self.processes.items()}

    def save(self) -> Path:
        """Write ``deploy.json`` into ``state_dir``; return its path."""
        path = Path(self.state_dir) / STATE_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, state_dir: Path) -> Deployment:
        """Read the ``deploy.json`` that ``up`` wrote into ``state_dir``."""
        path = state_dir / STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no deployment state here; start one with "
                "`python -m fedrec_flwr.ops.deploy up` (or pass its --state-dir)"
            )
        return cls(**json.loads(path.read_text()))


def node_config(partition_id: int, num_partitions: int, extra: str = "") -> str:
    """The ``--node-config`` text of one SuperNode.

    ``partition-id``/``num-partitions`` name its user group; ``extra`` is
    appended after substituting ``{partition-id}`` and ``{num-partitions}``, so
    per-node keys (e.g. ``data-file='/data/org{partition-id}.csv'``) fit in one
    template.
    """
    text = f"partition-id={partition_id} num-partitions={num_partitions}"
    extra = extra.replace("{partition-id}", str(partition_id)).replace(
        "{num-partitions}", str(num_partitions)
    )
    return f"{text} {extra}".strip()


def default_state_dir(connection: str = DEFAULT_CONNECTION) -> Path:
    """``$FEDREC_FLWR_HOME/deploy/<connection>``."""
    return fedrec_home() / "deploy" / connection


def _executable(name: str) -> str:
    # Prefer the one installed beside this interpreter (the same environment).
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else name


def _start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(pid: int, start_time: object) -> bool:
    """True if ``pid`` is still the process we started (not a reused pid)."""
    now = _start_time(pid)
    if now is None:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and (start_time is None or now == start_time)


def _spawn(
    name: str, cmd: Sequence[str], state_dir: Path, env: Mapping[str, str] | None
) -> dict[str, object]:
    home = state_dir / name
    home.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / f"{name}.log"
    with log_path.open("ab") as log_file:
        # Own session: detached from the caller's terminal; a SuperNode's group
        # also holds its superexec and ClientApp children (killpg = machine lost).
        proc = subprocess.Popen(
            list(cmd),
            cwd=home,
            env=flower_env(home, env),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return {
        "pid": proc.pid,
        "start-time": _start_time(proc.pid),
        "log": str(log_path),
        "command": shlex.join(cmd),
    }


def _wait_for(
    what: str,
    check: Callable[[], bool],
    deadline: float,
    procs: Mapping[str, dict[str, object]],
) -> None:
    while not check():
        for name, p in procs.items():
            if not _alive(int(str(p["pid"])), p["start-time"]):
                tail = Path(str(p["log"])).read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited while waiting for {what}; log:\n{tail}")
        if time.time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _log_has(path: Path, text: str) -> bool:
    try:
        return text in path.read_text(errors="replace")
    except OSError:
        return False


def up(
    num_supernodes: int,
    *,
    state_dir: Path | None = None,
    connection: str = DEFAULT_CONNECTION,
    host: str = "127.0.0.1",
    port: int = 0,
    extra_node_config: str = "",
    flwr_home: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    secure: bool = False,
) -> Deployment:
    """Start a SuperLink and ``num_supernodes`` SuperNodes; wait until all are up.

    Parameters
    ----------
    num_supernodes : int
        SuperNodes to start; node ``i`` gets ``partition-id=i
        num-partitions=num_supernodes``.
    state_dir : pathlib.Path, optional (default: ``default_state_dir(connection)``)
        Where the state file, logs and each process's ``FLWR_HOME`` go.
    connection : str (default: "local-deploy")
        Connection name written into ``config.toml``.
    host : str (default: "127.0.0.1")
        Interface every process binds to.
    port : int (default: 0)
        SuperLink port; 0 picks a free one.
    extra_node_config : str (default: "")
        Appended to every SuperNode's ``--node-config`` (see :func:`node_config`).
    flwr_home : pathlib.Path, optional (default: ``$FLWR_HOME`` or ``~/.flwr``)
        Whose ``config.toml`` gets the connection (the one ``flwr run`` reads).
    env : mapping, optional (default: None)
        Extra environment variables for every process, set over ``os.environ``
        and :data:`FLOWER_ENV` (``FLWR_HOME`` is always the process's own).
    timeout : float (default: 60.0)
        Seconds to wait for the SuperLink to listen and every SuperNode to connect.
    secure : bool (default: False)
        TLS with a throw-away CA (``state_dir/certs``) and SuperNode
        authentication: one key pair per SuperNode (``state_dir/keys``), each
        public key registered before the SuperNode starts, so every SuperNode
        keeps its node id when it restarts.

    Returns
    -------
    Deployment
        Also saved in ``state_dir/deploy.json``.

    Raises
    ------
    FileExistsError
        If ``state_dir`` already holds a running deployment.
    RuntimeError, TimeoutError
        If a process exits or does not come up; everything started is stopped.
    """
    if num_supernodes < 1:
        raise ValueError(f"--supernodes={num_supernodes}: must be >= 1")
    state_dir = Path(state_dir or default_state_dir(connection)).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    if (state_dir / STATE_FILE).is_file():
        old = Deployment.load(state_dir)
        if any(_alive(int(str(p["pid"])), p["start-time"]) for p in old.processes.values()):
            raise FileExistsError(
                f"{state_dir}: a deployment is running ({old.address}); stop it with "
                f"`python -m fedrec_flwr.ops.deploy down --state-dir {state_dir}`"
            )
    port = port or free_port(host)
    home = Path(flwr_home or os.environ.get("FLWR_HOME") or Path.home() / ".flwr")
    dep = Deployment(
        state_dir=str(state_dir),
        connection=connection,
        address=f"{host}:{port}",
        flwr_home=str(home.resolve()),
        secure=secure,
    )
    link_tls, node_tls, keys = ["--insecure"], ["--insecure"], []
    ca = None
    if secure:
        from .certs import make_certificates, make_supernode_keys

        certs = make_certificates(state_dir / "certs", (host,))
        keys = make_supernode_keys(state_dir / "keys", num_supernodes)
        ca = str(certs["ca-cert"])
        link_tls = [
            "--ssl-ca-certfile",
            ca,
            "--ssl-certfile",
            str(certs["server-cert"]),
            "--ssl-keyfile",
            str(certs["server-key"]),
            "--enable-supernode-auth",
        ]
        node_tls = ["--root-certificates", ca]
    deadline = time.time() + timeout
    try:
        dep.processes["superlink"] = {
            **_spawn(
                "superlink",
                [
                    _executable("flower-superlink"),
                    *link_tls,
                    "--host",
                    host,
                    "--port",
                    str(port),
                    "--disable-runtime-dependency-installation",
                ],
                state_dir,
                env,
            ),
            "port": port,
        }
        dep.save()  # from here on `down` can stop what we started
        _wait_for("the SuperLink", lambda: _port_open(host, port), deadline, dep.processes)
        if secure:
            _write_connection(home, connection, dep.address, root_certificates=ca)
            for key in keys:
                _register(home, connection, key.with_name(f"{key.name}.pub"))
        for i in range(num_supernodes):
            runtime_port = free_port(host)
            config = node_config(i, num_supernodes, extra_node_config)
            auth = ["--auth-supernode-private-key", str(keys[i])] if secure else []
            dep.processes[f"supernode-{i}"] = {
                **_spawn(
                    f"supernode-{i}",
                    [
                        _executable("flower-supernode"),
                        *node_tls,
                        *auth,
                        "--superlink",
                        dep.address,
                        "--host",
                        host,
                        "--port",
                        str(runtime_port),
                        "--node-config",
                        config,
                    ],
                    state_dir,
                    env,
                ),
                "port": runtime_port,
                "node-config": config,
            }
            dep.save()
        for i in range(num_supernodes):
            log_path = Path(str(dep.processes[f"supernode-{i}"]["log"]))
            _wait_for(
                f"supernode-{i} to connect",
                functools.partial(_log_has, log_path, "SuperNode ID"),
                deadline,
                dep.processes,
            )
        _write_connection(home, connection, dep.address, root_certificates=ca)
    except BaseException:
        _stop(dep)
        raise
    return dep


def restart(
    dep: Deployment, name: str, *, graceful: bool = True, timeout: float = 60.0
) -> dict[str, object]:
    """Stop process ``name`` (its whole group) and start it again.

    The same command, home and log; a SuperNode of a ``secure`` deployment
    comes back with its node id (its key is registered), so the run goes on
    with it. Returns the new process record (also saved in the state file).

    ``graceful`` (default) sends SIGTERM, so a SuperNode tells the SuperLink it
    is leaving and may reconnect at once; a SIGKILLed one stays "online" on the
    SuperLink until its heartbeats expire (2 x 30 s in Flower 1.42), and
    Flower refuses to activate it again before that.

    Raises
    ------
    KeyError
        If ``name`` is not a process of ``dep``.
    TimeoutError
        If a restarted SuperNode does not connect within ``timeout``.
    """
    old = dep.processes[name]
    pid = int(str(old["pid"]))
    deadline = time.time() + timeout
    for sig in (signal.SIGTERM, signal.SIGKILL) if graceful else (signal.SIGKILL,):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        grace = min(deadline, time.time() + 15)
        while _alive(pid, old["start-time"]) and time.time() < grace:
            _reap(dep)
            time.sleep(0.05)
        if not _alive(pid, old["start-time"]):
            break
    log_path = Path(str(old["log"]))
    seen = log_path.read_text(errors="replace").count("SuperNode ID") if log_path.is_file() else 0
    cmd = shlex.split(str(old["command"]))
    record = {**old, **_spawn(name, cmd, Path(dep.state_dir), None)}
    dep.processes[name] = record
    dep.save()
    if name.startswith("supernode"):
        _wait_for(
            f"{name} to reconnect",
            lambda: log_path.read_text(errors="replace").count("SuperNode ID") > seen,
            deadline,
            {name: record},
        )
    return record


def _register(home: Path, connection: str, public_key: Path) -> None:
    """``flwr supernode register`` one SuperNode's public key (secure deployments)."""
    done = subprocess.run(
        [_executable("flwr"), "supernode", "register", str(public_key), connection],
        env=flower_env(home),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"flwr supernode register {public_key.name} failed: "
            f"{(done.stdout + done.stderr).strip()[-500:]}"
        )


def _write_connection(
    home: Path, name: str, address: str, *, root_certificates: str | None = None
) -> None:
    # Flower's own reader/writer keep config.toml in the shape `flwr` expects
    # (default `local` connection created if the file is new).
    from flwr.cli.flower_config import write_superlink_connection
    from flwr.cli.typing import SuperLinkConnection

    with _flwr_home(home):
        if root_certificates is None:
            connection = SuperLinkConnection(name, address=address, insecure=True)
        else:
            connection = SuperLinkConnection(
                name, address=address, root_certificates=root_certificates
            )
        write_superlink_connection(connection)


def _remove_connection(home: Path, name: str) -> None:
    config = home / "config.toml"
    if not config.is_file():
        return
    from flwr.cli.flower_config import read_flower_config, write_flower_config

    with _flwr_home(home):
        toml, _ = read_flower_config()
        superlink = toml.get("superlink", {})
        if superlink.pop(name, None) is not None:
            if superlink.get("default") == name:
                superlink["default"] = "local"
            write_flower_config(toml)


@contextlib.contextmanager
def _flwr_home(home: Path) -> Iterator[None]:
    old = os.environ.get("FLWR_HOME")
    os.environ["FLWR_HOME"] = str(home)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("FLWR_HOME", None)
        else:
            os.environ["FLWR_HOME"] = old


def _stop(dep: Deployment, grace: float = 10.0) -> list[int]:
    """SIGTERM every process we started, then SIGKILL what is left; return their pids.

    Ours are the processes ``up`` started (pid and start time match) and every
    process whose ``FLWR_HOME`` lies in the state directory: Flower's
    ``flower-superexec``, ``flwr-serverapp`` and ``flwr-clientapp`` children
    inherit it, including those the SuperLink detaches into their own session.
    """
    stopped: set[int] = set()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _ours(dep)
        if not pids:
            break
        stopped.update(pids)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.time() + grace
        while _ours(dep) and time.time() < deadline:
            _reap(dep)
            time.sleep(0.1)
    _reap(dep)
    return sorted(stopped)


def _reap(dep: Deployment) -> None:
    for pid in dep.pids.values():
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # if this process started it


def _ours(dep: Deployment) -> list[int]:
    found = {
        pid
        for pid, p in zip(dep.pids.values(), dep.processes.values(), strict=True)
        if _alive(pid, p["start-time"])
    }
    marker = f"FLWR_HOME={dep.state_dir}/".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            env = (proc / "environ").read_bytes().split(b"\0")
            if state != "Z" and any(e.startswith(marker) for e in env):
                found.add(int(proc.name))
        except OSError:
            continue
    return sorted(found)


def down(state_dir: Path | None = None, *, connection: str = DEFAULT_CONNECTION) -> list[int]:
    """Stop every process of the deployment in ``state_dir``; remove its connection.

    Returns
    -------
    list of int
        Pids that were still running and were stopped.
    """
    state_dir = Path(state_dir or default_state_dir(connection)).resolve()
    dep = Deployment.load(state_dir)
    stopped = _stop(dep)
    _remove_connection(Path(dep.flwr_home), dep.connection)
    (state_dir / STATE_FILE).unlink()
    return stopped


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``up``, ``down``, ``status``."""
    parser = argparse.ArgumentParser(
        prog="python -m fedrec_flwr.ops.deploy",
        description="Start or stop a local SuperLink + SuperNodes deployment.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start a SuperLink and N SuperNodes")
    p_up.add_argument("--supernodes", type=int, default=2, help="number of SuperNodes (2)")
    p_up.add_argument("--port", type=int, default=0, help="SuperLink port (0: a free one)")
    p_up.add_argument("--host", default="127.0.0.1", help="interface (127.0.0.1)")
    p_up.add_argument(
        "--node-config",
        default="",
        help="extra node config for every SuperNode; {partition-id} and {num-partitions} "
        "are substituted, e.g. \"data-file='/data/org{partition-id}.csv'\"",
    )
    p_up.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (60)")
    p_up.add_argument(
        "--secure",
        action="store_true",
        help="TLS (throw-away CA) and SuperNode authentication: nodes keep their ids on restart",
    )
    for p in (p_up, sub.add_parser("down", help="stop it by pid"), sub.add_parser("status")):
        p.add_argument("--connection", default=DEFAULT_CONNECTION, help="connection name")
        p.add_argument(
            "--state-dir",
            type=Path,
            default=None,
            help="state, logs and homes (default: $FEDREC_FLWR_HOME/deploy/<connection>)",
        )
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            dep = up(
                args.supernodes,
                state_dir=args.state_dir,
                connection=args.connection,
                host=args.host,
                port=args.port,
                extra_node_config=args.node_config,
                timeout=args.timeout,
                secure=args.secure,
            )
            print(f"SuperLink {dep.address}, {args.supernodes} SuperNode(s); state {dep.state_dir}")
            print(f"connection '{dep.connection}' written to {dep.flwr_home}/config.toml; run:")
            print(f"  flwr run . {dep.connection} --stream")
            print("stop with: python -m fedrec_flwr.ops.deploy down" + _dir_arg(args))
        elif args.command == "down":
            stopped = down(args.state_dir, connection=args.connection)
            print(f"stopped {len(stopped)} process(es): {stopped}")
        else:
            dep = Deployment.load(Path(args.state_dir or default_state_dir(args.connection)))
            for name, proc in dep.processes.items():
                alive = _alive(int(str(proc["pid"])), proc["start-time"])
                print(f"{name:14} pid {proc['pid']:>7} {'running' if alive else 'stopped'}")
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"fedrec_flwr.ops.deploy: {exc}", file=sys.stderr)
        return 1
    return 0


def _dir_arg(args: argparse.Namespace) -> str:
    out = ""
    if args.connection != DEFAULT_CONNECTION:
        out += f" --connection {args.connection}"
    if args.state_dir is not None:
        out += f" --state-dir {args.state_dir}"
    return out


if __name__ == "__main__":
    sys.exit(main())
