"""Data-parallel training across processes with MPI (mpi4py), as ChainerMN did.

`mpiexec -n N dltrain train config.yaml` starts N ranks. Each builds the same model from the same
seed, draws the same shuffled order, takes its own slice of every global batch, and after its
backward pass the gradients are summed over ranks with ONE Allreduce over a single flat buffer
(the local loss and counts ride in the same buffer). Rank 0 alone writes the run directory.

A single process needs no MPI: `communicator()` then returns a one-rank stand-in.

On GPUs (`--device gpu` under mpiexec) each rank takes the GPU of its local rank on its machine and
the gradient Allreduce runs through NCCL (CuPy's cupy.cuda.nccl) straight between GPU buffers; MPI
still starts the ranks, hands out NCCL's id and carries the small control messages.
"""

from __future__ import annotations

import os
import time

from . import backend
from .errors import DltrainError

np = backend.np

_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PMIX_SIZE")
_LOCAL_RANK_VARIABLES = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK")
_LOCAL_SIZE_VARIABLES = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE")


class SingleProcess:
    """The communicator of a run without MPI: rank 0 of 1, every collective is the identity."""

    rank, size = 0, 1
    seconds = 0.0

    def sum(self, flat):
        return flat

    def broadcast(self, value):
        return value

    def local_size(self) -> int:
        return 1

    def for_device(self, device: str):
        return self


class MPICommunicator:
    def __init__(self, comm):
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.seconds = 0.0  # time spent in Allreduce (waiting for the slowest rank included)

    def sum(self, flat):
        """Element-wise sum over ranks of a float array (one Allreduce, through host memory)."""
        from mpi4py import MPI  # noqa: PLC0415

        started = time.perf_counter()
        host = np.ascontiguousarray(backend.to_numpy(flat))
        out = np.empty_like(host)
        self.comm.Allreduce(host, out, op=MPI.SUM)
        self.seconds += time.perf_counter() - started
        return backend.to_device(out, backend.device_of(flat))

    def broadcast(self, value):
        return self.comm.bcast(value, root=0)

    def local_rank(self) -> int:
        """This rank's number among the ranks on its own machine: from the launcher's variables (MPICH, Open MPI),
        else by splitting the communicator by shared memory (a collective: every rank asks at the same point)."""
        for name in _LOCAL_RANK_VARIABLES:
            if os.environ.get(name, "").isdigit():
                return int(os.environ[name])
        from mpi4py import MPI  # noqa: PLC0415

        return self.comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()

    def local_size(self) -> int:
        """How many ranks run on this rank's machine (they share its cores): from the launcher's variables, else
        by splitting the communicator by shared memory (a collective)."""
        for name in _LOCAL_SIZE_VARIABLES:
            if os.environ.get(name, "").isdigit():
                return int(os.environ[name])
        from mpi4py import MPI  # noqa: PLC0415

        return self.comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()

    def for_device(self, device: str):
        """The communicator for gradients on `device`: NCCL between GPUs when CuPy has it, else this one.
        On 'gpu' it first makes this rank use the GPU of its local rank."""
        if device != "gpu":
            return self
        backend.select_gpu(self.local_rank())
        nccl = backend.nccl_module()
        if nccl is None:  # gradients still travel, through host memory
            return self
        return NCCLCommunicator(self, nccl)


class NCCLCommunicator:
    """Gradients summed by NCCL between the ranks' GPUs; control messages still go through MPI."""

    def __init__(self, mpi: MPICommunicator, nccl):
        self.mpi, self.nccl = mpi, nccl
        self.rank, self.size = mpi.rank, mpi.size
        self.seconds = 0.0
        unique_id = mpi.broadcast(nccl.get_unique_id() if mpi.rank == 0 else None)
        self.comm = nccl.NcclCommunicator(self.size, unique_id, self.rank)
        self.kinds = {backend.np.dtype(backend.np.float32): nccl.NCCL_FLOAT32,
                      backend.np.dtype(backend.np.float64): nccl.NCCL_FLOAT64}

    def sum(self, flat):
        """Element-wise sum over ranks of a GPU float array: one ncclAllReduce, no host copy."""
        xp = backend.array_module(flat)
        started = time.perf_counter()
        flat = xp.ascontiguousarray(flat)
        out = xp.empty_like(flat)
        stream = xp.cuda.get_current_stream()
        self.comm.allReduce(flat.data.ptr, out.data.ptr, flat.size, self.kinds[flat.dtype], self.nccl.NCCL_SUM,
                            stream.ptr)
        stream.synchronize()  # the caller reads the loss from it right away
        self.seconds += time.perf_counter() - started
        return out

    def broadcast(self, value):
        return self.mpi.broadcast(value)

    def local_size(self) -> int:
        return self.mpi.local_size()

    def for_device(self, device: str):
        return self


def launched_size() -> int:
    """How many ranks the launcher (mpiexec) says this job has; 1 outside MPI."""
    for name in _SIZE_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


def communicator():
    if launched_size() <= 1:
        return SingleProcess()
    try:
        from mpi4py import MPI  # noqa: PLC0415 (optional: pip install 'dltrain[mpi]')
    except ImportError:
        from .errors import DltrainError  # noqa: PLC0415

        raise DltrainError("started by mpiexec with several ranks, but mpi4py is not installed: "
                           "pip install 'dltrain[mpi]'") from None
    return MPICommunicator(MPI.COMM_WORLD)


def shard(indices, rank: int, size: int):
    """This rank's part of a global batch: contiguous, sizes differing by at most one."""
    bounds = np.linspace(0, len(indices), size + 1).round().astype(int)
    return indices[bounds[rank]:bounds[rank + 1]]


def on_rank_zero(comm, action):
    """Rank 0 does `action` (it alone writes files, fits what every rank must share) and every rank gets its
    result; when it fails, every rank stops with it instead of waiting forever in the next collective."""
    result, problem = None, None
    if comm.rank == 0:
        try:
            result = action()
        except DltrainError as exc:
            problem = exc
    if comm.broadcast(problem is not None):
        raise problem or DltrainError("rank 0 stopped the run (its message says why)")
    return comm.broadcast(result)
