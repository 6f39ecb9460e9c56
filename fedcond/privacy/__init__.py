"""Differential-privacy primitives, beneath the methods: what a DP method (DP-DM) is built from.

    accounting.py    (ε, δ) from noise, sampling rate and steps, and back (Opacus's accountants);
                     what replace-one adjacency costs
    mechanism.py     per-example clipping and the Gaussian mechanism on per-class sums (DP-DM)
    noise.py         the mechanism's secret randomness: operating-system entropy, never written
    fingerprint.py   a keyed fingerprint of the private training data (checks a DP resume)
    normalisation.py the rule that DP data are normalised with public constants only

Nothing here imports a method (fedcond.distill) or an audit; the DP distiller itself is
``fedcond/distill/dp_dm.py``, and what a set or a method reveals is measured above the
methods, in :mod:`fedcond.audit`.
"""
