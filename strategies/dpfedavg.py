"""DP-FedAvg: Flower's FedAvg over clients that train with DP-SGD (example-level DP).

The clients' work is :func:`fedcond.federated.dp_sgd.dp_local_train`; this server is
Flower's FedAvg, unchanged in what it does with the models, with three differences:

- its privacy plan (the noise multiplier for the target ε over every round and local step,
  :func:`fedcond.federated.dp_sgd.plan_for`) is solved before it is built, before round 1,
  so an unreachable ε is a one-line error before any client works;
- the models are averaged with equal weights: a client's exact data size is not DP, so its
  reply does not state it (its update's size already grows with its data: the noisy sum of
  its clipped gradients is divided by a public constant, not by its own batch);
- the run's record carries the plan (:meth:`DPFedAvg.privacy_record`): ε, δ, noise
  multiplier, clip, sampling rate, steps.
"""

from __future__ import annotations

from logging import INFO
from typing import Any

from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from fedcond.federated.dp_sgd import DPSGDPlan, check_model


class DPFedAvg(FedAvg):
    """FedAvg with DP-SGD clients (see the module docstring) under ``plan``
    (:func:`fedcond.federated.dp_sgd.plan_for`, solved before it is built); ``model`` (the
    global network, named ``model_name``) is checked for layers that mix examples (batch norm)."""

    def __init__(self, plan: DPSGDPlan, model: Any, model_name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plan = plan
        check_model(model, f"--model {model_name}")

    def summary(self) -> None:
        spend = self.plan.spend
        log(INFO, "\t├──> DP-FedAvg (DP-SGD clients): epsilon %.4g, delta %g over %d rounds x %d steps, noise "
            "multiplier %.4g, clip %g, sample rate %g", spend.epsilon, spend.delta, self.plan.rounds,
            self.plan.steps_per_round, spend.noise_multiplier, self.plan.clip, spend.sample_rate)
        super().summary()

    def privacy_record(self) -> dict[str, Any]:
        """The run's (ε, δ) and how it was obtained, for results.json (top-level ``epsilon`` and
        ``delta`` mark the run as DP output, :func:`fedcond.federated.dp_folder.is_private_run`)."""
        return {"epsilon": self.plan.spend.epsilon, "delta": self.plan.spend.delta, "privacy": self.plan.to_json()}
