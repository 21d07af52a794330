"""A pipeline call keeps only the frames `forward()` itself holds: the stage recorder must not keep
every intermediate output alive (at 100,000 documents that was five extra copies of the text column)."""

from __future__ import annotations

import gc
import weakref

import polars as pl

from operators.base import Pipeline
from operators.text.filters import EmptyTextFilter
from operators.text.refiners import HtmlTagRemover, WhitespaceNormalizer


class _Outputs(Pipeline):
    name = "memory_probe"
    input_schema = {"text": pl.String}

    def __init__(self):
        self.html = HtmlTagRemover()
        self.space = WhitespaceNormalizer()
        self.not_empty = EmptyTextFilter()
        self.alive_after_next: list[bool] = []

    def forward(self, frame):
        frame = self.html(frame, text="text")
        first = weakref.ref(frame)
        frame = self.space(frame, text="text")
        gc.collect()
        self.alive_after_next.append(first() is not None)  # mid-call: forward() no longer holds it
        second = weakref.ref(frame)
        frame = self.not_empty(frame, text="text")
        gc.collect()
        self.alive_after_next.append(second() is not None)
        return frame


def test_intermediate_frames_are_freed_during_the_call_and_stages_are_still_linked():
    pipe = _Outputs()
    out = pipe(pl.DataFrame({"text": ["<p>a  b</p>", "   ", "c"]}))
    assert pipe.alive_after_next == [False, False]  # nothing else held the intermediate outputs
    assert out.get_column("text").to_list() == ["a b", "c"]
    stages = pipe.last_stages
    assert [stages[s].upstream for s in ("html", "space", "not_empty")] == [None, "html", "space"]
    assert stages["not_empty"].is_output


def test_trace_still_detects_a_frame_changed_outside_an_operator():
    import pytest

    from operators.base import PipelineCheckError

    class Outside(_Outputs):
        def forward(self, frame):
            frame = self.html(frame, text="text")
            frame = frame.with_columns(pl.col("text").str.to_uppercase())  # not an operator
            return self.space(frame, text="text")

    with pytest.raises(PipelineCheckError, match="changed outside an operator"):
        Outside().trace()
