"""ZSKD's own settings (:attr:`tfkd.methods.Method.config_class` of ``zskd`` and ``zskd_blackbox``).
Their dotted names (``zskd.count``) are settings of the run (``--zskd_count``)."""

from __future__ import annotations

import dataclasses

from tfkd.methods.zskd import blackbox
from tfkd.methods.zskd import impressions


@dataclasses.dataclass(frozen=True)
class ZSKDConfig:
    """The Data Impression search (Nayak et al., ICML 2019, §3.2-3.3) and its black-box variant.

    Attributes:
      zskd: the Data Impression search (:class:`tfkd.methods.zskd.impressions.ImpressionConfig`),
        both variants.
      zskd_blackbox: how ``zskd_blackbox`` estimates image gradients from queries
        (:class:`tfkd.methods.zskd.blackbox.ZerothOrderConfig`).
    """

    zskd: impressions.ImpressionConfig = impressions.ImpressionConfig()
    zskd_blackbox: blackbox.ZerothOrderConfig = blackbox.ZerothOrderConfig()

    def validate(self) -> None:
        """Raises ConfigError naming the first setting out of range (``zskd.count``, ...)."""
        self.zskd.validate()
        self.zskd_blackbox.validate()
