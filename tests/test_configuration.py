"""docs/configuration.md is generated from the settings object and never stale."""

from __future__ import annotations

from scripts.gen_configuration import OUTPUT, render


def test_every_setting_is_described_and_the_page_is_current() -> None:
    # render() raises on a setting without a description or an undescribed computed default.
    assert OUTPUT.read_text(encoding="utf-8") == render(), (
        "docs/configuration.md is stale: run `python scripts/gen_configuration.py`"
    )


def test_the_page_names_every_setting_once() -> None:
    from botmodels.config import Settings

    text = OUTPUT.read_text(encoding="utf-8")
    for name in Settings.model_fields:
        assert text.count(f"| `BOTMODELS_{name.upper()}` |") == 1, name
