"""A network seen as one flat parameter vector, for methods that differentiate through training.

Trajectory matching compares whole parameter vectors (expert checkpoints are stored flat),
and MTT and DD unroll SGD on explicit parameter tensors so gradients can flow from the
trained weights back to the synthetic images. :class:`FlatNetwork` keeps the module for
its architecture (and buffers) and evaluates it at any flat vector through
``torch.func.functional_call``, without touching the module's own parameters.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from fedcond.train import classification_loss


class FlatNetwork:
    """``net`` evaluated at flat parameter vectors ``w`` of length :attr:`size`."""

    def __init__(self, net: nn.Module) -> None:
        self.net = net
        self.names = [n for n, _ in net.named_parameters()]
        self.shapes = [p.shape for _, p in net.named_parameters()]
        self.numels = [p.numel() for _, p in net.named_parameters()]

    @property
    def size(self) -> int:
        return sum(self.numels)

    def flatten(self) -> torch.Tensor:
        """The module's current parameters as one detached vector."""
        return torch.cat([p.detach().reshape(-1) for p in self.net.parameters()])

    def load(self, w: torch.Tensor) -> None:
        """Copy the flat vector ``w`` into the module's parameters."""
        with torch.no_grad():
            for p, chunk in zip(self.net.parameters(), w.split(self.numels)):
                p.copy_(chunk.view_as(p))

    def unflatten(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of ``w`` by parameter name (gradients flow back to ``w``)."""
        return {n: c.view(s) for n, c, s in zip(self.names, w.split(self.numels), self.shapes)}

    def __call__(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits of the network with parameters ``w`` on ``x``."""
        return functional_call(self.net, self.unflatten(w), (x,))

    def loss_gradient(self, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, create_graph: bool) -> torch.Tensor:
        """Gradient of the classification loss on (x, y) w.r.t. ``w`` (flat).

        With ``create_graph`` the result stays differentiable w.r.t. ``x``, ``y`` and ``w``
        (what backpropagating through a training step needs).
        """
        if not w.requires_grad:
            w = w.detach().requires_grad_(True)
        loss = classification_loss(self(w, x), y)
        return torch.autograd.grad(loss, w, create_graph=create_graph)[0]
