"""ZSKD (Nayak et al., ICML 2019): Data Impressions from a white-box teacher (:mod:`.impressions`)
and their black-box variant, the settings (:mod:`.config`) and the methods (:mod:`.method`),
registered on import through the public seam (:func:`tfkd.methods.register`)."""

from tfkd.methods.zskd.config import ZSKDConfig
from tfkd.methods.zskd.method import ZSKD
from tfkd.methods.zskd.method import ZSKDBlackBox

__all__ = ["ZSKDConfig", "ZSKD", "ZSKDBlackBox"]
