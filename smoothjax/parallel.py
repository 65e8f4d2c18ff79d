"""Data parallelism over every device of every process: one 1-D ``data`` mesh, batch sharded, state replicated.

This is how smoothjax meets "pmapped training steps" in current JAX: ``jax.pmap`` is in maintenance mode, so a
train step is a single ``jax.jit``-ted function whose batch argument is sharded along the ``data`` axis and whose
parameters are replicated; XLA inserts the cross-device reductions (gradient mean, batch-norm statistics over the
global batch). The mesh axis is ``AxisType.Auto``: explicit axes would reject vmapping a conv net over noise draws
of a sharded batch. The same code runs on 1 CPU, 8 GPUs or a multi-host TPU pod.

One multi-host idiom serves every job (training, certification, evaluation): ``initialize_distributed``, then the
global ``make_mesh()``; each process loads only its contiguous rows of every global batch and ``to_global`` assembles
them; programs are jitted over the mesh with the batch sharded and results replicated, so every process reads the
whole result and only process 0 writes files. ``together`` makes a failed check on any process the same one-line
error on all of them, and ``from_process_0`` shares what only process 0 knows (e.g. which log rows exist).
"""

from __future__ import annotations

import contextlib
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def initialize_distributed(coordinator_address: str = "", num_processes: int = -1, process_id: int = -1) -> None:
    """Joins a multi-process JAX system when asked to; does nothing for a single process.

    It is asked to when ``coordinator_address`` is non-empty (then ``num_processes`` and ``process_id`` must be
    given, e.g. ``"127.0.0.1:12345", 2, 0``), or when the environment variable ``SMOOTHJAX_DISTRIBUTED=1`` is set
    (then ``jax.distributed.initialize()`` discovers the cluster itself, as on Cloud TPU pods and SLURM). Must
    run before any other JAX call. On CPU the processes talk through gloo.
    """
    if jax.distributed.is_initialized():
        return
    auto = os.environ.get("SMOOTHJAX_DISTRIBUTED", "") == "1"
    if not coordinator_address and not auto:
        return
    if coordinator_address and (num_processes < 1 or not 0 <= process_id < num_processes):
        raise ValueError(f"distributed: num_processes={num_processes} and process_id={process_id} are not allowed "
                         "with a coordinator address; need num_processes >= 1 and 0 <= process_id < num_processes")
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, KeyError, ValueError):  # Option absent on newer JAX, where gloo is the default.
        pass
    if coordinator_address:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    else:
        jax.distributed.initialize()


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh named ``data`` over ``devices`` (default: all devices of all processes), axis type Auto."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of arrays whose leading (batch) axis is split over the ``data`` axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of arrays held whole on every device (parameters, optimizer state, keys)."""
    return NamedSharding(mesh, P())


def batch_axis(x):
    """``(mesh, axis)`` when the leading (batch) axis of ``x`` is sharded over a mesh axis, else ``(None, None)``.

    Read from the type of a traced value under an Explicit mesh (``jax.make_mesh``'s default) and from the
    ``NamedSharding`` of a concrete array under any mesh; a traced value under Auto axes carries no sharding, so it
    gives ``(None, None)`` (XLA then partitions by itself).
    """
    candidates = []
    if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
        candidates.append(x.sharding)
    try:
        candidates.append(jax.typeof(x).sharding)
    except (AttributeError, TypeError):
        pass
    for sharding in candidates:
        spec = getattr(sharding, "spec", None)
        if spec and spec[0] is not None and not getattr(sharding.mesh, "empty", True):
            return sharding.mesh, spec[0]
    return None, None


def named_batch_axis(x, axis) -> tuple | None:
    """``per_shard``'s ``where`` for a batch ``x`` sharded along the mesh axis named ``axis``; None for None.

    The mesh is the one set by ``jax.set_mesh`` (read with ``jax.sharding.get_abstract_mesh``, so this works inside
    a jit of one's own, where a value under Auto axes does not carry its sharding). Raises a one-line ValueError
    unless ``axis`` names an axis (or a tuple of axes) of that mesh whose size divides ``x``'s leading axis.
    """
    if axis is None:
        return None
    mesh = jax.sharding.get_abstract_mesh()
    names = axis if isinstance(axis, tuple) else (axis,)
    if mesh.empty or not all(a in mesh.axis_names for a in names):
        raise ValueError(f"batch_axis={axis!r} is not allowed here; it must name an axis of the mesh set with "
                         f"jax.set_mesh (current mesh axes: {tuple(mesh.axis_names)})")
    if x.shape[0] % _axis_size(mesh, axis):
        raise ValueError(f"batch_axis={axis!r} is not allowed for a batch of {x.shape[0]} images; the axis has "
                         f"{_axis_size(mesh, axis)} devices, which must divide the batch")
    return mesh, axis


def per_shard(fn, x, *batched, replicated=(), where=None):
    """``fn(*batched, *replicated)`` run on each device's rows when ``x``'s batch axis is sharded (``batch_axis``),
    else called once on the whole batch.

    For functions whose row i depends only on row i of every ``batched`` argument (per-image sampling,
    certificates): the results are the same, the outputs stay sharded like ``x``, and nothing crosses devices (host
    callbacks run on each device's own rows, so no gather to device 0 and no SPMD rematerialisation). ``batched``
    arrays share x's leading axis; ``replicated`` ones (model variables) are held whole on every device. ``where``:
    an explicit ``(mesh, axis)`` (e.g. read outside a jit from the concrete batch) instead of ``batch_axis(x)``.
    """
    mesh, axis = where or batch_axis(x)
    if mesh is None or x.shape[0] % _axis_size(mesh, axis):
        return fn(*batched, *replicated)
    specs = (P(axis),) * len(batched) + (P(),) * len(replicated)
    args = (*batched, *replicated)
    if jax.sharding.AxisType.Explicit in tuple(getattr(mesh, "axis_types", ())):  # the types must match the specs
        args = tuple(jax.tree.map(lambda a, s=s: jax.sharding.reshard(a, s), a) for a, s in zip(args, specs))
    return jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=P(axis), check_vma=False)(*args)


def _axis_size(mesh, axis) -> int:
    names = axis if isinstance(axis, tuple) else (axis,)
    return int(np.prod([mesh.shape[a] for a in names]))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """Raises a one-line ValueError unless the global batch splits evenly over devices and processes."""
    n = mesh.devices.size
    if batch_size < 1 or batch_size % n:
        raise ValueError(f"batch_size={batch_size} is not allowed on {n} devices; it must be a positive multiple "
                         f"of the device count {n}")


def to_global(local_batch: dict, mesh: Mesh) -> dict:
    """Assembles each process's rows of a batch into global arrays sharded along ``data``.

    ``local_batch`` maps names to NumPy arrays holding this process's contiguous slice of the global batch (leading
    axis global_batch / process_count); the result holds jax.Arrays of the global shape.
    """
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}


def fetch(a) -> np.ndarray:
    """The whole value of ``a`` as NumPy on every process: a global jax.Array spread over several processes is
    gathered (``multihost_utils.process_allgather``, a collective: every process must call it); anything else
    (NumPy, a fully addressable jax.Array) is read as it is."""
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return np.asarray(a)


def replicate(tree, mesh):
    """``tree`` with every leaf held whole on every device of ``mesh`` (``replicated``), on one process as
    on several. Leaves that already span several processes are kept as they are. NumPy values and process-local
    jax arrays (PRNG keys included) must hold the same value on every process; on several processes they are
    placed from host copies (``jax.device_put`` accepts only host values for devices of other processes)."""
    sharding = replicated(mesh)

    def put(a):
        if isinstance(a, jax.Array):
            if not a.is_fully_addressable:
                return a
            if jax.process_count() == 1:
                return jax.device_put(a, sharding)
            if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
                return jax.random.wrap_key_data(jax.device_put(np.asarray(jax.random.key_data(a)), sharding),
                                                impl=jax.random.key_impl(a))
            a = np.asarray(a)
        return jax.device_put(a, sharding)

    return jax.tree.map(put, tree)


_MESSAGE_BYTES = 480


def agree(error: str | None) -> None:
    """Every process raises ``ValueError(message)`` of the first process (lowest index) with an error, if any.

    A collective on several processes (each process must call it); one process only raises its own error."""
    if jax.process_count() == 1:
        if error is not None:
            raise ValueError(error)
        return
    from jax.experimental import multihost_utils
    encoded = (error or "").encode()[:_MESSAGE_BYTES]
    buf = np.zeros(_MESSAGE_BYTES + 1, np.int32)
    buf[0], buf[1:1 + len(encoded)] = error is not None, np.frombuffer(encoded, np.uint8)
    for row in np.asarray(multihost_utils.process_allgather(buf)):
        if row[0]:
            raise ValueError(bytes(row[1:].astype(np.uint8)).rstrip(b"\0").decode(errors="ignore"))


@contextlib.contextmanager
def together():
    """Runs a block on every process and then ``agree``s: a ValueError / OSError of the block on any process
    becomes the same one-line ValueError on all of them (no process is left waiting in a collective). With one
    process the original exception propagates unchanged."""
    error = None
    try:
        yield
    except (ValueError, OSError) as e:
        if jax.process_count() == 1:
            raise
        error = str(e).splitlines()[0] if str(e) else type(e).__name__
    agree(error)


def from_process_0(a: np.ndarray) -> np.ndarray:
    """Process 0's value of the int32 array ``a`` (same shape on every process), on every process (a collective)."""
    if jax.process_count() == 1:
        return a
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(a, np.int32)))
