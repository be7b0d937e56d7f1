"""Zero-shot distillation from image priors (``prior_kd``): no real image; images drawn from
noise priors (:mod:`.images`) are labelled by the teacher's soft labels, tempered, and the student
learns them at the same temperature (:mod:`.method`; settings in :mod:`.config`). Registered on
import through the public seam (:func:`tfkd.methods.register`)."""

from tfkd.methods.priors.config import PriorConfig
from tfkd.methods.priors.config import PriorKDConfig
from tfkd.methods.priors.method import PriorKD

__all__ = ["PriorConfig", "PriorKDConfig", "PriorKD"]
