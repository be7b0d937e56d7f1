import dataclasses

import numpy as np
import pytest

from tfkd.methods.fsbbt import synthesis


def test_mixup_invariants(fashion):
    images = fashion.x_train[:200]
    config = synthesis.MixUpConfig(num_images=5000)
    mixed, info = synthesis.mixup_images(images, config, seed=3)
    pairs, lam = info["pairs"], info["lam"]
    assert mixed.shape == (5000, 28, 28, 1) and mixed.dtype == np.float32
    assert pairs.shape == (5000, 2) and np.all(pairs[:, 0] != pairs[:, 1])
    assert np.all((lam > 0.05) & (lam < 0.95))  # Near-copies dropped.
    np.testing.assert_allclose(lam, np.round(lam, 2), atol=1e-6)
    expected = (lam[:, None, None, None] * images[pairs[:, 0]]
                + (1 - lam[:, None, None, None]) * images[pairs[:, 1]])
    np.testing.assert_allclose(mixed, expected, atol=1e-6)
    assert 0.0 <= mixed.min() and mixed.max() <= 1.0
    # λ ~ Beta(1, 1) rounded: about 11% of the draws fall in the dropped tails.
    assert 0.05 < info["num_dropped"] / (5000 + info["num_dropped"]) < 0.2
    assert abs(lam.mean() - 0.5) < 0.03
    again, _ = synthesis.mixup_images(images, config, seed=3)
    np.testing.assert_array_equal(mixed, again)


def test_mixup_bad_input():
    with pytest.raises(ValueError, match="N >= 2"):
        synthesis.mixup_images(np.zeros((1, 28, 28, 1)), synthesis.MixUpConfig(10), 0)
    with pytest.raises(ValueError, match=r"mixup\.low=0\.6: expected in \[0, high=0\.4\)"):
        synthesis.mixup_images(np.zeros((4, 28, 28, 1)),
                               synthesis.MixUpConfig(10, low=0.6, high=0.4), 0)


def test_cvae_trains_and_samples_every_class(fashion):
    images = fashion.x_train[:500]
    classes = fashion.y_train[:500]  # Any conditioning works for this test of the CVAE itself.
    config = dataclasses.replace(synthesis.CVAEConfig(), architecture="mlp", epochs=8, batch_size=64)
    cvae, history = synthesis.train_cvae(images, classes, 10, config, seed=0, verbose=0)
    loss = history["loss"]
    assert len(loss) == 8 and loss[-1] < 0.8 * loss[0], loss  # The negative ELBO falls.
    assert all(k > 0 for k in history["kl"])
    generated, gen_classes = synthesis.sample_cvae(cvae, 95, seed=1)
    assert generated.shape == (95, 28, 28, 1) and generated.dtype == np.float32
    assert 0.0 <= generated.min() and generated.max() <= 1.0
    assert np.bincount(gen_classes, minlength=10).tolist() == [10] * 5 + [9] * 5
    assert generated.std() > 0.05  # Not a blank image.
    # Conditioning matters: class means differ (trousers are not bags).
    means = np.stack([generated[gen_classes == k].mean(0) for k in range(10)])
    assert np.abs(means[1] - means[8]).mean() > 0.02


def test_cvae_bad_conditions():
    with pytest.raises(ValueError, match="classes: expected 3"):
        synthesis.train_cvae(np.zeros((3, 28, 28, 1)), np.zeros(2, int), 10,
                             synthesis.CVAEConfig(epochs=1), 0, verbose=0)
    with pytest.raises(ValueError, match=r"values in \[0, 10\)"):
        synthesis.train_cvae(np.zeros((2, 28, 28, 1)), np.array([0, 10]), 10,
                             synthesis.CVAEConfig(epochs=1), 0, verbose=0)
