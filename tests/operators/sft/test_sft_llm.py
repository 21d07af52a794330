"""SFT model-driven operators on the real SFT / C4 rows with a deterministic fake client, and the
reward-model scorer against a tiny locally built sequence-classification model (parity with the
model's own forward pass)."""

from __future__ import annotations

import polars as pl
import pytest

from operators.base import ID, with_row_ids
from operators.sft.llm import (
    EVOLUTIONS,
    InstructionComplexityScorer,
    InstructionEvolver,
    InstructionTagger,
    QAPairGenerator,
    RewardModelScorer,
    TopicQuestionGenerator,
)
from operators.sft.rules import SeedTopicExpander
from tests.conftest import shared
from tests.operators.core.core_fakes import FakeLLM, user_text


def sft() -> pl.DataFrame:
    return with_row_ids(pl.read_ndjson(shared("dataflow_examples", "example", "GeneralTextPipeline", "sft_input.jsonl")), "sft")


def test_complexity_and_tags():
    data = sft()
    client = FakeLLM(responder=lambda r: {"rationale": "x", "score": 6 if "comparison" in user_text(r) else 1})
    out = InstructionComplexityScorer(llm=client)(data)
    assert out.get_column("complexity_score").to_list() == [6, 1, 1, 1, 1]
    assert client.requests[0].schema["properties"]["score"]["enum"] == [1, 2, 3, 4, 5, 6]
    tags = InstructionTagger(llm=FakeLLM(responder=lambda r: {"tags": [" Python", "python", "Data Structures", ""]}),)(data)
    assert tags.get_column("tags").to_list()[0] == ["python", "data structures"] and tags.get_column("num_tags").to_list() == [2] * 5
    failed = InstructionTagger(llm=FakeLLM(fail={data[ID][0]: "timeout"}))(data)
    assert failed.get_column("tags").to_list()[0] == [] and failed.get_column("num_tags")[0] == 0


def test_evolver_picks_a_stable_method_and_drops_unchanged_rewrites():
    data = sft()
    client = FakeLLM(responder=lambda r: "What is the capital of France?" if "capital of France" in user_text(r) else "Harder: " + user_text(r)[-20:])
    out = InstructionEvolver(llm=client)(data)
    assert out.get_column("evolved_instruction").null_count() == 1  # the unchanged rewrite
    assert set(out.get_column("evolution")) <= set(EVOLUTIONS)
    again = InstructionEvolver(llm=FakeLLM())(data)
    assert again.get_column("evolution").to_list() == out.get_column("evolution").to_list()
    for req, method in zip(sorted(client.requests, key=lambda r: r.id), out.sort(ID).get_column("evolution"), strict=True):
        assert EVOLUTIONS[method] in user_text(req)


def test_topic_questions_one_row_each_with_failed_seeds_reported():
    seeds = SeedTopicExpander(task_types=("how-to", "comparison"))(with_row_ids(pl.DataFrame({"topic": ["sourdough baking", "tides"]}), "s"))
    ids = seeds.get_column(ID).to_list()
    client = FakeLLM(responder=lambda r: {"questions": [f"Q{k} about {r.id}" for k in range(3)]}, fail={ids[3]: "rate_limited"})
    op = TopicQuestionGenerator(n=3, llm=client)
    out = op(seeds, task_type="task_type")
    assert out.height == 9 and out.get_column(ID).n_unique() == 9
    assert set(out.get_column("parent_id")) == set(ids[:3])
    assert op.last_report.dropped == {"llm_error:rate_limited": 1}
    assert 'about the topic "sourdough baking" as a how-to task' in user_text(client.requests[0])
    assert out.filter(pl.col(ID) == f"{ids[0]}-q2").get_column("instruction")[0] == f"Q2 about {ids[0]}"


def test_qa_pairs_from_real_c4_passages():
    docs = with_row_ids(pl.read_parquet(shared("c4_validation_2k", "c4_validation_2k.parquet")).head(3).select("text"), "c4")

    def pairs(req):
        passage = user_text(req).split("Passage:\n", 1)[1]
        first = passage.split(".")[0]
        return {"pairs": [{"question": "What does the passage say first?", "answer": first + "."}, {"question": "", "answer": "x"}]}

    out = QAPairGenerator(llm=FakeLLM(responder=pairs))(docs, text="text")
    assert out.height == 3  # the empty question is left out
    for ans, text in out.select("output", "text").iter_rows():
        assert ans[:-1] in text
    assert out.get_column(ID).to_list() == [f"{i}-p0" for i in docs.get_column(ID)]


def test_reward_model_scorer_matches_the_models_own_forward_pass(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted({w for t in sft().select("instruction", "output").to_series().to_list() for w in t.lower().split()})[:200]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab))
    tok = transformers.BertTokenizer(str(tmp_path / "vocab.txt"))
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, num_labels=1)
    model = transformers.BertForSequenceClassification(cfg).eval()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    data = sft()
    out = RewardModelScorer(str(tmp_path), batch_size=2)(data)
    with torch.inference_mode():
        enc = tok(data["instruction"].to_list(), data["output"].to_list(), padding=True, truncation=True, max_length=1024, return_tensors="pt")
        expect = model(**enc).logits[:, 0].tolist()
    assert out.get_column("reward").to_list() == pytest.approx(expect, abs=1e-5)
    assert RewardModelScorer(str(tmp_path))(data.clear()).schema["reward"] == pl.Float64
