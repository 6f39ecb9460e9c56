"""FedDM (Xiong et al., CVPR 2023, "FedDM: Iterative Distribution Matching for Communication-Efficient
Federated Learning"): the server side.

Every round the server sends the global model; each sampled client refines its synthetic set
(warm start: its set of the previous round, kept client-side) by matching the class-mean
embeddings of its real and synthetic images in networks drawn within the L2 ball of radius
``feddm_radius`` around the received weights (the paper's approximation of the loss landscape
around the global model), and uploads the set; the server trains the global model on the union
of all current sets, continuing from the model it sent.

That server is FedCond's iterative one (:class:`fedcond.strategies.fedcond.FedCond`: the same
reply validation, the pool keeping each client's newest set, ``train_on_pool`` with the
comparison's recipe); what makes the run FedDM's is its clients' refinement with the paper's
settings (:meth:`fedcond.federated.config.FederateConfig.feddm_config`,
:class:`fedcond.federated.method_settings.FedDMSettings`). ``fedcond-iterative`` runs the same
path with fedcond's earlier settings (relative Gaussian noise of ``feddm_rho``).
"""

from __future__ import annotations

from logging import INFO
from typing import Any

from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from fedcond.strategies.fedcond import FedCond


class FedDM(FedCond):
    """FedCond's iterative server with FedDM's clients (see the module docstring).

    Takes FedCond's arguments (always iterative) and ``radius``, the clients' ball around the
    received weights, which :meth:`summary` reports (the clients read it from the run config).
    """

    def __init__(self, *args: Any, radius: float, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "iterative": True})
        self.radius = radius

    def summary(self) -> None:
        log(INFO, "\t├──> FedDM (Xiong et al., CVPR 2023): ipc %d, %s iterations a round, radius %g, "
            "payload cap %d bytes", self.ipc, self.iterations, self.radius, self.max_payload_bytes)
        FedAvg.summary(self)
