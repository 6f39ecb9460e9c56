"""Privacy: what a synthetic set reveals about its training data, and DP accounting.

    accounting.py    (ε, δ) from noise, sampling rate and steps, and back (Opacus's accountants)
    mechanism.py     per-example clipping and the Gaussian mechanism on per-class sums (DP-DM)
    memorisation.py  nearest-neighbour distances, the near-copy share, pictures of the closest pairs
    membership.py    the loss-based membership-inference test: ROC AUC, TPR at 1 % FPR
    audit.py         one audit of a set: memorisation, membership against random real images, a verdict

The DP distiller itself is ``fedcond/distill/dp_dm.py``; ``fedcond audit`` is the CLI.
"""
