"""The FS-BBT family's own settings (:attr:`tfkd.methods.Method.config_class` of ``student_alone``,
``standard_kd``, ``mixup``, ``cvae`` and ``fsbbt``): ``DistillConfig.method_config`` holds one.
Their dotted names (``mixup.alpha``) are settings of the run (``tfkd.distill(mixup={...})``,
``--mixup_alpha``) when the run's method is of the family."""

from __future__ import annotations

import dataclasses

from tfkd import data
from tfkd.methods.fsbbt import active as active_lib
from tfkd.methods.fsbbt import synthesis
from tfkd.methods.fsbbt import votes as votes_lib


@dataclasses.dataclass(frozen=True)
class FSBBTConfig:
    """FS-BBT's synthesis (Nguyen et al., ECCV 2022, §3.2-3.3) and how it spends a query budget.

    Attributes:
      mixup, cvae: the synthesis (:class:`tfkd.methods.fsbbt.synthesis.MixUpConfig`,
        :class:`~tfkd.methods.fsbbt.synthesis.CVAEConfig`); their ``num_images`` are the synthetic
        budget (``mixup`` and ``cvae`` the methods take all of it).
      active: how a query budget smaller than the plan is spent
        (:class:`tfkd.methods.fsbbt.active.ActiveConfig`: the whole plan is made as a pool and the
        teacher is asked about the images chosen in rounds; ``rounds`` 0: the plan is cut instead).
      votes: soft labels from a teacher that answers its top-1 class only: the vote over perturbed
        copies (:mod:`tfkd.methods.fsbbt.votes`); ignored for a teacher that answers probabilities.
    """

    mixup: synthesis.MixUpConfig = synthesis.MixUpConfig()
    cvae: synthesis.CVAEConfig = synthesis.CVAEConfig()
    active: active_lib.ActiveConfig = active_lib.ActiveConfig()
    votes: votes_lib.VoteConfig = votes_lib.VoteConfig()

    def validate(self) -> None:
        """Raises ConfigError naming the first setting out of range (``mixup.alpha``, ...)."""
        for part in (self.mixup, self.cvae, self.active, self.votes):
            part.validate()

    def resolved(self, dataset: str, own_images: bool) -> "FSBBTConfig":
        """``auto`` settings given their defaults for ``dataset`` (a registered name: its
        :class:`tfkd.data.DatasetSpec`) or, with ``own_images``, the user's images: the CVAE's
        architecture (the spec's ``cvae_architecture``) and the teacher assistant (the spec's
        ``teacher``; none for the user's images). Idempotent.

        With ``own_images`` the CVAE's ``auto`` stays: the images' size is the teacher's input
        shape, read from its signature when the run connects (after this), and the architecture
        follows the size the CVAE works at (:func:`.synthesis.resolve_cvae`, the one place that
        decides it then)."""
        cvae, active = self.cvae, self.active
        spec = data.dataset_spec(dataset)
        if cvae.architecture == "auto" and not own_images:
            cvae = dataclasses.replace(cvae, architecture=spec.cvae_architecture)
        if active.assistant == "auto":
            active = dataclasses.replace(active, assistant="" if own_images else spec.teacher)
        return dataclasses.replace(self, cvae=cvae, active=active)
