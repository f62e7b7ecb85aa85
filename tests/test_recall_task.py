"""The noisy in-context recall generator against its specification (paper-notes, "The noisy
in-context recall task").  Statistical checks use large batches and tolerances of five standard
errors of the estimated quantity, so a correct generator fails them with negligible probability
while an off-by-a-few-percent one does not pass."""

from __future__ import annotations

import math

import pytest
import torch

from mechtrunc.tasks.recall import (
    RecallBatch, RecallConfig, RecallTask, char_stats, random_markov_stats,
)

V = 65  # tiny Shakespeare characters
SPACE, NOISE = 1, 2

pytestmark = pytest.mark.usefixtures("single_thread")



def _unigram_p() -> torch.Tensor:
    u = char_stats().unigram
    return u / u.sum()


def _bigram_p() -> torch.Tensor:
    b = char_stats().bigram
    return b / b.sum(1, keepdim=True)


@pytest.fixture(scope="module")
def big03() -> RecallBatch:
    return RecallTask(RecallConfig(alpha=0.3, seq_len=128)).sample(2048, seed=1)


@pytest.fixture(scope="module")
def big05() -> RecallBatch:
    return RecallTask(RecallConfig(alpha=0.5, seq_len=128)).sample(2048, seed=2)


def _full_seq(b: RecallBatch) -> torch.Tensor:
    return torch.cat([b.inputs[:, :1], b.targets], dim=1)


# ------------------------------------------------------------------------------------------
# shipped statistics
# ------------------------------------------------------------------------------------------
def test_char_stats_shapes_and_known_ids():
    s = char_stats()
    assert s.vocab_size == 65 and len(s.itos) == 65
    assert s.unigram.shape == (65,) and s.bigram.shape == (65, 65)
    assert s.itos[SPACE] == " " and s.itos[NOISE] == "!" and s.itos[0] == "\n"
    assert int(torch.argmax(s.unigram)) == SPACE  # the space is the most frequent character
    assert (s.unigram > 0).all() and (s.bigram >= 0).all()
    assert (s.bigram.sum(1) > 0).all()


# ------------------------------------------------------------------------------------------
# shapes and basic structure
# ------------------------------------------------------------------------------------------
def test_shapes_dtypes_and_shift(big03):
    b = big03
    assert b.inputs.shape == b.targets.shape == b.counts.shape == (2048, 128)
    assert b.triggers.shape == b.outputs.shape == (2048, 1)
    assert b.inputs.dtype == b.targets.dtype == torch.long
    # targets are inputs shifted by one
    assert torch.equal(b.inputs[:, 1:], b.targets[:, :-1])
    assert b.noise_id == NOISE
    assert int(b.inputs.min()) >= 0 and int(b.inputs.max()) < V
    assert int(b.targets.max()) < V
    assert int(b.outputs.min()) >= 0 and int(b.outputs.max()) < V
    assert (b.triggers == SPACE).all()


def test_first_token_follows_unigram():
    n = 60_000
    b = RecallTask(RecallConfig(alpha=0.3, seq_len=2)).sample(n, seed=3)
    freq = torch.bincount(b.inputs[:, 0], minlength=V).double() / n
    p = _unigram_p()
    sigma = (p * (1 - p) / n).sqrt()
    assert ((freq - p).abs() <= 5 * sigma + 1.0 / n).all(), (freq - p).abs().max()
    # and overall: total variation small
    assert 0.5 * (freq - p).abs().sum() < 0.02


def test_outputs_uniform_over_vocabulary():
    n = 65 * 400
    b = RecallTask(RecallConfig(alpha=0.3, seq_len=2)).sample(n, seed=4)
    freq = torch.bincount(b.outputs[:, 0], minlength=V).double() / n
    p = 1 / V
    assert ((freq - p).abs() <= 5 * math.sqrt(p * (1 - p) / n)).all()
    assert int(b.outputs.min()) == 0 and int(b.outputs.max()) == V - 1


def _expected_trigger_fraction(alpha: float, T: int) -> float:
    """Exact E[fraction of input positions holding the trigger] from the chain's law: average
    over the uniform output token o of the marginal laws pi_t, pi_{t+1} = pi_t M_o."""
    P = _bigram_p()
    total = 0.0
    for o in range(V):
        M = P.clone()
        M[SPACE] = 0.0
        M[SPACE, NOISE] += alpha
        M[SPACE, o] += 1 - alpha
        pi = _unigram_p()
        s = 0.0
        for _ in range(T):
            s += float(pi[SPACE])
            pi = pi @ M
        total += s / T
    return total / V


@pytest.mark.parametrize("alpha", [0.3, 0.5])
def test_trigger_frequency_matches_chain(alpha, big03, big05):
    b = big03 if alpha == 0.3 else big05
    per_seq = (b.inputs == SPACE).double().mean(1)  # sequences are independent
    emp = float(per_seq.mean())
    se = float(per_seq.std()) / math.sqrt(len(per_seq))
    exp = _expected_trigger_fraction(alpha, b.inputs.shape[1])
    assert 0.05 < exp < 0.3
    assert abs(emp - exp) <= 5 * se, (emp, exp, se)


@pytest.mark.parametrize("alpha", [0.3, 0.5])
def test_noise_rate_after_trigger(alpha, big03, big05):
    b = big03 if alpha == 0.3 else big05
    at_trig = b.inputs == b.triggers  # k = 1
    # sequences whose output token is the noise token are always "noisy": leave them out
    usable = at_trig & (b.outputs != NOISE)
    tgt = b.targets[usable]
    n = tgt.numel()
    assert n > 5_000
    rate = float((tgt == NOISE).double().mean())
    se = math.sqrt(alpha * (1 - alpha) / n)
    assert abs(rate - alpha) <= 5 * se, (rate, alpha, n)
    # noise also hits the first occurrence at the same rate
    first = usable & (b.counts == 1)
    n1 = int(first.sum())
    rate1 = float((b.targets[first] == NOISE).double().mean())
    assert abs(rate1 - alpha) <= 5 * math.sqrt(alpha * (1 - alpha) / n1)


def test_post_trigger_target_is_output_or_noise(big05):
    b = big05
    at_trig = b.inputs == b.triggers
    out = b.outputs.expand_as(b.inputs)
    tgt = b.targets[at_trig]
    ok = (tgt == out[at_trig]) | (tgt == NOISE)
    assert ok.all()
    # and both kinds actually occur
    assert (tgt == NOISE).any() and (tgt != NOISE).any()


@pytest.mark.parametrize("alpha,expect_noise", [(0.0, False), (1.0, True)])
def test_alpha_extremes(alpha, expect_noise):
    b = RecallTask(RecallConfig(alpha=alpha, seq_len=64)).sample(256, seed=5)
    at_trig = b.inputs == b.triggers
    tgt = b.targets[at_trig]
    if expect_noise:
        assert (tgt == NOISE).all()
    else:
        assert torch.equal(tgt, b.outputs.expand_as(b.inputs)[at_trig])


def test_counts_are_running_trigger_occurrences(big03):
    b = big03
    inputs, counts = b.inputs[:64].tolist(), b.counts[:64].tolist()
    trig = int(b.triggers[0, 0])
    for seq, cnt in zip(inputs, counts):
        c = 0
        for tok, got in zip(seq, cnt):
            if tok == trig:
                c += 1
                assert got == c
            else:
                assert got == 0
    assert torch.equal(b.loss_mask, b.counts >= 2)
    assert b.loss_mask.dtype == torch.bool
    assert int(b.loss_mask.sum()) > 0


def test_counts_with_several_triggers():
    b = RecallTask(RecallConfig(alpha=0.3, k=3, seq_len=64)).sample(32, seed=6)
    for row in range(32):
        seen: dict[int, int] = {}
        trig = b.triggers[row].tolist()
        for tok, got in zip(b.inputs[row].tolist(), b.counts[row].tolist()):
            if tok in trig:
                seen[tok] = seen.get(tok, 0) + 1
                assert got == seen[tok]
            else:
                assert got == 0


def test_clean_test_set():
    task = RecallTask(RecallConfig(alpha=0.5, seq_len=64))
    t = task.test_set()
    assert t.inputs.shape == (512, 64)
    at_trig = t.inputs == t.triggers
    out = t.outputs.expand_as(t.inputs)
    assert torch.equal(t.targets[at_trig], out[at_trig])
    noisy_after_trigger = at_trig & (t.targets == NOISE)
    # noise after a trigger only where the output token is the noise token itself
    rows = noisy_after_trigger.any(1).nonzero().flatten()
    assert (t.outputs[rows, 0] == NOISE).all()
    assert torch.equal(t.clean_targets()[t.loss_mask], t.targets[t.loss_mask])
    # reproducible, seed-dependent
    assert torch.equal(task.test_set().inputs, t.inputs)
    assert not torch.equal(task.test_set(seed=1).inputs, t.inputs)
    assert task.test_set(16).inputs.shape == (16, 64)


def test_clean_targets_replaces_noise():
    b = RecallTask(RecallConfig(alpha=0.5, seq_len=64)).sample(64, seed=7)
    clean = b.clean_targets()
    at_trig = b.inputs == b.triggers
    assert torch.equal(clean[at_trig], b.outputs.expand_as(b.inputs)[at_trig])
    assert torch.equal(clean[~at_trig], b.targets[~at_trig])
    assert not torch.equal(clean, b.targets)  # some noise was replaced


def test_non_trigger_transitions_follow_bigram_support(big03, big05):
    bigram = char_stats().bigram
    for b in (big03, big05):
        non_trig = b.inputs != b.triggers
        prev, nxt = b.inputs[non_trig], b.targets[non_trig]
        assert (bigram[prev, nxt] > 0).all()
        assert (char_stats().unigram[b.inputs[:, 0]] > 0).all()


def test_non_trigger_transitions_follow_bigram_conditional(big03):
    b = big03
    non_trig = b.inputs != b.triggers
    prev, nxt = b.inputs[non_trig], b.targets[non_trig]
    P = _bigram_p()
    checked = 0
    for c in torch.bincount(prev, minlength=V).argsort(descending=True)[:5].tolist():
        sel = nxt[prev == c]
        n = sel.numel()
        freq = torch.bincount(sel, minlength=V).double() / n
        p = P[c]
        assert ((freq - p).abs() <= 5 * (p * (1 - p) / n).sqrt() + 1.0 / n).all(), c
        checked += 1
    assert checked == 5


@pytest.mark.parametrize("extreme", [0.0, 1.0 - 2.0**-24])
def test_extreme_uniforms_never_take_zero_probability_transition(monkeypatch, extreme):
    """torch.rand can return exactly 0.0 and, at the other end, 1 - 2**-24.  Whatever the
    sampling scheme (inverse CDF, alias tables), such draws must never produce a token of zero
    probability: a first token outside the unigram support or a zero-count bigram (e.g. '\\n'
    after 'T', 'z' after '\\n')."""
    real_rand = torch.rand

    def rand(*shape, **kw):  # every other uniform, in every call, is the extreme value
        out = real_rand(*shape, **kw)
        out.view(-1)[::2] = extreme
        return out

    task = RecallTask(RecallConfig(alpha=0.3, seq_len=64))
    monkeypatch.setattr(torch, "rand", rand)
    b = task.sample(512, seed=8)
    monkeypatch.undo()
    stats = char_stats()
    assert (stats.unigram[b.inputs[:, 0]] > 0).all()
    non_trig = b.inputs != b.triggers
    assert (stats.bigram[b.inputs[non_trig], b.targets[non_trig]] > 0).all()
    assert int(b.inputs.max()) < 65 and int(b.targets.max()) < 65
    # post-trigger targets still obey the recall rule
    at = ~non_trig
    assert ((b.targets[at] == NOISE) | (b.targets[at] == b.outputs.expand_as(b.inputs)[at])).all()


def test_random_markov_stats_finite_even_for_zero_uniforms(monkeypatch):
    real_rand = torch.rand

    def rand(*shape, **kw):  # one exact zero among the draws, as torch.rand may produce
        out = real_rand(*shape, **kw)
        out.view(-1)[0] = 0.0
        return out

    monkeypatch.setattr(torch, "rand", rand)
    try:
        s = random_markov_stats(5, seed=0)
    finally:
        monkeypatch.undo()
    assert torch.isfinite(s.unigram).all() and torch.isfinite(s.bigram).all()


# ------------------------------------------------------------------------------------------
# triggers
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2, 4])
def test_fixed_triggers_are_top_k_unigram(k):
    u = char_stats().unigram
    expect = torch.argsort(u, descending=True, stable=True)[:k]
    b = RecallTask(RecallConfig(alpha=0.5, k=k, seq_len=64)).sample(64, seed=9)
    assert b.triggers.shape == (64, k) and b.outputs.shape == (64, k)
    assert (b.triggers == expect).all()
    assert set(expect.tolist()) >= {SPACE}
    if k >= 2:
        assert expect[:2].tolist() == [1, 43]  # ' ', 'e'
    # after each trigger: its own output token or noise
    for j in range(k):
        at = b.inputs == b.triggers[:, j : j + 1]
        tgt = b.targets[at]
        out = b.outputs[:, j : j + 1].expand_as(b.inputs)[at]
        assert ((tgt == out) | (tgt == NOISE)).all()
    assert torch.equal(b.loss_mask, b.counts >= 2)


@pytest.mark.parametrize("noise_token", [2, "extra"])
def test_random_triggers_distinct_and_not_noise(noise_token):
    cfg = RecallConfig(alpha=0.5, k=5, seq_len=32, fixed_triggers=False, noise_token=noise_token)
    b = RecallTask(cfg).sample(400, seed=10)
    assert b.triggers.shape == (400, 5)
    srt = b.triggers.sort(1).values
    assert (srt[:, 1:] != srt[:, :-1]).all()  # distinct per row
    assert (b.triggers != cfg.noise_id).all()
    assert int(b.triggers.min()) >= 0 and int(b.triggers.max()) < 65
    # they vary from row to row and cover the vocabulary except the noise token
    assert len({tuple(r) for r in srt.tolist()}) > 300
    used = set(b.triggers.flatten().tolist())
    assert used == set(range(65)) - {cfg.noise_id}
    # the recall rule holds for each row's own triggers
    for j in range(5):
        at = b.inputs == b.triggers[:, j : j + 1]
        tgt = b.targets[at]
        out = b.outputs[:, j : j + 1].expand_as(b.inputs)[at]
        assert ((tgt == out) | (tgt == cfg.noise_id)).all()


def test_extra_noise_token():
    cfg = RecallConfig(alpha=0.5, seq_len=64, noise_token="extra")
    assert cfg.d_vocab == 66 and cfg.noise_id == 65 and cfg.base_vocab_size == 65
    task = RecallTask(cfg)
    assert len(task.itos) == 66 and task.itos[65] == "<noise>"
    b = task.sample(256, seed=11)
    assert b.noise_id == 65
    assert int(b.outputs.max()) < 65  # outputs from the base vocabulary
    at_trig = b.inputs == b.triggers
    tgt = b.targets[at_trig]
    assert ((tgt == 65) | (tgt == b.outputs.expand_as(b.inputs)[at_trig])).all()
    assert (tgt == 65).any()
    # the extra token appears only right after a trigger
    seq = _full_seq(b)
    is_noise = seq[:, 1:] == 65
    assert (seq[:, 0] != 65).all()
    assert torch.equal(is_noise & ~at_trig, torch.zeros_like(is_noise))
    # after the noise token the chain continues with valid base tokens
    after = b.targets[b.inputs == 65]
    assert after.numel() > 0 and int(after.max()) < 65


def test_random_bigrams_other_vocab():
    cfg = RecallConfig(alpha=0.3, seq_len=64, bigrams="random", vocab_size=20, markov_seed=3, k=2)
    assert cfg.d_vocab == 20 and cfg.base_vocab_size == 20
    task = RecallTask(cfg)
    assert task.stats.vocab_size == 20 and task.stats.bigram.shape == (20, 20)
    assert task.itos[:2] == ("<0>", "<1>")
    b = task.sample(512, seed=12)
    assert int(b.inputs.max()) < 20 and int(b.targets.max()) < 20 and int(b.outputs.max()) < 20
    expect = torch.argsort(task.stats.unigram, descending=True, stable=True)[:2]
    assert (b.triggers == expect).all()
    # the Markov part uses the random chain: the conditional of the commonest token matches it
    non_trig = (b.inputs.unsqueeze(-1) != b.triggers.unsqueeze(1)).all(-1)
    prev, nxt = b.inputs[non_trig], b.targets[non_trig]
    P = task.stats.bigram / task.stats.bigram.sum(1, keepdim=True)
    c = int(torch.bincount(prev, minlength=20).argmax())
    sel = nxt[prev == c]
    freq = torch.bincount(sel, minlength=20).double() / sel.numel()
    assert ((freq - P[c]).abs() <= 5 * (P[c] * (1 - P[c]) / sel.numel()).sqrt() + 1 / sel.numel()).all()
    # markov_seed picks the chain
    same = random_markov_stats(20, seed=3)
    other = random_markov_stats(20, seed=4)
    assert torch.equal(same.bigram, task.stats.bigram)
    assert not torch.equal(other.bigram, task.stats.bigram)


def test_random_markov_stats_validation():
    with pytest.raises(ValueError, match=r"vocab_size must be >= 2, got 1"):
        random_markov_stats(1)
    with pytest.raises(ValueError, match=r"concentration must be > 0, got 0"):
        random_markov_stats(5, concentration=0)


# ------------------------------------------------------------------------------------------
# determinism
# ------------------------------------------------------------------------------------------
def test_seeded_determinism():
    task = RecallTask(RecallConfig(alpha=0.3, seq_len=32, k=2, fixed_triggers=False))
    a, b, c = task.sample(64, seed=5), task.sample(64, seed=5), task.sample(64, seed=6)
    for name in ("inputs", "targets", "counts", "triggers", "outputs"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.inputs, c.inputs)
    assert not torch.equal(a.outputs, c.outputs)
    # a fresh task object gives the same batch
    d = RecallTask(RecallConfig(alpha=0.3, seq_len=32, k=2, fixed_triggers=False)).sample(64, seed=5)
    assert torch.equal(a.inputs, d.inputs)
    # the alpha override changes the noise only: alpha=0 vs 1 differ, same seed
    clean = task.sample(64, seed=5, alpha=0.0)
    assert torch.equal(clean.triggers, a.triggers) and torch.equal(clean.outputs, a.outputs)


def test_batches_stream_reproducible_and_distinct():
    task = RecallTask(RecallConfig(alpha=0.3, seq_len=16))
    s1, s2 = task.batches(8, seed=1), task.batches(8, seed=1)
    a = [next(s1).inputs for _ in range(3)]
    b = [next(s2).inputs for _ in range(3)]
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(a[0], a[1])
    g = torch.Generator().manual_seed(1)
    assert torch.equal(task.sample(8, generator=g).inputs, a[0])


# ------------------------------------------------------------------------------------------
# prompts
# ------------------------------------------------------------------------------------------
def test_to_prompts_items():
    b = RecallTask(RecallConfig(alpha=0.5, seq_len=64)).sample(32, seed=13)
    ps = b.to_prompts()
    assert len(ps) == int(b.loss_mask.sum()) > 0
    assert ps.n_sequences == 32
    assert torch.equal(ps.tokens, b.inputs)
    assert (b.counts[ps.rows, ps.pos] >= 2).all()
    assert (b.inputs[ps.rows, ps.pos] == SPACE).all()
    assert torch.equal(ps.answer, b.outputs[ps.rows, 0])  # the clean output, never the noise
    assert ps.competitors.shape == (len(ps), 1)
    assert (ps.competitors == NOISE).all()
    assert ps.competitor_names == ("noise",)
    # every (row, pos) with count >= 2 appears exactly once
    got = set(zip(ps.rows.tolist(), ps.pos.tolist()))
    want = set(map(tuple, b.loss_mask.nonzero().tolist()))
    assert got == want and len(got) == len(ps)


def test_to_prompts_extra_noise_competitor():
    b = RecallTask(RecallConfig(alpha=0.5, seq_len=64, noise_token="extra")).sample(16, seed=14)
    ps = b.to_prompts()
    assert (ps.competitors == 65).all()


# ------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(alpha=-0.1), r"alpha must be in \[0, 1\], got -0\.1"),
        (dict(alpha=1.5), r"alpha must be in \[0, 1\], got 1\.5"),
        (dict(k=65), r"k must be between 1 and 64 .*got 65"),
        (dict(k=0), r"k must be between 1 and 64 .*got 0"),
        (dict(k=20, bigrams="random", vocab_size=20), r"k must be between 1 and 19 .*got 20"),
        (dict(seq_len=1), r"seq_len must be >= 2, got 1"),
        (dict(noise_token=65), r"noise_token must be a token id in \[0, 64\] or 'extra', got 65"),
        (dict(noise_token=-1), r"noise_token .*got -1"),
        (dict(noise_token="bang"), r"noise_token .*got 'bang'"),
        (dict(bigrams="zipf"), r"bigrams must be .*got 'zipf'"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RecallConfig(**kwargs)


def test_sample_errors():
    task = RecallTask(RecallConfig(seq_len=8))
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got 2"):
        task.sample(4, alpha=2)
    with pytest.raises(ValueError, match=r"batch_size must be >= 1, got 0"):
        task.sample(0)
