"""Per-token gradients of one linear layer, from one ordinary backward pass.

For a linear layer applied token by token, ``y_t = W a_t + b``, the loss gradient is
``dL/dW = Σ_t δ_t a_tᵀ`` and ``dL/db = Σ_t δ_t`` with ``δ_t = dL/dy_t``.  The part that
belongs to token ``t`` is the rank-1 pair ``(δ_t a_tᵀ, δ_t)``, so one backward pass gives
every per-token gradient: :func:`capture_token_gradients` records ``a_t`` in the forward
and ``δ_t`` in the backward, and :func:`gradient_pass` is the whole forward / loss /
backward that segmentation and classify both run.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

import torch
from torch import nn

Output = TypeVar("Output")


def augment_inputs(inputs: torch.Tensor, bias: bool) -> torch.Tensor:
    """ã_t = [a_t; 1] when the layer has a bias, else a_t."""
    if not bias:
        return inputs
    return torch.cat([inputs, inputs.new_ones(inputs.shape[:-1] + (1,))], dim=-1)


@dataclass
class TokenGradients:
    """What one backward pass leaves for a linear layer, token by token.

    ``delta`` (…×T×Dout) holds δ_t = dL/dy_t, ``inputs`` (…×T×Din) holds a_t; ``bias`` says
    whether the layer has a bias (then the per-token gradient is ``(δ_t a_tᵀ, δ_t)``).
    """

    delta: torch.Tensor
    inputs: torch.Tensor
    bias: bool

    def augmented_inputs(self) -> torch.Tensor:
        """ã_t = [a_t; 1] when the layer has a bias, else a_t."""
        return augment_inputs(self.inputs, self.bias)

    def summed(self) -> torch.Tensor:
        """Σ_t δ_t ã_tᵀ per leading index: …×Dout×(Din+1) — the layer's whole-input gradient."""
        return torch.einsum("...to,...ti->...oi", self.delta, self.augmented_inputs())

    def materialize(self) -> torch.Tensor:
        """Every per-token gradient ``δ_t ã_tᵀ`` (…×T×Dout×(Din+1)). For tests and small shapes only."""
        return self.delta.unsqueeze(-1) * self.augmented_inputs().unsqueeze(-2)


class _Call:
    """One forward call of the watched layer: its input, and the output gradient once known."""

    def __init__(self, inputs: torch.Tensor, bias: bool):
        self.inputs = inputs
        self.bias = bias
        self.delta: torch.Tensor | None = None

    def store_delta(self, grad: torch.Tensor) -> None:
        self.delta = grad.detach()


class TokenGradientRecorder:
    """Collects layer inputs during the forward and output gradients during the backward."""

    def __init__(self, layer: nn.Linear):
        self.layer = layer
        self.calls: list[_Call] = []

    def _forward_hook(self, module: nn.Module, args: tuple, output: torch.Tensor):
        call = _Call(args[0].detach(), module.bias is not None)
        self.calls.append(call)
        if not torch.is_grad_enabled():
            return None
        if not output.requires_grad:
            # Nothing upstream needs a gradient (frozen model): make the output a leaf so the
            # backward stops right here instead of running through the layer's own weights.
            output = output.detach().requires_grad_(True)
            output.register_hook(call.store_delta)
            return output
        output.register_hook(call.store_delta)
        return None

    def results(self) -> list[TokenGradients]:
        """One :class:`TokenGradients` per forward call of the layer, in call order."""
        missing = [i for i, call in enumerate(self.calls) if call.delta is None]
        if missing:
            raise RuntimeError(
                f"no gradient reached the watched layer for forward call(s) {missing}: "
                "run loss.backward() inside the capture, with autograd enabled in the forward"
            )
        return [TokenGradients(call.delta, call.inputs, call.bias) for call in self.calls]

    def result(self) -> TokenGradients:
        """The single forward call's gradients (raises if the layer ran more or less than once)."""
        if len(self.calls) != 1:
            raise RuntimeError(
                f"the watched layer ran {len(self.calls)} times during the capture; use results()"
            )
        return self.results()[0]


@contextlib.contextmanager
def capture_token_gradients(layer: nn.Linear) -> Iterator[TokenGradientRecorder]:
    """Record per-token inputs and output gradients of ``layer`` for one forward/backward.

    Usage::

        with capture_token_gradients(backbone.grad_layer) as rec:
            loss = loss_fn(model(x))
            loss.backward()
        tg = rec.result()

    The layer's parameters need not require gradients: if its output does not require
    grad, the hook turns the output into a leaf so the backward still reaches it (and
    stops there).
    """
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"capture_token_gradients needs an nn.Linear, got {type(layer).__name__}")
    recorder = TokenGradientRecorder(layer)
    handle = layer.register_forward_hook(recorder._forward_hook)
    try:
        yield recorder
    finally:
        handle.remove()


def gradient_pass(
    layer: nn.Linear, forward: Callable[[], Output], loss: Callable[[Output], torch.Tensor]
) -> tuple[TokenGradients, Output, torch.Tensor]:
    """One forward / loss / backward with ``layer``'s per-token gradients captured.

    ``forward()`` runs the part of the model that holds ``layer``, once; ``loss(output)``
    returns one loss per sample. Their sum is backwarded once: a sample's loss depends only
    on its own rows, so the gradient left for sample b is that of its own loss (no 1/B
    factor, no cross-sample terms). Autograd is on for the pass whatever the caller's mode.

    Returns the layer's :class:`TokenGradients`, what ``forward`` returned (still attached
    to the graph: detach what you keep) and the per-sample losses, detached.
    """
    with capture_token_gradients(layer) as recorder, torch.enable_grad():
        output = forward()
        losses = loss(output)
        losses.sum().backward()
    return recorder.result(), output, losses.detach()
