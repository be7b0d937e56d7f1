"""ZSKD: zero-shot distillation from Data Impressions (Nayak et al., ICML 2019).

``zskd`` needs the teacher's weights and gradients: the teacher's SavedModel loaded in-process
(``DistillConfig.teacher_saved_model``, the directory a TF Serving base path holds, or the teacher
tfkd trained locally). No real image and no query: the class similarity comes from the final
layer's weights (:func:`.impressions.class_similarity`), the impressions from gradient descent
on noise (:func:`.impressions.synthesize`), and the stored targets are the teacher's softmax at
T on them; with ``zskd.views``, augmented views of each impression are added, each labelled by the
teacher at T (:func:`.views.augmented_views`). The student trains with
T² · CE(stored, softmax(z_s / T)) at the same T (``tempered_kd``: the stored targets are used as
they are; ``kd``, used before issue 27's fix, tempered them a second time, to the nearly uniform
softmax(z_t / 400)).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfkd import workdir as workdir_lib
from tfkd.methods import Method
from tfkd.methods import MethodContext
from tfkd.methods import TransferSet
from tfkd.methods import register
from tfkd.methods.zskd import blackbox
from tfkd.methods.zskd import impressions
from tfkd.methods.zskd import views as views_lib
from tfkd.methods.zskd import whitebox
from tfkd.methods.zskd.config import ZSKDConfig

workdir_lib.register_artifact("impressions-*.npz", "Data Impressions",
                              workdir_lib.check_readable_npz)
workdir_lib.register_artifact("impressions_blackbox-*.npz", "black-box Data Impressions",
                              workdir_lib.check_readable_npz)


class _Impressions(Method):
    """What both ZSKD variants share: the student learns the stored softmax at the search's T with
    ``tempered_kd`` at that T."""

    loss = "tempered_kd"
    blackbox = False
    config_class = ZSKDConfig
    flag_prefix = ""  # Its settings are namespaced: --zskd_count, --zskd_blackbox_sigma.
    # Chosen on the validation split (issue 27): exported at the epoch of best validation
    # accuracy (RESULTS.md, "ZSKD ablations"); never the test split.
    student_defaults = (("select", "validation"),)

    def resolve(self, config):
        """The search's settings left unset: the paper's for the dataset (``zskd``: the count of its
        :class:`tfkd.data.DatasetSpec`), or the black-box variant's
        (:data:`.impressions.BLACKBOX_DEFAULTS`). The search refuses them unset."""
        own = config.method_config
        return dataclasses.replace(config, method_config=dataclasses.replace(
            own, zskd=own.zskd.resolved(config.dataset, self.blackbox)))

    def student_config(self, config):
        zskd = config.method_config.zskd.check_resolved(self.name, ("student_temperature",))
        return dataclasses.replace(super().student_config(config),
                                   temperature=zskd.student_temperature)


@register
class ZSKD(_Impressions):
    """Data Impressions of a white-box teacher, labelled by its softmax at T."""

    name = "zskd"
    teacher_needs = "weights"
    description = ("zero-shot: Data Impressions synthesised from the teacher's weights and "
                   "gradients (ZSKD), no real image, no query")

    def fingerprint(self, config) -> tuple:
        return (config.method_config.zskd,)

    def plan(self, ctx: MethodContext) -> dict[str, int]:
        return {}

    def build(self, ctx: MethodContext) -> TransferSet:
        config = ctx.settings.zskd.check_resolved(self.name)
        teacher = whitebox.load_for(ctx.teacher_saved_model, ctx.image_shape)
        similarity = impressions.class_similarity(teacher.final_layer_weights(config.final_layer))
        state = ctx.artifacts.path("impressions", ".npz", config.search(),
                                   workdir_lib.fingerprint(np.asarray(similarity).tolist()))
        with ctx.stage("impressions"):
            images, targets, _, _ = impressions.synthesize(
                teacher.logits, ctx.image_shape, similarity, config, ctx.seed, state_path=state,
                progress=ctx.progress, strategy=ctx.strategy)
        parts = [("impressions", images, targets)]
        if config.views:
            with ctx.stage("views"):
                views = views_lib.augmented_views(images, config, ctx.seed)
                parts.append(("views", views, whitebox.label_in_process(
                    teacher.logits, views, config.temperature)))
        return TransferSet.from_parts(parts)


@register
class ZSKDBlackBox(_Impressions):
    """Data Impressions of a teacher reached only over gRPC (tfkd's own variant; no seed paper has
    it): ZSKD's targets and loss, the class similarity estimated from the teacher's answers and the
    image gradient from antithetic probes (:func:`.blackbox.synthesize_blackbox`).

    Queries: ``zskd_probes`` (2q per impression and step, sent every time, charged in the work dir's
    ``queries_sent.log``), ``label_impressions`` (the final images, ledgered) and ``label_views``
    (``zskd.views`` augmented views of each, ledgered). Under
    MultiWorkerMirroredStrategy every worker makes every impression (not sharded yet: each worker's
    probes are charged to its own account).
    """

    name = "zskd_blackbox"
    blackbox = True
    teacher_needs = "soft_labels"
    description = ("zero-shot from a black-box teacher: Data Impressions from its answers alone "
                   "(class similarity and image gradients estimated by queries)")

    def fingerprint(self, config) -> tuple:
        own = config.method_config
        return (dataclasses.replace(own.zskd, final_layer=None), own.zskd_blackbox)

    def _state(self, ctx: MethodContext) -> str:
        own = ctx.settings
        return ctx.memo("zskd_blackbox_state", lambda: ctx.artifacts.path(
            "impressions_blackbox", ".npz", dataclasses.replace(own.zskd.search(), final_layer=None),
            own.zskd_blackbox))

    def plan(self, ctx: MethodContext) -> dict[str, int]:
        probes, labels = blackbox.blackbox_queries_left(
            ctx.num_classes, ctx.settings.zskd, ctx.settings.zskd_blackbox, self._state(ctx))
        return {"zskd_probes": probes, "label_impressions": labels,
                "label_views": labels * ctx.settings.zskd.views}

    def build(self, ctx: MethodContext) -> TransferSet:
        ctx.settings.zskd.check_resolved(self.name)
        with ctx.stage("impressions"):
            images, targets, _, _ = blackbox.synthesize_blackbox(
                lambda x: ctx.teacher.probe(x, stage="zskd_probes"),
                lambda x: ctx.teacher.soft_labels(x, stage="label_impressions"),
                ctx.image_shape, ctx.num_classes, ctx.settings.zskd, ctx.settings.zskd_blackbox,
                ctx.seed, state_path=self._state(ctx), progress=ctx.progress)
        parts = [("impressions", images, targets)]
        if ctx.settings.zskd.views:  # Each view one query, ledgered: a rerun asks none again.
            with ctx.stage("views"):
                views = views_lib.augmented_views(images, ctx.settings.zskd, ctx.seed)
                answers = ctx.teacher.soft_labels(views, stage="label_views")
                parts.append(("views", views, blackbox.tempered(answers,
                                                                   ctx.settings.zskd.temperature)))
        return TransferSet.from_parts(parts)
