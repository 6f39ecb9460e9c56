"""Audits: what a synthetic set, or the method that made it, reveals about its training data.

A part above the methods: an audit may distill (the canary audit runs a method with
canaries in or out), while the methods never import it. The DP primitives the methods
use (mechanism, accountant, noise) are beneath them, in :mod:`fedcond.privacy`.

    memorisation.py  nearest-neighbour distances, the near-copy share, pictures of the closest pairs
    membership.py    the loss-based membership-inference test: ROC AUC, TPR at 1 % FPR
    set_audit.py     one audit of a set: memorisation, membership against random real images, a verdict
    one_run.py       correct membership guesses to a lower bound on ε (Steinke, Nasr & Jagielski 2023)
    canary.py        the canary audit of a method: canaries in or out, one distillation, that bound,
                     every attack's own ceiling
    whitebox.py      white-box canary scores on what a mechanism released (DP-DM's noisy class sums)

``fedcond audit`` is the CLI.
"""
