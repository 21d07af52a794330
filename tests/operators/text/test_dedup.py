"""Exact and MinHash dedup: the rule, its dataset-wide form (decide against earlier frames), the hash
family, LSH parameters and bucket verification, and a differential test against datasketch."""

from __future__ import annotations

import inspect
import random

import numpy as np
import polars as pl
import pytest

import operators.text.dedup as dedup_module
from operators.base import with_row_ids
from operators.text.dedup import (
    ExactDedupFilter,
    MinhashDedupFilter,
    band_keys,
    lsh_params,
    minhash_signatures,
    shingle_hashes,
    shingle_words,
)


def _near(text: str, rng: random.Random) -> str:
    w = text.split()
    start = rng.randrange(len(w) - len(w) // 20)
    for j in range(start, start + len(w) // 20, 2):
        w[j] = "changed"
    return " ".join(w)


def test_exact_dedup_keeps_first_and_records_group():
    frame = with_row_ids(pl.DataFrame({"text": ["Hello  World", "other", "hello world", "x", "other"]}), "t")
    op = ExactDedupFilter()
    out = op(frame, group="g")
    assert out.get_column("text").to_list() == ["Hello  World", "other", "x"]
    ids = frame.get_column("_id").to_list()
    assert out.get_column("g").to_list() == [ids[0], ids[1], ids[3]]
    dups = op.last_report.extra["duplicates"]
    assert dict(zip(dups["_id"], dups["duplicate_of"])) == {ids[2]: ids[0], ids[4]: ids[1]}
    assert op.last_report.dropped == {"exact_duplicate": 2}
    dropped = op.last_report.dropped_ids
    assert dict(zip(dropped["_id"], dropped["duplicate_of"])) == {ids[2]: ids[0], ids[4]: ids[1]}


def test_minhash_estimates_jaccard():
    a = " ".join(f"w{i}" for i in range(300))
    words = a.split()
    b = " ".join(words[:150] + [f"z{i}" for i in range(150)])  # true 5-shingle Jaccard
    x, off = shingle_hashes(pl.Series([a, b]), 5)
    sa, sb = set(x[off[0] : off[1]].tolist()), set(x[off[1] : off[2]].tolist())
    true_j = len(sa & sb) / len(sa | sb)
    sig = minhash_signatures(x, off, num_perm=256)
    assert abs((sig[0] == sig[1]).mean() - true_j) < 0.08
    assert len(sa) == 296 and off.tolist() == [0, 296, 592]


def test_hash_family_is_unbiased_on_structured_keys():
    """Arithmetic progressions of keys (J = 1/3): multiply-shift alone averages ~0.28 here; the
    avalanche finaliser before it makes them behave like random keys."""
    estimates = []
    for t, step in enumerate([1, 3, 2**10, 2**16, 1_000_003] * 8):
        vals = ((t * 7919 + np.arange(600, dtype=np.uint64) * step) % 2**32).astype(np.uint32)
        x = np.concatenate([vals[:400], vals[200:]])
        sig = minhash_signatures(x, np.array([0, 400, 800]), num_perm=256, seed=t + 1)
        estimates.append((sig[0] == sig[1]).mean())
    assert abs(np.mean(estimates) - 1 / 3) < 0.02


def test_any_text_is_safe_input():
    texts = pl.Series([None, "", "   ", "!!! ???", "word", "日本語のテキストには空白がない", "🙂 🙃 🙂", "a b c d e f", "A B C D E F!", " ".join(["x"] * 200_000)])
    op = MinhashDedupFilter()
    frame = with_row_ids(pl.DataFrame({"text": texts}), "t")
    out = op(frame)
    sig = op.signatures(frame, {"text": "text"})
    # emoji are symbols (\\p{S}), removed with the punctuation like "!!! ???"
    assert sig.get_column("eligible").to_list() == [False, False, False, False, True, True, False, True, True, True]
    # texts without words are never near-dropped (exact dedup handles them); "A B C D E F!" == "a b c d e f"
    assert op.last_report.dropped == {"near_duplicate": 1}
    assert "A B C D E F!" not in out.get_column("text").to_list()


def test_lsh_params_match_datasketch():
    from datasketch import MinHashLSH

    for num_perm in (32, 64, 128, 256):
        for threshold in (0.3, 0.5, 0.6, 0.7, 0.8, 0.9):
            lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
            assert lsh_params(threshold, num_perm) == (lsh.b, lsh.r), (threshold, num_perm)
            lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.3, 0.7))
            assert lsh_params(threshold, num_perm, 0.3, 0.7) == (lsh.b, lsh.r), (threshold, num_perm)


def test_no_private_datasketch_import():
    source = inspect.getsource(dedup_module)
    assert "datasketch" not in "".join(line for line in source.splitlines() if "import" in line)


def test_every_bucket_member_is_verified():
    """Three rows share one LSH bucket; the first is unlike the others, the last two are near
    duplicates: the third must be dropped as the second's twin (checking members only against the
    bucket's first row would keep it)."""
    op = MinhashDedupFilter(threshold=0.7, num_perm=16, bands=4, rows=4)
    rng = np.random.default_rng(0)
    sig = rng.integers(0, 2**32, size=(3, 16), dtype=np.uint64).astype(np.uint32)
    sig[1:, :4] = sig[0, :4]  # band 0: one bucket for all three
    sig[2, 4:14] = sig[1, 4:14]  # rows 1 and 2 agree on 14 of 16 values
    new = pl.DataFrame(
        {
            "_id": ["r0", "r1", "r2"],
            "eligible": [True] * 3,
            "bands": pl.Series(band_keys(sig, 4, 4), dtype=pl.Array(pl.UInt64, 4)),
            "sig": pl.Series(sig, dtype=pl.Array(pl.UInt32, 16)),
        }
    )
    decision = op.decide(new)
    assert decision.select("_id", "duplicate_of").rows() == [("r2", "r1")]


@pytest.mark.parametrize("make", [ExactDedupFilter, MinhashDedupFilter])
def test_decide_across_frames_equals_one_frame(c4_frame, make):
    """Dataset-wide form: each shard decided against the earlier shards gives exactly the in-frame
    result on the concatenation (same rule, same recall), with twins named across shards."""
    rng = random.Random(3)
    base = [t for t in c4_frame.get_column("text").head(600).to_list() if len(t.split()) > 60][:300]
    texts = base + [t.upper() for t in base[:20]] + [_near(t, rng) for t in base[20:60]]
    rng.shuffle(texts)
    frame = with_row_ids(pl.DataFrame({"text": texts}), "c4")
    op = make()
    whole = op(frame)
    shards = [frame.slice(i, 70) for i in range(0, frame.height, 70)]
    sigs = [op.signatures(s, {"text": "text"}) for s in shards]
    kept, twins = [], {}
    for i, (shard, sig) in enumerate(zip(shards, sigs)):
        decision = op.decide(sig, sigs[:i])
        for row in decision.iter_rows(named=True):
            twins[row["_id"]] = row["duplicate_of"]
        kept += shard.filter(~pl.col("_id").is_in(decision.get_column("_id").implode())).get_column("_id").to_list()
    assert kept == whole.get_column("_id").to_list()
    report = op.last_report.extra["duplicates"]
    assert twins == dict(zip(report["_id"], report["duplicate_of"]))
    assert len(twins) >= 55 if make is MinhashDedupFilter else len(twins) >= 20


def test_minhash_dedup_finds_planted_near_duplicates(c4_frame):
    rng = random.Random(0)
    base = [t for t in c4_frame.get_column("text").head(400).to_list() if len(t.split()) > 100][:200]
    near = [_near(t, rng) for t in base[:50]]
    frame = with_row_ids(pl.DataFrame({"text": base + near}), "t")
    op = MinhashDedupFilter(threshold=0.7)
    out = op(frame)
    dropped = set(op.last_report.dropped_ids["_id"].to_list())
    planted = set(frame.get_column("_id")[len(base) :].to_list())
    assert len(planted & dropped) / len(planted) >= 0.95
    assert dropped <= planted  # no original dropped
    kept = out.filter(pl.col("_id").is_in(frame.get_column("_id").head(50).to_list()))
    assert kept.height == 50  # the representatives are the originals
    assert op.last_report.extra["clusters_with_duplicates"] >= 47


def _datasketch_dropped(texts: list[str], op: MinhashDedupFilter) -> np.ndarray:
    """datasketch's own MinHash + MinHashLSH (same bands x rows) on the same shingles, with the same
    rule: a document is a duplicate when an earlier one is an LSH candidate with estimated Jaccard >=
    threshold. Only the hash functions differ."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=op.threshold, num_perm=op.num_perm, params=(op.bands, op.rows))
    n = op.shingle_size
    hashes: list = []
    dropped = np.zeros(len(texts), dtype=bool)
    for i, words in enumerate(shingle_words(pl.Series(texts)).to_list()):
        if not words:
            hashes.append(None)
            continue
        shingles = {" ".join(words[j : j + n]) for j in range(len(words) - n + 1)} if len(words) >= n else {" ".join(words)}
        m = MinHash(num_perm=op.num_perm, seed=op.seed)
        m.update_batch([s.encode() for s in shingles])
        dropped[i] = any(m.jaccard(hashes[c]) >= op.threshold for c in lsh.query(m))
        lsh.insert(i, m)
        hashes.append(m)
    return dropped


def test_minhash_agrees_with_datasketch(c4_frame):
    rng = random.Random(11)
    texts = c4_frame.get_column("text").to_list()
    long = [t for t in texts if len(t.split()) > 80]
    originals = rng.sample(long, 300)
    planted = [_near(t, rng) for t in originals]
    docs = texts + planted
    rng.shuffle(docs)
    where = {d: i for i, d in enumerate(docs)}
    pairs = np.array([(where[o], where[p]) for o, p in zip(originals, planted)])
    op = MinhashDedupFilter(threshold=0.7)
    ours = op.cluster_representatives(pl.Series(docs)) != np.arange(len(docs))
    theirs = _datasketch_dropped(docs, op)
    agreement = (ours == theirs).mean()
    assert len(docs) >= 2_000 and agreement >= 0.99, (agreement, int(ours.sum()), int(theirs.sum()))
    # recall on the planted pairs: the later document of each pair is the one dropped
    later = pairs.max(axis=1)
    assert ours[later].mean() >= 0.95 and theirs[later].mean() >= 0.95
