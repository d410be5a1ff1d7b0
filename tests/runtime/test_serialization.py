"""How tensors travel between the driver and the rank processes (saferl.runtime.serialization)."""

from __future__ import annotations

import pickle
import sys

import pytest
import ray
import torch

from saferl.runtime.pool import RankHost
from saferl.runtime.serialization import (
    register_tensor_serializer,
    tensor_from_wire,
    tensor_to_wire,
)

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def plain_tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    floats = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    return {
        "float32": floats.float(),
        "float64": floats,
        "bfloat16": floats.to(torch.bfloat16),
        "float16": floats.half(),
        "int64": torch.randint(-5, 50, (3, 7), generator=generator),
        "int32": torch.randint(0, 9, (5,), generator=generator, dtype=torch.int32),
        "uint8": torch.randint(0, 255, (2, 2, 2), generator=generator, dtype=torch.uint8),
        "bool": torch.rand(4, 5, generator=generator) > 0.5,
        "scalar": torch.tensor(3.25),
        "empty": torch.zeros(3, 0),
        "transposed view": floats.t(),  # not contiguous
        "row slice of a larger tensor": floats[1:3],
        "nan and inf": torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0]),
    }


def assert_same_tensor(received: torch.Tensor, sent: torch.Tensor) -> None:
    assert type(received) is type(sent)
    assert received.dtype == sent.dtype and received.shape == sent.shape
    assert received.requires_grad == sent.requires_grad
    # Bit for bit (NaNs and signed zeros included): compare the bytes.
    assert torch.equal(
        received.detach().contiguous().reshape(-1).view(torch.uint8),
        sent.detach().contiguous().reshape(-1).view(torch.uint8),
    )


@pytest.mark.parametrize("name", list(plain_tensors()))
def test_a_plain_cpu_tensor_travels_as_its_bytes_and_arrives_equal_and_writable(name: str) -> None:
    sent = plain_tensors()[name]
    wire = tensor_to_wire(sent)
    assert wire[0] == "raw"
    # Only the tensor's own elements travel (torch's pickling sends the whole storage of a view).
    assert wire[1].nbytes == sent.numel() * sent.element_size()
    received = tensor_from_wire(pickle.loads(pickle.dumps(wire, protocol=5)))
    assert_same_tensor(received, sent)
    # A tensor of its own: writing it changes neither the sender's tensor nor the message.
    before = sent.clone()
    if received.numel():
        received.view(-1)[0] = 1
        assert_same_tensor(sent, before)


def test_other_tensors_travel_through_torchs_own_pickling() -> None:
    weight = torch.nn.Parameter(torch.randn(2, 3))
    needs_grad = torch.randn(3, requires_grad=True)
    complex_values = torch.randn(2, dtype=torch.complex64)
    sparse = torch.eye(3).to_sparse()
    for sent in (weight, needs_grad, complex_values, complex_values.conj(), sparse):
        wire = tensor_to_wire(sent)
        assert wire[0] == "pickled", sent
        received = tensor_from_wire(pickle.loads(pickle.dumps(wire, protocol=5)))
        assert type(received) is type(sent) and received.requires_grad == sent.requires_grad
        if sent.is_sparse:
            assert torch.equal(received.to_dense(), sent.to_dense())
        else:
            assert torch.equal(received.detach().resolve_conj(), sent.detach().resolve_conj())


def test_tensors_through_a_rank_process_arrive_equal_in_both_directions(ray_cluster) -> None:
    """A RankHost holding a ``list`` worker: the driver appends tensors and pops them back, so
    each one crosses from the driver to the rank process and back."""
    register_tensor_serializer()
    host = ray.remote(RankHost).options(num_cpus=0).remote()
    try:
        ray.get(host.start.remote("slot", list))
        sent = plain_tensors()
        for tensor in sent.values():
            ray.get(host.call.remote("slot", "append", tensor))
        received = {}
        for name in reversed(list(sent)):
            received[name] = ray.get(host.call.remote("slot", "pop"))
        for name, tensor in sent.items():
            assert_same_tensor(received[name], tensor)
            # The rows of a larger tensor arrive as a tensor of those rows alone.
            assert received[name].untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
        # A batch of tensors inside a container, as the groups send them.
        batch = {"ids": sent["int64"], "mask": sent["bool"], "nested": [sent["bfloat16"], (sent["scalar"],)]}
        ray.get(host.call.remote("slot", "append", batch))
        back = ray.get(host.call.remote("slot", "pop"))
        assert_same_tensor(back["ids"], batch["ids"])
        assert_same_tensor(back["mask"], batch["mask"])
        assert_same_tensor(back["nested"][0], batch["nested"][0])
        assert_same_tensor(back["nested"][1][0], batch["nested"][1][0])
        # A tensor that needs grad keeps it, through torch's own pickling.
        needs_grad = torch.randn(3, requires_grad=True)
        ray.get(host.call.remote("slot", "append", needs_grad))
        assert_same_tensor(ray.get(host.call.remote("slot", "pop")), needs_grad)
    finally:
        ray.kill(host)


def test_a_ray_client_driver_keeps_torchs_pickling(monkeypatch):
    """Through Ray Client the driver has no serialization context to register in: it sends as before."""
    from ray.util.client import ray as client

    registered = []
    monkeypatch.setattr(client, "is_connected", lambda: True)
    monkeypatch.setattr(ray.util, "register_serializer", lambda *args, **kwargs: registered.append(args))
    register_tensor_serializer()
    assert registered == []
    monkeypatch.setattr(client, "is_connected", lambda: False)
    register_tensor_serializer()
    assert registered == [(torch.Tensor,)]
