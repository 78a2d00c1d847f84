"""The interface document stays true: generated files match the models; examples validate."""

from __future__ import annotations

import json
import re
from pathlib import Path

from pydantic import BaseModel

from agent import apidoc
from agent.commands import VERBS
from agent.messages import Alert, AlertAck, PositionReport
from agent.topics import INBOUND, OUTBOUND

DOC = Path(__file__).resolve().parent.parent / "docs" / "mqtt-api.md"


def test_generated_schemas_and_asyncapi_are_up_to_date() -> None:
    assert apidoc.stale() == [], "docs/ is stale: run `make api-docs` and commit the result"


def test_every_topic_and_verb_is_documented_for_people() -> None:
    text = DOC.read_text()
    for suffix in (*OUTBOUND, *INBOUND):
        assert f"<vehicle_id>/{suffix}`" in text, suffix
    for verb in VERBS:
        assert f"`{verb}`" in text, verb


def test_examples_in_the_document_validate_against_the_models() -> None:
    text = DOC.read_text()
    blocks = re.findall(r"```json\n(.*?)```", text, re.S)
    models: dict[str, type[BaseModel]] = {"position": PositionReport, "alert": Alert}
    checked = 0
    for block in blocks:
        data = json.loads(block)
        if data.get("kind") in models:
            models[data["kind"]].model_validate(data)
            checked += 1
        elif "action" in data:
            AlertAck.model_validate(data)
            checked += 1
    assert checked >= 3
