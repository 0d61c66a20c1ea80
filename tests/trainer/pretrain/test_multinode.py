"""Two "nodes" on this one machine, each started by its own DeepSpeed launcher, as on a cluster without ssh.

Node K of N runs (docs/training.md, "Multi-node"; H lists the nodes, one line each):

    deepspeed --hostfile H --no_ssh --node_rank K --master_addr ADDR --master_port P trainer/run.py ...

Checked against the same world size on one node (`deepspeed --num_gpus 2`): the global rank each process
gets, and that a run whose both nodes are killed after the first checkpoint, then requeued through
scripts/slurm/train.sbatch (which adds --resume and runs the same per-node command on every node), trains
exactly the one-node run: per-step training losses, evaluations with their per-domain samples seen, the
final encoder. Slurm itself is replaced by two small stand-ins (`srun`: the command once per node, here
all on this machine; `scontrol show hostnames`); DeepSpeed and the trainer are real. The one-node
reference runs alongside the first leg: startup, not training, is what costs time here.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import torch

from tests.trainer.pretrain.trainer_helpers import PY, REPO, env, events
from voxmix.formats.encoder import read_encoder
from voxmix.formats.runlog import read_runlog

DEEPSPEED = str(Path(PY).parent / "deepspeed")
NODES = 2  # x 1 process each: world 2, the smallest world whose ranks live on different nodes
CONFIG = "configs/tiny.yaml"
# 2 domains x 48 samples, 4 per rank and step -> 12 steps; evaluations at 32, 64, 96 samples (steps 4,
# 8, 12), a checkpoint every 4 steps, a training-loss event every step.
STEPS = 12
ARGS = [
    "--budget-samples", "96", "--eval-at", "32,64", "--set", "data.batch_size=4", "--set", "train.log_every=1",
    "--set", "checkpoint.every_steps=4", "--set", "data.num_threads=1", "--set", "eval.crops_per_domain=4",
]  # fmt: skip
JOB_ID = "4242"
RANK_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_SIZE", "CROSS_RANK", "MASTER_ADDR")

# Stand-ins for Slurm inside an allocation of SLURM_JOB_NUM_NODES nodes, all of them this machine.
SRUN = """#!/usr/bin/env bash
# srun [--options] CMD...: CMD once per node, SLURM_NODEID set; fails when a task fails
while [[ $# -gt 0 && $1 == --* ]]; do echo "$1" >> "$(dirname "$0")/srun.options"; shift; done
pids=()
for ((k = 0; k < SLURM_JOB_NUM_NODES; k++)); do SLURM_NODEID=$k SLURM_PROCID=$k "$@" & pids+=($!); done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
"""
SCONTROL = """#!/usr/bin/env bash
# scontrol show hostnames LIST, for a plain comma-separated LIST
[[ "$1 $2" == "show hostnames" ]] || exit 2
tr ',' '\\n' <<< "$3"
"""


def _free_ports(n: int) -> list[int]:
    """n distinct free ports (other test sessions may run at the same time: never a fixed port)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:  # all bound at once: distinct
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


@dataclass
class Launch:
    """A launch (a node's `deepspeed`, or the Slurm job) in its own session: a kill takes its whole tree."""

    name: str
    log: Path
    proc: subprocess.Popen = field(repr=False)

    @classmethod
    def start(cls, name: str, cmd: list[str], logs: Path, extra_env: dict[str, str] | None = None) -> Launch:
        log = logs / f"{name}.log"
        with log.open("w") as fh:  # a file, not a pipe: nobody reads the launcher's chatter while it runs
            proc = subprocess.Popen(
                cmd,
                cwd=REPO,
                env={**env(), **(extra_env or {})},
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return cls(name, log, proc)

    def rank_env(self) -> list[dict[str, str]]:
        """RANK, WORLD_SIZE, ... as the trainer processes under this launch see them (with their pid)."""
        found = []
        with contextlib.suppress(psutil.Error):
            for p in psutil.Process(self.proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if any(a.startswith("--local_rank=") for a in p.cmdline()):  # a rank, not launch.py
                        e = p.environ()
                        found.append({"pid": str(p.pid), **{k: e.get(k, "") for k in RANK_ENV}})
        return sorted(found, key=lambda e: int(e["RANK"]))

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.proc.wait()
            raise AssertionError(f"{self.name} still running after {timeout} s:\n{self.output()}") from None

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def _node_cmd(hostfile: Path, node: int, port: int, train: list[str]) -> list[str]:
    """Node `node`'s launcher: the per-node command of docs/training.md (node 0 listens on 127.0.0.1)."""
    return [DEEPSPEED, "--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(node),
            "--master_addr", "127.0.0.1", "--master_port", str(port), *train]  # fmt: skip


def _slurm_job(root: Path, args: list[str], port: int) -> Launch:
    """scripts/slurm/train.sbatch ARGS as Slurm would run it in a job of NODES nodes (job id JOB_ID)."""
    slurm = root / "slurm"
    slurm.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (slurm / name).write_text(text)
        (slurm / name).chmod(0o755)
    job_env = {
        "PATH": f"{slurm}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_ID": JOB_ID,
        "SLURM_JOB_NODELIST": ",".join(f"node{k}" for k in range(NODES)),
        "SLURM_JOB_NUM_NODES": str(NODES),
        "SLURM_GPUS_ON_NODE": "1",
        "SLURM_CPUS_PER_TASK": "1",
        "SLURM_SUBMIT_DIR": str(REPO),
        "MASTER_ADDR": "127.0.0.1",  # the node names are made up: where node 0 listens
        "MASTER_PORT": str(port),
    }
    return Launch.start("slurm-job", ["bash", "scripts/slurm/train.sbatch", *args], root, job_env)


@dataclass
class Runs:
    ref: Path  # world 2 on one node, uninterrupted
    out: Path  # world 2 on two nodes: killed after the first checkpoint, then resumed by the Slurm script
    rank_env: list[list[dict[str, str]]]  # per node: the environment of each of its trainer processes
    killed_at: int  # the checkpointed step when both nodes were killed
    killed_rc: list[int]
    partial: list[dict]  # the run log's events at the kill
    locks: dict[str, int]  # the run-folder lock files at the kill: {"rank<R>": holder pid}
    slurm: Path  # the stand-ins' folder (srun.options: what the script passed to srun)


@pytest.fixture(scope="module")
def runs(dataset, tmp_path_factory) -> Runs:
    manifest, alloc = dataset
    root = tmp_path_factory.mktemp("multinode")
    hostfile = root / "hostfile"
    hostfile.write_text("".join(f"node{k} slots=1\n" for k in range(NODES)))  # no ssh: names only
    data = ["--manifest", str(manifest), "--allocation", str(alloc)]
    ref, out = root / "one_node", root / "two_nodes"
    ports = _free_ports(3)  # one node, two nodes, the requeued job
    started = time.time()
    launches: list[Launch] = []
    try:
        train = ["trainer/run.py", "--config", CONFIG, *data, *ARGS]
        one_node = [DEEPSPEED, "--num_gpus", str(NODES), "--master_port", str(ports[0])]
        one = Launch.start("one-node", [*one_node, *train, "--out", str(ref)], root)
        nodes = [Launch.start(f"node{k}", _node_cmd(hostfile, k, ports[1], [*train, "--out", str(out)]), root)
                 for k in range(NODES)]  # fmt: skip
        launches = [one, *nodes]

        # Read each node's rank environment while it runs; kill both nodes once a checkpoint is published.
        latest = out / "checkpoints" / "latest.json"
        seen: list[list[dict[str, str]]] = [[] for _ in nodes]
        killed_at, next_look = None, 0.0
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and all(n.proc.poll() is None for n in nodes):
            if not all(seen) and time.monotonic() > next_look:  # a walk over /proc: not every 10 ms
                seen = [s or n.rank_env() for s, n in zip(seen, nodes)]
                next_look = time.monotonic() + 0.5
            with contextlib.suppress(FileNotFoundError, json.JSONDecodeError, KeyError):
                step = json.loads(latest.read_text())["step"]
                if step >= 4 and all(seen):
                    for n in nodes:
                        n.kill()
                    killed_at = step
                    break
            time.sleep(0.01)
        killed_rc = [n.wait(30) for n in nodes]
        assert killed_at is not None, "the two-node run ended before the kill:\n" + "\n".join(
            n.output() for n in nodes
        )
        partial = events(out)
        locks = {p.name: json.loads(p.read_text())["pid"] for p in (out / ".voxmix-lock").glob("rank*")}

        # The requeue: the Slurm script, unchanged, on the same run folder.
        job = _slurm_job(root, [CONFIG, str(alloc), str(manifest), str(out), *ARGS], ports[2])
        launches.append(job)
        assert one.wait(150) == 0, one.output()
        assert job.wait(150) == 0, job.output()
        return Runs(ref, out, seen, killed_at, killed_rc, partial, locks, root / "slurm")
    finally:
        for n in launches:  # a failed assertion above must not leave ranks behind
            if n.proc.poll() is None:
                n.kill()
                n.proc.wait()
        # A killed one-node CPU world leaks DeepSpeed's all-reduce buffers (see trainer/pretrain/loop.py;
        # a multi-node world makes none): remove those of this test's ports, made since it started.
        for port in ports:
            for buf in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_127.0.0.1_{port}_*"):
                with contextlib.suppress(OSError):
                    if buf.stat().st_mtime >= started - 1:
                        buf.unlink()


def test_two_nodes_get_global_ranks(runs):
    # Node-major global ranks (node K holds rank K), a world of 2, one local process per node.
    for k, ranks in enumerate(runs.rank_env):
        assert [{key: e[key] for key in RANK_ENV} for e in ranks] == [
            {"RANK": str(k), "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_SIZE": "1", "CROSS_RANK": str(k),
             "MASTER_ADDR": "127.0.0.1"}
        ]  # fmt: skip
    # The trainer took its world from there (the run log's start; config.json, rewritten by the requeued
    # job), and each global rank saved its own RNG state file.
    assert [s["world_size"] for s in events(runs.out, "start")] == [2]
    assert json.loads((runs.out / "config.json").read_text())["world_size"] == 2
    latest = json.loads((runs.out / "checkpoints" / "latest.json").read_text())
    assert latest["world_size"] == 2 and latest["step"] == STEPS
    ranks = sorted(p.name for p in (runs.out / "checkpoints" / latest["tag"]).glob("voxmix_rank*.pt"))
    assert ranks == ["voxmix_rank0.pt", "voxmix_rank1.pt"]
    # Each process locked the run folder as its global rank (trainer/pretrain/runlock.py): distinct files.
    assert runs.locks == {f"rank{e['RANK']}": int(e["pid"]) for node in runs.rank_env for e in node}


def test_slurm_script_builds_the_hostfile_and_one_launcher_per_node(runs):
    # (That it added --resume: its exit status 0 on a folder with a run log, see the fixture.)
    assert (runs.out / f"hostfile.{JOB_ID}").read_text() == "node0 slots=1\nnode1 slots=1\n"
    options = (runs.slurm / "srun.options").read_text().split()
    assert "--ntasks-per-node=1" in options and "--cpus-per-task=1" in options  # the job's CPUs, again


def test_two_nodes_train_the_one_node_run_across_a_kill_and_requeue(runs):
    # The kill: both launchers and their ranks died by SIGKILL after the first checkpoint, no end event.
    assert runs.killed_rc == [-signal.SIGKILL] * NODES
    assert 4 <= runs.killed_at < STEPS
    assert not any(e["event"] == "end" for e in runs.partial)
    assert any(e["event"] == "eval" for e in runs.partial)  # the step-4 evaluation came from the first leg

    ref, got = read_runlog(runs.ref), read_runlog(runs.out)
    assert ref.status == got.status == "completed"
    # Bit-identical, not approximately equal: both runs are the same two fp32 CPU ranks (one thread each,
    # trainer_helpers.env) doing the same gloo collectives in the same order; only where the processes
    # live differs. Any difference in the sample sequence, its split by rank (global, not local: both
    # nodes' processes have LOCAL_RANK 0), or a rank's RNG streams (crops, masks) changes these numbers.
    assert [(e.step, e.samples_seen) for e in got.evals] == [(e.step, e.samples_seen) for e in ref.evals]
    assert [e.step for e in got.evals] == [4, 8, STEPS]
    assert got.evals[-1].samples_seen == {"ct_abdomen": 48, "mri_brain": 48}
    assert [e.loss for e in got.evals] == [e.loss for e in ref.evals]
    # Every step's training loss (the mean over both ranks' batches), the steps redone after the resume
    # included: what each rank loaded, cropped and masked, step by step.
    ref_loss = {e["step"]: e["train_loss"] for e in events(runs.ref, "throughput")}
    assert sorted(ref_loss) == list(range(1, STEPS + 1))
    tp = events(runs.out, "throughput")
    assert {e["step"] for e in tp if e["step"] > runs.killed_at} == set(range(runs.killed_at + 1, STEPS + 1))
    assert [(e["step"], e["train_loss"]) for e in tp] == [(e["step"], ref_loss[e["step"]]) for e in tp]
    # The trained model itself.
    a = read_encoder(runs.ref / "encoder.pt")["state_dict"]
    b = read_encoder(runs.out / "encoder.pt")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
