"""Where is this node? Pure functions from environment variables to a node placement.

Each scheduler describes a multi-node job differently; every detector below reads one scheduler's
variables and returns the same :class:`Placement`. Detection never guesses: a variable that one
scheduler sets without the others it always sets with it is a half-configured environment and
raises :class:`LaunchEnvironmentError` naming the variable, because a wrong node count or
rendezvous host would hang the job in rendezvous instead of failing it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

DEFAULT_RDZV_PORT = 29400

# Variables an Indexed Job or JobSet manifest passes (Kubernetes itself only sets JOB_COMPLETION_INDEX).
NNODES_VAR = "PARTIALFC_NNODES"
RDZV_HOST_VAR = "PARTIALFC_RDZV_HOST"
RDZV_PORT_VAR = "PARTIALFC_RDZV_PORT"


class LaunchEnvironmentError(ValueError):
    """The environment describes a multi-node job incompletely or inconsistently."""


@dataclass(frozen=True)
class Placement:
    """This node's place in the job, as the scheduler describes it."""

    source: str  # the scheduler, for humans
    nnodes: str  # torchrun's --nnodes: "N" or "MIN:MAX"
    rdzv_host: str
    rdzv_port: int
    rdzv_id: str
    node_rank: int | None = None  # None: the scheduler does not fix it (the rendezvous assigns one)
    nproc_per_node: int | None = None  # None: the launcher's default (visible GPUs, or 1)
    max_restarts: int | None = None  # None: the launcher's default
    variables: dict[str, str] = field(default_factory=dict)  # the variables this was read from

    @property
    def rdzv_endpoint(self) -> str:
        host = f"[{self.rdzv_host}]" if ":" in self.rdzv_host else self.rdzv_host
        return f"{host}:{self.rdzv_port}"

    @property
    def min_nodes(self) -> int:
        return int(self.nnodes.split(":")[0])


def detect(env: Mapping[str, str]) -> Placement:
    """The placement described by ``env``; the first scheduler whose variables are present wins.

    Order: Kubeflow PyTorchJob (v1), Kubeflow Trainer v2 torch runtime, Indexed Job / JobSet, SLURM,
    and a single node when none is present. PyTorchJob and Trainer v2 come before the Indexed Job
    because their pods run in Indexed Jobs too (and so also carry ``JOB_COMPLETION_INDEX``).
    """
    for detector in DETECTORS:
        placement = detector(env)
        if placement is not None:
            return placement
    return Placement("single node (no scheduler variables)", "1", "localhost", 0, "partialfc-single-node")


# ---------------------------------------------------------------------- schedulers
def from_pytorchjob(env: Mapping[str, str]) -> Placement | None:
    """Kubeflow training-operator ``PyTorchJob`` (``kubeflow.org/v1``).

    With a Master replica the operator sets MASTER_ADDR, MASTER_PORT, RANK (= node rank: master 0,
    worker i is i + 1), WORLD_SIZE (= replicas x nprocPerNode, i.e. processes, or replicas when
    nprocPerNode is unset or "auto") and PET_NNODES / PET_NODE_RANK / PET_NPROC_PER_NODE. With an
    ``elasticPolicy`` (workers only) it sets PET_RDZV_ENDPOINT (``<job>-worker-0:<port>``),
    PET_NNODES (``N`` or ``MIN:MAX``), PET_MAX_RESTARTS and PET_RDZV_ID / PET_RDZV_CONF if configured.
    """
    variables = _present(env, "MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "PET_RDZV_ENDPOINT")
    if not variables:
        return None
    if env.get("PET_RDZV_BACKEND", "c10d") != "c10d":
        raise LaunchEnvironmentError(f"PET_RDZV_BACKEND={env['PET_RDZV_BACKEND']!r}: the launcher runs the c10d rendezvous")
    if "PET_RDZV_ENDPOINT" in env and "RANK" not in env:
        host, port = _endpoint(env, "PET_RDZV_ENDPOINT")
        nnodes = _require(env, "PET_NNODES", "PET_RDZV_ENDPOINT")
        check_nnodes(nnodes, "PET_NNODES")
        return Placement(
            "Kubeflow PyTorchJob (kubeflow.org/v1, elasticPolicy)", nnodes, host, port,
            env.get("PET_RDZV_ID") or _default_id(host),
            nproc_per_node=nproc_from(env),
            max_restarts=_optional_int(env, "PET_MAX_RESTARTS", minimum=0),
            variables=_present(env, "PET_RDZV_ENDPOINT", "PET_NNODES", "PET_NPROC_PER_NODE", "PET_MAX_RESTARTS", "PET_RDZV_ID"),
        )
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE"):
        _require(env, name, next(iter(variables)))
    host, port = env["MASTER_ADDR"], _int(env, "MASTER_PORT", minimum=1, maximum=65535)
    node_rank = _int(env, "RANK", minimum=0)
    world_size = _int(env, "WORLD_SIZE", minimum=1)
    nproc = nproc_from(env)
    if "PET_NNODES" in env:
        nnodes = _int(env, "PET_NNODES", minimum=1)
    elif world_size % (nproc or 1):
        raise LaunchEnvironmentError(f"WORLD_SIZE={world_size} is not a multiple of PET_NPROC_PER_NODE={nproc}")
    else:
        nnodes = world_size // (nproc or 1)
    _check_rank(node_rank, nnodes, "RANK")
    return Placement(
        "Kubeflow PyTorchJob (kubeflow.org/v1)", str(nnodes), host, port, env.get("PET_RDZV_ID") or _default_id(host),
        node_rank=node_rank, nproc_per_node=nproc, max_restarts=_optional_int(env, "PET_MAX_RESTARTS", minimum=0),
        variables=_present(env, "MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "PET_NNODES", "PET_NPROC_PER_NODE",
                           "PET_MAX_RESTARTS", "PET_RDZV_ID"),
    )


def from_trainer_v2(env: Mapping[str, str]) -> Placement | None:
    """Kubeflow Trainer v2 ``TrainJob`` on the torch runtime: PET_NNODES, PET_NPROC_PER_NODE,
    PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT (and no MASTER_ADDR / RANK)."""
    # PET_NNODES alone is a user's torchrun setting, not this runtime.
    variables = _complete(env, ("PET_MASTER_ADDR", "PET_MASTER_PORT", "PET_NNODES", "PET_NODE_RANK"),
                          triggers=("PET_MASTER_ADDR", "PET_NODE_RANK"))
    if variables is None:
        return None
    nnodes, node_rank = _nodes(env, "PET_NNODES", "PET_NODE_RANK")
    host = env["PET_MASTER_ADDR"]
    return Placement(
        "Kubeflow Trainer v2 TrainJob (torch runtime)", str(nnodes), host,
        _int(env, "PET_MASTER_PORT", minimum=1, maximum=65535), env.get("PET_RDZV_ID") or _default_id(host),
        node_rank=node_rank, nproc_per_node=nproc_from(env),
        max_restarts=_optional_int(env, "PET_MAX_RESTARTS", minimum=0),
        variables={**variables, **_present(env, "PET_NPROC_PER_NODE")},
    )


def from_indexed_job(env: Mapping[str, str]) -> Placement | None:
    """A plain Indexed Job or a JobSet: JOB_COMPLETION_INDEX from Kubernetes, plus the node count
    (PARTIALFC_NNODES) and the stable DNS name of pod 0 (PARTIALFC_RDZV_HOST) from the manifest
    (k8s/jobset/ also passes JOBSET_NAME from the pod's jobset-name label)."""
    if "JOB_COMPLETION_INDEX" not in env:
        return None
    _complete(env, ("JOB_COMPLETION_INDEX", NNODES_VAR, RDZV_HOST_VAR), triggers=("JOB_COMPLETION_INDEX",))
    host = env[RDZV_HOST_VAR]
    nnodes, node_rank = _nodes(env, NNODES_VAR, "JOB_COMPLETION_INDEX")
    port = _optional_int(env, RDZV_PORT_VAR, minimum=1, maximum=65535) or DEFAULT_RDZV_PORT
    source = "JobSet" if "JOBSET_NAME" in env else "Indexed Job"
    return Placement(
        f"Kubernetes {source} (JOB_COMPLETION_INDEX)", str(nnodes), host, port, _default_id(host), node_rank=node_rank,
        variables=_present(env, "JOB_COMPLETION_INDEX", NNODES_VAR, RDZV_HOST_VAR, RDZV_PORT_VAR, "JOBSET_NAME"),
    )


def from_slurm(env: Mapping[str, str]) -> Placement | None:
    """SLURM, one launcher per node (``srun --ntasks-per-node=1``): SLURM_NNODES, SLURM_NODEID, and the
    first host of SLURM_JOB_NODELIST as the rendezvous host; SLURM_JOB_ID names the rendezvous."""
    variables = _complete(env, ("SLURM_JOB_ID", "SLURM_NNODES", "SLURM_NODEID", "SLURM_JOB_NODELIST"))
    if variables is None:
        return None
    nnodes, node_rank = _nodes(env, "SLURM_NNODES", "SLURM_NODEID")
    try:
        hosts = expand_hostlist(env["SLURM_JOB_NODELIST"])
    except ValueError as error:
        raise LaunchEnvironmentError(f"SLURM_JOB_NODELIST={env['SLURM_JOB_NODELIST']!r}: {error}") from error
    if len(hosts) != nnodes:
        raise LaunchEnvironmentError(
            f"SLURM_JOB_NODELIST={env['SLURM_JOB_NODELIST']!r} lists {len(hosts)} hosts but SLURM_NNODES={nnodes}"
        )
    port = _optional_int(env, RDZV_PORT_VAR, minimum=1, maximum=65535) or DEFAULT_RDZV_PORT
    return Placement(
        "SLURM", str(nnodes), hosts[0], port, f"slurm-{env['SLURM_JOB_ID']}", node_rank=node_rank,
        variables={**variables, **_present(env, RDZV_PORT_VAR)},
    )


DETECTORS: tuple[Callable[[Mapping[str, str]], Placement | None], ...] = (
    from_pytorchjob, from_trainer_v2, from_indexed_job, from_slurm,
)


# ---------------------------------------------------------------------- SLURM host lists
_HOSTLIST_ITEM = re.compile(r"(?:[^,\[\]]|\[[^\]]*\])+")  # a name; commas inside brackets do not split


def expand_hostlist(hostlist: str) -> list[str]:
    """``gpu[001-003,010],login1`` -> ``gpu001 gpu002 gpu003 gpu010 login1``, in SLURM's order.

    Ranges keep the zero padding of their lower bound; several bracket groups in one name
    (``r[1-2]n[1-2]``) expand as a product, the last group varying fastest.
    """
    hostlist = hostlist.strip()
    items = _HOSTLIST_ITEM.findall(hostlist)
    if not hostlist or ",".join(items) != hostlist:
        raise ValueError("not a SLURM host list (unbalanced brackets or empty names)")
    hosts: list[str] = []
    for item in items:
        names = [""]
        for literal, ranges in re.findall(r"([^\[]*)(?:\[([^\]]*)\])?", item):
            suffixes = [literal + value for value in _expand_ranges(ranges)] if ranges else [literal]
            names = [name + suffix for name in names for suffix in suffixes]
        hosts.extend(names)
    return hosts


def _expand_ranges(ranges: str) -> list[str]:
    values = []
    for part in ranges.split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part.strip())
        if not match:
            raise ValueError(f"bad range {part!r} in [{ranges}]")
        low, high = match.group(1), match.group(2) or match.group(1)
        if int(high) < int(low):
            raise ValueError(f"range {part!r} runs backwards")
        values.extend(str(number).zfill(len(low)) for number in range(int(low), int(high) + 1))
    return values


# ---------------------------------------------------------------------- helpers
def nproc_from(env: Mapping[str, str]) -> int | None:
    """PET_NPROC_PER_NODE as a number; None when unset or torchrun's "auto"/"gpu" (the launcher counts GPUs)."""
    if env.get("PET_NPROC_PER_NODE", "auto") in ("auto", "gpu"):
        return None
    return _int(env, "PET_NPROC_PER_NODE", minimum=1)


def _present(env: Mapping[str, str], *names: str) -> dict[str, str]:
    return {name: env[name] for name in names if name in env}


def _complete(env: Mapping[str, str], names: tuple[str, ...], triggers: tuple[str, ...] | None = None) -> dict[str, str] | None:
    """``names``' values; None when no trigger (default: any name) is set; an error naming the first
    missing one when only some are."""
    if not any(name in env for name in triggers or names):
        return None
    present = _present(env, *names)
    for name in names:
        _require(env, name, next(iter(present)))
    return present


def _nodes(env: Mapping[str, str], count_var: str, rank_var: str) -> tuple[int, int]:
    """(node count, node rank), the rank checked against the count."""
    nnodes, node_rank = _int(env, count_var, minimum=1), _int(env, rank_var, minimum=0)
    _check_rank(node_rank, nnodes, rank_var)
    return nnodes, node_rank


def _require(env: Mapping[str, str], name: str, because: str) -> str:
    if not env.get(name):
        raise LaunchEnvironmentError(f"{because} is set but {name} is not: the environment is half-configured")
    return env[name]


def _int(env: Mapping[str, str], name: str, minimum: int, maximum: int | None = None) -> int:
    try:
        value = int(env[name])
    except ValueError:
        raise LaunchEnvironmentError(f"{name}={env[name]!r} is not an integer") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise LaunchEnvironmentError(f"{name}={value} must be {bound}")
    return value


def _optional_int(env: Mapping[str, str], name: str, minimum: int, maximum: int | None = None) -> int | None:
    return _int(env, name, minimum, maximum) if env.get(name) else None


def _check_rank(node_rank: int, nnodes: int, name: str) -> None:
    if node_rank >= nnodes:
        raise LaunchEnvironmentError(f"{name}={node_rank} but the job has {nnodes} node(s): a node rank must be < {nnodes}")


def check_nnodes(nnodes: str, name: str) -> None:
    match = re.fullmatch(r"(\d+)(?::(\d+))?", nnodes)
    if not match or int(match.group(1)) < 1 or int(match.group(2) or match.group(1)) < int(match.group(1)):
        raise LaunchEnvironmentError(f"{name}={nnodes!r} must be N or MIN:MAX with 1 <= MIN <= MAX")


def _endpoint(env: Mapping[str, str], name: str) -> tuple[str, int]:
    match = re.fullmatch(r"\[?([^\]]+?)\]?:(\d+)", env[name])
    if not match or not 1 <= int(match.group(2)) <= 65535:
        raise LaunchEnvironmentError(f"{name}={env[name]!r} must be HOST:PORT")
    return match.group(1), int(match.group(2))


def _default_id(host: str) -> str:
    """Every node derives the same id from the rendezvous host, which names the job's pod 0."""
    return f"partialfc-{host}"
