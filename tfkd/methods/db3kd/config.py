"""The DB3KD family's own settings (:attr:`tfkd.methods.Method.config_class`): ``db3kd`` and
``zsdb3kd`` hold a :class:`DB3KDConfig`, ``fsbbt_db3kd`` a :class:`FSBBTDB3KDConfig`. Their dotted
names (``db3kd.temperature``) are settings of the run (``--db3kd_temperature``) when the run's method
has them."""

from __future__ import annotations

import dataclasses

from tfkd.methods.db3kd import boundary
from tfkd.methods.db3kd import zeroshot
from tfkd.methods.fsbbt import FSBBTConfig


@dataclasses.dataclass(frozen=True)
class DB3KDConfig:
    """DB3KD's boundary search (Wang, ICML 2021, §3.2-3.3) and ZSDB3KD's pseudo-samples (§3.4).

    Attributes:
      db3kd: the boundary search and the soft labels' temperature
        (:class:`tfkd.methods.db3kd.boundary.BoundaryConfig`).
      zsdb3kd: ZSDB3KD's pseudo-sample schedule
        (:class:`tfkd.methods.db3kd.zeroshot.ZeroShotConfig`; ``zsdb3kd`` only).
    """

    db3kd: boundary.BoundaryConfig = boundary.BoundaryConfig()
    zsdb3kd: zeroshot.ZeroShotConfig = zeroshot.ZeroShotConfig()

    def validate(self) -> None:
        """Raises ConfigError naming the first setting out of range (``db3kd.tolerance``, ...)."""
        self.db3kd.validate()
        self.zsdb3kd.validate()


@dataclasses.dataclass(frozen=True)
class FSBBTDB3KDConfig(FSBBTConfig):
    """FS-BBT's synthesis (:class:`tfkd.methods.fsbbt.FSBBTConfig`) labelled by DB3KD's search.

    Attributes:
      db3kd: the boundary search and the soft labels' temperature
        (:class:`tfkd.methods.db3kd.boundary.BoundaryConfig`).
    """

    db3kd: boundary.BoundaryConfig = boundary.BoundaryConfig()

    def validate(self) -> None:
        """Raises ConfigError naming the first setting out of range."""
        super().validate()
        self.db3kd.validate()
