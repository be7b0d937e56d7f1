"""ZSKD's Data Impressions: class similarity, Dirichlet targets, the impression search (its Adam
against Keras', its loss falling on a teacher it can fit, resuming a killed search)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfkd import impressions

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
    config = impressions.ImpressionConfig(count=2 * K * 4, iterations=20, batch_size=4)
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


def test_settings_are_checked():
    with pytest.raises(ValueError, match="zskd.count=10: expected at least one batch"):
        impressions.target_plan(10, impressions.ImpressionConfig(count=10))
    with pytest.raises(ValueError, match="zskd.betas"):
        impressions.ImpressionConfig(betas=()).validate()


def test_the_final_layer_is_found_in_a_saved_model(tmp_path):
    """A LeNet-5 export: the one [84, 10] variable is the final layer; the log-probabilities give
    the same softmax at T as the model's logits; a wrong name is refused with the names there."""
    from tfkd import export
    from tfkd import models

    model = models.build_model("lenet5", (28, 28, 1), 10)
    teacher = impressions.SavedModelTeacher(export.export_classifier(model, str(tmp_path / "t")))
    assert teacher.image_shape == (28, 28, 1) and teacher.num_classes == 10
    np.testing.assert_array_equal(teacher.final_layer_weights(), model.layers[-1].kernel.numpy())
    x = tf.random.uniform([4, 28, 28, 1], seed=1)
    np.testing.assert_allclose(tf.nn.softmax(teacher.logits(x) / 20.0),
                               tf.nn.softmax(model(x) / 20.0), atol=1e-6)
    with pytest.raises(ValueError, match="'dense_9': not a variable of .*logits/kernel"):
        teacher.final_layer_weights("dense_9")
    with pytest.raises(ValueError, match="shape \\(84,\\), expected \\[features, 10\\]"):
        teacher.final_layer_weights("fc2/bias")
