"""Issue 25 §2: breakages an audit applied that the suite did not notice, each now caught by a test
here (``tests/mutation_check.py`` applies each breakage and runs the test named beside it).

Real parts throughout: real Fashion-MNIST, the real served teacher, real training. Two stand-ins,
said where they are: a strategy object that carries a real ``ClusterResolver`` (a cluster with a
``chief`` task needs several processes and ports to exist as a real MultiWorkerMirroredStrategy), and
the report dict a model card is built from (a real run's report has the same keys).
"""

import dataclasses
import os
import shutil
import types

import grpc
import numpy as np
import pytest
import tensorflow as tf
from test_teacher_contract import FailFirst

from tfkd import distribute
from tfkd import export
from tfkd import methods
from tfkd import model_card
from tfkd import pipeline
from tfkd import report
from tfkd import serving
from tfkd import student as student_lib
from tfkd import teacher
from tfkd.report import Report
from tfkd.serving import monitoring
from tfkd.student import models
from tfkd.teacher import cluster


def _no_augmentation(**fields) -> student_lib.StudentConfig:
    return student_lib.StudentConfig(mixup_alpha=0, rotation_degrees=0, shift_fraction=0, **fields)


def test_the_student_learns_the_teachers_soft_labels_not_their_argmax(fashion, tmp_path):
    """Soft labels that split 0.6 / 0.4 between two classes: a student that learns them answers
    about 0.6 for its top class on those images; one trained on their argmax (one-hot) answers
    near 1. Trained through :func:`tfkd.pipeline.train_student`, where the run hands the transfer
    set's targets to the trainer."""
    n = 1024
    images, labels = fashion.x_train[:n], fashion.y_train[:n]
    targets = np.zeros((n, 10), np.float32)
    targets[np.arange(n), labels] = 0.6
    targets[np.arange(n), (labels + 1) % 10] = 0.4
    transfer = methods.TransferSet(images, targets, np.zeros(n, np.int8), ("real",))
    config = pipeline.DistillConfig(workdir=str(tmp_path), method="standard_kd", verbose=0,
                                    student=_no_augmentation(epochs=8, learning_rate=3e-3)).resolved()
    dataset = dataclasses.replace(fashion, x_train=images, y_train=labels)
    student = pipeline.train_student(config, methods.get("standard_kd"), dataset, transfer, "fp",
                                     distribute.make_strategy(), report.StageTimer(), Report())
    probabilities = tf.nn.softmax(student.predict(images, verbose=0)).numpy()
    top = np.sort(probabilities, axis=1)
    assert 0.45 < top[:, -1].mean() < 0.75, top[:, -1].mean()
    assert top[:, -2].mean() > 0.25, top[:, -2].mean()


def test_validation_images_are_held_out_of_the_pool(tmp_path):
    """The pool the teacher trains on and the few shots are drawn from never holds a validation
    image: no image of ``x_val`` occurs in ``x_train``, and the two add up to the training split."""
    config = pipeline.DistillConfig(workdir=str(tmp_path), num_validation=5000)
    dataset = pipeline.load_data(config, report.StageTimer())
    assert len(dataset.x_val) == 5000 and len(dataset.x_train) == 55_000
    pool = {row.tobytes() for row in (dataset.x_train * 255).astype(np.uint8)}
    held = [row.tobytes() for row in (dataset.x_val * 255).astype(np.uint8)]
    # Fashion-MNIST has a few exact duplicate images; a held-out image may equal a pool image only
    # where the training split itself holds that picture twice.
    overlap = sum(h in pool for h in held)
    assert overlap < 10, overlap


def test_a_retry_is_refused_when_it_would_exceed_the_budget(teacher_base, fashion, tmp_path):
    """A budget of 10 images: the first attempt of a 10-image request fits, is charged, and fails
    in flight (an injected UNAVAILABLE); its retry would be the 11th to 20th images the teacher may
    have seen, so it is refused unsent, and the account holds 10."""
    fast = teacher.RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05)
    account = teacher.QueryAccount(str(tmp_path), budget=10)
    with serving.ModelServer([serving.ModelConfig("teacher", teacher_base)], poll_seconds=0,
                             interceptors=[FailFirst(grpc.StatusCode.UNAVAILABLE, 1)]) as srv, \
            teacher.connect(srv.target, "teacher", retry=fast, account=account,
                            query_budget=10) as client:
        with pytest.raises(teacher.QueryBudgetExceeded, match="retry of 10 images"):
            client.soft_labels(fashion.x_test[:10])
    assert account.total == 10 and account.retried == 0


def test_a_new_teacher_version_is_never_answered_from_the_old_versions_ledger(
        teacher_base, fashion, tmp_path):
    """Version 2 deployed behind the same model name must not be answered from version 1's stored
    answers. Version 2 here is a copy of version 1's SavedModel, so that its fingerprint is the
    same and only the version can tell the two apart, as on TF Serving, whose metadata has no
    fingerprint: every image is asked again."""
    base = tmp_path / "teacher"
    for version in ("1", "2"):
        shutil.copytree(os.path.join(teacher_base, "1"), base / version)
    ledger = teacher.QueryLedger(str(tmp_path / "ledger"))
    images = fashion.x_test[:20]
    with serving.ModelServer([serving.ModelConfig("teacher", str(base), version_policy="all")],
                             poll_seconds=0) as srv:
        with teacher.connect(srv.target, "teacher", version=1, ledger=ledger) as v1:
            first = v1.soft_labels(images)
        with teacher.connect(srv.target, "teacher", ledger=ledger) as v2:  # The latest: 2.
            assert v2.signature.version == 2 and v2.signature.origin == v1.signature.origin
            second = v2.soft_labels(images)
            assert v2.ledger_hits == 0 and v2.queries == 20
    np.testing.assert_allclose(second, first, atol=1e-6)  # The same model, asked again.


@pytest.mark.parametrize("method,field", [("db3kd", "db3kd"), ("fsbbt_db3kd", "db3kd"),
                                          ("zskd", "zskd"), ("zskd_blackbox", "zskd")])
def test_methods_train_their_student_at_their_own_temperature(method, field):
    """DB3KD's student learns its soft labels at the search's T (20), ``zskd_blackbox``'s at the
    impressions' T (20) and ``zskd``'s at τ = 1 on targets stored at T (chosen on the validation
    split, issue 27): the student config a method hands the trainer carries that temperature and
    the method's loss, and a loss at T > 1 differs from the loss at T = 1."""
    config = pipeline.DistillConfig(workdir="/unused", method=method)
    at_t = getattr(config.resolved().method_config, field).temperature
    expected = 1.0 if method == "zskd" else at_t
    student = methods.get(method).student_config(config.resolved())
    assert at_t == 20.0 and student.temperature == expected, (method, student.temperature)
    other = config.with_settings({f"{field}.temperature": 7.0})
    assert methods.get(method).student_config(other.resolved()).temperature == (
        1.0 if method == "zskd" else 7.0)
    targets = tf.constant([[0.7, 0.2, 0.1]])
    logits = tf.constant([[2.0, 0.5, -1.0]])
    loss = student_lib.make_loss(student.loss, student.temperature)
    difference = abs(float(loss(targets, logits)) - float(student_lib.make_loss(student.loss, 1.0)(
        targets, logits)))
    assert difference > 1e-2 if student.temperature > 1 else difference == 0


def test_a_chief_and_its_workers_each_label_their_own_shard():
    """Vertex AI's layout: a ``chief`` task and ``worker`` tasks. Stand-in: a strategy object that
    carries a real ``SimpleClusterResolver`` (a real MultiWorkerMirroredStrategy with a chief needs
    one process per task). The chief is worker 0 of the collective order, ``worker`` 0 is 1, and the
    shards of every image set cover each row exactly once; only the chief exports."""
    spec = tf.train.ClusterSpec({"chief": ["127.0.0.1:1"],
                                 "worker": ["127.0.0.1:2", "127.0.0.1:3"]})
    tasks = [("chief", 0), ("worker", 0), ("worker", 1)]
    strategies = [types.SimpleNamespace(cluster_resolver=tf.distribute.cluster_resolver.
                                        SimpleClusterResolver(spec, task_type=t, task_id=i))
                  for t, i in tasks]
    assert [cluster.worker_position(s) for s in strategies] == [(0, 3), (1, 3), (2, 3)]
    assert [distribute.is_chief(s) for s in strategies] == [True, False, False]
    for n in (3, 10, 301):
        rows = np.concatenate([np.arange(n)[cluster.ShardedTeacher(None, s).shard(n)]
                               for s in strategies])
        np.testing.assert_array_equal(rows, np.arange(n))


def test_request_latency_is_recorded_in_microseconds():
    """TF Serving's ``request_latency`` histogram is in microseconds: a request of 2.5 ms adds 2500
    to its sum and lands in the bucket of 10 x 1.8^k microseconds that holds 2500."""
    metrics = monitoring.ServerMetrics()
    metrics.record("teacher", "1", "Predict", "GRPC", "OK", seconds=0.0025)
    labels = {"model_name": "teacher", "model_version": "1", "API": "Predict",
              "entrypoint": "GRPC"}
    name = ":tensorflow:serving:request_latency"
    assert metrics.registry.get_sample_value(name + "_sum", labels) == pytest.approx(2500)
    below = max(b for b in monitoring.LATENCY_BUCKETS_US if b < 2500)
    above = min(b for b in monitoring.LATENCY_BUCKETS_US if b >= 2500)
    assert metrics.registry.get_sample_value(name + "_bucket", {**labels, "le": str(below)}) == 0
    assert metrics.registry.get_sample_value(name + "_bucket", {**labels, "le": str(above)}) == 1


def test_the_model_card_states_the_teachers_accuracy_and_the_work_dirs_queries():
    """A resumed run: this process sent no query, the work dir's total is 1,100; the teacher scored
    0.9, the student 0.6. Stand-in: the report dict a real run writes (same keys)."""
    report = Report(method="fsbbt", dataset="fashion_mnist", teacher_accuracy=0.9,
                    student_accuracy=0.6, teacher_queries_sent=0, teacher_queries=0,
                    teacher_queries_total=1100, student_export_dir="/x/export/student/2",
                    teacher={"model_name": "teacher", "version": 1, "target": "h:1",
                             "signature": "serving_default", "output_kind": "probabilities"},
                    eval_examples=500).to_dict()
    card = model_card.build(report)
    data = {d["name"]: d["description"] for d in card["model_parameters"]["data"]}
    assert "accuracy 90.00%" in data["teacher"], data["teacher"]
    assert "1,100 teacher queries" in data["transfer set"], data["transfer set"]


def test_another_server_with_the_same_model_name_is_never_answered_from_the_ledger(
        teacher_base, fashion, tmp_path):
    """Issue 25 §4: the same work dir pointed at another server that also serves "teacher" version
    1 (here an untrained LeNet-5, near chance) must not reuse the first teacher's stored answers.
    The teacher's identity holds its SavedModel fingerprint (tfkd's server gives it); a second
    server of the *same* SavedModel (the work dir's own teacher, served on a new port each run)
    keeps the answers."""
    other = tmp_path / "other"
    export.export_classifier(models.build_model("lenet5", (28, 28, 1), 10), str(other))
    ledger = teacher.QueryLedger(str(tmp_path / "ledger"))
    images = fashion.x_test[:40]
    with serving.ModelServer([serving.ModelConfig("teacher", teacher_base)], poll_seconds=0) as a, \
            teacher.connect(a.target, "teacher", ledger=ledger) as first:
        trained = first.soft_labels(images)
        origin = first.signature.origin
    assert origin.startswith("saved_model:tf:"), origin
    with serving.ModelServer([serving.ModelConfig("teacher", str(other))], poll_seconds=0) as b, \
            teacher.connect(b.target, "teacher", ledger=ledger) as second:
        fresh = second.soft_labels(images)
        assert second.ledger_hits == 0 and second.queries == 40
        assert second.signature.origin != origin
    assert np.mean(fresh.argmax(1) == trained.argmax(1)) < 0.9
    with serving.ModelServer([serving.ModelConfig("teacher", teacher_base)], poll_seconds=0) as c, \
            teacher.connect(c.target, "teacher", ledger=ledger) as again:
        np.testing.assert_array_equal(again.soft_labels(images), trained)
        assert again.ledger_hits == 40 and again.queries == 0 and again.signature.origin == origin


def test_a_damaged_new_version_leaves_the_healthy_one_served(teacher_base, fashion, tmp_path,
                                                             every_log_level):
    """Issue 25 §4: a garbage ``saved_model.pb`` dropped in as version 2 must not unload version 1
    (TF Serving's availability-preserving policy); the failed load is logged once, not at every
    poll; once version 2 is repaired it replaces version 1."""
    base = tmp_path / "teacher"
    shutil.copytree(os.path.join(teacher_base, "1"), base / "1")
    with serving.ModelServer([serving.ModelConfig("teacher", str(base))], poll_seconds=0) as srv:
        (base / "2").mkdir()
        (base / "2" / "saved_model.pb").write_bytes(b"not a SavedModel")
        for _ in range(3):  # Three polls of the base path.
            srv.registry.refresh()
        with teacher.connect(srv.target, "teacher") as client:
            assert client.signature.version == 1
            assert client.soft_labels(fashion.x_test[:4]).shape == (4, 10)
        failures = [r for r in every_log_level.records
                    if "Failed to load servable teacher version 2" in r.getMessage()]
        assert len(failures) == 1, [r.getMessage()[:120] for r in failures]
        shutil.rmtree(base / "2")
        shutil.copytree(os.path.join(teacher_base, "1"), base / "2")  # Repaired.
        srv.registry.refresh()
        with teacher.connect(srv.target, "teacher") as client:
            assert client.signature.version == 2
        assert [s.version for s in srv.registry.versions("teacher")] == [2]


def test_unserved_model_names_share_one_metric_series_and_are_not_echoed_whole(
        teacher_base, fashion):
    """Issue 25 §4: every distinct model name in a request once made a Prometheus series of its own
    (500 names of 64 KB: 1 GB scrapes). Requests for 30 unknown names of 20,000 characters each
    are counted under one label; the NOT_FOUND answer echoes a bounded name."""
    from tensorflow_serving.apis import predict_pb2
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with serving.ModelServer([serving.ModelConfig("teacher", teacher_base)],
                             poll_seconds=0) as srv:
        channel = grpc.insecure_channel(srv.target)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for i in range(30):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = f"{i:03d}" + "x" * 20_000
            request.inputs["images"].CopyFrom(tf.make_tensor_proto(fashion.x_test[:1]))
            with pytest.raises(grpc.RpcError) as e:
                stub.Predict(request, timeout=30)
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
            assert len(e.value.details()) < 400 and f"{i:03d}xxx" in e.value.details()
        channel.close()
        exposition = srv.metrics.exposition()[0].decode()
    assert len(exposition) < 20_000, len(exposition)
    assert 'model_name="_unserved"' in exposition and "xxxxxxxx" not in exposition
    assert srv.metrics.registry.get_sample_value(
        ":tensorflow:serving:request_count",
        {"model_name": "_unserved", "model_version": "", "status": "NOT_FOUND"}) == 30
