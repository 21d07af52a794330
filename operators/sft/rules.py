"""Rule-based SFT operators (no LLM): field presence, length and ratio bounds on instruction and
response, refusal / boilerplate / parroting / truncation / keyboard-mash detection, language
agreement, opener stripping, and the selection rules of the quality pipeline (score thresholds,
top-k, Deita score, InsTag tag coverage, topic balancing).

Every filter says why it drops a row (a reason per rule), and most write the measured value beside
the decision when asked (an optional output role, off by default)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import polars as pl

from operators.base import ID, Evaluator, Filter, Generator, Refiner, register

WORD = r"\S+"


def words(text: pl.Expr) -> pl.Expr:
    """Whitespace-separated token count (null text counts 0)."""
    return text.fill_null("").str.count_matches(WORD).cast(pl.Int64)


def blank(text: pl.Expr) -> pl.Expr:
    return text.is_null() | (text.cast(pl.String).str.strip_chars() == "")


def word_set(text: pl.Expr, min_len: int = 1) -> pl.Expr:
    """Lower-cased alphanumeric words of at least `min_len` characters, as a list (for set ops)."""
    tokens = text.fill_null("").str.to_lowercase().str.extract_all(r"[\p{L}\p{N}]+")
    return tokens.list.eval(pl.element().filter(pl.element().str.len_chars() >= min_len)).list.unique()


@register
class SFTFieldPresenceFilter(Filter):
    """Drops SFT rows whose instruction or response is missing or blank.

    Reads: `instruction` (default `instruction`), `response` (default `output`; pass
    `response=None` to check the instruction only, e.g. before answers are generated). Writes
    nothing. Drop reasons: `missing_instruction`, `missing_response` (null, empty or whitespace).
    Use it first in any SFT pipeline: a row without an instruction has nothing to train on.
    """

    reads = {"instruction": "instruction", "response": "output"}
    writes = {}

    def __init__(self):
        pass

    def keep(self, cols):
        keep = {"missing_instruction": ~blank(pl.col(cols["instruction"]))}
        if cols.get("response"):
            keep["missing_response"] = ~blank(pl.col(cols["response"]))
        return keep


@register
class PairLengthFilter(Filter):
    """Bounds the length (in words) of both the instruction and the response of an SFT pair.

    Reads: `instruction` (default `instruction`), `response` (default `output`). Writes optional
    `instruction_words` and `response_words` (Int64; off by default). Drop reasons:
    `instruction_too_short`, `instruction_too_long`, `response_too_short`, `response_too_long`
    (a bound of None is not checked). Use it to drop empty or runaway pairs; pair it with
    `ResponseRatioFilter` for answers too short for their instruction.
    """

    reads = {"instruction": "instruction", "response": "output"}
    writes = {"instruction_words": None, "response_words": None}

    def __init__(self, min_instruction_words: int = 3, max_instruction_words: int | None = 1024,
                 min_response_words: int = 1, max_response_words: int | None = 4096):
        self.min_instruction_words, self.max_instruction_words = min_instruction_words, max_instruction_words
        self.min_response_words, self.max_response_words = min_response_words, max_response_words

    def scores(self, cols):
        out = []
        for role, src in (("instruction_words", "instruction"), ("response_words", "response")):
            if cols.get(role):
                out.append(words(pl.col(cols[src])).alias(cols[role]))
        return out

    def keep(self, cols):
        iw, rw = words(pl.col(cols["instruction"])), words(pl.col(cols["response"]))
        keep = {"instruction_too_short": iw >= self.min_instruction_words, "response_too_short": rw >= self.min_response_words}
        if self.max_instruction_words is not None:
            keep["instruction_too_long"] = iw <= self.max_instruction_words
        if self.max_response_words is not None:
            keep["response_too_long"] = rw <= self.max_response_words
        return keep


@register
class ResponseRatioFilter(Filter):
    """Keeps pairs whose response-to-instruction length ratio (words) lies in [min_ratio, max_ratio].

    Reads: `instruction`, `response` (defaults `instruction`, `output`). Writes optional `ratio`
    (Float64, response words / max(instruction words, 1); off by default). Drop reasons:
    `response_ratio_low` (a one-word answer to a long, detailed request), `response_ratio_high`.
    Use it to catch answers that cannot cover what a long instruction asks for.
    """

    reads = {"instruction": "instruction", "response": "output"}
    writes = {"ratio": None}

    def __init__(self, min_ratio: float = 0.1, max_ratio: float | None = None, min_instruction_words: int = 12):
        self.min_ratio, self.max_ratio, self.min_instruction_words = min_ratio, max_ratio, min_instruction_words

    def ratio(self, cols) -> pl.Expr:
        return (words(pl.col(cols["response"])) / pl.max_horizontal(words(pl.col(cols["instruction"])), pl.lit(1))).cast(pl.Float64)

    def scores(self, cols):
        return [self.ratio(cols).alias(cols["ratio"])] if cols.get("ratio") else []

    def keep(self, cols):
        long_enough = words(pl.col(cols["instruction"])) >= self.min_instruction_words  # short prompts may get short answers
        keep = {"response_ratio_low": ~long_enough | (self.ratio(cols) >= self.min_ratio)}
        if self.max_ratio is not None:
            keep["response_ratio_high"] = self.ratio(cols) <= self.max_ratio
        return keep


REFUSAL_PATTERNS = (
    r"\bI(?:'m| am) (?:sorry|afraid),? (?:but )?I (?:can(?:'|no)t|cannot|am unable to|won't|will not)\b",
    r"\bI (?:can(?:'|no)t|cannot|won't|will not|am not able to|am unable to) (?:help|assist|provide|comply|fulfil|fulfill|do that|answer)\b",
    r"\bI(?:'m| am) not (?:able|allowed|permitted) to\b",
    r"\b(?:I must|I have to) (?:decline|refuse)\b",
    r"\bI (?:do not|don't) have the (?:ability|capability|capacity) to\b",
    r"\bI(?:'m| am) unable to (?:help|assist|provide|comply)\b",
    r"\bagainst my (?:guidelines|programming|policy|policies)\b",
)


@register
class RefusalFilter(Filter):
    """Drops responses that refuse the request ("I'm sorry, but I can't help with that").

    Reads: `response` (default `output`). Writes optional `refusal` (String, the matched phrase;
    off by default). Only the first `head_chars` characters are searched (a refusal comes first;
    a long answer that mentions "I cannot" later is not a refusal). Drop reason: `refusal`.
    Use it on SFT pairs distilled from aligned models, whose refusals teach a model to refuse.
    """

    reads = {"response": "output"}
    writes = {"refusal": None}

    def __init__(self, patterns: Sequence[str] = REFUSAL_PATTERNS, head_chars: int = 300):
        self.patterns, self.head_chars = tuple(patterns), head_chars
        self._regex = "(?i)" + "|".join(f"(?:{p})" for p in self.patterns)
        re.compile(self._regex)

    def match(self, cols) -> pl.Expr:
        return pl.col(cols["response"]).fill_null("").str.slice(0, self.head_chars).str.extract(f"({self._regex})", 1)

    def scores(self, cols):
        return [self.match(cols).alias(cols["refusal"])] if cols.get("refusal") else []

    def keep(self, cols):
        return {"refusal": self.match(cols).is_null()}


BOILERPLATE = {
    "ai_disclaimer": r"\bas an (?:ai|artificial intelligence)(?: language model| assistant| model)?\b|\bI am an AI\b|\bas a large language model\b",
    "knowledge_cutoff": r"\b(?:my|the) (?:knowledge|training data) (?:cutoff|cut-off)\b|\bas of my (?:last )?(?:knowledge )?(?:update|cutoff)\b",
    "placeholder": r"\[(?:your|insert|company|recipient)(?: [a-z]+)*\]|<insert [^>]*>|\blorem ipsum\b|\bTODO:",
    "template_leak": r"<\|(?:im_start|im_end|endoftext|assistant|user)\|>|\[/?INST\]|###\s*(?:Instruction|Response):",
}


@register
class BoilerplateResponseFilter(Filter):
    """Drops responses with model boilerplate: AI-identity disclaimers, knowledge-cutoff notes,
    unfilled placeholders ("[Your Name]", lorem ipsum) and leaked chat-template tokens.

    Reads: `response` (default `output`). Writes nothing. Drop reasons: `boilerplate:<kind>` for
    `kinds` (default every kind in `BOILERPLATE`: ai_disclaimer, knowledge_cutoff, placeholder,
    template_leak). Use it after `RefusalFilter` on distilled SFT data: such text is noise a
    fine-tuned model would copy.
    """

    reads = {"response": "output"}
    writes = {}

    def __init__(self, kinds: Sequence[str] = tuple(BOILERPLATE)):
        unknown = set(kinds) - set(BOILERPLATE)
        if unknown:
            raise ValueError(f"unknown boilerplate kinds {sorted(unknown)}; known: {sorted(BOILERPLATE)}")
        self.kinds = tuple(kinds)

    def keep(self, cols):
        text = pl.col(cols["response"]).fill_null("")
        return {f"boilerplate:{k}": ~text.str.contains("(?i)" + BOILERPLATE[k]) for k in self.kinds}


@register
class InstructionEchoFilter(Filter):
    """Drops responses that merely repeat the instruction (parroting).

    Reads: `instruction`, `response` (defaults `instruction`, `output`). Writes optional `echo`
    (Float64: the share of the response's distinct words that occur in the instruction; off by
    default). A row is an echo when that share is at least `threshold` and the response is not
    more than `max_length_ratio` times the instruction's length. Drop reason: `echoes_instruction`.
    Use it on generated answers: small models often restate the question instead of answering.
    """

    reads = {"instruction": "instruction", "response": "output"}
    writes = {"echo": None}

    def __init__(self, threshold: float = 0.9, max_length_ratio: float = 1.5):
        self.threshold, self.max_length_ratio = threshold, max_length_ratio

    def share(self, cols) -> pl.Expr:
        r, i = word_set(pl.col(cols["response"])), word_set(pl.col(cols["instruction"]))
        n = r.list.len()
        return pl.when(n > 0).then(r.list.set_intersection(i).list.len() / n).otherwise(0.0).cast(pl.Float64)

    def scores(self, cols):
        return [self.share(cols).alias(cols["echo"])] if cols.get("echo") else []

    def keep(self, cols):
        short = words(pl.col(cols["response"])) <= self.max_length_ratio * words(pl.col(cols["instruction"]))
        return {"echoes_instruction": ~((self.share(cols) >= self.threshold) & short)}


@register
class TruncatedResponseFilter(Filter):
    """Drops responses that look cut off: an unclosed Markdown code fence, or a last line that stops
    mid-sentence (ends in a letter, digit, comma, colon, or a dangling "and"/"the"...).

    Reads: `response` (default `output`). Writes nothing. Responses shorter than `min_words` are
    not judged for the sentence rule (short answers such as "Paris" need no full stop). Drop
    reasons: `unclosed_code_fence`, `ends_mid_sentence`. Use it on generated data when the
    generator's max_tokens may have cut replies short.
    """

    reads = {"response": "output"}
    writes = {}

    def __init__(self, min_words: int = 12, check_sentence_end: bool = True):
        self.min_words, self.check_sentence_end = min_words, check_sentence_end

    def keep(self, cols):
        text = pl.col(cols["response"]).fill_null("").str.strip_chars()
        keep = {"unclosed_code_fence": text.str.count_matches(r"(?m)^\s*```") % 2 == 0}
        if self.check_sentence_end:
            dangling = text.str.contains(r"(?i)(?:[,:;(\-–]|\b(?:and|or|the|a|an|of|to|with|but|because))$")
            no_end = ~text.str.contains(r"[.!?)\]}\"'`*>»”’:;…]$|```$|\|$") & text.str.contains(r"[\p{L}\p{N}]$")
            keep["ends_mid_sentence"] = (words(text) < self.min_words) | ~(dangling | no_end)
        return keep


@register
class GibberishInstructionFilter(Filter):
    """Drops instructions that are keyboard mash or noise ("asdfjkl; asdfjkl;", "qwerty zxcv").

    Reads: `instruction` (default `instruction`). Writes optional `wordlike` (Float64: the share of
    alphabetic tokens that look like words: a vowel (y counts), no run of `max_consonants` or more
    consonants, not a keyboard row sequence; off by default). Drop reason: `gibberish`
    (`wordlike` below `min_wordlike`, or one token repeated as the whole instruction).
    Use it on crowd-sourced or scraped instructions; it is language-agnostic only for Latin script
    (other scripts count as word-like).
    """

    reads = {"instruction": "instruction"}
    writes = {"wordlike": None}
    KEYBOARD = r"(?:qwer|wert|erty|asdf|sdfg|dfgh|fghj|ghjk|hjkl|zxcv|xcvb|cvbn|vbnm|uiop|jkl;)"

    def __init__(self, min_wordlike: float = 0.6, max_consonants: int = 5):
        self.min_wordlike, self.max_consonants = min_wordlike, max_consonants

    def wordlike(self, cols) -> pl.Expr:
        toks = pl.col(cols["instruction"]).fill_null("").str.to_lowercase().str.extract_all(r"[\p{L};]+")
        bad = (
            ~pl.element().str.contains(r"[aeiouy\P{ASCII}]")
            | pl.element().str.contains(rf"[bcdfghjklmnpqrstvwxz]{{{self.max_consonants},}}")
            | pl.element().str.contains(self.KEYBOARD)
        )
        n = toks.list.len()
        good = toks.list.eval(~bad).list.sum()
        return pl.when(n > 0).then(good / n).otherwise(0.0).cast(pl.Float64)

    def scores(self, cols):
        return [self.wordlike(cols).alias(cols["wordlike"])] if cols.get("wordlike") else []

    def keep(self, cols):
        toks = pl.col(cols["instruction"]).fill_null("").str.to_lowercase().str.extract_all(r"\S+")
        repeated = (toks.list.len() > 1) & (toks.list.n_unique() == 1)
        return {"gibberish": (self.wordlike(cols) >= self.min_wordlike) & ~repeated}


OPENERS = (
    r"(?:sure|certainly|of course|absolutely|great question|good question|okay|ok)[!.,]*\s+"
    r"(?:here(?:'s| is| are)[^\n:]{0,60}:\s*)?"
)


@register
class ResponseOpenerStripper(Refiner):
    """Removes a conversational opener from the start of a response ("Certainly! ", "Sure, here is
    the code:") so answers start with their content.

    Reads and rewrites: `text` (default `output`). Only a leading opener is removed, and only when
    text follows it; the first remaining letter is capitalised. The report's `modified` counts
    rewritten rows. Use it on distilled SFT responses, whose uniform openers a model would learn
    as filler.
    """

    reads = {"text": "output"}

    def __init__(self, pattern: str = OPENERS):
        self.pattern = pattern
        re.compile(pattern)

    def refine(self, text, cols):
        stripped = text.str.replace(f"(?i)^\\s*{self.pattern}", "")
        fixed = pl.concat_str(stripped.str.slice(0, 1).str.to_uppercase(), stripped.str.slice(1))
        return pl.when(stripped.str.strip_chars() != "").then(fixed).otherwise(text)


@register
class LanguageMatchFilter(Filter):
    """Drops pairs whose response is in another language than the instruction (a known failure of
    multilingual distillation), with the project's language identifier.

    Reads: `instruction`, `response` (defaults `instruction`, `output`). Writes optional
    `response_language` (String; off by default). A pair is judged only when both sides are
    identified with confidence >= `min_confidence` (short texts are often undecidable; those
    pass). Drop reason: `language_mismatch`. Use it after a `LanguageFilter` on the instruction.
    """

    reads = {"instruction": "instruction", "response": "output"}
    writes = {"response_language": None}

    def __init__(self, min_confidence: float = 0.5, backend: str = "cld2"):
        self.min_confidence, self.backend = min_confidence, backend

    def run(self, frame, cols):
        from operators.text.langid import detect_languages

        a = detect_languages(frame.get_column(cols["instruction"]), backend=self.backend)
        b = detect_languages(frame.get_column(cols["response"]), backend=self.backend)
        sure = (a.get_column("confidence") >= self.min_confidence) & (b.get_column("confidence") >= self.min_confidence)
        same = a.get_column("language").eq_missing(b.get_column("language"))
        keep = (~sure | same) if frame.height else pl.Series([], dtype=pl.Boolean)
        if cols.get("response_language"):
            frame = frame.with_columns(b.get_column("language").alias(cols["response_language"]) if frame.height else pl.lit(None, dtype=pl.String).alias(cols["response_language"]))
        return self.apply_keep(frame, {"language_mismatch": keep})


# --------------------------------------------------------------------------- selection


@register
class ScoreThresholdFilter(Filter):
    """Keeps rows whose score columns reach their thresholds (keep-by-threshold).

    Reads: the columns named in `thresholds` (column -> minimum, inclusive; e.g. {"quality": 4,
    "complexity": 2}; a Boolean column counts 1 for true, so {"grounded": 1} keeps true rows).
    Writes nothing. Drop reasons: `unscored:<column>` (null score: the judge
    failed), then `below:<column>`. Use it after LLM judges / reward scores; for a fixed budget use
    `TopKFilter` instead.
    """

    reads = {}
    writes = {}

    def __init__(self, thresholds: Mapping[str, float]):
        if not thresholds:
            raise ValueError("thresholds must name at least one column")
        self.thresholds = dict(thresholds)

    def input_columns(self, cols):
        return [(f"threshold column {c!r}", c) for c in self.thresholds]

    def keep(self, cols):
        keep = {f"unscored:{c}": pl.col(c).is_not_null() for c in self.thresholds}
        keep.update({f"below:{c}": pl.col(c).cast(pl.Float64) >= t for c, t in self.thresholds.items()})  # booleans count 1 / 0
        return keep


@register
class TopKFilter(Filter):
    """Keeps the `k` best rows by a score column (keep-top-k), or the best `fraction` of rows.

    Reads: `score` (default `score`), optional `tiebreak` (default none; a second score, higher
    first). Ties after that go to the smaller `_id`, so the choice is deterministic. Null scores
    rank last. Writes optional `rank` (UInt32, 1 = best; off by default). Drop reason:
    `below_top_k`. Applies to the frame it is given (in a partitioned run: per shard). Use it to
    fit a fixed SFT budget after scoring.
    """

    reads = {"score": "score", "tiebreak": None}
    writes = {"rank": None}

    def __init__(self, k: int | None = None, fraction: float | None = None):
        if (k is None) == (fraction is None):
            raise ValueError("give exactly one of k and fraction")
        if k is not None and k < 1 or fraction is not None and not 0 < fraction <= 1:
            raise ValueError("k must be >= 1 and fraction in (0, 1]")
        self.k, self.fraction = k, fraction

    def run(self, frame, cols):
        by = [pl.col(cols["score"]).fill_null(float("-inf")).cast(pl.Float64)]
        if cols.get("tiebreak"):
            by.append(pl.col(cols["tiebreak"]).fill_null(float("-inf")).cast(pl.Float64))
        order = frame.select(ID, *[b.alias(f"__k{i}") for i, b in enumerate(by)]).sort(
            [f"__k{i}" for i in range(len(by))] + [ID], descending=[True] * len(by) + [False]
        ).with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.UInt32).alias("__rank")).select(ID, "__rank")
        ranked = frame.join(order, on=ID, how="left", maintain_order="left")
        k = self.k if self.k is not None else max(1, round(self.fraction * frame.height))
        if cols.get("rank"):
            ranked = ranked.with_columns(pl.col("__rank").alias(cols["rank"]))
        return self.apply_keep(ranked, {"below_top_k": pl.col("__rank") <= k}).drop("__rank")


@register
class DeitaScoreCombiner(Evaluator):
    """Combines a quality and a complexity score into Deita's selection score (their product).

    Reads: `quality` (default `quality_score`), `complexity` (default `complexity_score`). Writes:
    `deita` (default `deita_score`, Float64: quality x complexity; null when either is null).
    Use it between the LLM judges and `TopKFilter`/`TagCoverageFilter`: Deita ranks by this
    product, so a row must be both well answered and non-trivial to rank high.
    """

    reads = {"quality": "quality_score", "complexity": "complexity_score"}
    writes = {"deita": "deita_score"}

    def __init__(self):
        pass

    def scores(self, cols):
        return [(pl.col(cols["quality"]).cast(pl.Float64) * pl.col(cols["complexity"]).cast(pl.Float64)).alias(cols["deita"])]


@register
class TagCoverageFilter(Filter):
    """InsTag-style diversity selection: walks the rows from the highest priority down and keeps a
    row only when its tags add at least `min_new_tags` tags not covered by the rows kept before it.

    Reads: `tags` (default `tags`, List[String]; compared lower-cased and trimmed), optional
    `priority` (default none; a score, higher first, e.g. the Deita score or the tag count; ties
    by `_id`). Writes optional `new_tags` (UInt32, tags the row added; off by default). Drop
    reasons: `no_tags` (null or empty list), `no_new_tags`. Use it after `InstructionTagger` to
    keep a diverse, complex subset (InsTag's complexity-first diverse sampling).
    """

    reads = {"tags": "tags", "priority": None}
    writes = {"new_tags": None}

    def __init__(self, min_new_tags: int = 1):
        self.min_new_tags = min_new_tags

    def run(self, frame, cols):
        tags = pl.col(cols["tags"]).list.eval(pl.element().str.to_lowercase().str.strip_chars()).list.unique()
        prio = pl.col(cols["priority"]).cast(pl.Float64).fill_null(float("-inf")) if cols.get("priority") else pl.lit(0.0)
        order = frame.select(ID, tags.alias("t"), prio.alias("p")).sort(["p", ID], descending=[True, False])
        seen: set[str] = set()
        added = []
        for row_tags in order.get_column("t").to_list():  # greedy set cover: each decision depends on all before it
            new = set(row_tags or ()) - seen
            n = len(new)
            if n >= self.min_new_tags:
                seen |= new
            added.append(n)
        counts = order.select(ID, pl.Series("__new", added, dtype=pl.UInt32), pl.col("t").list.len().alias("__n"))
        marked = frame.join(counts, on=ID, how="left", maintain_order="left")
        if cols.get("new_tags"):
            marked = marked.with_columns(pl.col("__new").alias(cols["new_tags"]))
        keep = {"no_tags": pl.col("__n").fill_null(0) > 0, "no_new_tags": pl.col("__new") >= self.min_new_tags}
        return self.apply_keep(marked, keep).drop("__new", "__n")


@register
class TopicBalancer(Filter):
    """Caps the number of rows per topic (topic balancing): keeps at most `max_per_topic` rows of
    each topic, the best-scored first.

    Reads: `topic` (default `topic`), optional `score` (default none; higher first, ties by `_id`).
    Writes nothing. Drop reason: `topic_over_quota`. Null topics form one group. Use it in
    synthesis so that a prolific seed topic does not dominate the dataset.
    """

    reads = {"topic": "topic", "score": None}
    writes = {}

    def __init__(self, max_per_topic: int = 50):
        if max_per_topic < 1:
            raise ValueError("max_per_topic must be >= 1")
        self.max_per_topic = max_per_topic

    def keep(self, cols):
        score = pl.col(cols["score"]).cast(pl.Float64).fill_null(float("-inf")) if cols.get("score") else pl.lit(0.0)
        # rank inside the topic: better score first, then smaller _id
        better = pl.struct((-score).alias("s"), pl.col(ID).alias("i")).rank("ordinal").over(cols["topic"])
        return {"topic_over_quota": better <= self.max_per_topic}


# --------------------------------------------------------------------------- row-making rules


@register
class SeedTopicExpander(Generator):
    """Expands seed topics into (topic, task type) rows: the seed grid of Condor-style synthesis.

    Reads: `topic` (default `topic`; one seed domain or topic per row). Writes: `task_type`
    (String, one row per entry of `task_types`), `parent_id` (String, the seed row's `_id`) and a
    new `_id` per row (`<parent>-t<k>`). Use it before `TopicQuestionGenerator` so that every
    topic is asked in several task styles (the "knowledge x task" grid of Condor).
    """

    reads = {"topic": "topic"}
    writes = {"task_type": "task_type", "parent": "parent_id"}
    DEFAULT_TASKS = ("explanation", "how-to", "comparison", "problem solving", "creative writing")

    def __init__(self, task_types: Sequence[str] = DEFAULT_TASKS):
        if not task_types or len(set(task_types)) != len(task_types):
            raise ValueError("task_types must be non-empty and distinct")
        self.task_types = tuple(task_types)

    def run(self, frame, cols):
        tasks = pl.DataFrame({cols["task_type"]: list(self.task_types), "__k": list(range(len(self.task_types)))})
        out = frame.with_row_index("__row").join(tasks, how="cross").sort("__row", "__k")
        return out.with_columns(
            pl.col(ID).alias(cols["parent"]), (pl.col(ID) + "-t" + pl.col("__k").cast(pl.String)).alias(ID)
        ).drop("__k", "__row")


@register
class DocumentChunker(Generator):
    """Splits long documents into chunks of about `max_words` words at paragraph (else line)
    boundaries, one row per chunk; chunks under `min_words` are dropped.

    Reads: `text` (default `text`). Writes: `chunk` (String), `chunk_index` (UInt32), `parent_id`
    (the document's `_id`) and a new `_id` per chunk (`<parent>-c<k>`). A paragraph longer than
    `max_words` stays whole in its own chunk. Use it before `QAPairGenerator` so each prompt
    holds one coherent passage (Text2QA over long web pages).
    """

    reads = {"text": "text"}
    writes = {"chunk": "chunk", "index": "chunk_index", "parent": "parent_id"}

    def __init__(self, max_words: int = 220, min_words: int = 40):
        if min_words > max_words:
            raise ValueError("min_words must be <= max_words")
        self.max_words, self.min_words = max_words, min_words

    def run(self, frame, cols):
        c, idx, parent = cols["chunk"], cols["index"], cols["parent"]
        paras = frame.select(ID, pl.col(cols["text"]).fill_null("").str.split("\n").alias("__p")).explode("__p")
        paras = paras.filter(pl.col("__p").str.strip_chars() != "").with_columns(words(pl.col("__p")).alias("__w"))
        # chunk k of a document holds the paragraphs whose words-before fall in [k*max, (k+1)*max)
        paras = paras.with_columns(
            ((pl.col("__w").cum_sum().over(ID) - pl.col("__w")) // self.max_words).cast(pl.UInt32).alias("__k")
        )
        chunks = (
            paras.group_by(ID, "__k", maintain_order=True)
            .agg(pl.col("__p").str.join("\n").alias(c), pl.col("__w").sum().alias("__n"))
            .filter(pl.col("__n") >= self.min_words)
            .with_columns(pl.col("__k").rank("dense").over(ID).cast(pl.UInt32).sub(1).alias(idx))
        )
        out = frame.join(chunks.drop("__n"), on=ID, how="inner", maintain_order="left")
        return out.with_columns(pl.col(ID).alias(parent), (pl.col(ID) + "-c" + pl.col(idx).cast(pl.String)).alias(ID)).drop("__k")


STOPWORDS = frozenset(
    ["the", "a", "an", "and", "or", "but", "of", "to", "in", "on", "for", "with", "by", "at", "from", "as", "is", "are", "was", "were", "be", "been", "being", "it", "its", "this", "that", "these", "those", "there", "their", "they", "them", "he", "she", "his", "her", "we", "our", "you", "your", "i", "not", "no", "yes", "which", "who", "whom", "what", "when", "where", "why", "how", "than", "then", "so", "such", "can", "could", "would", "should", "will", "may", "might", "must", "do", "does", "did", "done", "have", "has", "had", "about", "into", "over", "also", "more", "most"]
)


@register
class LexicalGroundingFilter(Filter):
    """Rule-based grounding pre-check: keeps answers whose content words mostly occur in the source.

    Reads: `answer` (default `answer`), `source` (default `text`). Writes optional `support`
    (Float64: the share of the answer's distinct content words, at least 3 letters and not stop
    words, found in the source; 1.0 for an answer with no content word; off by default). Drop
    reason: `answer_not_in_source`. Use it before the LLM `GroundednessJudge` to drop answers
    that invent most of their words, at no LLM cost.
    """

    reads = {"answer": "answer", "source": "text"}
    writes = {"support": None}

    def __init__(self, min_support: float = 0.6):
        self.min_support = min_support

    def support(self, cols) -> pl.Expr:
        stop = pl.lit(sorted(STOPWORDS))
        a = word_set(pl.col(cols["answer"]), 3).list.set_difference(stop)
        s = word_set(pl.col(cols["source"]), 3)
        n = a.list.len()
        return pl.when(n > 0).then(a.list.set_intersection(s).list.len() / n).otherwise(1.0).cast(pl.Float64)

    def scores(self, cols):
        return [self.support(cols).alias(cols["support"])] if cols.get("support") else []

    def keep(self, cols):
        return {"answer_not_in_source": self.support(cols) >= self.min_support}
