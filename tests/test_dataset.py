"""The procedural generator: deterministic per (seed, index), both classes, sane shapes."""
import numpy as np

from novarch_batch.training.dataset import make_images


def test_shapes_and_dtypes():
    images, labels = make_images(np.arange(10), seed=7)
    assert images.shape == (10, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (10,) and labels.dtype == np.int64
    assert set(np.unique(labels)) <= {0, 1}


def test_same_seed_and_index_give_same_image_in_any_batch():
    ids = np.arange(40)
    images, labels = make_images(ids, seed=3)
    order = np.random.default_rng(0).permutation(ids)
    shuffled, shuffled_labels = make_images(np.concatenate([order, [999]]), seed=3)
    np.testing.assert_array_equal(shuffled[:40], images[order])
    np.testing.assert_array_equal(shuffled_labels[:40], labels[order])
    single, _ = make_images(np.array([17]), seed=3)
    np.testing.assert_array_equal(single[0], images[17])


def test_large_batches_match_small_ones():
    big, _ = make_images(np.arange(1100), seed=5)  # crosses the internal chunk boundary
    small, _ = make_images(np.arange(1000, 1100), seed=5)
    np.testing.assert_array_equal(big[1000:], small)


def test_different_seeds_differ():
    a, _ = make_images(np.arange(8), seed=1)
    b, _ = make_images(np.arange(8), seed=2)
    assert all((a[i] != b[i]).any() for i in range(8))


def test_both_classes_roughly_balanced():
    _, labels = make_images(np.arange(1000), seed=11)
    assert 0.4 < labels.mean() < 0.6


def test_houses_are_wider_than_tall_buildings_are_taller():
    images, labels = make_images(np.arange(200), seed=4)
    # the sky is brightest in the top rows; a tall building covers more of the top third than a house
    top = images[:, :10].astype(int)
    assert top[labels == 0].std(axis=(1, 2, 3)).mean() > top[labels == 1].std(axis=(1, 2, 3)).mean()
