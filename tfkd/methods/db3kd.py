"""The DB3KD family: distillation from a decision-based (top-1 label only) teacher.

DB3KD (Wang, "Zero-Shot Knowledge Distillation from a Decision-Based Black-Box Model", ICML 2021):
the teacher answers class ids only; the distance of each image to the teacher's decision boundary
toward every other class (:mod:`tfkd.boundary`) becomes its soft label, and the student trains with
CE to the teacher's top-1 class plus KL to that soft label at temperature T
(:class:`tfkd.distill.DecisionKD`).

==========  =========================================================  ==========================
method      transfer set                                               teacher queries
==========  =========================================================  ==========================
db3kd       the N images, soft labels from their boundary distances    N + the boundary search
==========  =========================================================  ==========================

The search goes from each image toward the *other* few-shot images the teacher labels t. Queries are
charged under ``label_real`` (the N images' top-1 labels) and ``db3kd_search`` (every probe). The
search state is persisted under a fingerprint that leaves out ``num_directions``, so a rerun with
more directions continues the search instead of starting again.

Not built yet: the ``mbd`` (Sign-OPT) refinement, ``fsbbt_db3kd`` (FS-BBT's synthetic images with
these soft labels), ``zsdb3kd`` (no real images), and sharding the search across workers (under
MultiWorkerMirroredStrategy every worker searches every pair).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from tfkd import boundary
from tfkd import workdir as workdir_lib
from tfkd.methods import Method
from tfkd.methods import MethodContext
from tfkd.methods import TransferSet
from tfkd.methods import register


@register
class DB3KD(Method):
    """The N images with DB3KD soft labels from a label-only teacher."""

    name = "db3kd"
    teacher_needs = "top1_labels"
    loss = "db3kd"
    description = ("the N images with soft labels from their distances to a label-only teacher's "
                   "decision boundaries (DB3KD)")

    def fingerprint(self, config) -> tuple:
        return (config.db3kd,)

    def student_config(self, config):
        return dataclasses.replace(super().student_config(config),
                                   temperature=config.db3kd.temperature)

    def plan(self, ctx: MethodContext) -> dict[str, int]:
        """An upper bound: per pair and direction, one pruning probe and a full binary search from
        the longest possible segment (the diagonal of the [0, 1] pixel cube) to the tolerance."""
        config = ctx.config.db3kd
        steps = 1 + math.ceil(math.log2(math.sqrt(np.prod(ctx.image_shape)) / config.tolerance))
        pairs = ctx.teacher.share(len(ctx.few_shot)) * (ctx.num_classes - 1)
        return {"label_real": ctx.teacher.missing(ctx.few_shot),
                "db3kd_search": pairs * config.num_directions * steps}

    def build(self, ctx: MethodContext) -> TransferSet:
        with ctx.stage("label_real"):
            labels = ctx.teacher.soft_labels(ctx.few_shot, progress=ctx.progress,
                                             stage="label_real").argmax(axis=1)
        config = ctx.config.db3kd
        state = workdir_lib.artifact_path(
            ctx.workdir, "boundary_state", ".npz", self.name, ctx.config.dataset,
            ctx.config.data_dir, ctx.seed, ctx.config.num_shots,
            dataclasses.replace(config, num_directions=0), ctx.teacher.signature.identity)
        with ctx.stage("db3kd_search"):
            distances = boundary.boundary_distances(
                ctx.few_shot, labels, ctx.few_shot, labels, ctx.num_classes, ctx.teacher.top1,
                config, ctx.seed, stage="db3kd_search", state_path=state, progress=ctx.progress)
        targets = boundary.soft_labels_from_distances(distances, labels, config.temperature)
        return TransferSet.from_parts([("real", ctx.few_shot, targets)])
