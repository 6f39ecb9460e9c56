"""The one normalisation rule of differential privacy: public constants only.

A data set's default mean and std (digits', an ImageFolder's) are computed from its training
images, which under DP are private: normalising with them puts a statistic of the private
data into every image the mechanism sees and into the set's metadata, outside the
guarantee. A DP run therefore uses fixed public constants (``"public"``) or constants the
user chose without looking (``"MEAN:STD"``), never ``"train"``.

Every place that could let private statistics in asks :func:`public_normalisation`: the DP
distiller on the data it is given, ``fedcond distill`` and ``fedcond audit`` on their
``--normalize`` flag and the data they load, and the federated config on its ``normalize``.
"""

from __future__ import annotations

from fedcond.data import PUBLIC, TRAIN
from fedcond.errors import FedcondError


def public_normalisation(normalization: str | None, who: str, what: str = "--normalize train") -> str:
    """The normalisation a DP run uses, given the one asked for (a ``normalize`` argument of
    :func:`fedcond.data.load_dataset`) or the one data were loaded with
    (``ImageDataset.normalization``): ``"public"`` for the data set's default (None or ``""``),
    the same value for public or given constants.

    Args:
        normalization: ``None``/``""`` (the default), ``"public"``, ``"train"``, ``"given"`` or ``"MEAN:STD"``.
        who: what refuses, for the message (``"dp-dm"``, ``"--dp-epsilon"``).
        what: where the private constants came from, for the message (a flag, a data set's name).
    Raises:
        FedcondError: ``normalization`` is ``"train"``, statistics of the private training images.
    """
    if not normalization:
        return PUBLIC  # the default of digits and ImageFolder data is computed from the private images
    if normalization == TRAIN:
        raise FedcondError(f"{who} refuses normalisation computed from the private training images ({what}): "
                           "statistics of the private images are outside the guarantee; use public constants "
                           "(--normalize public) or MEAN:STD")
    return normalization
