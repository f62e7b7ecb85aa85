"""What the docs and the README say, as text: they speak of the project alone (no issue numbers),
claim no bit-identity across CPUs, open with the two commands and the headline tables, agree with
the command line on the demo's duration and on what `mechtrunc report` reads, and use training
names in the language model's examples."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: every page of the docs and the README
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_docs_name_no_issue_and_no_lent_machine(page):
    text = page.read_text()
    found = re.findall(r"(?i)\bissues? \d+|\blent\b|\bsessions?\b", text)
    assert not found, f"{page.name} speaks of {found}: the docs speak of the project alone"


def test_no_claim_of_the_same_numbers_on_every_cpu():
    for page in PAGES:
        text = re.sub(r"\s+", " ", page.read_text())
        for claim in ("Same numbers on every", "exactly the model of", "the same on AVX2 and AVX-512"):
            assert claim not in text, (page.name, claim)


def test_readme_opens_with_the_two_commands_then_the_headline_tables():
    text = (ROOT / "README.md").read_text()
    assert text.startswith("```bash\nmake demo   #"), text[:80]
    assert text.split("\n")[2].startswith("make test   #")
    title = text.index("\n# mechtrunc")
    for name in ("readme-toy", "readme-lm"):
        at = text.index(f"<!-- BEGIN generated:{name} -->")
        assert at < title, name  # under the commands, before anything else


def test_demo_help_readme_and_results_agree_on_the_demo_time():
    from mechtrunc.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    help_text = sub.choices["demo"].description
    when = re.search(r"\d+(?: to \d+)? (?:s|minutes?) on \d+ cores", help_text)
    assert when, help_text
    for page in ("README.md", "docs/results.md"):
        assert when.group(0) in re.sub(r"\s+", " ", (ROOT / page).read_text()), (page, when.group(0))


def test_report_help_names_every_kind_the_report_reads():
    from mechtrunc._choices import REPORT_KINDS
    from mechtrunc.cli import build_parser
    from mechtrunc.report import _default_sections

    assert set(REPORT_KINDS) == set(_default_sections())
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    description = sub.choices["report"].description
    for name in REPORT_KINDS.values():
        assert name in description, (name, description)


def test_lm_examples_use_training_names():
    """docs/lm.md and mechtrunc.models.lm.prompts illustrate prompts with names the model trains on (a
    held-out name is never a target in training)."""
    from mechtrunc.models.lm.lexicon import DEFAULT_HELDOUT_NAMES

    for path in (ROOT / "docs" / "lm.md", ROOT / "mechtrunc" / "models" / "lm" / "prompts.py"):
        quoted = " ".join(re.findall(r'"[^"\n]*"', path.read_text()))
        held = sorted({n for n in DEFAULT_HELDOUT_NAMES if re.search(rf"\b{n}\b", quoted)})
        assert not held, (path.name, held)


def test_lm_page_does_not_call_its_study_unrun():
    text = (ROOT / "docs" / "lm.md").read_text()
    opening = text[:text.index("\n## ")]
    assert "not been run" not in opening and "The study" in opening, opening
