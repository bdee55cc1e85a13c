"""Priority order and the row sampler: deterministic, faithful to the successive-sampling law, resumable."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from huatuo.data.sampler import PrioritySampler, RowSampler

# Every statistical test below uses fixed seeds, so it is deterministic; the thresholds are tiny p-values, so a
# correct sampler passes with a wide margin and a wrong law (see the negative control) fails by far.
P_MIN = 1e-4


def test_order_is_a_function_of_the_seed_alone():
    a = PrioritySampler([50, 30, 20], [32, 8, 1], [1, 1, 3], seed=7).order()
    b = PrioritySampler([50, 30, 20], [32, 8, 1], [1, 1, 3], seed=7).order()
    c = PrioritySampler([50, 30, 20], [32, 8, 1], [1, 1, 3], seed=8).order()
    np.testing.assert_array_equal(a.source, b.source)
    np.testing.assert_array_equal(a.sample, b.sample)
    assert not np.array_equal(a.source, c.source)


def test_pinned_order_for_seed_0():
    # Pinned so that any change to the order law (or NumPy's stream) is noticed.
    order = PrioritySampler([3, 2], [4, 1], [1, 2], seed=0).order()
    assert list(zip(order.source.tolist(), order.sample.tolist(), strict=True)) == PINNED


PINNED = [(0, 2), (1, 0), (0, 1), (0, 0), (1, 1), (1, 1), (1, 0)]


def test_epochs_expand_the_pool_like_the_papers_script():
    order = PrioritySampler([4, 3], [1, 1], [1.5, 3], seed=0).order()
    assert len(order) == 6 + 9
    counts = np.bincount(order.sample[order.source == 1], minlength=3)
    assert counts.tolist() == [3, 3, 3]
    first = np.sort(order.sample[order.source == 0])
    assert first.tolist() == [0, 0, 1, 1, 2, 3]  # floor(4 * 1.5) = 6 items: samples 0..3 then 0..1


@pytest.mark.parametrize("bad", [{"priorities": [0, 1]}, {"priorities": [-1, 1]}, {"epochs": [-1, 1]}])
def test_bad_priorities_and_epochs_are_refused(bad):
    kwargs = {"sizes": [3, 3], "priorities": [1, 1], "epochs": [1, 1], "seed": 0} | bad
    with pytest.raises(ValueError):
        PrioritySampler(**kwargs)


def test_first_draw_follows_priorities_and_matches_torch_multinomial():
    # P(first item is from source s) = n_s p_s / sum(n p); compare with the paper's torch.multinomial sampler.
    sizes, priorities = [10, 10, 10], [8.0, 2.0, 1.0]
    trials = 4000
    ours = np.zeros(3)
    theirs = np.zeros(3)
    weights = torch.tensor(np.repeat(priorities, sizes), dtype=torch.double)
    source_of = np.repeat(np.arange(3), sizes)
    for seed in range(trials):
        ours[PrioritySampler(sizes, priorities, [1, 1, 1], seed).order().source[0]] += 1
        g = torch.Generator().manual_seed(seed)
        theirs[source_of[torch.multinomial(weights, 30, replacement=False, generator=g)[0]]] += 1
    expected = np.asarray(priorities) / sum(priorities) * trials
    for counts in (ours, theirs):
        chi2 = ((counts - expected) ** 2 / expected).sum()
        assert chi2 < 13.8  # chi-square, 2 dof, p = 0.001


def test_equal_priorities_give_a_uniform_shuffle():
    n, trials = 6, 6000
    positions = np.zeros((n, n))
    for seed in range(trials):
        order = PrioritySampler([n], [3.0], [1], seed).order()
        positions[order.sample, np.arange(n)] += 1
    expected = trials / n
    chi2 = ((positions - expected) ** 2 / expected).sum()
    assert chi2 < 70.0  # 25 dof, p ~ 1e-5


def test_row_sampler_gives_every_row_once_across_ranks():
    world, batch, rows = 3, 2, 20
    seen = []
    for rank in range(world):
        sampler = RowSampler(rows, batch, world, rank)
        seen.append([r for b in sampler for r in b])
    steps = list(
        zip(*[[seen[r][i : i + batch] for i in range(0, len(seen[r]), batch)] for r in range(world)], strict=True)
    )
    flat = [row for step in steps for part in step for row in part]
    assert flat == list(range(18))  # 2 trailing rows do not fill a global micro-batch of 6
    assert RowSampler(rows, batch, world, 0).dropped_rows == 2


def test_row_sampler_resumes_at_the_exact_next_row():
    sampler = RowSampler(12, 2, 1, 0)
    iterator = iter(sampler)
    consumed = [next(iterator) for _ in range(3)]
    for _ in consumed:
        sampler.advance()
    state = sampler.state_dict()
    assert state == {"rows_done": 6}
    fresh = RowSampler(12, 2, 1, 0)
    fresh.load_state_dict(state)
    assert [b for b in fresh] == [[6, 7], [8, 9], [10, 11]]
    assert [b for b in fresh][0] == [0, 1]  # the next epoch starts over


def test_resume_with_a_different_number_of_ranks_continues_the_same_order():
    state = {"rows_done": 8}
    two = [RowSampler(16, 2, 2, r) for r in range(2)]
    for s in two:
        s.load_state_dict(state)
    assert [list(s) for s in two] == [[[8, 9], [12, 13]], [[10, 11], [14, 15]]]
    with pytest.raises(ValueError, match="multiple"):
        RowSampler(16, 3, 1, 0).load_state_dict(state)


def exact_sequence_law(sizes: list[int], priorities: list[float]) -> dict[tuple[int, ...], float]:
    """P(sequence of sources) under successive sampling without replacement, for every distinct sequence."""
    law: dict[tuple[int, ...], float] = {}

    def extend(left: list[int], prefix: tuple[int, ...], probability: float) -> None:
        if not any(left):
            law[prefix] = probability
            return
        total = sum(n * p for n, p in zip(left, priorities, strict=True))
        for s, n in enumerate(left):
            if n:
                left[s] -= 1
                extend(left, (*prefix, s), probability * n * priorities[s] / total)
                left[s] += 1

    extend(list(sizes), (), 1.0)
    return law


def torch_order(sizes: list[int], priorities: list[float], epochs: list[float], seed: int) -> np.ndarray:
    """The paper's sampler: torch.multinomial without replacement over per-item weights; returns pool indices."""
    counts = [int(n * e) for n, e in zip(sizes, epochs, strict=True)]
    weights = torch.tensor(np.repeat(priorities, counts), dtype=torch.double)
    generator = torch.Generator().manual_seed(seed)
    return torch.multinomial(weights, len(weights), replacement=False, generator=generator).numpy()


def sequence_counts(draw, sizes: list[int], priorities: list[float], trials: int) -> tuple[np.ndarray, np.ndarray]:
    """Observed counts of every source sequence over ``trials`` seeds, and their expected counts under the law.

    Sequences expected fewer than 5 times are pooled into one category, where the chi-square approximation holds.
    """
    law = exact_sequence_law(sizes, priorities)
    keys = sorted(law)
    index = {k: i for i, k in enumerate(keys)}
    counts = np.zeros(len(keys))
    for seed in range(trials):
        counts[index[tuple(draw(seed).tolist())]] += 1
    expected = np.asarray([law[k] for k in keys]) * trials
    rare = expected < 5
    if not rare.any():
        return counts, expected
    return np.append(counts[~rare], counts[rare].sum()), np.append(expected[~rare], expected[rare].sum())


@pytest.mark.parametrize("priorities", [[4.0, 2.0, 1.0], [32.0, 1.0, 8.0], [1.0, 1.0, 1.0]])
def test_whole_order_follows_the_exact_successive_sampling_law_like_torch_multinomial(priorities):
    # sizes (2, 2, 1): 30 distinct source sequences, each with an exact probability; a goodness-of-fit test of
    # ours and of the paper's torch.multinomial sampler against it, and a two-sample test of ours against theirs.
    sizes, trials = [2, 2, 1], 12000
    source_of = np.repeat(np.arange(3), sizes)
    ours, expected = sequence_counts(
        lambda s: PrioritySampler(sizes, priorities, [1, 1, 1], s).order().source, sizes, priorities, trials
    )
    theirs, _ = sequence_counts(
        lambda s: source_of[torch_order(sizes, priorities, [1, 1, 1], s)], sizes, priorities, trials
    )
    assert stats.chisquare(ours, expected).pvalue > P_MIN
    assert stats.chisquare(theirs, expected).pvalue > P_MIN
    both = np.stack([ours, theirs])
    assert stats.chi2_contingency(both[:, both.sum(axis=0) > 0]).pvalue > P_MIN


def test_the_law_test_rejects_a_wrong_sampler():
    # Negative control: sorting uniform keys divided by the priority is a plausible-looking but wrong law.
    sizes, priorities, trials = [2, 2, 1], [4.0, 2.0, 1.0], 12000
    rate = np.repeat(priorities, sizes)
    source_of = np.repeat(np.arange(3), sizes)

    def wrong(seed: int) -> np.ndarray:
        return source_of[np.argsort(np.random.default_rng(seed).random(5) / rate)]

    counts, expected = sequence_counts(wrong, sizes, priorities, trials)
    assert stats.chisquare(counts, expected).pvalue < 1e-12


PAPER_SIZES = [40, 40, 20, 20, 12, 12, 6, 6, 30]
PAPER_PRIORITIES = [32.0, 32.0, 16.0, 16.0, 8.0, 8.0, 4.0, 4.0, 1.0]
PAPER_EPOCHS = [1, 1, 1, 1, 1, 1, 1, 1, 3]


def _paper_positions(seeds: range) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per seed and source: mean normalized position and position of the source's first sample, ours and torch's."""
    counts = [int(n * e) for n, e in zip(PAPER_SIZES, PAPER_EPOCHS, strict=True)]
    pool_source = np.repeat(np.arange(9), counts)
    pool_sample = np.concatenate([np.arange(c) % n for c, n in zip(counts, PAPER_SIZES, strict=True)])
    total = sum(counts)
    shape = (len(seeds), 9)
    ours_mean, ours_first, theirs_mean, theirs_first = (np.zeros(shape) for _ in range(4))
    for row, seed in enumerate(seeds):
        order = PrioritySampler(PAPER_SIZES, PAPER_PRIORITIES, PAPER_EPOCHS, seed).order()
        perm = torch_order(PAPER_SIZES, PAPER_PRIORITIES, PAPER_EPOCHS, seed + 10**6)
        for s in range(9):
            mine = order.source == s
            ours_mean[row, s] = np.flatnonzero(mine).mean() / total
            ours_first[row, s] = np.flatnonzero(mine & (order.sample == 0))[0]
            theirs_src = pool_source[perm] == s
            theirs_mean[row, s] = np.flatnonzero(theirs_src).mean() / total
            theirs_first[row, s] = np.flatnonzero(theirs_src & (pool_sample[perm] == 0))[0]
    return ours_mean, ours_first, theirs_mean, theirs_first


def test_per_source_positions_match_torch_multinomial_on_the_papers_mixture():
    # The paper's nine priorities and SFT epochs on a small pool (336 items), 1500 seeds each side. Per seed, two
    # statistics per source (independent across seeds): the mean position of its items (two-sample KS) and the
    # position of its first sample (two-sample chi-square on deciles of the pool).
    ours_mean, ours_first, theirs_mean, theirs_first = _paper_positions(range(1500))
    total = sum(int(n * e) for n, e in zip(PAPER_SIZES, PAPER_EPOCHS, strict=True))
    edges = np.linspace(0, total, 11)
    for s in range(9):
        assert stats.ks_2samp(ours_mean[:, s], theirs_mean[:, s]).pvalue > P_MIN, s
        table = np.stack([np.histogram(ours_first[:, s], edges)[0], np.histogram(theirs_first[:, s], edges)[0]])
        table = table[:, table.sum(axis=0) > 0]
        assert stats.chi2_contingency(table).pvalue > P_MIN, s
    # and the curriculum is there: sources come in priority order on average, SFT last
    means = ours_mean.mean(axis=0)
    assert means[0] < means[2] < means[4] < means[6] < means[8]
    assert means[8] > 0.7 and means[0] < 0.35


def test_equal_priorities_give_every_permutation_the_same_probability():
    n, trials = 4, 12000
    index = {p: i for i, p in enumerate(itertools.permutations(range(n)))}
    counts = np.zeros(math.factorial(n))
    for seed in range(trials):
        counts[index[tuple(PrioritySampler([n], [5.0], [1], seed).order().sample.tolist())]] += 1
    assert stats.chisquare(counts).pvalue > P_MIN


@pytest.mark.parametrize("world", [1, 2, 3, 4, 5, 7, 8])
@pytest.mark.parametrize("batch", [1, 2, 3])
def test_every_global_step_takes_the_next_rows_exactly_once_at_any_world_size(world, batch):
    rows = 47
    per_rank = [list(RowSampler(rows, batch, world, rank)) for rank in range(world)]
    assert len({len(p) for p in per_rank}) == 1  # every rank takes the same number of steps
    consumed = [row for step in zip(*per_rank, strict=True) for part in step for row in part]
    usable = rows - rows % (world * batch)
    assert consumed == list(range(usable))
    assert RowSampler(rows, batch, world, 0).dropped_rows == rows - usable


@pytest.mark.parametrize(("before", "after"), [((1, 4), (2, 2)), ((2, 2), (4, 1)), ((4, 1), (1, 2)), ((2, 3), (3, 2))])
def test_resume_on_another_layout_continues_at_the_exact_next_row(before, after):
    (world_a, batch_a), (world_b, batch_b), rows = before, after, 60
    samplers = [RowSampler(rows, batch_a, world_a, r) for r in range(world_a)]
    iterators = [iter(s) for s in samplers]
    seen = []
    for _ in range(3):  # three global steps
        seen += [row for it in iterators for row in next(it)]
        for s in samplers:
            s.advance()
    state = samplers[0].state_dict()
    assert state == {"rows_done": 3 * world_a * batch_a} and seen == list(range(state["rows_done"]))
    resumed = [RowSampler(rows, batch_b, world_b, r) for r in range(world_b)]
    for s in resumed:
        s.load_state_dict(state)
    rest = [row for step in zip(*[list(s) for s in resumed], strict=True) for part in step for row in part]
    usable = rows - (rows - state["rows_done"]) % (world_b * batch_b)
    assert seen + rest == list(range(usable))
