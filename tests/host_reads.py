"""A counter of host-synchronising calls for the tests: what would make a GPU step wait for the device, counted on any
device (on the CPU nothing waits, so the calls themselves are counted).

Counted: every read of a tensor value into Python (aten ``_local_scalar_dense``, which ``.item()``, ``int()``,
``float()`` and ``bool()`` of a tensor go through; ``Tensor.tolist`` and ``Tensor.numpy``, which are not dispatched),
and the ops whose output size depends on tensor values (``nonzero``, ``masked_select``, boolean indexing, ``unique``,
``repeat_interleave`` without ``output_size``).
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

_SIZE_FROM_VALUES = {aten.nonzero, aten.masked_select, aten._unique2, aten.unique_dim, aten.unique_consecutive,
                     aten.masked_scatter, aten.is_nonzero, aten._local_scalar_dense}


class SyncCounter(TorchDispatchMode):
    """Counts host-synchronising calls; ``allowed()`` marks the windows where the loop may synchronise."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, bool]] = []
        self._allowed = 0

    def note(self, what: str) -> None:
        self.events.append((what, self._allowed > 0))

    @contextlib.contextmanager
    def allowed(self):
        self._allowed += 1
        try:
            yield
        finally:
            self._allowed -= 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet in _SIZE_FROM_VALUES:
            self.note(str(packet))
        elif packet in (aten.index, aten.index_put, aten.index_put_) and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ())):
            self.note(f"{packet} with a boolean mask")
        elif packet is aten.repeat_interleave and kwargs.get("output_size") is None:
            self.note("repeat_interleave without output_size")
        return func(*args, **kwargs)

    def outside(self) -> list[str]:
        return [what for what, ok in self.events if not ok]


@contextlib.contextmanager
def counting(monkeypatch):
    """A SyncCounter active for the block, also counting ``Tensor.tolist`` and ``Tensor.numpy`` (not dispatched)."""
    counter = SyncCounter()
    for name in ("tolist", "numpy"):
        original = getattr(torch.Tensor, name)

        def wrapped(self, *a, _original=original, _name=name, **kw):
            counter.note(f"Tensor.{_name}")
            return _original(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    with counter:
        yield counter
