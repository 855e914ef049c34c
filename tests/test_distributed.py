"""Data-parallel training with MPI: 2 ranks give the metrics of 1 rank with the same global batch and seed."""

import csv
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dltrain import backend
from dltrain.config import validate
from dltrain.distributed import SingleProcess, shard
from dltrain.training import rundir as files
from dltrain.training.reporting import SilentReporter
from dltrain.training.trainer import Trainer

BIN = Path(sys.executable).parent
MPIEXEC = shutil.which("mpiexec", path=str(BIN)) or shutil.which("mpiexec")
CONFIG = """\
seed: 0
data: {name: blobs, n_samples: 600, classes: 3}
model: [{linear: {units: 16}}, tanh, {linear: {units: 3}}]
optimizer: {name: sgd, lr: 0.1, momentum: 0.9}
training: {epochs: EPOCHS, batch_size: 32, early_stopping: {patience: 100}}
"""

needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="MPI is not installed (pip install 'dltrain[mpi]')")


def test_shards_cover_a_batch_once():
    import numpy as np

    batch = np.arange(10)
    parts = [shard(batch, r, 3) for r in range(3)]
    assert [len(p) for p in parts] == [3, 4, 3]
    assert np.array_equal(np.concatenate(parts), batch)
    assert SingleProcess().sum(batch) is batch


def train(tmp_path, name, ranks, epochs=3):
    config = tmp_path / f"{name}.yaml"
    config.write_text(CONFIG.replace("EPOCHS", str(epochs)))
    command = [str(BIN / "dltrain"), "train", str(config), "--run-dir", str(tmp_path / name), "--quiet"]
    if ranks > 1:
        command = [MPIEXEC, "-n", str(ranks), *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


@pytest.mark.slow
@needs_mpi
def test_two_ranks_match_one_rank(tmp_path):
    for name, ranks in (("one", 1), ("two", 2)):
        result = train(tmp_path, name, ranks)
        assert result.returncode == 0, result.stderr
    rows = {}
    for name in ("one", "two"):
        with open(tmp_path / name / "metrics.csv") as f:
            rows[name] = list(csv.DictReader(f))
    assert len(rows["one"]) == len(rows["two"]) == 3
    for a, b in zip(rows["one"], rows["two"]):
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-5, abs=1e-6), key
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["ranks"] == 2
    evaluated = subprocess.run([str(BIN / "dltrain"), "eval", str(tmp_path / "two"), "--json"],
                               capture_output=True, text=True, timeout=60)
    assert evaluated.returncode == 0
    assert json.loads(evaluated.stdout)["accuracy"] == pytest.approx(summary["test_accuracy"])


@needs_mpi
def test_a_dying_rank_ends_the_job_instead_of_hanging(tmp_path):
    config = tmp_path / "long.yaml"
    config.write_text(CONFIG.replace("EPOCHS", "100000").replace("{patience: 100}", "false"))
    process = subprocess.Popen([MPIEXEC, "-n", "2", str(BIN / "dltrain"), "train", str(config), "--run-dir",
                                str(tmp_path / "run"), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    def rank_processes():
        ranks = []
        for entry in Path("/proc").iterdir():
            try:
                words = (entry / "cmdline").read_bytes().split(b"\0")
            except (OSError, ValueError):
                continue
            if words and words[0].endswith(b"python3") or b"python" in words[0]:
                if str(config).encode() in words and b"train" in words:
                    ranks.append(int(entry.name))
        return ranks

    deadline = time.time() + 60
    while time.time() < deadline and len(rank_processes()) < 2:
        time.sleep(0.2)
    time.sleep(2)  # both ranks are training
    ranks = rank_processes()
    assert len(ranks) == 2
    os.kill(ranks[-1], signal.SIGKILL)
    output, _ = process.communicate(timeout=120)  # the survivor is ended by mpiexec, not left waiting forever
    assert process.returncode != 0 and "TERMINATED" in output


def test_gradients_stay_on_the_cpu_communicator_for_cpu_training():
    single = SingleProcess()
    assert single.for_device("cpu") is single and single.for_device("gpu") is single


NCCL_CHECK = """
try:
    from mpi4py import MPI
except Exception as exc:  # mpi4py present but no MPI library it can load
    print("no MPI:", exc)
    raise SystemExit(0)
from dltrain import backend
from dltrain.distributed import MPICommunicator, NCCLCommunicator
nccl = backend.nccl_module()
if nccl is None:
    print("no NCCL")
    raise SystemExit(0)
comm = NCCLCommunicator(MPICommunicator(MPI.COMM_SELF), nccl)
xp = backend.xp_for("gpu")
flat = xp.arange(10, dtype=xp.float32) / 3
summed = comm.sum(flat)
assert backend.device_of(summed) == "gpu"
xp.testing.assert_array_equal(summed, flat)
assert comm.broadcast({"stop": True}) == {"stop": True} and comm.seconds > 0
print("nccl ok")
"""


@pytest.mark.skipif(not backend.gpu_available(), reason=f"no GPU here: {backend.gpu_unavailable_reason()}")
def test_nccl_allreduce_on_the_gpu():
    """One rank (NCCL refuses two ranks on one GPU): the NCCL path sums a GPU buffer without a host copy.
    In a child process, so that an MPI library that cannot start here fails this test alone."""
    pytest.importorskip("mpi4py")
    result = subprocess.run([sys.executable, "-c", NCCL_CHECK], capture_output=True, text=True, timeout=120)
    if "no NCCL" in result.stdout:
        pytest.skip("this CuPy has no usable NCCL (pip install nvidia-nccl-cu13)")
    if "no MPI:" in result.stdout:
        pytest.skip(f"mpi4py cannot load an MPI library here ({result.stdout.strip()})")
    assert result.returncode == 0 and "nccl ok" in result.stdout, result.stderr[-2000:]


class FakeNCCL:
    """NCCL's Python face as cupy.cuda.nccl has it, summing buffers across threads that play the ranks."""

    NCCL_FLOAT32, NCCL_FLOAT64, NCCL_SUM = 7, 8, 0
    CTYPES = {7: "float32", 8: "float64"}

    def __init__(self, ranks):
        import threading

        self.barrier = threading.Barrier(ranks)
        self.buffers = {}
        outer = self

        class NcclCommunicator:
            def __init__(self, ndev, unique_id, rank):
                assert ndev == ranks and unique_id == b"nccl-id"
                self.rank = rank

            def allReduce(self, send, recv, count, dtype, op, stream):
                import numpy as np

                assert op == FakeNCCL.NCCL_SUM
                kind = np.dtype(FakeNCCL.CTYPES[dtype])
                view = lambda address: np.frombuffer((ctypes.c_char * (count * kind.itemsize)).from_address(address),
                                                     dtype=kind)
                outer.buffers[self.rank] = view(send).copy()
                outer.barrier.wait()
                view(recv)[:] = sum(outer.buffers[r] for r in range(ranks))
                outer.barrier.wait()

        self.NcclCommunicator = NcclCommunicator

    def get_unique_id(self):
        return b"nccl-id"


class ThreadRank:
    """The MPI side of one rank: its number, and broadcast from rank 0 through a shared slot."""

    def __init__(self, rank, size, shared):
        self.rank, self.size, self.shared = rank, size, shared

    def broadcast(self, value):
        if self.rank == 0:
            self.shared["value"] = value
        self.shared["barrier"].wait()
        return self.shared["value"]


def test_nccl_communicator_sums_gpu_buffers_across_ranks(fake_gpu):
    """Two ranks (threads) on the stand-in GPU: every rank gets the sum, in place on the device, for both float
    types; NCCL's id travels from rank 0 through MPI."""
    import threading

    import numpy as np

    from dltrain.distributed import NCCLCommunicator

    nccl = FakeNCCL(2)
    shared = {"barrier": threading.Barrier(2)}
    results = {}

    def rank(r):
        comm = NCCLCommunicator(ThreadRank(r, 2, shared), nccl)
        for dtype in (np.float32, np.float64):
            flat = backend.to_device(np.arange(5, dtype=dtype) * (r + 1), "gpu")
            results[r, np.dtype(dtype).name] = comm.sum(flat)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    for key, summed in results.items():
        assert backend.device_of(summed) == "gpu"
        np.testing.assert_array_equal(backend.to_numpy(summed), np.arange(5) * 3, err_msg=str(key))
    assert len(results) == 4


class FakeMPIComm:
    """What MPICommunicator reads of an mpi4py communicator, for one rank of `size`."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size

    def bcast(self, value, root=0):
        return value


@pytest.mark.parametrize("variable", ["MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK"])
def test_each_gpu_rank_takes_the_gpu_of_its_local_rank(fake_gpu, monkeypatch, variable):
    """Rank 3 of a job, the second on its machine (local rank 1), on a machine with 2 GPUs: GPU 1; without NCCL
    (the stand-in has none) the gradients keep going through MPI."""
    from dltrain.distributed import MPICommunicator

    chosen = []
    monkeypatch.setattr(fake_gpu.cuda, "Device", lambda index=0: type("D", (), {"use": lambda self: chosen.append(
        index)})())
    monkeypatch.setattr(fake_gpu.cuda.runtime, "getDeviceCount", lambda: 2)
    monkeypatch.setenv(variable, "1")
    comm = MPICommunicator(FakeMPIComm(rank=3, size=4))
    assert comm.for_device("gpu") is comm and chosen == [1]
    assert comm.for_device("cpu") is comm and chosen == [1]
    monkeypatch.setenv(variable, "5")  # more ranks than GPUs on a machine: they share, round-robin
    comm.for_device("gpu")
    assert chosen == [1, 1]


@pytest.mark.parametrize("variable", ["MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE"])
def test_ranks_on_one_machine_share_its_cores(monkeypatch, variable):
    """4 ranks on an 8-core machine: the launcher says how many share it, and each trains with 2 threads
    (BLAS and the compiled kernels), not 8 (no oversubscription)."""
    from dltrain.distributed import MPICommunicator

    for name in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "DLTRAIN_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, "4")
    comm = MPICommunicator(FakeMPIComm(rank=1, size=8))
    assert comm.local_size() == 4 and SingleProcess().local_size() == 1
    monkeypatch.setattr(backend.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    backend.fused(np.zeros(1, np.float32))  # the kernels loaded first, as by an earlier test: they apply the default
    applied = []
    monkeypatch.setattr(backend, "apply_threads", applied.append)
    cfg = validate({"seed": 0, "data": {"name": "blobs", "n_samples": 64, "classes": 2},
                    "model": [{"linear": {"units": 2}}], "training": {"epochs": 1, "batch_size": 8}}, {}, "test")
    Trainer(cfg, files.RunDir(Path("unused")), "cpu", SilentReporter(), comm=comm).setup()
    assert applied == [2]
