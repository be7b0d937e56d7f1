"""ZSKD's Data Impressions: class similarity, Dirichlet targets, the impression search (its Adam
against Keras', its loss falling on a teacher it can fit, resuming a killed search)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfkd.methods.zskd import blackbox
from tfkd.methods.zskd import impressions
from tfkd.methods.zskd import whitebox

SHAPE = (6, 6, 1)
K = 3


def test_class_similarity_of_a_known_weight_matrix():
    """Columns (1, 0), (0, 1), (1, 1): cosines 0, 1/√2, 1/√2, 1 on the diagonal; min-max keeps them
    (min 0, max 1); scaling a column changes nothing (cosine)."""
    w = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    c = 1 / np.sqrt(2)
    expected = np.array([[1, 0, c], [0, 1, c], [c, c, 1]])
    np.testing.assert_allclose(impressions.class_similarity(w), expected, atol=1e-6)
    np.testing.assert_allclose(impressions.class_similarity(w * [3.0, 0.5, 7.0]), expected, atol=1e-6)
    # Negative cosines: min-max maps the most opposed pair to 0.
    opposed = impressions.class_similarity(np.array([[1.0, -1.0, 0.0], [0.0, 0.0, 1.0]]))
    assert opposed[0, 1] == 0 and opposed[0, 2] == pytest.approx(0.5) and opposed[0, 0] == 1
    with pytest.raises(ValueError, match="expected \\[features, classes >= 2\\]"):
        impressions.class_similarity(np.ones(4))
    with pytest.raises(ValueError, match="class columns \\[1\\] are all zeros"):
        impressions.class_similarity(np.array([[1.0, 0.0], [2.0, 0.0]]))


def test_dirichlet_targets_have_the_concentration_asked_for():
    """Mean of Dir(α) is α / Σα, with α = β · (row rescaled to [0, 1]) + 1e-4; β = 0.1 draws
    sparser rows than β = 1 (the paper's two scales)."""
    sim = np.array([[1.0, 0.2, 0.6], [0.2, 1.0, 0.0], [0.6, 0.0, 1.0]])
    rng = np.random.default_rng(0)
    n = 40_000
    for beta in (1.0, 0.1):
        y = impressions.dirichlet_targets(sim, np.zeros(n, int), beta, rng)
        assert y.shape == (n, K) and y.dtype == np.float32
        np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)
        row = (sim[0] - sim[0].min()) / (sim[0].max() - sim[0].min())
        alpha = beta * row + 1e-4
        np.testing.assert_allclose(y.mean(axis=0), alpha / alpha.sum(), atol=0.01)
    dense = impressions.dirichlet_targets(sim, np.zeros(n, int), 1.0, rng).max(axis=1).mean()
    sparse = impressions.dirichlet_targets(sim, np.zeros(n, int), 0.1, rng).max(axis=1).mean()
    assert sparse > dense + 0.1
    with pytest.raises(ValueError, match="classes: expected ids in \\[0, 3\\)"):
        impressions.dirichlet_targets(sim, np.array([3]), 1.0, rng)


def _linear_logits(scale=30.0, seed=0):
    """A teacher it can fit: logits = flatten(x) @ W, W large enough that softmax(logits / 20) can
    reach any target."""
    w = tf.constant(np.random.default_rng(seed).normal(size=(int(np.prod(SHAPE)), K)) * scale,
                    tf.float32)
    return lambda images: tf.reshape(images, [-1, int(np.prod(SHAPE))]) @ w


def test_the_search_adam_is_keras_adam():
    """Five steps of the search's tensor Adam equal keras.optimizers.Adam on a variable (from 0.5
    with a small rate, so the [0, 1] clip never binds)."""
    config = impressions.ImpressionConfig(iterations=5, batch_size=4, learning_rate=1e-3)
    logits_fn = _linear_logits(scale=1.0)
    targets = tf.constant(np.full((4, K), 1 / K) + np.eye(K)[[0, 1, 2, 0]] * 0.1, tf.float32)
    targets = targets / tf.reduce_sum(targets, axis=1, keepdims=True)
    noise = tf.fill([4, *SHAPE], 0.5)
    images, _, losses = impressions.make_search(logits_fn, SHAPE, config)(noise, targets)

    var = tf.Variable(noise)
    adam = keras.optimizers.Adam(1e-3, epsilon=1e-7)
    expected = []
    for _ in range(5):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(
                targets, logits_fn(var) / 20.0))
        expected.append(float(loss))
        adam.apply_gradients([(tape.gradient(loss, var), var)])
    np.testing.assert_allclose(losses.numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(images.numpy(), var.numpy(), atol=1e-6)


def test_impressions_approach_their_targets(tmp_path):
    """On a teacher it can fit, the KL from the Dirichlet target to the teacher's softmax at T falls
    by a factor of 20 or more over the search; the stored targets are that softmax on the images."""
    logits_fn = _linear_logits()
    sim = impressions.class_similarity(np.random.default_rng(1).normal(size=(5, K)))
    config = impressions.ImpressionConfig(count=2 * K * 8, iterations=300, batch_size=8,
                                          learning_rate=0.01)
    images, targets, classes, _ = impressions.synthesize(logits_fn, SHAPE, sim, config, seed=0)
    assert images.shape == (2 * K * 8, *SHAPE) and images.min() >= 0 and images.max() <= 1
    np.testing.assert_array_equal(np.bincount(classes), [16] * K)
    teacher_soft = tf.nn.softmax(logits_fn(images) / 20.0).numpy()
    np.testing.assert_allclose(targets, teacher_soft, atol=1e-5)
    # The Dirichlet targets of each batch, drawn again from (seed, batch index).
    plan = impressions.target_plan(K, config)
    wanted = np.concatenate([impressions._draw(sim, plan[i], i, 0, SHAPE, config)[1]
                             for i in range(len(plan))])
    noise = np.concatenate([impressions._draw(sim, plan[i], i, 0, SHAPE, config)[0]
                            for i in range(len(plan))])

    def kl(x):
        p = tf.nn.softmax(logits_fn(x) / 20.0).numpy()
        return float(np.mean(np.sum(wanted * (np.log(wanted + 1e-12) - np.log(p + 1e-12)), axis=1)))

    before, after = kl(noise), kl(images)
    assert after * 20 <= before, (before, after)


def test_a_killed_search_resumes_with_the_same_impressions(tmp_path):
    """Batch i depends on (seed, i) alone: a state cut after 2 of 6 batches resumes to the
    uninterrupted result, and the 2 kept batches are not searched again (marked, they stay marked)."""
    logits_fn = _linear_logits()
    sim = impressions.class_similarity(np.random.default_rng(1).normal(size=(5, K)))
    config = impressions.ImpressionConfig(count=2 * K * 4, iterations=20, batch_size=4, learning_rate=1e-3)
    path = str(tmp_path / "impressions.npz")
    straight = impressions.synthesize(logits_fn, SHAPE, sim, config, seed=3, state_path=path)
    with np.load(path) as f:
        cut = {k: f[k][:8] if f[k].shape[0] == 24 else f[k][:2] for k in f}
    cut["images"][:] = 0.125  # A mark: searched again, it would be overwritten.
    np.savez(path, **cut)
    resumed = impressions.synthesize(logits_fn, SHAPE, sim, config, seed=3, state_path=path)
    assert (resumed[0][:8] == 0.125).all()
    np.testing.assert_array_equal(resumed[0][8:], straight[0][8:])
    np.testing.assert_array_equal(resumed[2], straight[2])


def _probabilities(logits_fn, calls=None, fail_at=None):
    """A black-box teacher: probabilities only; counts the images asked (``calls``: a list, one
    entry per call) and fails before answering call number ``fail_at``."""
    def probe(images):
        if calls is not None:
            if fail_at is not None and len(calls) + 1 == fail_at:
                raise RuntimeError("teacher down")
            calls.append(len(images))
        return tf.nn.softmax(logits_fn(tf.constant(images, tf.float32))).numpy()
    return probe


def test_tempered_answers_are_the_softmax_at_t():
    logits = np.random.default_rng(0).normal(size=(5, K)) * 10
    p = tf.nn.softmax(logits).numpy()
    np.testing.assert_allclose(blackbox.tempered(p, 20.0), tf.nn.softmax(logits / 20).numpy(),
                               atol=1e-6)


def test_the_zeroth_order_gradient_points_along_the_true_one():
    """q = 400 antithetic pairs in d = 36 dimensions, σ small, no clipping: cos(ĝ, ∇) ≈
    (1 + d/q)^-1/2 ≈ 0.96 for each image; above 0.9. The loss is the true one at x."""
    logits_fn = _linear_logits(scale=1.0)
    x = np.full((3, *SHAPE), 0.5, np.float32) + np.random.default_rng(0).uniform(
        -0.1, 0.1, (3, *SHAPE)).astype(np.float32)
    y = np.eye(K, dtype=np.float32)[[0, 1, 2]] * 0.7 + 0.1
    zo = blackbox.ZerothOrderConfig(directions=400, sigma=1e-3, resolution=SHAPE[0])
    calls = []
    grad, loss = blackbox.estimate_gradient(_probabilities(logits_fn, calls), x, y, 20.0, zo,
                                               np.random.default_rng(1))
    assert calls == [3 * 800]
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        true_loss = tf.nn.softmax_cross_entropy_with_logits(y, logits_fn(xt) / 20.0)
        total = tf.reduce_sum(true_loss)
    true = tape.gradient(total, xt).numpy().reshape(3, -1)
    est = grad.reshape(3, -1)
    cos = np.sum(true * est, axis=1) / np.linalg.norm(true, axis=1) / np.linalg.norm(est, axis=1)
    assert (cos > 0.9).all(), cos
    np.testing.assert_allclose(loss, true_loss.numpy(), rtol=1e-3)


def test_the_estimated_class_similarity_is_the_teachers_confusion():
    targets = np.array([[0.8, 0.2, 0.0], [0.6, 0.4, 0.0], [0.1, 0.9, 0.0]])
    sim = blackbox.estimate_similarity(targets, np.array([0, 0, 1]), K)
    # M = [[.7, .3, 0], [.1, .9, 0], [0, 0, 1] (class 2: none yet, identity row)]; (M + Mᵀ) / 2.
    expected = np.array([[0.7, 0.2, 0.0], [0.2, 0.9, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(sim, expected, atol=1e-6)
    np.testing.assert_array_equal(blackbox.estimate_similarity(np.zeros((0, K)), [], K), np.eye(K))


def test_blackbox_impressions_approach_their_targets_with_every_probe_counted(tmp_path):
    """Two rounds on a teacher it can fit, from its probabilities alone: the KL from each round's
    Dirichlet targets (round 0's from the identity, round 1's from the similarity estimated on
    round 0) to the teacher's softmax at T falls by a factor of 5 or more; the probes sent are
    exactly what :func:`blackbox_queries_left` said before the start."""
    logits_fn = _linear_logits(scale=8.0)  # Probabilities stay above float32's underflow.
    config = impressions.ImpressionConfig(count=2 * (2 * K * 8), iterations=100, batch_size=8,
                                          learning_rate=0.02)
    zo = blackbox.ZerothOrderConfig(directions=10, sigma=0.05, resolution=SHAPE[0])
    path = str(tmp_path / "bb.npz")
    assert blackbox.blackbox_queries_left(K, config, zo, path) == (96 * 100 * 20, 96)
    calls, labels = [], []
    images, targets, classes, _ = blackbox.synthesize_blackbox(
        _probabilities(logits_fn, calls), _probabilities(logits_fn, labels), SHAPE, K, config, zo,
        seed=0, state_path=path)
    assert sum(calls) == 96 * 100 * 20 and labels == [48, 48]
    assert blackbox.blackbox_queries_left(K, config, zo, path) == (0, 0)
    assert images.min() >= 0 and images.max() <= 1
    np.testing.assert_array_equal(np.bincount(classes), [32] * K)
    answers = tf.nn.softmax(logits_fn(images)).numpy()  # What the teacher tells.
    np.testing.assert_allclose(targets, blackbox.tempered(answers, 20.0), atol=1e-5)
    plan = impressions.target_plan(K, config)
    similarity = [np.eye(K), blackbox.estimate_similarity(targets[:48], classes[:48], K)]
    wanted = np.concatenate([impressions._draw(similarity[i // 6], plan[i], i, 0, SHAPE, config)[1]
                             for i in range(12)])
    noise = np.concatenate([impressions._draw(similarity[i // 6], plan[i], i, 0, SHAPE, config)[0]
                            for i in range(12)])

    def kl(x, rows):
        p = tf.nn.softmax(logits_fn(x[rows]) / 20.0).numpy()
        w = wanted[rows]
        return float(np.mean(np.sum(w * (np.log(w + 1e-12) - np.log(p + 1e-12)), axis=1)))

    for rows in (slice(0, 48), slice(48, 96)):
        before, after = kl(noise, rows), kl(images, rows)
        assert after * 5 <= before, (rows, before, after)


def test_a_killed_blackbox_search_asks_no_answered_probe_again(tmp_path):
    """The teacher fails at step 11 of round 1 (of 2 x 20 steps): the rerun sends exactly the
    probes of the 10 steps left (as :func:`blackbox_queries_left` says) and ends bit-equal to an
    uninterrupted search."""
    logits_fn = _linear_logits()
    config = impressions.ImpressionConfig(count=2 * (2 * K * 4), iterations=20, batch_size=4,
                                          learning_rate=0.02)
    zo = blackbox.ZerothOrderConfig(directions=3, sigma=0.05, resolution=3)
    label = _probabilities(logits_fn)
    straight = blackbox.synthesize_blackbox(_probabilities(logits_fn), label, SHAPE, K, config,
                                               zo, seed=5)
    path = str(tmp_path / "bb.npz")
    calls = []
    with pytest.raises(RuntimeError, match="teacher down"):
        blackbox.synthesize_blackbox(_probabilities(logits_fn, calls, fail_at=31), label, SHAPE,
                                        K, config, zo, seed=5, state_path=path)
    assert len(calls) == 30
    per_step = 2 * K * 4 * 2 * 3
    assert blackbox.blackbox_queries_left(K, config, zo, path) == (10 * per_step, 24)
    again = []
    resumed = blackbox.synthesize_blackbox(_probabilities(logits_fn, again), label, SHAPE, K,
                                              config, zo, seed=5, state_path=path)
    assert sum(again) == 10 * per_step
    for a, b in zip(resumed, straight):
        np.testing.assert_array_equal(a, b)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="zskd.count=10: expected at least one batch"):
        impressions.target_plan(10, impressions.ImpressionConfig(count=10))
    with pytest.raises(ValueError, match="zskd.betas"):
        impressions.ImpressionConfig(betas=()).validate()
    with pytest.raises(ValueError, match="zskd_blackbox.sigma=0: expected in \\(0, 1\\]"):
        blackbox.ZerothOrderConfig(sigma=0).validate()
    with pytest.raises(ValueError, match="zskd_blackbox.directions=0"):
        blackbox.ZerothOrderConfig(directions=0).validate()
    bb = impressions.config_for("mnist", blackbox=True, iterations=7, learning_rate=None)
    assert (bb.count, bb.iterations, bb.learning_rate) == (12_000, 7, 0.01)
    assert impressions.config_for("mnist").count == 24_000
    assert impressions.config_for("cifar10").count == 40_000


def test_the_final_layer_is_found_in_a_saved_model(tmp_path):
    """A LeNet-5 export: the one [84, 10] variable is the final layer; the log-probabilities give
    the same softmax at T as the model's logits; a wrong name is refused with the names there."""
    from tfkd import export
    from tfkd.student import models

    model = models.build_model("lenet5", (28, 28, 1), 10)
    teacher = whitebox.SavedModelTeacher(export.export_classifier(model, str(tmp_path / "t")))
    assert teacher.image_shape == (28, 28, 1) and teacher.num_classes == 10
    np.testing.assert_array_equal(teacher.final_layer_weights(), model.layers[-1].kernel.numpy())
    x = tf.random.uniform([4, 28, 28, 1], seed=1)
    np.testing.assert_allclose(tf.nn.softmax(teacher.logits(x) / 20.0),
                               tf.nn.softmax(model(x) / 20.0), atol=1e-6)
    with pytest.raises(ValueError, match="'dense_9': not a variable of .*logits/kernel"):
        teacher.final_layer_weights("dense_9")
    with pytest.raises(ValueError, match="shape \\(84,\\), expected \\[features, 10\\]"):
        teacher.final_layer_weights("fc2/bias")


def test_two_replicas_make_the_impressions_one_makes():
    """MirroredStrategy over 2 logical CPU devices: each replica searches its own batch, and the
    impressions equal those of one device (a fresh process: devices are set before TF starts)."""
    import json
    import os
    import subprocess
    import sys

    from conftest import REPO

    result = subprocess.run([sys.executable, os.path.join(REPO, "tests", "helpers",
                                                          "two_device_impressions.py")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["replicas"] == [2, 1] and out["same_classes"]
    assert out["max_difference"] < 1e-5, out
