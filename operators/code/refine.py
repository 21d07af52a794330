"""Code refiners: whitespace normalisation and licence-header removal (vectorised)."""

from __future__ import annotations

import polars as pl

from operators.base import Refiner, register


@register
class CodeWhitespaceNormalizer(Refiner):
    """Normalises line endings and trailing whitespace of source code: CRLF / CR -> LF, spaces and
    tabs at line ends removed, runs of more than `max_blank_lines` blank lines collapsed, exactly
    one final newline. Indentation is never touched (tabs stay tabs), so Python keeps its meaning.

    Reads and rewrites: `text` (default `code`). Use it first, so dedup and length filters see
    through editor noise (MBPP, for one, ships CRLF files).
    """

    reads = {"text": "code"}

    def __init__(self, max_blank_lines: int = 2):
        if max_blank_lines < 0:
            raise ValueError("max_blank_lines must be >= 0")
        self.max_blank_lines = max_blank_lines

    def refine(self, text, cols):
        blank = "\n" * (self.max_blank_lines + 1)
        return (
            text.str.replace_all("\r\n", "\n", literal=True)
            .str.replace_all("\r", "\n", literal=True)
            .str.replace_all(r"(?m)[ \t]+$", "")
            .str.replace_all(r"\n{" + str(self.max_blank_lines + 2) + r",}", blank)
            .str.strip_chars("\n")
            + "\n"
        )


@register
class LicenseHeaderRemover(Refiner):
    """Removes a licence / copyright comment block at the top of a file (`#`, `//` or `/* */`
    comments mentioning a licence, copyright or SPDX identifier), keeping a shebang and encoding
    line. Licence boilerplate is repeated verbatim across millions of files and teaches nothing.

    Reads and rewrites: `text` (default `code`). Files without such a header are unchanged.
    """

    reads = {"text": "code"}

    _HEADER = (
        r"^(?P<keep>(?:#![^\n]*\n)?(?:#[^\n]*coding[:=][^\n]*\n)?)"
        r"(?P<block>(?:[ \t]*(?:#|//)[^\n]*\n)+|[ \t]*/\*(?s:.*?)\*/[ \t]*\n)"
    )

    def refine(self, text, cols):
        block = text.str.extract(self._HEADER, 2)
        is_license = block.str.contains(r"(?i)licen[sc]e|copyright|\(c\)|spdx-license-identifier|all rights reserved")
        stripped = text.str.replace(self._HEADER, "${keep}").str.strip_chars_start("\n")
        return pl.when(is_license.fill_null(False)).then(stripped).otherwise(text)
