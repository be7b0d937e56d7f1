"""An ablation-only method for benchmarks/zskd_ablation.py: ``zskd_kd`` is ``zskd`` with the loss it
had before issue 27 (``kd``, which tempers the stored T = 20 targets a second time, to
softmax(z_t / 400)). Loaded with ``--plugins=zskd_kd_plugin`` (benchmarks/ on PYTHONPATH)."""

from tfkd import methods
from tfkd.methods import zskd


class ZSKDWithKD(zskd.ZSKD):
    """``zskd`` with the ``kd`` loss."""

    name = "zskd_kd"
    loss = "kd"
    description = "zskd with the kd loss (its targets tempered twice): an ablation"


if "zskd_kd" not in methods.names():
    methods.register(ZSKDWithKD)
