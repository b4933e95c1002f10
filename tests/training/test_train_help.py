"""``python -m training.train --help`` shows real defaults only (not "None", nor a store_false flag's
inverted value)."""

from __future__ import annotations

import pytest

from training.methods import METHOD_NAMES
from training.train import build_parser


@pytest.mark.parametrize("method", [None, *METHOD_NAMES])
def test_help_shows_only_real_defaults(method: str | None) -> None:
    text = " ".join(build_parser(method).format_help().split())  # argparse wraps lines anywhere
    assert "(default: None)" not in text
    assert "(default: True)" not in text and "(default: False)" not in text, "on/off flags have no default to show"
    assert "skip TensorBoard logs" in text
    assert "(default: 2)" in text and "(default: 0.1)" in text, "real defaults are still shown"
    assert text.count("(default: the method's)") == 2, "a help that names its default gets no second one"
