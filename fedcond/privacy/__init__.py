"""Privacy: what a synthetic set reveals about its training data, and DP accounting.

    accounting.py    (ε, δ) from noise, sampling rate and steps, and back (Opacus's accountants);
                     what replace-one adjacency costs
    mechanism.py     per-example clipping and the Gaussian mechanism on per-class sums (DP-DM)
    noise.py         the mechanism's secret randomness: operating-system entropy, never written
    fingerprint.py   a keyed fingerprint of the private training data (checks a DP resume)
    memorisation.py  nearest-neighbour distances, the near-copy share, pictures of the closest pairs
    membership.py    the loss-based membership-inference test: ROC AUC, TPR at 1 % FPR
    audit.py         one audit of a set: memorisation, membership against random real images, a verdict
    one_run.py       correct membership guesses to a lower bound on ε (Steinke, Nasr & Jagielski 2023)
    canary.py        the canary audit of a method: canaries in or out, one distillation, that bound,
                     every attack's own ceiling
    whitebox.py      white-box canary scores on what a mechanism released (DP-DM's noisy class sums)

The DP distiller itself is ``fedcond/distill/dp_dm.py``; ``fedcond audit`` is the CLI.
"""
