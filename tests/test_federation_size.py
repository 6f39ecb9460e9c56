"""num-clients 0 is the federation's size; an explicit one must match it (a deployment's grid
here: SuperNodes that connect, checked without Flower running)."""

from __future__ import annotations

import pytest

from fedcond.errors import FedcondError
from fedcond.federated.config import FederateConfig
from fedcond.simulations import federation


class Grid:
    def __init__(self, nodes: int) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(range(self.nodes))


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(federation, "DEPLOYMENT_SETTLE_SECONDS", 0.2)


def test_zero_means_the_supernodes_the_federation_has():
    assert federation.check_federation(Grid(3), FederateConfig(num_clients=0)) == 3


def test_an_explicit_count_must_match_and_none_found_says_how_to_start_some():
    with pytest.raises(FedcondError, match=r"has 2 SuperNode\(s\) but the run config says num-clients = 3"):
        federation.check_federation(Grid(2), FederateConfig(num_clients=3, round_timeout=0.3))
    with pytest.raises(FedcondError, match="the federation has no SuperNode"):
        federation.check_federation(Grid(0), FederateConfig(num_clients=0, round_timeout=0.3))
    assert federation.check_federation(Grid(3), FederateConfig(num_clients=3)) == 3


def test_fedcond_federate_refuses_zero_clients(tmp_path):
    from typer.testing import CliRunner

    from fedcond.cli import app

    result = CliRunner().invoke(app, ["federate", "--num-clients", "0", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "give --num-clients N (default 10)" in result.stderr
    with pytest.raises(FedcondError, match="must be >= 1"):
        FederateConfig(num_clients=-1)
