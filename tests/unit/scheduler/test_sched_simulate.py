"""Replay drivers on tiny synthetic traces."""

from __future__ import annotations

from pathlib import Path

import pytest

from neocloud.server.scheduler import ResourceRequest
from neocloud.simulate import arrival_sequence, load_nodes, load_openb_pods, simulate_fgd_protocol
from neocloud.simulate.philly import Job, load_philly_jobs, load_philly_machines, replay_gang_queue

NODES = """sn,cpu_milli,memory_mib,gpu,model
n0,64000,262144,8,G2
n1,64000,262144,8,G2
n2,32000,131072,2,T4
n3,32000,131072,2,T4
n4,16000,65536,0,
"""
PODS = (
    "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,"
    "creation_time,deletion_time,scheduled_time\n"
    """p0,4000,8192,1,500,,LS,Running,0,10,0
p1,8000,16384,1,1000,,BE,Running,1,11,1
p2,16000,32768,2,1000,T4,LS,Running,2,12,2
p3,4000,8192,0,0,,BE,Running,3,13,3
p4,32000,65536,8,1000,,LS,Running,4,,4
p5,2000,4096,1,250,G2|T4,LS,Failed,5,15,5
"""
)


@pytest.fixture()
def trace(tmp_path: Path) -> tuple[Path, Path]:
    nodes = tmp_path / "nodes.csv"
    pods = tmp_path / "pods.csv"
    nodes.write_text(NODES)
    pods.write_text(PODS)
    return nodes, pods


def test_loaders_read_openb_rows(trace: tuple[Path, Path]) -> None:
    nodes = load_nodes(trace[0])
    assert [len(n.gpus) for n in nodes] == [8, 8, 2, 2, 0]
    assert nodes[2].gpu_type == "T4" and nodes[4].gpu_type == ""
    pods = load_openb_pods(trace[1])
    assert pods[0].request == ResourceRequest(4000, 8192, gpu_milli=500)
    assert pods[2].request.gpu_types == ("T4",) and pods[2].request.gpu_count == 2
    assert pods[5].request.gpu_types == ("G2", "T4")
    assert pods[4].deletion_time is None and pods[1].qos == "BE"


def test_yaml_node_list(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(
        "nodes:\n"
        "  - {id: h100, cpu_milli: 96000, memory_mib: 1048576, gpus: 8, gpu_type: H100, count: 3,"
        " pool: main, labels: {zone: a}}\n"
        "  - {id: cpu, cpu_milli: 32000, memory_mib: 65536}\n"
    )
    nodes = load_nodes(path)
    assert [n.id for n in nodes] == ["h100-0", "h100-1", "h100-2", "cpu"]
    assert nodes[0].gpus[0].memory_mib == 80 * 1024 and nodes[0].pool == "main"
    path.write_text("- {id: x}\n")
    with pytest.raises(ValueError, match="needs id, cpu_milli and memory_mib"):
        load_nodes(path)


def test_arrival_sequence_reaches_the_target() -> None:
    reqs = [ResourceRequest(1000, 1024, gpu_count=1), ResourceRequest(1000, 1024, gpu_milli=500)]
    seq = arrival_sequence(reqs, 10_000, seed=1, tune_ratio=1.3)
    total = sum(r.total_gpu_milli for r in seq)
    assert 13_000 - 1000 < total <= 13_000
    assert arrival_sequence(reqs, 10_000, seed=1) == seq
    down = arrival_sequence(reqs * 20, 10_000, seed=1, tune_ratio=1.0)
    assert sum(r.total_gpu_milli for r in down) <= 10_000


@pytest.mark.parametrize("policy", ["first-fit", "best-fit", "random", "fgd", "default"])
def test_fgd_protocol_on_a_tiny_trace(trace: tuple[Path, Path], policy: str) -> None:
    result = simulate_fgd_protocol(trace[0], trace[1], policy=policy, seed=42)
    for key in (
        "alloc_pct_at_100",
        "alloc_pct_at_130",
        "frag_ratio_pct_at_90",
        "unalloc_gpus_at_130",
    ):
        assert result[key] is not None
    assert 0 < result["alloc_pct_at_100"] <= result["alloc_pct_at_130"] <= 100
    assert result["unalloc_gpus_at_130"] == pytest.approx(
        (100 - result["alloc_pct_at_130"]) / 100 * 20, abs=0.1
    )
    assert result["placements_per_s"] > 0 and result["gpus"] == 20
    assert result["pods_placed"] + result["pods_failed"] == result["pods_arrived"]
    assert simulate_fgd_protocol(trace[0], trace[1], policy=policy, seed=42) | {
        "placement_seconds": 0,
        "placements_per_s": 0,
    } == result | {"placement_seconds": 0, "placements_per_s": 0}


def test_philly_gangs_queue_and_fair_backfill(tmp_path: Path) -> None:
    machines = tmp_path / "m.csv"
    machines.write_text(",machineId,number of GPUs\n0,m0,8\n1,m1,8\n2,m2,0\n")
    nodes = load_philly_machines(machines)
    assert [len(n.gpus) for n in nodes] == [8, 8]
    jobs = [
        Job(0, 0.0, 100.0, 8, "a"),
        Job(1, 1.0, 100.0, 16, "b"),  # a gang of two 8-GPU workers: waits for job 0
        Job(2, 2.0, 10.0, 1, "a"),
    ]
    fifo = replay_gang_queue(nodes, jobs, queue_policy="fifo", placement="first-fit")
    fair = replay_gang_queue(nodes, jobs, queue_policy="fair-backfill", shares={"a": 8, "b": 8})
    assert fifo["gang_jobs"] == 1 and fifo["jobs"] == 3
    # FIFO: job 2 waits behind the gang (starts at 199); backfill starts it at once.
    assert fifo["avg_queue_s"] == pytest.approx((0 + 99 + 198) / 3, abs=0.1)
    assert fair["avg_queue_s"] < fifo["avg_queue_s"]
    assert fair["makespan_s"] >= 200
    with pytest.raises(ValueError, match="more GPUs than the cluster"):
        replay_gang_queue(nodes, [Job(0, 0, 1, 32, "a")], queue_policy="fifo")


def test_philly_job_loader(tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text(
        "timestamp,duration,num_gpus,gpu_time,cluster\n"
        "2017-10-02 00:00:10,5,16,80,a\n2017-10-01 00:00:00,7,1,7,b\n2017-10-05 00:00:00,1,1,1,b\n"
    )
    jobs = load_philly_jobs(path, days=2)
    assert [(j.arrival_s, j.gpus, j.vc) for j in jobs] == [(0.0, 1, "b"), (86410.0, 16, "a")]
    assert [w.gpu_count for w in jobs[1].workers()] == [8, 8]
    assert [w.gpu_count for w in Job(9, 0, 1, 12, "x").workers()] == [8, 4]
