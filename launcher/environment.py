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
# "external": the rendezvous store is a process of its own (`python -m launcher store`), no node hosts it.
RDZV_STORE_VAR = "PARTIALFC_RDZV_STORE"
RDZV_STORES = ("node", "external")


# A PyTorchJob with a Master replica: the operator always sets all of these together (v1.7-v1.9).
PYTORCHJOB_MASTER_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")
PYTORCHJOB_PET_VARS = ("PET_MASTER_ADDR", "PET_MASTER_PORT", "PET_NODE_RANK", "PET_NNODES", "PET_NPROC_PER_NODE")
# torchrun's --nproc-per-node words (torch/distributed/run.py, determine_local_world_size).
NPROC_WORDS = ("auto", "cpu", "gpu")


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
    nproc_per_node: int | str | None = None  # N, "cpu" or "gpu"; None ("auto"): visible GPUs, or 1
    max_restarts: int | None = None  # None: the launcher's default
    external_store: bool = False  # the store runs apart (`python -m launcher store`): no node hosts it
    variables: dict[str, str] = field(default_factory=dict)  # the variables this was read from

    @property
    def rdzv_endpoint(self) -> str:
        host = f"[{self.rdzv_host}]" if ":" in self.rdzv_host else self.rdzv_host
        return f"{host}:{self.rdzv_port}"

    @property
    def max_nodes(self) -> int:
        return max_nodes(self.nnodes)


def detect(env: Mapping[str, str]) -> Placement:
    """The placement described by ``env``; the first scheduler whose variables are present wins.

    Order: SLURM, Kubeflow PyTorchJob (v1), Kubeflow Trainer v2 torch runtime, Indexed Job / JobSet,
    and a single node when none is present. SLURM comes first because batch scripts commonly export
    MASTER_ADDR/MASTER_PORT themselves; PyTorchJob and Trainer v2 come before the Indexed Job because
    their pods run in Indexed Jobs too (and so also carry ``JOB_COMPLETION_INDEX``).
    """
    for detector in DETECTORS:
        placement = detector(env)
        if placement is not None:
            return placement
    return Placement("single node (no scheduler variables)", "1", "localhost", 0, "partialfc-single-node")


# ---------------------------------------------------------------------- schedulers
def from_pytorchjob(env: Mapping[str, str]) -> Placement | None:
    """Kubeflow training-operator ``PyTorchJob`` (``kubeflow.org/v1``, operator v1.7-v1.9).

    What the operator injects (pkg/controller.v1/pytorch/envvar.go, master.go, elastic.go at v1.9.0):
    with a Master replica, MASTER_ADDR / PET_MASTER_ADDR (``<job>-master-0``), MASTER_PORT /
    PET_MASTER_PORT, RANK = PET_NODE_RANK (master 0, worker i is i + 1), WORLD_SIZE (replicas x
    nprocPerNode), PET_NPROC_PER_NODE (``auto`` by default, else ``cpu``, ``gpu`` or N) and PET_NNODES
    (the replica count, or ``MIN:MAX`` when an ``elasticPolicy`` is present too). With an
    ``elasticPolicy`` it adds PET_RDZV_ENDPOINT (``<job>-worker-0:<port>``), PET_RDZV_BACKEND,
    PET_NNODES and, where configured, PET_MAX_RESTARTS / PET_RDZV_ID / PET_RDZV_CONF. A Master with an
    elasticPolicy keeps the node ranks: the rendezvous is hosted by the master (node rank 0) at
    MASTER_ADDR:MASTER_PORT, and the node count may be a range.
    """
    variables = _present(env, *PYTORCHJOB_MASTER_VARS, "PET_RDZV_ENDPOINT")
    if not variables:
        return None
    if env.get("PET_RDZV_BACKEND", "c10d") != "c10d":
        raise LaunchEnvironmentError(
            f"PET_RDZV_BACKEND={env['PET_RDZV_BACKEND']!r}: the launcher runs the c10d rendezvous"
        )
    max_restarts = _optional_int(env, "PET_MAX_RESTARTS", minimum=0)
    if not any(name in env for name in PYTORCHJOB_MASTER_VARS):  # workers only, elasticPolicy
        host, port = _endpoint(env, "PET_RDZV_ENDPOINT")
        nnodes = _require(env, "PET_NNODES", "PET_RDZV_ENDPOINT")
        check_nnodes(nnodes, "PET_NNODES")
        return Placement(
            "Kubeflow PyTorchJob (kubeflow.org/v1, elasticPolicy)",
            nnodes,
            host,
            port,
            env.get("PET_RDZV_ID") or default_rdzv_id(host),
            nproc_per_node=nproc_from(env),
            max_restarts=max_restarts,
            variables=_present(
                env, "PET_RDZV_ENDPOINT", "PET_NNODES", "PET_NPROC_PER_NODE", "PET_MAX_RESTARTS", "PET_RDZV_ID"
            ),
        )
    trigger = next(name for name in PYTORCHJOB_MASTER_VARS if name in env)
    for name in (*PYTORCHJOB_MASTER_VARS, *PYTORCHJOB_PET_VARS):
        _require(env, name, trigger)
    host, port = env["MASTER_ADDR"], _int(env, "MASTER_PORT", minimum=1, maximum=65535)
    _int(env, "WORLD_SIZE", minimum=1)
    node_rank = _int(env, "RANK", minimum=0)
    if env["PET_NODE_RANK"] != env["RANK"]:
        raise LaunchEnvironmentError(
            f"RANK={env['RANK']} but PET_NODE_RANK={env['PET_NODE_RANK']}: the operator sets both to the node rank"
        )
    nnodes = env["PET_NNODES"]
    check_nnodes(nnodes, "PET_NNODES")
    _check_rank(node_rank, max_nodes(nnodes), "RANK")
    elastic = " + elasticPolicy" if "PET_RDZV_ENDPOINT" in env else ""
    return Placement(
        f"Kubeflow PyTorchJob (kubeflow.org/v1, Master{elastic})",
        nnodes,
        host,
        port,
        env.get("PET_RDZV_ID") or default_rdzv_id(host),
        node_rank=node_rank,
        nproc_per_node=nproc_from(env),
        max_restarts=max_restarts,
        variables=_present(
            env, *PYTORCHJOB_MASTER_VARS, *PYTORCHJOB_PET_VARS, "PET_RDZV_ENDPOINT", "PET_MAX_RESTARTS", "PET_RDZV_ID"
        ),
    )


def from_trainer_v2(env: Mapping[str, str]) -> Placement | None:
    """Kubeflow Trainer v2 ``TrainJob`` on the torch runtime: PET_NNODES, PET_NPROC_PER_NODE,
    PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT (and no MASTER_ADDR / RANK)."""
    # PET_NNODES alone is a user's torchrun setting, not this runtime.
    variables = _complete(
        env,
        ("PET_MASTER_ADDR", "PET_MASTER_PORT", "PET_NNODES", "PET_NODE_RANK"),
        triggers=("PET_MASTER_ADDR", "PET_NODE_RANK"),
    )
    if variables is None:
        return None
    nnodes, node_rank = _nodes(env, "PET_NNODES", "PET_NODE_RANK")
    host = env["PET_MASTER_ADDR"]
    return Placement(
        "Kubeflow Trainer v2 TrainJob (torch runtime)",
        str(nnodes),
        host,
        _int(env, "PET_MASTER_PORT", minimum=1, maximum=65535),
        env.get("PET_RDZV_ID") or default_rdzv_id(host),
        node_rank=node_rank,
        nproc_per_node=nproc_from(env),
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
        f"Kubernetes {source} (JOB_COMPLETION_INDEX)",
        str(nnodes),
        host,
        port,
        default_rdzv_id(host),
        node_rank=node_rank,
        variables=_present(env, "JOB_COMPLETION_INDEX", NNODES_VAR, RDZV_HOST_VAR, RDZV_PORT_VAR, "JOBSET_NAME"),
    )


def from_slurm(env: Mapping[str, str]) -> Placement | None:
    """SLURM, one launcher per node (``srun --ntasks-per-node=1``), recognised by SLURM_JOB_ID.

    Under ``srun`` the step's own SLURM_STEP_NODELIST / SLURM_STEP_NUM_NODES describe the nodes that
    run the launcher (a step may use part of the allocation) and SLURM_NODEID is this node's index in
    the step (srun(1), "OUTPUT ENVIRONMENT VARIABLES"); without a step, the job's SLURM_JOB_NODELIST /
    SLURM_NNODES. The rendezvous host is MASTER_ADDR (and its port MASTER_PORT) when the batch script
    exports them, the usual torch-on-SLURM recipe, else the first host of the node list. SLURM_JOB_ID
    names the rendezvous.
    """
    if "SLURM_JOB_ID" not in env:
        return None
    list_var, count_var = (
        ("SLURM_STEP_NODELIST", "SLURM_STEP_NUM_NODES")
        if "SLURM_STEP_NODELIST" in env
        else ("SLURM_JOB_NODELIST", "SLURM_NNODES")
    )
    variables = _complete(env, ("SLURM_JOB_ID", count_var, "SLURM_NODEID", list_var)) or {}
    nnodes, node_rank = _nodes(env, count_var, "SLURM_NODEID")
    try:
        hosts = expand_hostlist(env[list_var])
    except ValueError as error:
        raise LaunchEnvironmentError(f"{list_var}={env[list_var]!r}: {error}") from error
    if len(hosts) != nnodes:
        raise LaunchEnvironmentError(f"{list_var}={env[list_var]!r} lists {len(hosts)} hosts but {count_var}={nnodes}")
    port = (
        _optional_int(env, "MASTER_PORT", minimum=1, maximum=65535)
        or _optional_int(env, RDZV_PORT_VAR, minimum=1, maximum=65535)
        or DEFAULT_RDZV_PORT
    )
    return Placement(
        "SLURM" + (" step (srun)" if list_var == "SLURM_STEP_NODELIST" else ""),
        str(nnodes),
        env.get("MASTER_ADDR") or hosts[0],
        port,
        f"slurm-{env['SLURM_JOB_ID']}",
        node_rank=node_rank,
        variables={**variables, **_present(env, "MASTER_ADDR", "MASTER_PORT", RDZV_PORT_VAR)},
    )


DETECTORS: tuple[Callable[[Mapping[str, str]], Placement | None], ...] = (
    from_slurm,
    from_pytorchjob,
    from_trainer_v2,
    from_indexed_job,
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
    values: list[str] = []
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
def nproc_from(env: Mapping[str, str]) -> int | str | None:
    """PET_NPROC_PER_NODE as torchrun reads it: N, "cpu" or "gpu"; None when unset or "auto"."""
    return parse_nproc(env.get("PET_NPROC_PER_NODE", ""), "PET_NPROC_PER_NODE")


def parse_nproc(value: str, name: str) -> int | str | None:
    """``N|auto|cpu|gpu``: a PyTorchJob's nprocPerNode, a TrainJob's numProcPerNode, torchrun's flag."""
    if value in ("", "auto"):
        return None
    if value in NPROC_WORDS:
        return value
    try:
        number = int(value)
    except ValueError:
        raise LaunchEnvironmentError(f"{name}={value!r} must be a number or one of {', '.join(NPROC_WORDS)}") from None
    if number < 1:
        raise LaunchEnvironmentError(f"{name}={number} must be >= 1")
    return number


def _present(env: Mapping[str, str], *names: str) -> dict[str, str]:
    return {name: env[name] for name in names if name in env}


def _complete(
    env: Mapping[str, str], names: tuple[str, ...], triggers: tuple[str, ...] | None = None
) -> dict[str, str] | None:
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
        raise LaunchEnvironmentError(
            f"{name}={node_rank} but the job has {nnodes} node(s): a node rank must be < {nnodes}"
        )


def max_nodes(nnodes: str) -> int:
    """The largest node count ``N`` or ``MIN:MAX`` admits: node ranks run up to it."""
    return int(nnodes.split(":")[-1])


def check_nnodes(nnodes: str, name: str) -> None:
    match = re.fullmatch(r"(\d+)(?::(\d+))?", nnodes)
    if not match or int(match.group(1)) < 1 or int(match.group(2) or match.group(1)) < int(match.group(1)):
        raise LaunchEnvironmentError(f"{name}={nnodes!r} must be N or MIN:MAX with 1 <= MIN <= MAX")


def _endpoint(env: Mapping[str, str], name: str) -> tuple[str, int]:
    match = re.fullmatch(r"\[?([^\]]+?)\]?:(\d+)", env[name])
    if not match or not 1 <= int(match.group(2)) <= 65535:
        raise LaunchEnvironmentError(f"{name}={env[name]!r} must be HOST:PORT")
    return match.group(1), int(match.group(2))


def default_rdzv_id(host: str) -> str:
    """Every node derives the same id from the rendezvous host, which names the job's pod 0 (an
    external store's host names no job: see ``apply_overrides`` in launcher/command.py)."""
    return f"partialfc-{host}"
