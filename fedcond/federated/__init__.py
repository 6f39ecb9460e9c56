"""Federated learning with distilled data: what FedCond and its baselines compute, free of Flower.

This package is the Flower-free half (as Flower's ``task.py``): settings, partitions, the
clients' and the server's torch work, the records that travel, the ledger of bytes. The
Flower adapter imports it and is never imported by it: ``fedcond.strategies`` (folder
``strategies/``: the server strategies) and ``fedcond.simulations`` (folder
``simulations/``: the ClientApp, the ServerApp and the runner that drives them).

One FedCond round, file by file, in the order a reader follows it:

    1. simulations/server_app.py          the ServerApp: builds the strategy and starts Flower's round
                                          loop; after the round, the global model's test accuracy
    2. strategies/__init__.py             build_strategy: FedCond, or Flower's FedAvg / FedProx / FedAdam
    3. strategies/fedcond.py              configure_train: the round's settings (the model too if
                                          iterative) to the sampled clients; aggregate_train: validate
                                          the replies, pool the sets, train the global model on the pool
    4. simulations/client_app.py          the ClientApp: its partition, distill_partition, the reply
    5. fedcond/federated/client_training.py  distill_partition: the client's set (FedDM when iterative);
                                          client_seed; local_train (FedAvg / FedProx clients)
    6. fedcond/federated/records.py       a set as Flower records and back (validated); the global
                                          model's architecture (new_model) and its records
    7. fedcond/federated/server_training.py  train_on_pool, evaluate_arrays
    8. fedcond/federated/config.py        AppConfig: every setting the files above read; ExperimentConfig
                                          (FederateConfig): an app config plus a comparison's own settings

Around the round (none needed to follow it):

    partition.py, data_cache.py   which images a client holds: flwr-datasets partitioners, the
                                  data set loaded once per process, the validation split held
                                  out before partitioning (it picks every reported round)
    comms.py                      the metered Grid: bytes down and up per client per round, lost clients
    checkpoint.py                 per-round checkpoints of a run (with strategies/resumed.py: FromRound,
                                  continuing after the last finished round)
    references.py                 the runs a comparison plans, and its controls: raw-data bytes, random
                                  real and herding images, storage dtypes, the centralised upper bound
    (fedcond/recipe.py)           the one training recipe every learner of a comparison uses
    set_reuse.py                  a client's one-shot set kept on disk, re-encoded (not distilled again)
                                  for the storage-dtype references
    dp_folder.py                  a --dp-epsilon experiment's folder: DP runs only, the rest apart and named
    dp_sgd.py                     dpfedavg's clients: DP-SGD (Opacus) local training and its (epsilon, delta) plan
    method_settings.py, fedaf.py  FedDM's and FedAF's own settings (paper defaults); FedAF's torch work
    events.py                     typed progress events (for the CLI's progress display)
    client_progress.py            how far each client's distillation has got, through files (the console polls)
    report.py                     results.json, the accuracy-vs-bytes plot, the markdown table
    simulations/federation.py     what the ServerApp checks when ``flwr run`` launches it
    simulations/runner.py         each planned run through Flower's simulation engine; resumes runs
    simulations/experiment.py     one comparison end to end (``fedcond federate``): runs, references, files
    simulations/flower_log.py     Flower's log into a file while the runs go on
    simulations/usage.py          peak memory and CPU time of the process tree (Ray's workers)

Flower is imported by this package only inside functions (records, comms, partition, references);
client_training and server_training are plain torch.
"""
