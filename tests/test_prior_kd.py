"""``prior_kd`` (tfkd/methods/priors): zero-shot distillation from noise-prior images labelled by
the teacher's tempered soft labels. What its docstrings promise, held against independent oracles:
the images (dtype, shape, range, mixes made as described), the seeded chunked plan (a smaller plan
is a prefix of a larger one, the augmented share placed and made as described), the smooth prior's
class coverage on a real teacher, its settings, and end to end over tfkd's real gRPC server (the
queries, the stored images and targets, the ledger, the query budget, the student's T)."""

import os

import numpy as np
import pytest
import tensorflow as tf

import tfkd
from tfkd import methods
from tfkd import teacher as teacher_lib
from tfkd.methods import noise
from tfkd.methods.priors import images as images_lib
from tfkd.methods.priors.config import PriorConfig
from tfkd.methods.priors.config import PriorKDConfig

from conftest import config_of
from conftest import sent_by_stage

SHAPE = (28, 28, 1)


def _rows(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1)


# ---- the images ------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3), (28, 20, 3)])
def test_multiscale_noise_is_float32_in_range_with_a_contrast_of_at_least_0_3(shape):
    x = images_lib.multiscale_noise(200, shape, np.random.default_rng(0))
    assert x.dtype == np.float32 and x.shape == (200, *shape)
    assert x.min() >= 0.0 and x.max() <= 1.0
    # Stretched to [0, 1], then contrast c ~ U[0.3, 1]: each image spans exactly c.
    spans = _rows(x).max(axis=1) - _rows(x).min(axis=1)
    assert spans.min() >= 0.3 - 1e-5 and spans.max() <= 1.0
    assert spans.min() < 0.45 and spans.max() > 0.85  # c is drawn, not fixed.
    assert images_lib.multiscale_noise(0, shape, np.random.default_rng(0)).shape == (0, *shape)
    again = images_lib.multiscale_noise(200, shape, np.random.default_rng(0))
    other = images_lib.multiscale_noise(200, shape, np.random.default_rng(1))
    assert np.array_equal(x, again) and not np.allclose(x, other)


@pytest.mark.parametrize("prior", images_lib.PRIORS)
def test_each_prior_draws_float32_images_in_range_that_the_seed_decides(prior):
    x = images_lib.prior_images(prior, 41, SHAPE, np.random.default_rng(3))
    assert x.dtype == np.float32 and x.shape == (41, *SHAPE)
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert np.array_equal(x, images_lib.prior_images(prior, 41, SHAPE, np.random.default_rng(3)))
    other = images_lib.prior_images(prior, 41, SHAPE, np.random.default_rng(4))
    assert np.abs(x - other).max() > 0.1
    assert not np.allclose(x[0], x[1])  # Draws, not one image repeated.
    assert images_lib.prior_images(prior, 0, SHAPE, np.random.default_rng(3)).shape == (0, *SHAPE)


def test_unknown_prior_and_augment_are_refused():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        images_lib.prior_images("gaussian", 4, SHAPE, rng)
    with pytest.raises(ValueError):
        images_lib.mixed_pairs(np.zeros((2, *SHAPE), np.float32), "flip", 4, rng)


def _black_and_white(side=16):
    """Two constant images, 0 and 1: a mix of them shows what it took from each."""
    return np.stack([np.zeros((side, side, 1)), np.ones((side, side, 1))]).astype(np.float32)


@pytest.mark.parametrize("augment", images_lib.AUGMENTS)
def test_mixed_pairs_of_prior_images_are_float32_in_range(augment):
    rng = np.random.default_rng(0)
    priors = images_lib.prior_images("mix", 20, SHAPE, rng)
    mixed = images_lib.mixed_pairs(priors, augment, 30, rng)
    assert mixed.dtype == np.float32
    assert mixed.shape == ((0, *SHAPE) if augment == "none" else (30, *SHAPE))
    if augment != "none":
        assert mixed.min() >= 0.0 and mixed.max() <= 1.0


def test_mixup_of_black_and_white_is_a_grey_drawn_uniformly():
    mixed = images_lib.mixed_pairs(_black_and_white(), "mixup", 400, np.random.default_rng(0))
    rows = _rows(mixed)
    # λ·a + (1 - λ)·b of two constant images is constant, in [0, 1].
    assert np.array_equal(rows.min(axis=1), rows.max(axis=1))
    grey = rows[:, 0]
    assert grey.min() >= 0.0 and grey.max() <= 1.0
    # Pairs of two different images (about half of them) give λ or 1 - λ, λ ~ U(0, 1).
    between = grey[(grey > 0) & (grey < 1)]
    assert len(between) > 100
    assert abs(between.mean() - 0.5) < 0.08
    assert between.min() < 0.1 and between.max() > 0.9


def _square_side(mask: np.ndarray):
    """The side of the filled axis-aligned square ``mask`` [H, W] is, or None."""
    if not mask.any():
        return None
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    if h != w or mask.sum() != h * w:
        return None
    return int(h)


def test_cutmix_of_black_and_white_pastes_one_square_of_side_a_quarter_to_three_quarters():
    side = 16
    mixed = images_lib.mixed_pairs(_black_and_white(side), "cutmix", 400, np.random.default_rng(0))
    sides = []
    for x in mixed[..., 0]:
        assert set(np.unique(x)) <= {0.0, 1.0}
        white = x == 1.0
        if white.all() or not white.any():
            continue  # A pair of one image twice: nothing to see.
        found = [s for s in (_square_side(white), _square_side(~white)) if s is not None]
        assert len(found) == 1, x  # One square pasted from b into a.
        sides.append(found[0])
    assert len(sides) > 100
    assert min(sides) >= side // 4 and max(sides) <= 3 * side // 4
    assert len(set(sides)) >= 6  # s ~ U{4 ... 12} is drawn, not fixed.


def test_cutmix_squares_reach_every_edge_of_the_image():
    """The pasted square's place is uniform over every place it fits: some squares touch the first
    and the last row and column (a place range one short never reaches the bottom or right edge)."""
    side = 16
    mixed = images_lib.mixed_pairs(_black_and_white(side), "cutmix", 600, np.random.default_rng(1))
    touches = {"top": 0, "bottom": 0, "left": 0, "right": 0}
    for x in mixed[..., 0]:
        pasted = x != x[0, 0] if (x != x[0, 0]).any() and (x == x[0, 0]).sum() > x.size // 2 else None
        if pasted is None:
            continue  # One image twice, or a square that covers the corner: no clear square.
        rows, cols = np.flatnonzero(pasted.any(1)), np.flatnonzero(pasted.any(0))
        touches["top"] += rows[0] == 0
        touches["bottom"] += rows[-1] == side - 1
        touches["left"] += cols[0] == 0
        touches["right"] += cols[-1] == side - 1
    assert all(n >= 5 for n in touches.values()), touches


def _neighbour_correlation(x: np.ndarray, axis: int) -> np.ndarray:
    """Per image of float [n, H, W, C], the correlation of pixels adjacent along ``axis`` (1: rows
    apart, 2: columns apart)."""
    a = np.take(x, range(x.shape[axis] - 1), axis=axis).reshape(len(x), -1)
    b = np.take(x, range(1, x.shape[axis]), axis=axis).reshape(len(x), -1)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1) + 1e-12)


def test_the_multiscale_prior_holds_coarse_scales_pixel_noise_does_not():
    """DIP-KD's prior sums noise at H / 2^k scales: most of its weight is on grids coarser than the
    pixels in both directions, so adjacent pixels correlate (measured, columns apart: median 0.74,
    10th percentile 0.24 over 500 images) where per-pixel uniform noise gives about 0."""
    x = images_lib.multiscale_noise(500, SHAPE, np.random.default_rng(0))
    uniform = np.random.default_rng(0).uniform(size=(500, *SHAPE))
    for axis in (1, 2):
        assert np.median(_neighbour_correlation(x, axis)) > 0.5, axis
        assert abs(np.median(_neighbour_correlation(uniform, axis))) < 0.05, axis


def test_smooth_noise_draws_its_brightness_per_image(monkeypatch):
    """smooth_noise: grid values U[0, 1]·s with s ~ U[0.3, 1.5] drawn per image. With one grid size
    (patched: 7 x 7, whose 49 values average out) an image's mean is about s / 2, so the means
    spread over most of [0.15, 0.75]; one s shared by the images would bunch them within a few
    hundredths (measured with the scale drawn once: std 0.03)."""
    monkeypatch.setattr(noise, "_SMOOTH_SIZES", (7,))
    means = noise.smooth_noise(400, SHAPE, np.random.default_rng(0)).mean(axis=(1, 2, 3))
    assert means.std() > 0.1, means.std()
    assert np.percentile(means, 10) < 0.3 and np.percentile(means, 90) > 0.55


# ---- the plan: seeded chunks, prefixes, the augmented share ----------------------------------------

SMALL_CHUNK = 64  # images.CHUNK is 10,000; patched so that a few hundred images cross 3 boundaries.


@pytest.fixture()
def small_chunks(monkeypatch):
    monkeypatch.setattr(images_lib, "CHUNK", SMALL_CHUNK)
    return SMALL_CHUNK


@pytest.mark.parametrize("augment", images_lib.AUGMENTS)
def test_a_smaller_plan_is_a_prefix_of_a_larger_one_across_chunks(small_chunks, augment):
    config = PriorConfig(images=200, prior="mix", augment=augment, augment_share=0.25)
    full = images_lib.transfer_images(config, SHAPE, seed=5)
    assert full.dtype == np.float32 and full.shape == (200, *SHAPE)
    assert full.min() >= 0.0 and full.max() <= 1.0
    assert np.array_equal(full, images_lib.transfer_images(config, SHAPE, seed=5))  # Deterministic.
    assert np.array_equal(full, images_lib.transfer_images(config, SHAPE, seed=5, count=200))
    # A budget (count) or a smaller plan (images) ends inside chunk 1 and inside chunk 2.
    assert np.array_equal(images_lib.transfer_images(config, SHAPE, seed=5, count=100), full[:100])
    smaller = PriorConfig(images=150, prior="mix", augment=augment, augment_share=0.25)
    assert np.array_equal(images_lib.transfer_images(smaller, SHAPE, seed=5), full[:150])
    # Chunks are drawn apart (no chunk repeats another), and the seed decides them.
    chunks = full[:3 * small_chunks].reshape(3, small_chunks, -1)
    assert not np.allclose(chunks[0], chunks[1]) and not np.allclose(chunks[1], chunks[2])
    assert np.abs(images_lib.transfer_images(config, SHAPE, seed=6) - full).max() > 0.1


def _cutmix_of(x: np.ndarray, pool: np.ndarray, side: int) -> bool:
    """Whether ``x`` [H, W, C] is image a of ``pool`` with a square of side <= 3H/4 from image b:
    every pixel equals a's or b's, and those that differ from one of them fit in such a square."""
    same = np.all(x == pool, axis=-1)  # [m, H, W]: where x equals each pool image.

    def fits(region):
        rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
        return rows[-1] - rows[0] < 3 * side // 4 and cols[-1] - cols[0] < 3 * side // 4

    first = int(np.argmax(same.sum(axis=(1, 2))))  # a, or b when the square is over half.
    rest = ~same[first]
    if not rest.any():
        return True  # An image pasted into itself.
    for second in np.flatnonzero(same[:, rest].all(axis=1)):  # Images matching every other pixel.
        if fits(rest) or fits(~same[second]):
            return True
    return False


def _mixup_of(x: np.ndarray, pool: np.ndarray) -> bool:
    """Whether ``x`` is λ·a + (1 - λ)·b, λ in [0, 1], for two images a, b of ``pool``: the least
    squares λ of every pair (from inner products), and its residual."""
    p = pool.reshape(len(pool), -1).astype(np.float64)
    v = x.reshape(-1).astype(np.float64)
    g, px = p @ p.T, p @ v  # <a, b>, <a, x>.
    gb = np.diag(g)[None, :]
    dd = np.diag(g)[:, None] + gb - 2 * g  # |a - b|² for a on rows, b on columns.
    rd = px[:, None] - px[None, :] - g + gb  # <x - b, a - b>.
    rr = v @ v - 2 * px[None, :] + gb  # |x - b|².
    lam = np.clip(rd / np.maximum(dd, 1e-12), 0.0, 1.0)
    residual = rr - 2 * lam * rd + lam ** 2 * dd  # |x - b - λ(a - b)|².
    return bool(residual.min() < 1e-6)


@pytest.mark.parametrize("augment", ["cutmix", "mixup"])
def test_the_last_share_of_each_chunk_mixes_that_chunks_prior_draws(small_chunks, augment):
    """``augment_share`` = 0.25 of 64: images 48..63 of each chunk are mixes of images 0..47 of the
    same chunk (an oracle searching every pair; a mix taken across chunks, or mixes placed
    elsewhere, fails it)."""
    config = PriorConfig(images=3 * small_chunks, prior="mix", augment=augment, augment_share=0.25)
    full = images_lib.transfer_images(config, SHAPE, seed=0)
    mixes = small_chunks // 4
    for k in range(3):
        chunk = full[k * small_chunks:(k + 1) * small_chunks]
        pool, made = chunk[:-mixes], chunk[-mixes:]
        for x in made:
            assert (_cutmix_of(x, pool, SHAPE[0]) if augment == "cutmix" else _mixup_of(x, pool)), k
        # The prior draws before them are no such mix of the others (the oracle can say no).
        assert not any(_mixup_of(x, np.delete(pool, i, axis=0))
                       or _cutmix_of(x, np.delete(pool, i, axis=0), SHAPE[0])
                       for i, x in enumerate(pool))
        if k:  # Mixes draw from their own chunk, not from chunk 0's draws.
            earlier = full[:small_chunks - mixes]
            assert not any(_mixup_of(x, earlier) or _cutmix_of(x, earlier, SHAPE[0]) for x in made)


# ---- class coverage on a real teacher -------------------------------------------------------------

def test_the_smooth_prior_reaches_more_of_the_real_teachers_classes_than_uniform_noise(teacher_base):
    """Measured on the fixture's teacher (LeNet-5, one epoch on 12,000 images, ~75% test accuracy),
    20,000 draws each, seeds 0-2: ``smooth`` top-1 counts per class
    [~1400, 0-2, ~2170, 9-12, ~205, ~280, ~7640, 0-1, ~8240, 37-52]: 8 classes at >= 0.045% (the
    rarest of them, class 3, 9-12 draws), trouser (1) and sneaker (7) almost never (so "every class"
    does not hold for this weak teacher: noise.smooth_noise's 0.4% figure is from a 90.75% one);
    ``noise.uniform_noise`` reaches 5 classes ([~140, 0, ~50, 0, 0, ~1200, ~11450, 0, ~7150, 0];
    never 1, 3, 4, 7 or 9 in 40,000 draws), so a quarter of the draws shows it.
    """
    teacher = tf.saved_model.load(os.path.join(teacher_base, "1")).signatures["serving_default"]

    def counts(x):
        p = np.concatenate([teacher(images=tf.constant(x[i:i + 5000]))["probabilities"].numpy()
                            for i in range(0, len(x), 5000)])
        return np.bincount(p.argmax(axis=1), minlength=10)

    n = 20_000
    smooth = counts(images_lib.prior_images("smooth", n, SHAPE, np.random.default_rng(0)))
    uniform = counts(noise.uniform_noise(n // 4, SHAPE, np.random.default_rng(0)))
    rate = 0.0002  # 4 of 20,000 draws: half the rarest of the 8 classes measured.
    reached = int(np.sum(smooth >= rate * n))
    assert reached >= 8, smooth
    assert reached > int(np.sum(uniform >= rate * n // 4)), (smooth, uniform)
    assert smooth.max() < 0.6 * n, smooth  # No class takes most of the draws.


# ---- the class-balanced draw -------------------------------------------------------------------------

def _skewed_targets(n: int, shares: dict[int, float], k: int = 10, seed: int = 3) -> np.ndarray:
    """Soft targets [n, k] whose argmax class c holds ``shares[c]`` of the rows (the others 0)."""
    rng = np.random.default_rng(seed)
    top1 = np.repeat(list(shares), [round(n * v) for v in shares.values()])
    targets = rng.uniform(0.0, 0.5, size=(len(top1), k))
    targets[np.arange(len(top1)), top1] = 1.0  # The argmax, whatever the rest.
    return (targets / targets.sum(1, keepdims=True)).astype(np.float32)


def _shares(targets: np.ndarray, rows: np.ndarray, k: int = 10) -> np.ndarray:
    return np.bincount(targets[rows].argmax(1), minlength=k) / len(rows)


def test_balance_0_keeps_the_set_as_labelled():
    targets = _skewed_targets(1000, {0: 0.9, 4: 0.1})
    assert np.array_equal(images_lib.balanced_rows(targets, 0.0, seed=1), np.arange(1000))


def test_balance_1_gives_every_reached_class_the_same_expected_share():
    """Classes at 80%, 15%, 4.5% and 0.5% of the answers come out at about a quarter each; an
    unreached class stays at 0 (no division by its zero share)."""
    targets = _skewed_targets(40_000, {2: 0.8, 5: 0.15, 7: 0.045, 9: 0.005})
    rows = images_lib.balanced_rows(targets, 1.0, seed=0)
    assert len(rows) == len(targets) and rows.dtype == np.int64
    shares = _shares(targets, rows)
    np.testing.assert_allclose(shares[[2, 5, 7, 9]], 0.25, atol=0.015)
    assert shares[[0, 1, 3, 4, 6, 8]].sum() == 0


def test_balance_beta_shares_follow_the_share_to_the_power_1_minus_beta():
    """With β = 0.5, a class of share s is drawn in proportion to s · s^-β = √s: 90% and 10%
    become 3/4 and 1/4."""
    targets = _skewed_targets(40_000, {1: 0.9, 6: 0.1})
    shares = _shares(targets, images_lib.balanced_rows(targets, 0.5, seed=0))
    np.testing.assert_allclose(shares[[1, 6]], [0.75, 0.25], atol=0.015)


def test_the_balanced_draw_is_seeded_sorted_and_draws_within_a_class_uniformly():
    targets = _skewed_targets(20_000, {0: 0.95, 3: 0.05})
    rows = images_lib.balanced_rows(targets, 1.0, seed=7)
    assert np.array_equal(rows, images_lib.balanced_rows(targets, 1.0, seed=7))
    assert not np.array_equal(rows, images_lib.balanced_rows(targets, 1.0, seed=8))
    assert np.all(np.diff(rows) >= 0)
    # The rare class's 1,000 images are each drawn about 10 times, none left out in expectation:
    # a draw of 20,000 with replacement at p = 1 / 2,000 each leaves out ~e^-10 of them.
    rare = rows[targets[rows].argmax(1) == 3]
    counts = np.bincount(rare, minlength=len(targets))[targets.argmax(1) == 3]
    assert counts.min() >= 1 and abs(counts.mean() - 10) < 0.5


# ---- the settings ---------------------------------------------------------------------------------

@pytest.mark.parametrize("field,bad", [
    ("images", 0), ("images", -3), ("prior", "gaussian"), ("augment", "flip"),
    ("augment_share", 1.0), ("augment_share", -0.01), ("augment_share", float("nan")),
    ("temperature", 0.0), ("temperature", -1.0), ("temperature", 100.5),
    ("temperature", float("nan")), ("balance", -0.01), ("balance", 1.01), ("balance", float("nan")),
])
def test_each_setting_out_of_range_is_refused_by_name(field, bad):
    with pytest.raises(tfkd.ConfigError, match=rf"priors\.{field}\b"):
        PriorConfig(**{field: bad}).validate()
    with pytest.raises(tfkd.ConfigError, match=rf"priors\.{field}\b"):
        PriorKDConfig(priors=PriorConfig(**{field: bad})).validate()


def test_the_edges_of_each_range_are_accepted():
    for fields in ({"images": 1}, {"augment_share": 0.0}, {"augment_share": 0.99},
                   {"temperature": 100.0}, {"temperature": 0.01}, {"balance": 0.0},
                   {"balance": 1.0}):
        PriorConfig(**fields).validate()
    PriorKDConfig().validate()


def test_the_settings_are_reached_by_dotted_name_and_by_distill_keyword(tmp_path):
    resolved = config_of(workdir=tmp_path / "w", method="prior_kd",
                         **{"priors.images": 500, "priors.augment": "cutmix"}).resolved()
    assert resolved.method_config.priors == PriorConfig(images=500, augment="cutmix")
    nested = config_of(workdir=tmp_path / "w", method="prior_kd",
                       priors={"temperature": 2.5, "prior": "smooth"}).resolved()
    assert nested.method_config.priors == PriorConfig(temperature=2.5, prior="smooth")
    # Refused before the work dir is touched.
    with pytest.raises(tfkd.ConfigError, match=r"priors\.augment_share"):
        tfkd.distill(workdir=str(tmp_path / "never"), method="prior_kd", priors={"augment_share": 1})
    with pytest.raises(tfkd.ConfigError, match=r"priors\.images"):
        tfkd.distill(workdir=str(tmp_path / "never"), method="prior_kd", priors={"images": "many"})
    assert not (tmp_path / "never").exists()


def test_the_settings_are_frozen_and_hashable():
    """Both config classes are frozen dataclasses (a run's settings cannot change under it, and
    they key the persisted transfer set's fingerprint)."""
    import dataclasses
    for config in (PriorConfig(), PriorKDConfig()):
        with pytest.raises(dataclasses.FrozenInstanceError):
            config.images = 5  # type: ignore[misc]
        assert hash(config) == hash(type(config)())


# ---- end to end over tfkd's real gRPC server ------------------------------------------------------
# Two runs in one work dir (the file's time limit allows two): first on a query budget below the
# plan, then the full plan, which finds the budget run's answers in the ledger.

IMAGES = 1500
T = 3.0  # Not the default 4: the stored targets and the student's loss must follow the setting.
BUDGET = 600


def _distill(workdir, server, balance=0.0, **teacher):
    return tfkd.distill(
        workdir=str(workdir), method="prior_kd",
        priors={"images": IMAGES, "temperature": T, "balance": balance},
        teacher={"target": server.target, **teacher}, student={"epochs": 1, "batch_size": 64},
        num_validation=0, eval_examples=100, evaluate_teacher=False, compress=(), verbose=0)


@pytest.fixture(scope="module")
def runs(server, tmp_path_factory):
    """(work dir, the budget run's report and queries_sent.log totals, the full run's report, the
    class-balanced run's report and its queries_sent.log totals)."""
    workdir = tmp_path_factory.mktemp("prior_kd") / "run"
    cut = _distill(workdir, server, query_budget=BUDGET)
    sent_by_cut = sent_by_stage(workdir)
    full = _distill(workdir, server)
    sent_by_full = sent_by_stage(workdir)
    balanced = _distill(workdir, server, balance=1.0)
    return workdir, cut, sent_by_cut, full, (balanced, sent_by_stage(workdir), sent_by_full)


def _plan():
    return PriorConfig(images=IMAGES, temperature=T)


def test_a_query_budget_keeps_the_first_images_of_the_plan(runs):
    _, cut, sent_by_cut, _, _ = runs
    assert cut.teacher_queries_sent_by_stage == {"label_priors": BUDGET}
    assert sent_by_cut == {"label_priors": BUDGET}  # The account's own log agrees.
    assert cut.teacher_queries_total <= BUDGET
    assert cut.transfer_set_sources == {"priors": BUDGET}
    transfer = methods.TransferSet.load(cut.labelled_set)
    full = images_lib.transfer_images(_plan(), SHAPE, cut.seed)
    assert np.array_equal(transfer.images, full[:BUDGET])


def test_every_image_is_one_teacher_query_asked_once_and_no_real_image_is_used(runs):
    """The full plan after the budget run: its first 600 images are in the ledger, so only the
    other 900 are sent; over the work dir's life each of the 1,500 images was asked once."""
    workdir, _, _, report, (_, _, sent_by_full) = runs
    assert report.method == "prior_kd"
    assert report.teacher_queries_sent_by_stage == {"label_priors": IMAGES - BUDGET}
    assert report.teacher_ledger_hits == BUDGET
    assert report.teacher_queries_by_stage == {"label_priors": IMAGES}
    assert sent_by_full == {"label_priors": IMAGES}
    assert teacher_lib.QueryLedger(str(workdir / "ledger")).rows_on_disk == IMAGES
    assert report.teacher_query_plan["label_priors"] == IMAGES - BUDGET  # Less the ledger's.
    assert report.transfer_set_sources == {"priors": IMAGES}
    assert report.num_shots == 0
    transfer = methods.TransferSet.load(report.labelled_set)
    assert transfer.source_names == ("priors",) and len(transfer) == IMAGES
    # The images are the seeded plan's (no real image among them).
    assert np.array_equal(transfer.images, images_lib.transfer_images(_plan(), SHAPE, report.seed))


def test_the_stored_targets_are_the_served_teachers_answers_tempered_at_T(runs, server):
    """Both the 600 answers from the ledger and the 900 asked anew."""
    _, _, _, report, _ = runs
    transfer = methods.TransferSet.load(report.labelled_set)
    with tfkd.connect(server.target) as teacher:
        p = teacher.soft_labels(transfer.images).astype(np.float64)
    logits = np.log(np.maximum(p, 1e-45)) / T
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(transfer.targets, expected, atol=1e-5)
    # Soft, not one-hot: at T = 3 (measured: top share at most ~0.69, median ~0.23).
    assert transfer.targets.max() < 0.95 and np.mean(transfer.targets.max(axis=1) < 0.5) > 0.9
    # Softer than the teacher's own answers wherever those are not uniform.
    assert np.all(transfer.targets.max(axis=1) <= p.max(axis=1) + 1e-6)
    assert np.mean(transfer.targets.max(axis=1) < p.max(axis=1) - 0.05) > 0.5


def test_the_student_learns_at_the_priors_temperature(runs):
    for report in runs[1], runs[3]:
        assert report.student_loss == "tempered_kd"
        assert report.student_recipe["loss"] == "tempered_kd"
        assert report.student_recipe["temperature"] == T
        assert report.method_config == {"priors": {
            "images": IMAGES, "prior": "smooth", "augment": "none", "augment_share": 0.25,
            "temperature": T, "balance": 0.0}}


def test_a_balanced_run_redraws_the_labelled_images_toward_class_balance_without_a_query(runs):
    """``priors.balance`` = 1 in the same work dir: every image's answer is the ledger's (none
    sent), the transfer set holds the plan's images with their answers, redrawn so that the
    classes the prior rarely reaches are seen about as often as the common ones."""
    workdir, _, _, full, (balanced, sent_after, sent_before) = runs
    assert balanced.teacher_queries_sent_by_stage.get("label_priors", 0) == 0
    assert sent_after == sent_before  # queries_sent.log: nothing more went out.
    assert balanced.teacher_ledger_hits == IMAGES
    assert balanced.method_config["priors"]["balance"] == 1.0
    plain = methods.TransferSet.load(full.labelled_set)
    redrawn = methods.TransferSet.load(balanced.labelled_set)
    assert balanced.labelled_set != full.labelled_set  # Its own fingerprinted artifact.
    assert len(redrawn) == IMAGES == balanced.transfer_set_sources["priors"]
    # Each row is one of the plan's images with that image's answer.
    index = {img.tobytes(): i for i, img in enumerate(plain.images)}
    rows = np.array([index[img.tobytes()] for img in redrawn.images])
    np.testing.assert_array_equal(redrawn.targets, plain.targets[rows])
    before = np.bincount(plain.targets.argmax(1), minlength=10)
    after = np.bincount(redrawn.targets.argmax(1), minlength=10)
    reached = before > 0
    assert reached.sum() >= 3, before
    assert after[reached].min() / after[reached].max() > 2 * before[reached].min() / before[reached].max()
    assert np.all(after[~reached] == 0)


# Before the fix (BudgetPlan.labels_real_images): the cut run counted the dataset's N = 2000 real
# images that prior_kd never asks about and trained 54 steps, (2000 + 1500) // 64, against 23.
def test_a_cut_plan_keeps_the_full_plans_training_length(runs):
    """BudgetPlan: "when the plan is cut, the student keeps the training length (optimizer steps)
    it would have had" (the full plan's: 1,500 images, 1 epoch of batches of 64)."""
    _, cut, _, full, _ = runs
    assert full.student_steps == IMAGES // 64
    assert abs(cut.student_steps - full.student_steps) <= 1, (cut.student_steps, full.student_steps)


def test_the_white_box_variant_labels_the_same_images_by_the_teachers_logits_without_a_query(
        server, teacher_base, tmp_path):
    """prior_kd_whitebox: the plan's images, targets softmax(logits / T) of the teacher's SavedModel
    (read here from its signature's logits, not through tfkd), no query for the transfer set."""
    images = 300
    report = tfkd.distill(
        workdir=str(tmp_path / "wb"), method="prior_kd_whitebox",
        priors={"images": images, "temperature": T, "balance": 0.0},
        teacher={"target": server.target},
        teacher_saved_model=os.path.join(teacher_base, "1"), student={"epochs": 1},
        num_validation=0, eval_examples=100, evaluate_teacher=False, compress=(), verbose=0)
    assert report.teacher_queries_sent_by_stage.get("label_priors", 0) == 0
    assert sum(report.teacher_queries_sent_by_stage.values()) == 0
    transfer = methods.TransferSet.load(report.labelled_set)
    plan = images_lib.transfer_images(PriorConfig(images=images, temperature=T), SHAPE, report.seed)
    assert np.array_equal(transfer.images, plan)
    signature = tf.saved_model.load(os.path.join(teacher_base, "1")).signatures["serving_default"]
    logits = signature(images=tf.constant(plan))["logits"].numpy().astype(np.float64) / T
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(transfer.targets, expected, atol=1e-5)
    assert report.student_recipe["temperature"] == T


def test_the_student_recipe_is_prior_kds_unless_the_user_sets_it():
    """prior_kd's student recipe (chosen on the validation split): 20 epochs at a constant rate,
    no training-time augmentation; ``lr_schedule`` is a recipe field, so the user's value wins and
    other methods keep the library's cosine decay."""
    student = config_of(workdir="w", method="prior_kd").resolved().student
    assert (student.epochs, student.lr_schedule, student.mixup_alpha, student.rotation_degrees,
            student.shift_fraction) == (20, "constant", 0.0, 0.0, 0.0)
    mine = config_of(workdir="w", method="prior_kd", **{"student.lr_schedule": "cosine",
                                           "student.epochs": 3}).resolved().student
    assert (mine.lr_schedule, mine.epochs) == ("cosine", 3)
    # The recipe's transfer set (README, docs/methods.md): 100,000 smooth-noise images at T = 4,
    # redrawn toward class balance at β = 0.5, and the student's loss at that T.
    resolved = config_of(workdir="w", method="prior_kd").resolved()
    assert resolved.method_config == PriorKDConfig(PriorConfig(
        images=100_000, prior="smooth", augment="none", temperature=4.0, balance=0.5))
    assert methods.get("prior_kd").student_config(resolved).temperature == 4.0
    assert config_of(workdir="w", method="fsbbt").resolved().student.lr_schedule == "cosine"
    assert config_of(workdir="w", method="zskd").resolved().student.lr_schedule == "cosine"


def test_a_white_box_teacher_of_another_input_shape_is_refused_in_one_line(teacher_base):
    """whitebox.load_for (prior_kd_whitebox and zskd): the SavedModel's input is checked against
    the data's image shape, the error naming the setting and both shapes."""
    from tfkd.methods.zskd import whitebox

    path = os.path.join(teacher_base, "1")
    assert whitebox.load_for(path, SHAPE).image_shape == SHAPE
    with pytest.raises(tfkd.ConfigError, match=r"teacher_saved_model=.*\[28, 28, 1\].*\[32, 32, 3\]"):
        whitebox.load_for(path, (32, 32, 3))
