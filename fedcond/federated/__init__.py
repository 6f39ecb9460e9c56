"""Federated learning with distilled data: FedCond and its baselines on Flower.

Module map, in the order data flows through a run (``strategies/`` and ``simulations/``
are top-level packages beside ``fedcond/``; the rest is in this one):

    config.py                  FederateConfig: every setting of a run (CLI, TOML, Flower run config)
    data_cache.py              the task's data set, loaded once per process for all its clients
    partition.py               flwr-datasets partitioners over fedcond data: client indices, histogram
    client_training.py         a client's torch work: distill its partition (FedDM when iterative), local SGD
    simulations/client_app.py  the Flower ClientApp: read the message, call client_training, reply
    records.py                 SyntheticSets and models as Flower records, the record keys, message bytes
    comms.py                   the metered Grid: bytes down and up per client per round, lost clients
    strategies/__init__.py     build_strategy: FedCond, or Flower's FedAvg / FedProx / FedAdam, by name
    strategies/fedcond.py      FedCond: send the settings (model if iterative), validate and pool the sets
    strategies/resumed.py      FromRound and strategy state: continuing a run after its last round
    server_training.py         the global model: its architecture, training on the pool, test accuracy
    checkpoint.py              per-round checkpoints of a run (model, ledger, pool, RNG) and its record
    simulations/server_app.py  the Flower ServerApp: one strategy, metered, evaluated, checkpointed
    references.py              the controls: raw-data bytes, random real images, dtypes, upper bound
    events.py                  typed progress events of a comparison (for the CLI's progress display)
    flower_log.py              Flower's log into a file while the runs go on
    usage.py                   peak memory and CPU time of this process and those it started (Ray's workers)
    runner.py                  each planned run through Flower's simulation engine; resumes runs
    experiment.py              one comparison end to end (``fedcond federate``): runs, references, files
    report.py                  results.json, the accuracy-vs-bytes plot, the markdown table

Flower is imported only by this package (inside functions), ``strategies/`` and
``simulations/``; client_training and server_training are plain torch.
"""
