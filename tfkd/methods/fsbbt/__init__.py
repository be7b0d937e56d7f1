"""The FS-BBT family (Nguyen et al., ECCV 2022): its settings (:mod:`.config`), its algorithms
(:mod:`.synthesis`: MixUp and the CVAE; :mod:`.active`: active querying under a query budget;
:mod:`.votes`: soft labels from a label-only teacher) and its methods (:mod:`.method`), registered
on import through the public seam (:func:`tfkd.methods.register`)."""

from tfkd.methods.fsbbt.config import FSBBTConfig
from tfkd.methods.fsbbt.method import CVAE
from tfkd.methods.fsbbt.method import FSBBT
from tfkd.methods.fsbbt.method import METHODS
from tfkd.methods.fsbbt.method import MIXUP
from tfkd.methods.fsbbt.method import STANDARD_KD
from tfkd.methods.fsbbt.method import FSBBTReport
from tfkd.methods.fsbbt.method import StudentAlone
from tfkd.methods.fsbbt.method import SyntheticMethod

__all__ = ["FSBBTConfig", "FSBBTReport", "SyntheticMethod", "StudentAlone", "STANDARD_KD", "MIXUP",
           "CVAE", "FSBBT", "METHODS"]
