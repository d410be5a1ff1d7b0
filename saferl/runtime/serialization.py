"""How torch tensors travel between the driver and the rank processes.

Every call to a group sends tensors (a batch's ids, masks, old log-probs, advantages) and gets
tensors back (log-probs, values, scores). Ray pickles a ``torch.Tensor`` with torch's own
``__reduce_ex__``, which goes through ``torch.save``'s storage machinery: about 40 µs to pickle
and 100 µs to unpickle a ``(16, 5)`` tensor, against 5 and 3 µs for a numpy array of the same
bytes. At the world's sizes a PPO-Lagrangian update sends some thirty tensors each way, so this
was a visible part of every process's time (py-spy: 6–10 % of a rank process in Ray's
(de)serialisation).

:func:`register_tensor_serializer` makes Ray send a plain CPU tensor as its raw bytes (a numpy
``uint8`` array, which pickle protocol 5 passes out of band) with its dtype and shape, and rebuild
it on arrival as a new tensor that owns a copy of those bytes (writable, and not tied to Ray's
object store, unlike Ray's own ``RAY_ENABLE_ZERO_COPY_TORCH_TENSORS`` reducer, whose tensors are
read-only views of the store). The values, dtype (bfloat16 included) and shape arrive unchanged.
What is not the same as torch's pickling:

* a view arrives as a tensor of its own: only the view's elements travel (torch sends the whole
  storage it views), and two tensors that shared a storage no longer share it on arrival;
* every other tensor (on an accelerator, needing grad, sparse, quantized, complex, with a
  conjugate or negative bit, or a subclass such as ``nn.Parameter``) travels as before, through
  torch's own pickling.

Ray keeps such a serializer per process, for what that process sends (a Ray Client driver sends
as before): the driver registers it before it starts its rank processes
(:func:`saferl.runtime.pool.start_hosts`) and every :class:`~saferl.runtime.pool.RankHost` when it
starts a worker. A process that receives only needs :mod:`saferl` importable, which a rank
process has.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import ray
import torch

__all__ = ["register_tensor_serializer", "tensor_from_wire", "tensor_to_wire"]

#: Marks the two forms :func:`tensor_to_wire` produces.
_RAW, _PICKLED = "raw", "pickled"


def _travels_raw(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a plain dense CPU tensor whose bytes say all there is to it."""
    return (
        type(tensor) is torch.Tensor
        and tensor.device.type == "cpu"
        and tensor.layout == torch.strided
        and not tensor.requires_grad
        and not tensor.is_quantized
        and not tensor.is_complex()
        and not tensor.is_conj()
        and not tensor.is_neg()
    )


def tensor_to_wire(tensor: torch.Tensor) -> tuple[Any, ...]:
    """What Ray sends for ``tensor``: ``("raw", bytes as a uint8 array, dtype name, shape)`` for a
    plain CPU tensor, else ``("pickled", torch's own pickle of it)``."""
    if not _travels_raw(tensor):
        return (_PICKLED, pickle.dumps(tensor, protocol=pickle.HIGHEST_PROTOCOL))
    flat = tensor.detach().contiguous().reshape(-1)
    raw = flat.view(torch.uint8).numpy()
    return (_RAW, raw, str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape))


def tensor_from_wire(wire: tuple[Any, ...]) -> torch.Tensor:
    """The tensor :func:`tensor_to_wire` sent: a new tensor owning a copy of the raw bytes."""
    if wire[0] == _PICKLED:
        return pickle.loads(wire[1])
    _, raw, dtype_name, shape = wire
    dtype = getattr(torch, dtype_name)
    if raw.size == 0:  # numpy gives an empty array stride 0, which torch cannot view as another dtype
        return torch.empty(shape, dtype=dtype)
    # np.array(copy) owns writable memory; the received array may be a read-only view of Ray's
    # message buffer.
    data = torch.from_numpy(np.array(raw, dtype=np.uint8, copy=True))
    return data.view(dtype).reshape(shape)


def register_tensor_serializer() -> None:
    """Send torch tensors from this process as described in the module docstring (idempotent;
    needs a connected Ray worker or driver). A Ray Client driver (``runtime.address=ray://...``)
    keeps torch's pickling: the client pickles calls itself and has no serialization context."""
    from ray.util.client import ray as client

    if client.is_connected():
        return
    ray.util.register_serializer(torch.Tensor, serializer=tensor_to_wire, deserializer=tensor_from_wire)
