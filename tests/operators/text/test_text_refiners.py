from __future__ import annotations

import polars as pl
import pytest

from operators.text import refiners as R


def run(op, *texts):
    return op(pl.DataFrame({"text": list(texts)}, schema={"text": pl.String})).get_column("text").to_list()


def test_html_tag_remover():
    html = "<html><head><style>p {color: red}</style><script>var x = 1;</script></head><body><p>Fish &amp; chips</p><!-- c --><br/>3 &lt; 4</body></html>"
    assert run(R.HtmlTagRemover(), html) == ["\nFish & chips\n\n3 < 4"]


def test_html_entity_decoder():
    assert run(R.HtmlEntityDecoder(), "a &amp;lt; b &#33; &quot;q&quot;&nbsp;x") == ['a &lt; b ! "q" x']


def test_url_remover():
    assert run(R.UrlRemover(), "see https://a.com/x?y=1, and www.b.org/p now") == ["see , and  now"]
    assert run(R.UrlRemover("<URL>"), "go to http://x.io") == ["go to <URL>"]


def test_unicode_normalizer_nfkc():
    assert run(R.UnicodeNormalizer(), "ﬁne Ｆｕｌｌ ①\u00a0x") == ["fine Full 1 x"]


def test_whitespace_normalizer():
    assert run(R.WhitespaceNormalizer(), "  a \t\u00a0b  \r\n c\n\n\n\nd  ") == ["a b\nc\n\nd"]


def test_extra_spaces_remover():
    assert run(R.ExtraSpacesRemover(), " a  b\n\n c ") == ["a b c"]


def test_non_printable_remover():
    assert run(R.NonPrintableRemover(), "a\x00b\x07c\u200bd\ne\tf") == ["abcd\ne\tf"]


def test_emoji_remover():
    assert run(R.EmojiRemover(), "hi 😀 👍🏽 🇫🇷 ok ❤️ 1") == ["hi    ok  1"]


def test_lowercaser():
    assert run(R.Lowercaser(), "ÉCOLE Big") == ["école big"]


def test_citation_remover():
    text = "Paris[1] is big.[citation needed] It grew[12][edit] fast[3, 4] ok[a]"
    assert run(R.CitationRemover(extended=False), text) == ["Paris is big. It grew fast[3, 4] ok[a]"]
    assert run(R.CitationRemover(), text) == ["Paris is big. It grew fast ok"]


def test_pii_maskers():
    text = "Mail jo.doe+x@mail.example.com, call +1 555-123-4567 or (020) 7946 0958; host 192.168.0.1; year 1990-2000"
    out = run(R.IpAddressMasker(), text)[0]
    out = run(R.PhoneMasker(), out)[0]
    out = run(R.EmailMasker(), out)[0]
    assert out == "Mail <EMAIL>, call <PHONE> or <PHONE>; host <IP>; year 1990-2000"


def test_punctuation_normalizer():
    assert run(R.PunctuationNormalizer(), "“Hi” – it’s…!!!!!!") == ['"Hi" - it\'s...!!!']


def test_line_trimmer():
    assert run(R.LineTrimmer(), "  a  \n\n   \n b\n") == ["a\nb"]


def test_boilerplate_line_remover():
    assert run(R.BoilerplateLineRemover(), "Real text.\n© 2020 All Rights Reserved\nClick here to subscribe\nMore.") == [
        "Real text.\nMore."
    ]


def test_c4_line_cleaner_hand_checked():
    doc = "\n".join(
        [
            "Menu",  # no terminal punctuation
            "This line has enough words and ends well.",
            "Please enable JavaScript in your browser to continue.",
            "We use cookies to improve this site. Read our privacy policy.",
            "Too short.",  # 2 words
            "A cited claim about history.[1]",  # citation removed, then ends with "."
            "Ends with an ellipsis like this...",
            '"A quoted line of text that ends with a quote."',
        ]
    )
    assert run(R.C4LineCleaner(), doc) == [
        'This line has enough words and ends well.\nA cited claim about history.\n"A quoted line of text that ends with a quote."'
    ]


def test_c4_line_cleaner_matches_datatrove_on_real_docs(c4_frame):
    c4 = pytest.importorskip("datatrove.pipeline.filters.c4_filters")
    from datatrove.data import Document

    texts = c4_frame.get_column("text").head(200).to_list()
    ours = run(R.C4LineCleaner(), *texts)
    f = c4.C4QualityFilter(min_num_sentences=-1, filter_lorem_ipsum=False, filter_curly_bracket=False)
    same = 0
    for text, mine in zip(texts, ours):
        doc = Document(text=text, id="x")
        f.filter(doc)
        same += doc.text == mine
    assert same == len(texts)
