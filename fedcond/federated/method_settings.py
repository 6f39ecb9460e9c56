"""The published methods' own settings, with their papers' defaults (torch-free, read by the config).

What FedDM and FedAF share with DM (the images' learning rate and momentum, the real batch
per class) is not repeated here: it is :class:`fedcond.distill.dm.DMConfig`'s, whose defaults
are DM's paper values (lr 1.0, momentum 0.5, 256 real images per class). What each method
adds is one small frozen dataclass below; :class:`fedcond.federated.config.FederateConfig`
takes its defaults from these (``feddm_radius``, ``fedaf_*``), so ``fedcond federate``,
``flwr run`` and the tests start from the papers' values. Departures are listed in
docs/federated.md ("FedDM and FedAF").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FedDMSettings:
    """FedDM (Xiong et al., CVPR 2023, "FedDM: Iterative Distribution Matching for
    Communication-Efficient Federated Learning").

    Attributes:
        rho: radius of the L2 ball around the received global model's weights in which each
            matching iteration draws its network (the paper's loss-landscape neighbourhood;
            5 as in the paper's experiments as we recall them, and in its public reproductions).
        iterations: the clients' matching iterations per round (1,000; the CPU runs here pass
            fewer with ``--iterations``).
    """

    rho: float = 5.0
    iterations: int = 1000


@dataclass(frozen=True)
class FedAFSettings:
    """FedAF (Wang et al., CVPR 2024, "An Aggregation-Free Federated Learning for Tackling
    Data Heterogeneity").

    Attributes:
        lambda_local: weight of the clients' local-global knowledge matching term beside DM's
            loss (collaborative data condensation).
        lambda_global: weight of the server's knowledge-distillation term (symmetric KL between
            the model's class-wise soft labels on the condensed images and the clients'
            class-wise soft labels on their real data) beside cross-entropy on the hard labels.
        temperature: the softmax temperature of those soft labels.
        rho: the DM network's neighbourhood around the global model, as FedDM's (the same
            ball; FedAF builds its condensation on FedDM's).
        iterations: the clients' condensation iterations per round.
    """

    lambda_local: float = 0.8
    lambda_global: float = 0.8
    temperature: float = 2.0
    rho: float = FedDMSettings.rho
    iterations: int = FedDMSettings.iterations
