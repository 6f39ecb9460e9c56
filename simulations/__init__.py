"""The Flower apps and what runs them, installed as ``fedcond.simulations``.

``client_app.py`` and ``server_app.py`` are what ``flwr run .`` and a SuperLink load
(pyproject.toml's ``[tool.flwr.app.components]``); ``federation.py`` is what the ServerApp
checks when Flower launches it. ``runner.py`` runs them in-process through Flower's
simulation engine, and ``experiment.py`` runs one whole comparison (``fedcond federate``);
``flower_log.py`` and ``usage.py`` are their log file and resource figures. The module map
and one round, file by file: :mod:`fedcond.federated`.
"""
