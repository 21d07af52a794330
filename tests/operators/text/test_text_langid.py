"""Language identification: every language the detector knows can be the answer (no forcing into a
short list), real sentences in Indonesian, Swahili, Vietnamese and English, and the "other"
bucket of a configured set."""

from __future__ import annotations

import polars as pl
import pytest

from operators.text.langid import (
    OTHER,
    LanguageFilter,
    LanguageIdentifier,
    detect_languages,
)

# Real sentences: news-style Indonesian, Article 1 of the Universal Declaration of Human Rights in
# Swahili and Vietnamese (official UN translations), everyday English, French and German.
SENTENCES = {
    "id": "Pemerintah Indonesia akan membangun jalan tol baru di Pulau Sumatera tahun depan untuk "
    "mengurangi kemacetan dan mempercepat distribusi barang.",
    "sw": "Watu wote wamezaliwa huru, hadhi na haki zao ni sawa. Wote wamejaliwa akili na dhamiri, "
    "hivyo yapasa watendeane kindugu.",
    "vi": "Tất cả mọi người sinh ra đều được tự do và bình đẳng về nhân phẩm và quyền lợi. Mọi con "
    "người đều được tạo hóa ban cho lý trí và lương tâm.",
    "en": "The weather is lovely today and we are going to the park with our children after lunch.",
    "fr": "Il fait beau aujourd'hui et nous allons au parc avec nos enfants après le déjeuner.",
    "de": "Das Wetter ist heute schön und wir gehen nach dem Mittagessen mit unseren Kindern in den Park.",
}


@pytest.fixture(scope="module")
def lang_frame():
    return pl.DataFrame({"text": [*SENTENCES.values(), "", None]}, schema={"text": pl.String})


@pytest.mark.parametrize("backend", ["cld2", pytest.param("lingua", marks=pytest.mark.slow)])  # lingua: ~40 s to load
def test_languages_outside_the_old_fifteen_are_not_forced_into_them(lang_frame, backend):
    # lingua restricted to 15 languages answered es / fr / pt for these three
    out = LanguageIdentifier(backend=backend)(lang_frame)
    assert out.get_column("language").to_list() == [*SENTENCES, None, None]
    conf = out.get_column("language_confidence").to_list()
    assert all(c > 0.5 for c in conf[: len(SENTENCES)]) and conf[-2:] == [0.0, 0.0]


def test_configured_set_reports_other_instead_of_forcing():
    out = detect_languages(pl.Series([SENTENCES["id"], SENTENCES["sw"], SENTENCES["en"], ""]), languages=("en", "es", "fr"))
    assert out.get_column("language").to_list() == [OTHER, OTHER, "en", None]


def test_language_filter_keeps_english_only(lang_frame):
    op = LanguageFilter(keep=("en",))
    out = op(lang_frame, language="lang", confidence="conf")
    assert out.get_column("text").to_list() == [SENTENCES["en"]]
    assert out.get_column("lang").to_list() == ["en"] and out.get_column("conf")[0] >= 0.65
    assert op.last_report.dropped == {"wrong_language": 7}


def test_control_characters_and_unknown_backend():
    out = detect_languages(pl.Series(["\x01" + SENTENCES["en"] + "\x7f"]))
    assert out.get_column("language").to_list() == ["en"]
    with pytest.raises(ValueError):
        LanguageFilter(backend="nope")


def test_c4_documents_are_english(c4_frame):
    out = LanguageIdentifier()(c4_frame.head(300))
    share = (out.get_column("language") == "en").mean()
    assert share >= 0.98, share
