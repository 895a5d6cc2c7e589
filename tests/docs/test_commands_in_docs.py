"""Commands the README and the guides tell a user to paste, checked against what they depend on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GUIDES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@pytest.mark.parametrize("guide", GUIDES, ids=[g.name for g in GUIDES])
def test_the_dataset_load_starts_only_after_the_volume_owner_job_completed(guide):
    """k8s/data/10-load-dataset.yaml writes as UID 10001 into volumes that 00-volume-owner.yaml chowns: applying
    the folder at once starts both Jobs together and the load fails on a volume it may not write yet."""
    text = guide.read_text().replace("\\\n", " ")
    assert not re.search(r"kubectl apply[^\n]* -f k8s/data/?(\s|$)", text), f"{guide.name} applies k8s/data/ at once"
    for load in re.finditer(r"kubectl apply -f k8s/data/10-load-dataset\.yaml", text):
        before = text[: load.start()]
        assert "wait --for=condition=complete job/partialfc-volume-owner" in before, (guide.name, load.start())
