"""The DB3KD family (Wang, ICML 2021): distillation from a label-only teacher. Its algorithms
(:mod:`.boundary`: the decision-boundary search; :mod:`.zeroshot`: ZSDB3KD's pseudo-samples), its
settings (:mod:`.config`) and its methods (:mod:`.method`), registered on import through the public
seam (:func:`tfkd.methods.register`)."""

from tfkd.methods.db3kd.config import DB3KDConfig
from tfkd.methods.db3kd.config import FSBBTDB3KDConfig
from tfkd.methods.db3kd.config import ZSDB3KDConfig
from tfkd.methods.db3kd.method import DB3KD
from tfkd.methods.db3kd.method import FSBBTDB3KD
from tfkd.methods.db3kd.method import ZSDB3KD

__all__ = ["DB3KDConfig", "FSBBTDB3KDConfig", "ZSDB3KDConfig", "DB3KD", "FSBBTDB3KD", "ZSDB3KD"]
