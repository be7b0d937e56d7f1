"""ZSKD: zero-shot distillation from Data Impressions (Nayak et al., ICML 2019).

``zskd`` needs the teacher's weights and gradients: the teacher's SavedModel loaded in-process
(``DistillConfig.teacher_saved_model``, the directory a TF Serving base path holds, or the teacher
tfkd trained locally). No real image and no query: the class similarity comes from the final
layer's weights (:func:`tfkd.impressions.class_similarity`), the impressions from gradient descent
on noise (:func:`tfkd.impressions.synthesize`), and the stored targets are the teacher's softmax at
T on them. The student trains with T² · KL at the same T (``kd``; the paper's T² · CE differs
from it by the targets' entropy, a constant: the same gradients).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfkd import impressions
from tfkd import workdir as workdir_lib
from tfkd.methods import Method
from tfkd.methods import MethodContext
from tfkd.methods import TransferSet
from tfkd.methods import register


@register
class ZSKD(Method):
    """Data Impressions of a white-box teacher, labelled by its softmax at T."""

    name = "zskd"
    teacher_needs = "weights"
    loss = "kd"
    description = ("zero-shot: Data Impressions synthesised from the teacher's weights and "
                   "gradients (ZSKD), no real image, no query")

    def fingerprint(self, config) -> tuple:
        return (config.zskd,)

    def plan(self, ctx: MethodContext) -> dict[str, int]:
        return {}

    def student_config(self, config):
        return dataclasses.replace(super().student_config(config),
                                   temperature=config.zskd.temperature)

    def build(self, ctx: MethodContext) -> TransferSet:
        config = ctx.config.zskd
        teacher = impressions.SavedModelTeacher(ctx.teacher_saved_model)
        if teacher.image_shape != ctx.image_shape:
            raise ValueError(f"teacher_saved_model={ctx.teacher_saved_model!r}: input "
                             f"{list(teacher.image_shape)}, expected {list(ctx.image_shape)} (the data's)")
        similarity = impressions.class_similarity(teacher.final_layer_weights(config.final_layer))
        state = workdir_lib.artifact_path(ctx.workdir, "impressions", ".npz", ctx.seed, config,
                                          workdir_lib.fingerprint(np.asarray(similarity).tolist()))
        with ctx.stage("impressions"):
            images, targets, _, _ = impressions.synthesize(
                teacher.logits, ctx.image_shape, similarity, config, ctx.seed, state_path=state,
                progress=ctx.progress)
        return TransferSet.from_parts([("impressions", images, targets)])
