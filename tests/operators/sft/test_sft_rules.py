"""Rule-based SFT operators on the real GeneralTextPipeline SFT rows plus planted bad pairs."""

from __future__ import annotations

import polars as pl
import pytest

from operators.base import ID, with_row_ids
from operators.sft.rules import (
    BoilerplateResponseFilter,
    DeitaScoreCombiner,
    DocumentChunker,
    GibberishInstructionFilter,
    InstructionEchoFilter,
    LanguageMatchFilter,
    LexicalGroundingFilter,
    PairLengthFilter,
    RefusalFilter,
    ResponseOpenerStripper,
    ResponseRatioFilter,
    ScoreThresholdFilter,
    SeedTopicExpander,
    SFTFieldPresenceFilter,
    TagCoverageFilter,
    TopicBalancer,
    TopKFilter,
    TruncatedResponseFilter,
)
from tests.conftest import shared


def sft_rows() -> pl.DataFrame:
    return pl.read_ndjson(shared("dataflow_examples", "example", "GeneralTextPipeline", "sft_input.jsonl"))


def frame(rows: list[tuple[str | None, str | None]]) -> pl.DataFrame:
    return with_row_ids(pl.DataFrame(rows, schema={"instruction": pl.String, "output": pl.String}, orient="row"), source="t")


def reasons(op, data: pl.DataFrame, **cols) -> list[str | None]:
    """Per input row: the drop reason, or None when kept."""
    op(data, **cols)
    got = dict(op.last_report.dropped_ids.iter_rows()) if op.last_report.dropped_ids is not None else {}
    return [got.get(i) for i in data.get_column(ID)]


def test_presence_and_length_filters_on_real_rows_and_planted_bad_ones():
    data = pl.concat([with_row_ids(sft_rows(), "sft"), frame([(None, "an answer"), ("   ", "x"), ("Explain tides.", None)])])
    assert reasons(SFTFieldPresenceFilter(), data) == [None] * 5 + ["missing_instruction", "missing_instruction", "missing_response"]
    lengths = reasons(PairLengthFilter(min_instruction_words=4, min_response_words=2), data.head(5))
    assert lengths == [None, None, "response_too_short", "instruction_too_short", "instruction_too_short"]  # "Paris.", "tell me why", "asdfjkl;..."
    out = PairLengthFilter(min_instruction_words=1)(data.head(5), instruction_words="iw", response_words="rw")
    assert out.get_column("rw").to_list()[2] == 1  # "Paris."


def test_ratio_filter_flags_one_word_answers_to_long_requests_only():
    data = frame([
        ("Provide a detailed comparison between lists and tuples in Python covering mutability and performance.", "Lists."),
        ("What is the capital of France?", "Paris."),
        ("Provide a detailed comparison between lists and tuples in Python covering mutability and performance.",
         "Lists are mutable; tuples are immutable, slightly smaller and faster to create."),
    ])
    assert reasons(ResponseRatioFilter(min_ratio=0.2), data) == ["response_ratio_low", None, None]


def test_refusal_and_boilerplate_detection():
    data = frame([
        ("Hack my neighbour's wifi.", "I'm sorry, but I can't help with that request."),
        ("Write a poem.", "I cannot assist with creating content like that."),
        ("Who won in 2030?", "As an AI language model, I do not know the future."),
        ("Latest news?", "As of my last update in 2023, the news was..."),
        ("Write a letter.", "Dear [Your Name], thank you for..."),
        ("Say hi.", "Hi there! <|im_end|>"),
        ("Tell me about errors.", "A function cannot return a value after it raises; I can't stress this enough."),
    ])
    assert reasons(RefusalFilter(), data) == ["refusal", "refusal", None, None, None, None, None]
    assert reasons(BoilerplateResponseFilter(), data) == [
        None, None, "boilerplate:ai_disclaimer", "boilerplate:knowledge_cutoff", "boilerplate:placeholder",
        "boilerplate:template_leak", None,
    ]
    got = RefusalFilter()(data.head(1).vstack(data.slice(6, 1)), refusal="phrase")
    assert got.height == 1
    with pytest.raises(ValueError, match="unknown boilerplate"):
        BoilerplateResponseFilter(kinds=("nope",))


def test_echo_truncation_and_gibberish_on_real_rows():
    data = with_row_ids(sft_rows(), "sft")
    assert reasons(GibberishInstructionFilter(), data) == [None, None, None, None, "gibberish"]  # "asdfjkl; asdfjkl;"
    assert reasons(TruncatedResponseFilter(), data) == [None] * 5
    planted = frame([
        ("What is the capital of France?", "The capital of France is"),
        ("Show code.", "Here it is:\n```python\nprint(1)\n"),
        ("What is the capital of France?", "What is the capital of France?"),
        ("What is the capital of France?", "Paris is the capital of France and its largest city, on the Seine."),
        ("qwerty zxcvbnm", "ok"),
        ("hello hello hello", "ok"),
    ])
    assert reasons(TruncatedResponseFilter(min_words=3), planted)[:4] == ["ends_mid_sentence", "unclosed_code_fence", None, None]
    # "The capital of France is": truncated, and every word of it is the question's
    assert reasons(InstructionEchoFilter(), planted)[:4] == ["echoes_instruction", None, "echoes_instruction", None]
    assert reasons(GibberishInstructionFilter(), planted)[4:] == ["gibberish", "gibberish"]


def test_opener_stripper_rewrites_only_leading_openers():
    data = with_row_ids(sft_rows(), "sft")
    out = ResponseOpenerStripper()(data)
    assert out.get_column("output")[0].startswith("The primary distinction")  # "Certainly. The primary..."
    assert out.get_column("output").to_list()[1:] == data.get_column("output").to_list()[1:]
    assert ResponseOpenerStripper().last_report is None
    op = ResponseOpenerStripper()
    op(frame([("q", "Sure! Here's the code:\nprint(1)"), ("q", "Sure!")]))
    assert op.last_report.modified == 1


def test_language_match_filter():
    data = frame([
        ("Explain how photosynthesis works in green plants and why it matters.",
         "La photosynthèse est le processus par lequel les plantes vertes transforment la lumière en énergie chimique."),
        ("Explain how photosynthesis works in green plants and why it matters.",
         "Plants turn light, water and carbon dioxide into sugar and oxygen inside their chloroplasts."),
    ])
    assert reasons(LanguageMatchFilter(), data) == ["language_mismatch", None]
    assert LanguageMatchFilter()(data.clear()).height == 0


def test_selection_threshold_topk_deita_tags_and_topics():
    data = with_row_ids(pl.DataFrame({
        "q": [5, 4, None, 2, 5], "c": [1, 4, 3, 5, 4],
        "tags": [["math"], ["Math", "python"], ["art"], [], ["python", "math"]],
        "topic": ["a", "a", "a", "b", "b"],
    }), "sel")
    ids = data.get_column(ID).to_list()
    assert reasons(ScoreThresholdFilter({"q": 4, "c": 2}), data) == ["below:c", None, "unscored:q", "below:q", None]
    deita = DeitaScoreCombiner()(data, quality="q", complexity="c")
    assert deita.get_column("deita_score").to_list() == [5.0, 16.0, None, 10.0, 20.0]
    top = TopKFilter(k=2)(deita, score="deita_score", rank="rank")
    assert top.get_column(ID).to_list() == [ids[1], ids[4]] and top.get_column("rank").to_list() == [2, 1]
    assert TopKFilter(fraction=0.6)(deita, score="deita_score").height == 3
    cov = TagCoverageFilter()
    kept = cov(deita, priority="deita_score", new_tags="new")
    # by priority: row4 {python, math} adds 2, row1 {math, python} adds 0, row3 [] no tags, row0 {math} 0, row2 {art} 1
    assert kept.get_column(ID).to_list() == [ids[2], ids[4]]
    assert cov.last_report.dropped == {"no_new_tags": 2, "no_tags": 1}
    bal = TopicBalancer(max_per_topic=1)(data.with_columns(pl.col("q").alias("s")), score="s")
    assert bal.get_column(ID).to_list() == [ids[0], ids[4]]


def test_seed_expander_and_document_chunker_make_new_unique_ids():
    seeds = with_row_ids(pl.DataFrame({"topic": ["astronomy", "cooking"]}), "seed")
    grid = SeedTopicExpander(task_types=("explanation", "how-to"))(seeds)
    assert grid.height == 4 and grid.get_column(ID).n_unique() == 4
    assert grid.get_column("parent_id").to_list() == [seeds[ID][0]] * 2 + [seeds[ID][1]] * 2
    docs = pl.read_parquet(shared("c4_validation_2k", "c4_validation_2k.parquet")).head(20)
    docs = with_row_ids(docs.select("text"), "c4")
    chunks = DocumentChunker(max_words=120, min_words=30)(docs)
    assert chunks.get_column(ID).n_unique() == chunks.height
    assert (chunks.get_column("chunk").str.count_matches(r"\S+") >= 30).all()
    # no text is invented: every chunk is a run of its document's lines
    joined = chunks.join(docs.select(pl.col(ID).alias("parent_id"), pl.col("text").alias("doc")), on="parent_id")
    assert all(all(line in doc for line in ch.split("\n")) for ch, doc in joined.select("chunk", "doc").iter_rows())
    long_doc = docs.filter(pl.col("text").str.count_matches(r"\S+") > 400).get_column(ID)[0]
    assert chunks.filter(pl.col("parent_id") == long_doc).height >= 3


def test_lexical_grounding():
    data = with_row_ids(pl.DataFrame({
        "text": ["Before the Industrial Revolution, light-colored peppered moths were camouflaged against lichen."] * 2,
        "answer": ["Light-colored moths were camouflaged against lichen.", "Bright purple dragons breathed fire."],
    }), "g")
    out = LexicalGroundingFilter()(data, support="support")
    assert out.height == 1 and out.get_column("support").to_list() == [1.0]
