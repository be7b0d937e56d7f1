"""A model card beside each exported student (Markdown and JSON), in the Model Card Toolkit's
schema fields (Mitchell et al., "Model Cards for Model Reporting", FAT* 2019; the toolkit's
``model_details``, ``model_parameters``, ``quantitative_analysis``, ``considerations``), filled from
a run's report: who the teacher was (model name, version, signature, endpoint), where the transfer
set came from and how many teacher queries it cost, the accuracy and fidelity of every exported
variant on the named evaluation set, and what the student cannot be trusted for.

The JSON keeps to the toolkit's field names (``performance_metrics`` entries are ``type``, ``value``,
``slice``; ``users``, ``use_cases`` and ``limitations`` entries are ``{"description": ...}``), so
the toolkit or any reader of its schema can render it; the Model Card Toolkit itself is not a
dependency (it does not install beside TensorFlow 2.21).
"""

from __future__ import annotations

import datetime
import os

from tfkd import fs
from tfkd import report as report_lib
from tfkd import workdir as workdir_lib

PAPERS = {
    "fsbbt": "Nguyen et al., Black-Box Few-Shot Knowledge Distillation, ECCV 2022",
    "mixup": "Nguyen et al., Black-Box Few-Shot Knowledge Distillation, ECCV 2022 (MixUp only)",
    "cvae": "Nguyen et al., Black-Box Few-Shot Knowledge Distillation, ECCV 2022 (CVAE only)",
    "db3kd": "Wang, Zero-Shot Knowledge Distillation from a Decision-Based Black-Box Model, "
             "ICML 2021",
    "zsdb3kd": "Wang, Zero-Shot Knowledge Distillation from a Decision-Based Black-Box Model, "
               "ICML 2021",
    "fsbbt_db3kd": "Nguyen et al., ECCV 2022, with Wang, ICML 2021 boundary soft labels",
    "zskd": "Nayak et al., Zero-Shot Knowledge Distillation in Deep Networks, ICML 2019",
    "zskd_blackbox": "Nayak et al., ICML 2019, with zeroth-order gradients from the served "
                     "teacher (tfkd)",
    "standard_kd": "Hinton et al., Distilling the Knowledge in a Neural Network, 2015",
    "student_alone": "no distillation: the student trained on the labelled few-shot images",
}


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _teacher(report: dict) -> dict:
    teacher = report.get("teacher") or {}
    return {"model_name": teacher.get("model_name"), "version": teacher.get("version"),
            "signature": teacher.get("signature"), "endpoint": teacher.get("target"),
            "output": teacher.get("output_kind") or report.get("teacher_output_kind"),
            "label_only": teacher.get("label_only"),
            "architecture": report.get("teacher_architecture"),
            "accuracy": report.get("teacher_accuracy")}


def _limitations(report: dict) -> list[str]:
    method = report.get("method", "")
    out = [
        "The student imitates the teacher: it inherits the teacher's errors and biases, and its "
        f"agreement with the teacher (fidelity {_pct(report.get('student_fidelity'))}) bounds "
        "what it can be trusted for beyond the teacher.",
        f"Accuracy is measured only on the evaluation set named in the metrics "
        f"({report.get('eval_examples') or 0:,} images); it says nothing of images from another "
        "distribution (other cameras, crops, classes the teacher was never trained on).",
    ]
    if method in ("zskd", "zskd_blackbox", "zsdb3kd"):
        out.append("No real image was used: the transfer set is synthesised from the teacher "
                   "alone, so classes the teacher confuses are learnt as confused.")
    else:
        out.append(f"The transfer set grows from {report.get('num_shots') or 0:,} real images; "
                   "classes or styles missing from them are covered only as far as MixUp and "
                   "the generator reach.")
    if (report.get("teacher") or {}).get("label_only"):
        out.append("The teacher answered top-1 labels only: soft labels were estimated, not read.")
    return out


def build(report: dict, name: str = "student") -> dict:
    """The model card of a finished run as a dict in the Model Card Toolkit's schema fields.

    Args:
      report: a run's report (:meth:`tfkd.report.Report.to_dict`), after its students were
        exported and evaluated.
      name: the served model name of the student.

    Returns:
      ``{"model_details", "model_parameters", "quantitative_analysis", "considerations"}``.
    """
    method, dataset = report.get("method", ""), report.get("dataset", "")
    teacher = _teacher(report)
    architecture = teacher["architecture"] or "architecture not known"
    export_dir = report.get("student_export_dir") or ""
    variants = report.get("student_variants") or {}
    eval_set = (f"{dataset} test split" if report.get("images") is None
                else "the evaluation images folder") + f" ({report.get('eval_examples') or 0:,} images)"
    metrics = _metrics(variants, eval_set)
    sources = report.get("transfer_set_sources") or {}
    transfer = (f"{sum(sources.values()):,} images ("
                + ", ".join(f"{k}: {v:,}" for k, v in sources.items())
                + f"), labelled by the teacher with {report.get('teacher_queries_total') or 0:,} "
                f"teacher queries in all (budget: {report.get('query_budget') or 'none'}; by "
                f"stage: {report.get('teacher_queries_by_stage')})")
    return {
        "model_details": {
            "name": f"{name} ({method}, {dataset})",
            "overview": (f"A {report.get('student_architecture')} student distilled by tfkd's "
                         f"{method} from the served teacher {teacher['model_name']!r} version "
                         f"{teacher['version']} ({architecture}), without the teacher's weights "
                         "or training data."),
            "version": {"name": os.path.basename(export_dir),
                        "date": datetime.date.today().isoformat()},
            "references": [{"reference": PAPERS.get(method, method)}],
            "documentation": f"report.json of the run; code commit {report.get('code_commit')}",
        },
        "model_parameters": {
            "model_architecture": report.get("student_architecture"),
            "input_format": "serving_default: images float32 [batch, H, W, C] in [0, 1]",
            "output_format": "serving_default: probabilities float32 [batch, K], classes int64 "
                             "[batch]; classify: class names and scores",
            "data": [
                {"name": "transfer set", "description": transfer},
                {"name": "teacher", "description": (
                    f"model {teacher['model_name']!r} version {teacher['version']}, signature "
                    f"{teacher['signature']!r}, output {teacher['output']}, at "
                    f"{teacher['endpoint']}; accuracy {_pct(teacher['accuracy'])} on {eval_set}")},
            ],
        },
        "quantitative_analysis": {"performance_metrics": metrics},
        "considerations": _considerations(report, variants),
    }


def _metrics(variants: dict, eval_set: str) -> list[dict]:
    """``performance_metrics`` entries: accuracy, fidelity, validation accuracy per variant."""
    metrics = []
    for variant, figures in sorted(variants.items()):
        for kind in ("accuracy", "fidelity", "validation_accuracy"):
            if figures.get(kind) is not None:
                where = "the validation split" if kind == "validation_accuracy" else eval_set
                metrics.append({"type": kind, "value": f"{figures[kind]:.4f}",
                                "slice": f"{variant} on {where}"})
    return metrics


def _considerations(report: dict, variants: dict) -> dict:
    """``considerations``: users, use cases, limitations, trade-offs between variants."""
    return {
        "users": [{"description": "ML engineers deploying a compressed stand-in for a served "
                                  "teacher classifier on TF Serving."}],
        "use_cases": [{"description": (
            f"Classifying {report.get('dataset', '')} images into the teacher's classes where the "
            "teacher is too large, slow or costly to call; a canary beside the teacher first.")}],
        "limitations": [{"description": text} for text in _limitations(report)],
        "tradeoffs": [{"description": (
            f"{variant}: {_pct(f.get('accuracy'))} accuracy, "
            f"{(f.get('saved_model_bytes') or 0) / 1e6:.2f} MB, "
            f"{(f.get('cpu_latency_ms') or {}).get('batch_1', '-')} ms per image on CPU, "
            f"{(f.get('cpu_latency_ms') or {}).get('batch_64', '-')} ms per batch of 64")}
            for variant, f in sorted(variants.items())] + [
            {"description": f"Slower than float32: {line}"}
            for line in report_lib.slower_than_float32(variants).values()],
    }


def markdown(card: dict, pictures: dict | None = None) -> str:
    """The card as Markdown (pictures: title -> PNG path, shown as images)."""
    details, params = card["model_details"], card["model_parameters"]
    lines = [f"# Model card: {details['name']}", "", details["overview"], "",
             "## Model details", "",
             f"- Version: {details['version']['name']} ({details['version']['date']})",
             f"- Architecture: {params['model_architecture']}",
             f"- Method: {details['references'][0]['reference']}",
             f"- Input: {params['input_format']}", f"- Output: {params['output_format']}",
             f"- Provenance: {details['documentation']}", "",
             "## Teacher and transfer set", ""]
    lines += [f"- **{d['name']}**: {d['description']}" for d in params["data"]]
    lines += ["", "## Metrics", "", "| metric | value | slice |", "|---|---:|---|"]
    lines += [f"| {m['type']} | {m['value']} | {m['slice']} |"
              for m in card["quantitative_analysis"]["performance_metrics"]]
    considerations = card["considerations"]
    for title, key in (("Intended users", "users"), ("Intended use", "use_cases"),
                       ("Limitations", "limitations"), ("Trade-offs", "tradeoffs")):
        lines += ["", f"## {title}", ""] + [f"- {e['description']}" for e in considerations[key]]
    if pictures:
        lines += ["", "## Transfer set", ""]
        lines += [f"![{title}]({path})" for title, path in pictures.items()]
    return "\n".join(lines) + "\n"


def write(report: dict, directory: str, name: str = "student") -> dict[str, str]:
    """Writes ``model_card.json`` and ``model_card.md`` into ``directory`` (atomically), with the
    run's grids as pictures. Returns {"json": path, "markdown": path}."""
    card = build(report, name)
    pictures = {f"{k} images (one row per teacher class)": os.path.relpath(p, directory)
                for k, p in (report.get("grids") or {}).items() if fs.is_local(p)}
    fs.makedirs(directory)
    return {"json": workdir_lib.write_json(os.path.join(directory, "model_card.json"), card),
            "markdown": fs.write_atomic(os.path.join(directory, "model_card.md"),
                                        markdown(card, pictures))}
