"""The model card gives each exported variant its own measured figures (a run's report as the
pipeline writes it, with hand-written figures as the oracle). Found by the mutation check of issue
35's review: ``card_metrics_of_float32`` (every variant given the float32 figures) passed
``test_launch_distill_end_to_end`` on a run whose int8 and float32 accuracies happened to be equal."""

from tfkd import model_card

REPORT = {
    "method": "fsbbt", "dataset": "fashion_mnist", "eval_examples": 10_000,
    "student_export_dir": "/w/export/student/1", "teacher_queries_total": 59_998,
    "transfer_set_sources": {"real": 2000, "mixup": 43_200, "cvae": 4800},
    "student_variants": {
        "float32": {"accuracy": 0.8718, "fidelity": 0.9101, "validation_accuracy": 0.8832,
                    "saved_model_bytes": 400_000},
        "float16": {"accuracy": 0.8717, "fidelity": 0.9100, "validation_accuracy": 0.8830,
                    "saved_model_bytes": 220_000},
        "int8": {"accuracy": 0.8709, "fidelity": 0.9087, "validation_accuracy": 0.8821,
                 "saved_model_bytes": 95_000}},
}


def test_each_variants_card_figures_are_its_own():
    card = model_card.build(REPORT)
    metrics = {(m["type"], m["slice"].split(" ")[0]): m["value"]
               for m in card["quantitative_analysis"]["performance_metrics"]}
    assert metrics == {(kind, variant): f"{figures[kind]:.4f}"
                       for variant, figures in REPORT["student_variants"].items()
                       for kind in ("accuracy", "fidelity", "validation_accuracy")}
    assert [m["slice"] for m in card["quantitative_analysis"]["performance_metrics"]
            if m["type"] == "accuracy"] == [
        "float16 on fashion_mnist test split (10,000 images)",
        "float32 on fashion_mnist test split (10,000 images)",
        "int8 on fashion_mnist test split (10,000 images)"]
    markdown = model_card.markdown(card)
    assert "0.8709" in markdown or "87.09" in markdown  # int8's own accuracy reaches the page.
