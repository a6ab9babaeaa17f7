"""Entry points that take whatever a caller steers with (a Steering, a soft-prompt tensor, a
list of per-row steerings, or None) and run the steered forward pass."""

from __future__ import annotations

import torch

from softprompt.steering.base import NoSteering, Steering
from softprompt.steering.mixed import MixedSteering
from softprompt.steering.prompt import PromptSteering

SteeringLike = Steering | torch.Tensor | list | None


def as_steering(steer: SteeringLike) -> Steering:
    """A Steering for `steer`: None is the bare model, a tensor a soft prompt ([L, d], or
    [N, L, d] one per row), a list one steering per row (of any kinds)."""
    if steer is None:
        return NoSteering()
    if isinstance(steer, Steering):
        return steer
    if isinstance(steer, list):
        return MixedSteering([as_steering(row) for row in steer])
    return PromptSteering(steer)
