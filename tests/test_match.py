"""Pointing offsets and persistent star IDs across a sequence."""

import json

import numpy as np
import pytest

from reduxd.steps.match import FieldReference, assign_ids, find_offset, match_nearest
from reduxd.steps.photometry import PhotParams, photometer
from reduxd.synth import add_ccd_noise, render_stars

SHAPE = (600, 800)


def sky_field(rng, n=80):
    """A patch of sky bigger than the frame: positions and fluxes (electrons)."""
    x = rng.uniform(-200, SHAPE[1] + 200, n)
    y = rng.uniform(-200, SHAPE[0] + 200, n)
    return x, y, 10 ** rng.uniform(4.0, 5.7, n)


def exposure(rng, field, offset, *, hot=0):
    """The frame seen with a pointing offset: frame = sky + offset."""
    x, y, flux = field
    fx, fy = x + offset[0], y + offset[1]
    electrons = render_stars(SHAPE, fx, fy, flux, 3.2) + 300.0
    img = add_ccd_noise(electrons, read_noise_e=5.0, rng=rng).astype(np.float32)
    if hot:
        img[rng.integers(0, SHAPE[0], hot), rng.integers(0, SHAPE[1], hot)] += 20000.0
    return img


@pytest.mark.parametrize("offset", [(123.4, -87.6), (-250.0, 60.2), (0.3, 0.0)])
def test_find_offset_with_missing_and_extra_stars(offset):
    rng = np.random.default_rng(31)
    rx, ry = rng.uniform(0, 1000, (2, 40))
    keep = rng.random(40) > 0.3  # 30 % of the stars missing in the frame
    fx = np.r_[rx[keep] + offset[0] + rng.normal(0, 1.0, keep.sum()), rng.uniform(0, 1000, 15)]
    fy = np.r_[ry[keep] + offset[1] + rng.normal(0, 1.0, keep.sum()), rng.uniform(0, 1000, 15)]
    order = rng.permutation(fx.size)
    dx, dy, votes = find_offset(rx, ry, fx[order], fy[order], max_offset=300, tol=4.0)
    assert (dx, dy) == pytest.approx(offset, abs=0.5)
    assert votes >= keep.sum() - 2


def test_find_offset_without_overlap_has_no_votes():
    assert find_offset([0.0], [0.0], [500.0], [500.0], max_offset=300)[2] == 0


def test_assign_ids_keeps_known_and_numbers_new_stars():
    ref = FieldReference.empty().extend([10.0, 50.0, 90.0], [10.0, 50.0, 90.0], [5.0, 4.0, 3.0])
    ids, ref2 = assign_ids(
        ref, [110.5, 170.0, 70.0], [80.2, 20.0, 40.0], [1, 2, 3], offset=(60.0, 30.0), radius=3.0
    )
    assert ids.tolist() == [2, 4, 1]
    assert ref2.next_id == 5 and len(ref2) == 4
    assert (ref2.x[-1], ref2.y[-1]) == (110.0, -10.0)  # stored in reference pixels
    assert len(ref) == 3 and ref.next_id == 4  # the old reference is unchanged


def test_field_reference_round_trips_through_json():
    ref = FieldReference.empty().extend([1.5, 2.5], [3.5, 4.5], [100.0, 200.0])
    back = FieldReference.from_dict(json.loads(json.dumps(ref.to_dict())))
    assert back.to_dict() == ref.to_dict()
    assert back.star_id.dtype == np.int64


def test_star_ids_persist_over_a_drifting_sequence():
    rng = np.random.default_rng(32)
    field = sky_field(rng)
    offsets = [(0.0, 0.0), (57.3, -61.8), (131.0, -20.4), (-95.7, 140.2), (-180.2, -150.6)]
    params = PhotParams(radius=8.0, sky_method="annulus", annulus=(12, 20), max_offset=400)
    reference, id_of = None, {}
    for k, offset in enumerate(offsets):
        img = exposure(rng, field, offset, hot=30 if k else 0)
        img.setflags(write=False)  # the pipeline hands over read-only frames
        before = img.copy()
        result = photometer(img, exptime=30.0, params=params, reference=reference)
        assert np.array_equal(img, before)
        table = result.table
        if k:
            true = np.subtract(offset, offsets[0])
            assert result.offset == pytest.approx(tuple(true), abs=0.2)
        # each measured star is the true star nearest to it; its ID never changes
        fx, fy = field[0] + offset[0], field[1] + offset[1]
        truth = match_nearest(fx, fy, np.asarray(table["x"]), np.asarray(table["y"]), radius=1.5)
        assert np.all(truth >= 0), "a measured star that is not a star"
        for sid, t in zip(np.asarray(table["star_id"]), truth, strict=True):
            assert id_of.setdefault(int(t), int(sid)) == int(sid)
        assert len(set(np.asarray(table["star_id"]).tolist())) == len(table)
        if k:
            assert result.n_new == len(result.reference) - len(reference)
            new_ids = result.reference.star_id[len(reference) :]
            assert np.all(new_ids >= reference.next_id)
        reference = result.reference
    assert len(id_of) > 40


def test_rotating_field_is_followed_and_lost_stars_are_flagged():
    """0.6 deg of rotation about the frame centre: 4 px at the corners, more than match_radius."""
    from reduxd.steps.measure import Flag

    rng = np.random.default_rng(8)
    x, y, flux = sky_field(rng, n=120)
    inside = (x > 30) & (x < SHAPE[1] - 30) & (y > 30) & (y < SHAPE[0] - 30)
    x, y, flux = x[inside], y[inside], flux[inside]
    params = PhotParams(radius=6.0, sky_method="annulus", annulus=(10, 16), match_radius=2.0)
    first = photometer(exposure(rng, (x, y, flux), (0.0, 0.0)), exptime=1.0, params=params)
    t, cx, cy = np.radians(0.6), SHAPE[1] / 2, SHAPE[0] / 2
    rx = cx + np.cos(t) * (x - cx) - np.sin(t) * (y - cy) + 5.0
    ry = cy + np.sin(t) * (x - cx) + np.cos(t) * (y - cy) - 3.0
    img = exposure(rng, (rx, ry, flux), (0.0, 0.0))
    result = photometer(img, exptime=1.0, params=params, reference=first.reference)
    table = result.table[np.isin(result.table["star_id"], first.table["star_id"])]
    ref = first.table
    k = np.searchsorted(np.asarray(ref["star_id"]), np.asarray(table["star_id"]))
    # every known star measured where it really is (the shift alone misses by up to 4 px)
    truth = match_nearest(rx, ry, np.asarray(table["x"]), np.asarray(table["y"]), radius=0.5)
    recentred = (np.asarray(table["flags"]) & Flag.NOT_RECENTRED) == 0
    assert recentred.mean() > 0.9
    assert np.all(truth[recentred] >= 0)
    assert np.all(np.hypot(ref["x"][k] - table["x"], ref["y"][k] - table["y"]) < 12)

    # a star that vanished cannot be re-centred: flagged, not measured off-centre silently
    gone = int(np.argmax(flux))
    img2 = exposure(rng, (np.delete(rx, gone), np.delete(ry, gone), np.delete(flux, gone)), (0, 0))
    again = photometer(img2, exptime=1.0, params=params, reference=first.reference)
    near = np.hypot(np.asarray(first.table["x"]) - x[gone], np.asarray(first.table["y"]) - y[gone])
    sid = int(first.table["star_id"][np.argmin(near)])
    row = again.table[again.table["star_id"] == sid]
    assert len(row) == 1 and row["flags"][0] & Flag.NOT_RECENTRED


def _find_offset_by_ball_queries(ref_x, ref_y, x, y, *, max_offset=300.0, tol=3.0):
    """find_offset as it was: each difference's votes by its own ball query."""
    from scipy.spatial import cKDTree

    dx = (x[None, :] - ref_x[:, None]).ravel()
    dy = (y[None, :] - ref_y[:, None]).ravel()
    rank = np.abs(np.arange(x.size)[None, :] - np.arange(ref_x.size)[:, None]).ravel()
    near = np.hypot(dx, dy) <= max_offset
    if not near.any():
        return 0.0, 0.0, 0
    dx, dy, rank = dx[near], dy[near], rank[near]
    tree = cKDTree(np.column_stack([dx, dy]))
    votes = np.array([len(n) for n in tree.query_ball_point(np.column_stack([dx, dy]), tol)])
    best = np.lexsort((rank, -votes))[0]
    members = tree.query_ball_point([dx[best], dy[best]], tol)
    return float(np.median(dx[members])), float(np.median(dy[members])), int(votes[best])


@pytest.mark.parametrize("seed", range(8))
def test_find_offset_votes_as_one_ball_query_per_difference(seed):
    """Whole-pixel positions (differences exactly ``tol`` apart, ties of votes) and
    random ones: the same offset and votes as counting each difference's neighbours."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 40))
    if seed % 2:
        rx, ry = rng.integers(0, 40, (2, n)).astype(float)
        fx, fy = rng.integers(0, 40, (2, 2 * n)).astype(float)
    else:
        rx, ry = rng.uniform(0, 650, (2, n))
        fx = np.r_[rx + 12.5 + rng.normal(0, 0.5, n), rng.uniform(0, 650, n)]
        fy = np.r_[ry - 7.0 + rng.normal(0, 0.5, n), rng.uniform(0, 500, n)]
    for tol in (3.0, 1.0):
        want = _find_offset_by_ball_queries(rx, ry, fx, fy, tol=tol)
        assert find_offset(rx, ry, fx, fy, tol=tol) == want
