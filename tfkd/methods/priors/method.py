"""``prior_kd``: zero-shot distillation from image priors, through the teacher's soft labels.

No real image is read. :func:`.images.transfer_images` draws ``priors.images`` images from a noise
prior (smooth, DIP-KD's multi-scale, or both; optionally a share of them mixes of two), the teacher
answers each once (``label_priors``, ledgered: a rerun or a crash asks none again), the answers are
tempered to the teacher's softmax at T (:func:`tfkd.methods.zskd.blackbox.tempered`: exact from
probabilities), and the student learns them with T² · CE(targets, softmax(z_s / T))
(``tempered_kd``, Hinton et al., 2015, §2). ``prior_kd`` asks a black-box endpoint (one query
per image); ``prior_kd_whitebox`` labels the same images with the teacher's SavedModel in-process
(its logits at T, no query).

The finding it builds on: soft labels at T = 4 carry what the noise images cannot (the teacher's
relative class scores on images far from its data); one-hot labels of the same images teach far
less (benchmarks/ZERO_SHOT_NOTES.md and RESULTS.md, "Zero-shot frontier").
"""

from __future__ import annotations

import dataclasses

from tfkd.methods import BudgetPlan
from tfkd.methods import Method
from tfkd.methods import MethodContext
from tfkd.methods import TransferSet
from tfkd.methods import register
from tfkd.methods.priors import images as images_lib
from tfkd.methods.priors.config import PriorKDConfig
from tfkd.methods.zskd import whitebox
from tfkd.methods.zskd.blackbox import tempered

STAGE = "label_priors"
"""The query stage of the prior images' soft labels (``report.json``'s queries by stage)."""


class _Priors(Method):
    """What both variants share: the settings, the images, the student's loss at T."""

    loss = "tempered_kd"
    config_class = PriorKDConfig
    flag_prefix = ""  # Its settings are namespaced: --priors_images, --priors_temperature.
    # The student recipe chosen on the validation split (RESULTS.md, "The accuracy frontier"):
    # on noise images batch 64 at a constant rate for 20 epochs gave 72.58% validation, batch 128
    # with cosine decay 65.76%, batch 64 cosine over 40 epochs 72.26% (probes/prior_kd_probes.txt).
    student_defaults = (("epochs", 20), ("lr_schedule", "constant"), ("mixup_alpha", 0.0),
                        ("rotation_degrees", 0.0), ("shift_fraction", 0.0))

    def student_config(self, config):
        """The run's student with ``tempered_kd`` at ``priors.temperature``."""
        return dataclasses.replace(super().student_config(config),
                                   temperature=config.method_config.priors.temperature)

    def transfer_set(self, ctx: MethodContext, images, targets) -> TransferSet:
        """The labelled images redrawn toward class balance (``priors.balance``; no query)."""
        rows = images_lib.balanced_rows(targets, ctx.settings.priors.balance, ctx.seed)
        return TransferSet.from_parts([("priors", images[rows], targets[rows])])

    def images(self, ctx: MethodContext):
        """The plan's images (once per run), float32 [priors.images, H, W, C] in [0, 1]."""
        return ctx.memo("prior_images", lambda: images_lib.transfer_images(
            ctx.settings.priors, ctx.image_shape, ctx.seed))


@register
class PriorKDWhiteBox(_Priors):
    """The same images labelled by the teacher's SavedModel in-process: its logits at T, exactly
    (no probability underflow), no query."""

    name = "prior_kd_whitebox"
    teacher_needs = "weights"
    description = ("zero-shot, white-box: noise-prior images labelled by the teacher's SavedModel "
                   "in-process (its logits at T), no real image, no query")

    def build(self, ctx: MethodContext) -> TransferSet:
        teacher = whitebox.load_for(ctx.teacher_saved_model, ctx.image_shape)
        with ctx.stage("priors"):
            images = self.images(ctx)
        with ctx.stage("label_in_process"):
            targets = whitebox.label_in_process(teacher.logits, images,
                                                ctx.settings.priors.temperature)
        return self.transfer_set(ctx, images, targets)


@register
class PriorKD(_Priors):
    """Zero-shot KD on noise-prior images labelled by the teacher's tempered soft labels."""

    name = "prior_kd"
    teacher_needs = "soft_labels"
    description = ("zero-shot: noise-prior images (smooth, multi-scale) labelled by the teacher's "
                   "soft labels at T, one query each; no real image")

    def budget_plan(self, config, teacher) -> BudgetPlan:
        """One query per image, no real image asked about; a smaller budget keeps the first images
        of the plan."""
        priors = config.method_config.priors

        def fit(images: int, num_real: int):
            if images >= priors.images:
                return config, {"priors_images": priors.images}
            cut = dataclasses.replace(priors, images=max(1, images))
            return (dataclasses.replace(config, method_config=dataclasses.replace(
                config.method_config, priors=cut)), {"priors_images": cut.images})
        return BudgetPlan(queries_per_image=1, synthetic_images=priors.images, fit=fit,
                          labels_real_images=False)

    def plan(self, ctx: MethodContext) -> dict[str, int]:
        return {STAGE: ctx.teacher.share(ctx.teacher.missing(self.images(ctx)))}

    def build(self, ctx: MethodContext) -> TransferSet:
        images = self.images(ctx)
        with ctx.stage(STAGE):
            answers = ctx.teacher.soft_labels(images, progress=ctx.progress, stage=STAGE)
        return self.transfer_set(ctx, images, tempered(answers, ctx.settings.priors.temperature))
