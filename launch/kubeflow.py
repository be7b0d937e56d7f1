r"""tfkd as Kubeflow Pipelines v2 components, and the pipeline teacher endpoint -> distil ->
evaluate -> deploy. Needs the ``kfp`` extra: ``pip install -e ".[kfp]"``.

  python launch/kubeflow.py --output=tfkd_pipeline.yaml     # compile the pipeline to KFP's YAML

Each component is a thin shell: its parameters are the library's settings (``settings``: any
:class:`tfkd.DistillConfig` field by dotted name, as :meth:`~tfkd.DistillConfig.with_settings`
reads them) and its work is one call into :mod:`tfkd.kubeflow` or :func:`tfkd.distill`.
Components run in the image ``$TFKD_IMAGE`` names (one with tfkd installed; default ``tfkd:0.1.0``;
KFP's local runner runs them in this Python environment instead):

* ``teacher_endpoint``: GetModelMetadata on the teacher; fails the run at once if it is not served.
* ``distil``: the distillation (:func:`tfkd.distill`) with a work dir that survives retries when
  ``workdir`` names one; outputs ``student`` (Model: TF Serving's version layout, the model card
  beside the versions), ``metrics`` (Metrics: the report's figures) and ``report`` (Markdown: the
  model card with the transfer set's image grids).
* ``evaluate``: serves the student artifact over gRPC and measures its test accuracy.
* ``deploy``: copies the student into a served base path as its next version (a server polling
  the base path loads it without a restart), when the accuracy is at least ``min_accuracy``.
"""

import os
import sys

from absl import app
from absl import flags
from kfp import compiler
from kfp import dsl
from kfp.dsl import Input
from kfp.dsl import Markdown
from kfp.dsl import Metrics
from kfp.dsl import Model
from kfp.dsl import Output

IMAGE = os.environ.get("TFKD_IMAGE", "tfkd:0.1.0")  # An image with tfkd installed.


@dsl.component(base_image=IMAGE)
def teacher_endpoint(teacher: str, teacher_model_name: str, settings: dict) -> str:
    """Checks that ``teacher`` (host:port or http(s)://host:port) serves ``teacher_model_name``,
    over the channel ``settings`` describe (``teacher.tls_ca_file``, ``teacher.auth_token_file``,
    ...: what the distil step will use); returns ``teacher``."""
    from tfkd import kubeflow

    config = kubeflow.distill_config("", teacher, teacher_model_name, settings).teacher
    found = kubeflow.check_teacher(teacher, teacher_model_name, **{
        f: getattr(config, f) for f in kubeflow.CHANNEL_FIELDS if getattr(config, f)})
    print(f"teacher: {found}")
    return teacher


@dsl.component(base_image=IMAGE)
def distil(teacher: str, teacher_model_name: str, workdir: str, settings: dict,
           student: Output[Model], metrics: Output[Metrics], report: Output[Markdown]):
    """``tfkd.distill`` with ``settings`` (:meth:`tfkd.DistillConfig.with_settings`) against
    ``teacher``; exports its outputs."""
    import os

    import tfkd
    from tfkd import kubeflow

    workdir = workdir or os.path.join(os.path.dirname(student.path), "workdir")
    result = tfkd.distill(kubeflow.distill_config(workdir, teacher, teacher_model_name,
                                                  settings)).to_dict()
    kubeflow.export_student_artifact(result, student)
    kubeflow.log_report_metrics(result, metrics)
    with open(report.path, "w") as f:
        f.write(kubeflow.report_markdown(result))


@dsl.component(base_image=IMAGE)
def evaluate(student: Input[Model], dataset: str, eval_examples: int,
             metrics: Output[Metrics]) -> float:
    """Serves ``student`` over gRPC and returns its test accuracy on ``dataset``."""
    from tfkd import kubeflow

    result = kubeflow.evaluate_served(student.path, dataset, eval_examples)
    for name, value in result.items():
        metrics.log_metric(name, value)
    return result["accuracy"]


@dsl.component(base_image=IMAGE)
def deploy(student: Input[Model], serving_base_path: str, accuracy: float,
           min_accuracy: float) -> str:
    """Pushes the student's newest version into ``serving_base_path`` as its next version when
    ``accuracy`` >= ``min_accuracy``; returns the new version directory ("" when not deployed)."""
    import os

    from tfkd import export

    if accuracy < min_accuracy:
        print(f"not deployed: accuracy {accuracy:.4f} < min_accuracy {min_accuracy:.4f}")
        return ""
    version = max(export.list_versions(student.path))
    return export.deploy_version(os.path.join(student.path, str(version)), serving_base_path)


@dsl.pipeline(name="tfkd-distill", description="Black-box distillation of a served teacher: "
              "teacher endpoint -> distil -> evaluate -> deploy.")
def distill_pipeline(teacher: str, serving_base_path: str, teacher_model_name: str = "teacher",
                     settings: dict = {}, workdir: str = "", dataset: str = "fashion_mnist",
                     eval_examples: int = 0, min_accuracy: float = 0.0):
    """The pipeline; ``settings`` are :class:`tfkd.DistillConfig` fields by dotted name (e.g.
    ``{"num_shots": 2000, "student.epochs": 25}``); those left out take the library's defaults."""
    endpoint = teacher_endpoint(teacher=teacher, teacher_model_name=teacher_model_name,
                                settings=settings)
    distilled = distil(teacher=endpoint.output, teacher_model_name=teacher_model_name,
                       workdir=workdir, settings=settings)
    evaluated = evaluate(student=distilled.outputs["student"], dataset=dataset,
                         eval_examples=eval_examples)
    deploy(student=distilled.outputs["student"], serving_base_path=serving_base_path,
           accuracy=evaluated.outputs["Output"], min_accuracy=min_accuracy)


def compile_pipeline(path: str) -> str:
    """Compiles :func:`distill_pipeline` to KFP's pipeline YAML at ``path``; returns ``path``."""
    compiler.Compiler().compile(distill_pipeline, package_path=path)
    return path


flags.DEFINE_string("output", "tfkd_pipeline.yaml", "Where to write the compiled pipeline YAML.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    print(f"compiled {compile_pipeline(flags.FLAGS.output)}", flush=True)


if __name__ == "__main__":
    sys.exit(app.run(main))
