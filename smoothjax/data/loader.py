"""Deterministic, resumable, multi-process batching: ``Loader`` for training and ``eval_batches`` for evaluation.

Training batch ``step`` (0-based, counted over epochs) is a pure function of (seed, step):

- epoch ``e = step // steps_per_epoch`` visits the source in the order ``epoch_permutation(n, seed, e)``
  (``np.random.default_rng([seed, 0, e]).permutation(n)``, or ``arange(n)`` without shuffling);
- the global batch holds entries ``[(step % spe) * B, (step % spe + 1) * B)`` of that order (modulo n, which only
  matters with ``drop_remainder=False``, where the last batch of an epoch is completed from the start of the same
  epoch's order so every batch has B rows);
- process ``p`` of ``P`` takes rows ``[p * B / P, (p + 1) * B / P)``;
- the example at row ``j`` of the global batch is augmented with ``example_rng(seed, step, j)``
  (``np.random.default_rng([seed, 1, step, j])``).

Hence the same (seed, step) gives bit-identical global batches for any number of processes, threads or restarts.
Images are converted to float32 in [0, 1] (uint8 / 255); labels are int32.
"""

from __future__ import annotations

import math
import operator
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import numpy as np

from smoothjax.data.augment import get_augment, identity
from smoothjax.data.source import Source, as_float_image

_PERMUTATION_TAG = 0
_AUGMENT_TAG = 1


def _int(value, what: str, minimum: int) -> int:
    try:
        out = operator.index(value)
    except TypeError:
        raise ValueError(f"{what}={value!r} is not allowed; use an integer >= {minimum}") from None
    if isinstance(value, bool) or out < minimum:
        raise ValueError(f"{what}={value!r} is not allowed; use an integer >= {minimum}")
    return out


def _processes(process_index, process_count) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    count = _int(process_count, "process_count", 1)
    index = _int(process_index, "process_index", 0)
    if index >= count:
        raise ValueError(f"process_index={index} is not allowed with process_count={count}; use 0..{count - 1}")
    return index, count


def epoch_permutation(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The order (int64 (n,), a permutation of 0..n-1) in which epoch ``epoch`` visits a source of ``n`` items."""
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    return np.random.default_rng([seed, _PERMUTATION_TAG, epoch]).permutation(n).astype(np.int64)


def example_rng(seed: int, step: int, position: int) -> np.random.Generator:
    """The generator that augments row ``position`` of global batch ``step``: depends on nothing else."""
    return np.random.default_rng([seed, _AUGMENT_TAG, step, position])


def load_examples(src: Source, indices: np.ndarray, *, augment: Callable | None = None,
                  rng_for: Callable[[int], np.random.Generator] | None = None,
                  pool: ThreadPoolExecutor | None = None, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Reads ``src[indices]`` as ``(images float32 (k,) + src.image_shape in [0, 1], labels int32 (k,))``.

    Row ``k`` is ``augment(as_float_image(src[indices[k]]), rng_for(k))`` when ``augment`` is given. In-memory
    sources without augmentation take the vectorised ``get_batch``; otherwise rows are filled by up to ``threads``
    contiguous chunks on ``pool``. The result does not depend on the number of threads. A row whose shape differs
    from ``src.image_shape`` raises a one-line ValueError.
    """
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if augment is None and src.in_memory:
        images, labels = src.get_batch(indices)
        return np.asarray(images, np.float32), np.asarray(labels, np.int32)
    shape = tuple(src.image_shape)
    images = np.empty((len(indices),) + shape, np.float32)
    labels = np.empty((len(indices),), np.int32)

    def fill(rows) -> None:
        for k in rows:
            image, label = src[int(indices[k])]
            image = as_float_image(image)
            if augment is not None:
                image = augment(image, rng_for(int(k)))
            if image.shape != shape:
                hint = " (use an augmentation that outputs that size, e.g. 'imagenet')" if augment is None else ""
                raise ValueError(f"{src.name} item {int(indices[k])} has shape {image.shape} after augmentation, "
                                 f"not the source's image_shape {shape}{hint}")
            images[k] = image
            labels[k] = label

    chunks = [c for c in np.array_split(np.arange(len(indices)), max(1, min(threads, len(indices)))) if len(c)]
    if pool is None or len(chunks) <= 1:
        for c in chunks:
            fill(c)
    else:
        for future in [pool.submit(fill, c) for c in chunks]:
            future.result()
    return images, labels


class Loader:
    """Training batches of ``src``: ``local_batch(step)`` is this process's share of global batch ``step``.

    ``global_batch_size`` B must be divisible by the process count P; each process gets B / P rows.
    ``augment`` is None, a name from ``AUGMENT_NAMES`` or ``fn(image float32 HWC, rng) -> image``.
    ``steps_per_epoch`` is n // B with ``drop_remainder`` (each epoch uses n - n % B distinct items once) and
    ceil(n / B) without (every item at least once per epoch; the last batch is completed from the epoch's start).
    Decoding and augmentation run on ``num_threads`` threads; results never depend on it (see the module doc).
    """

    def __init__(self, src: Source, *, global_batch_size: int, seed: int, shuffle: bool = True,
                 drop_remainder: bool = True, augment=None, process_index=None, process_count=None,
                 num_threads: int = 8):
        self.src = src
        self.global_batch_size = _int(global_batch_size, "global_batch_size", 1)
        self.seed = _int(seed, "seed", 0)
        self.process_index, self.process_count = _processes(process_index, process_count)
        if self.global_batch_size % self.process_count:
            raise ValueError(f"global_batch_size={self.global_batch_size} is not divisible by process_count="
                             f"{self.process_count}; use a multiple of {self.process_count}")
        self.local_batch_size = self.global_batch_size // self.process_count
        if isinstance(augment, str):
            augment = get_augment(augment, src.image_shape)
        if augment is not None and not callable(augment):
            raise ValueError(f"augment={augment!r} is not allowed; use None, a name or fn(image, rng) -> image")
        self.augment = None if augment is identity else augment
        self.shuffle = bool(shuffle)
        self.drop_remainder = bool(drop_remainder)
        self.num_threads = _int(num_threads, "num_threads", 1)
        n = len(src)
        self.num_examples = n
        self.steps_per_epoch = n // self.global_batch_size if drop_remainder else -(-n // self.global_batch_size)
        if self.steps_per_epoch < 1:
            raise ValueError(f"{src.name} has {n} items, fewer than global_batch_size={self.global_batch_size} "
                             f"with drop_remainder=True; use a smaller batch or drop_remainder=False")
        self._orders: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def _order(self, epoch: int) -> np.ndarray:
        with self._lock:
            order = self._orders.get(epoch)
            if order is None:
                order = epoch_permutation(self.num_examples, self.seed, epoch, self.shuffle)
                self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
                self._orders[epoch] = order
            return order

    def global_indices(self, step: int) -> np.ndarray:
        """Source indices (int64 (B,)) of global batch ``step``, rows in batch order."""
        step = _int(step, "step", 0)
        epoch, k = divmod(step, self.steps_per_epoch)
        rows = (k * self.global_batch_size + np.arange(self.global_batch_size)) % self.num_examples
        return self._order(epoch)[rows]

    def local_batch(self, step: int) -> dict:
        """``{"image": float32 (B/P, H, W, C) in [0, 1], "label": int32 (B/P,)}``: this process's rows of batch
        ``step``. A pure function of (seed, step, process_index, process_count) and the source."""
        step = _int(step, "step", 0)
        start = self.process_index * self.local_batch_size
        indices = self.global_indices(step)[start:start + self.local_batch_size]
        pool = None
        if self.num_threads > 1 and (self.augment is not None or not self.src.in_memory):
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="smoothjax-data")
                pool = self._pool
        images, labels = load_examples(self.src, indices, augment=self.augment,
                                       rng_for=lambda k: example_rng(self.seed, step, start + k),
                                       pool=pool, threads=self.num_threads)
        return {"image": images, "label": labels}

    def iterate(self, start_step: int = 0, *, num_steps: int | None = None, prefetch: int = 2) -> Iterator[dict]:
        """Yields ``local_batch(s)`` for s = start_step, start_step + 1, ... (``num_steps`` of them, or forever).

        With ``prefetch`` > 0 a background thread prepares up to ``prefetch`` batches ahead (bounded memory); it
        stops when the iterator is closed or garbage-collected. Errors in the thread are re-raised here.
        """
        start = _int(start_step, "start_step", 0)
        stop_at = None if num_steps is None else start + _int(num_steps, "num_steps", 0)
        prefetch = _int(prefetch, "prefetch", 0)
        if prefetch == 0:
            return (self.local_batch(s) for s in _count(start, stop_at))
        return self._prefetched(start, stop_at, prefetch)

    def _prefetched(self, start: int, stop_at: int | None, depth: int) -> Iterator[dict]:
        out: queue.Queue = queue.Queue(maxsize=depth)
        stop = threading.Event()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work() -> None:
            try:
                for s in _count(start, stop_at):
                    if stop.is_set() or not put(("batch", self.local_batch(s))):
                        return
                put(("end", None))
            except BaseException as error:  # noqa: BLE001 - handed to the consumer.
                put(("error", error))

        thread = threading.Thread(target=work, name="smoothjax-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                kind, value = out.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise value
                yield value
        finally:
            stop.set()

    def close(self) -> None:
        """Shuts the decoding threads down (the loader can still be used; threads restart on demand)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)


def _count(start: int, stop: int | None):
    s = start
    while stop is None or s < stop:
        yield s
        s += 1


def eval_batches(src: Source, *, batch_size: int, process_index=None, process_count=None,
                 num_threads: int = 8) -> Iterator[dict]:
    """The whole split in index order as this process's rows of global batches of ``batch_size``.

    Yields ceil(n / batch_size) dicts ``{"image": float32 (batch_size/P, H, W, C) in [0, 1], "label": int32,
    "mask": bool}``; global batch b covers indices [b * B, (b + 1) * B) and process p takes rows
    [p * B / P, (p + 1) * B / P). Rows past the end of the split are padding: zero image, label 0, mask False.
    Every process yields the same number of batches of the same shape, and the masked rows of all processes
    together are each index exactly once. No augmentation.
    """
    batch_size = _int(batch_size, "batch_size", 1)
    index, count = _processes(process_index, process_count)
    if batch_size % count:
        raise ValueError(f"batch_size={batch_size} is not divisible by process_count={count}; "
                         f"use a multiple of {count}")
    threads = _int(num_threads, "num_threads", 1)
    return _eval_batches(src, batch_size, index, count, threads)


def _eval_batches(src: Source, batch_size: int, index: int, count: int, threads: int) -> Iterator[dict]:
    n, local = len(src), batch_size // count
    pool = ThreadPoolExecutor(threads, thread_name_prefix="smoothjax-eval") if threads > 1 else None
    try:
        for b in range(math.ceil(n / batch_size)):
            rows = b * batch_size + index * local + np.arange(local)
            mask = rows < n
            images = np.zeros((local,) + tuple(src.image_shape), np.float32)
            labels = np.zeros((local,), np.int32)
            if mask.any():
                images[mask], labels[mask] = load_examples(src, rows[mask], pool=pool, threads=threads)
            yield {"image": images, "label": labels, "mask": mask}
    finally:
        if pool is not None:
            pool.shutdown(wait=False)
