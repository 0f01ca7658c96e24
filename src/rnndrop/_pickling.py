"""Pickling of modules that hold a ``torch.Generator`` (``copy.deepcopy``, ``pickle``, ``torch.save``).

A ``torch.Generator`` pickles natively only since torch 2.4, and only back onto its own device
(a CUDA generator cannot be unpickled on a CPU-only machine, whatever ``map_location`` says).
A module's ``generator`` is therefore pickled as a :class:`GeneratorState` record — device
type, initial seed and RNG state, all on the CPU — and rebuilt on unpickling next to the
module's parameters (after ``map_location`` has moved them):

* same device type as when saved: a generator with exactly the saved state, so a copy or a
  reloaded model continues the very same stream of masks as the original;
* another device type (a GPU checkpoint loaded on a CPU, or back): RNG states do not carry
  across device types, so a fresh generator on the new device is seeded with the saved
  initial seed — reproducible, but a different stream than on the original device.

The generator is runtime configuration, not a parameter: it is never part of ``state_dict()``,
exactly as with torch.nn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class GeneratorState:
    """A portable snapshot of a ``torch.Generator``."""

    device_type: str
    seed: int
    state: torch.Tensor  # get_state(): a CPU uint8 tensor for every device type

    @classmethod
    def capture(cls, generator: torch.Generator) -> GeneratorState:
        return cls(generator.device.type, generator.initial_seed(), generator.get_state().clone())

    def restore(self, device: torch.device) -> torch.Generator:
        """A generator on ``device``: the saved state if the device type matches, else seeded afresh."""
        generator = torch.Generator(device=device)
        if device.type == self.device_type:
            generator.set_state(self.state.cpu())  # map_location may have moved the state tensor too
        else:
            generator.manual_seed(self.seed)
        return generator


class GeneratorPicklingMixin:
    """For ``nn.Module`` subclasses with a ``generator`` attribute: pickle it as a :class:`GeneratorState`."""

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()  # type: ignore[misc]
        generator = state.get("generator")
        if isinstance(generator, torch.Generator):
            state = {**state, "generator": GeneratorState.capture(generator)}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # type: ignore[misc]
        record = state.get("generator")
        if isinstance(record, GeneratorState):
            tensors = [*self._parameters.values(), *self._buffers.values()]  # type: ignore[attr-defined]
            device = next((t.device for t in tensors if t is not None), torch.device("cpu"))
            self.generator = record.restore(device)
