"""The README's configuration reference is the generated one, and every field is documented."""

import dataclasses
import os

from hapair import reference

README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")


def test_every_field_of_every_section_is_documented():
    for heading, cls, docs in reference.SECTIONS:
        assert {f.name for f in dataclasses.fields(cls)} == set(docs), heading


def test_readme_carries_the_generated_reference():
    assert reference.check(README), "README.md is stale: paste `python -m hapair.reference` between its markers"
