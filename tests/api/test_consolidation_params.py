"""The early stop's and the wall-time bound's settings reach a job by every front end with one set of defaults:
ConsolidationConfig's (`logmem consolidate` flags, POST /v1/consolidations fields, LOGMEM_CONSOLIDATE_PARAMS)."""

from __future__ import annotations

import pytest
from logmem.api.cli import build_parser
from logmem.api.schemas import ConsolidationIn
from logmem.model.config import ConsolidationConfig
from pydantic import ValidationError

STOP = ("eval_every", "min_steps", "patience", "min_gain", "max_seconds")


def test_the_cli_and_the_api_default_to_the_configs_values() -> None:
    args = build_parser().parse_args(["consolidate"])
    defaults = ConsolidationConfig()
    assert {k: getattr(args, k) for k in STOP} == {k: getattr(defaults, k) for k in STOP}
    assert not set(STOP) & set(ConsolidationIn().params())  # unset: the config's defaults apply
    args = build_parser().parse_args(["consolidate", "--eval-every", "3", "--min-steps", "6", "--patience", "4",
                                      "--min-gain", "0.01", "--max-seconds", "120"])
    assert {k: getattr(args, k) for k in STOP} == {"eval_every": 3, "min_steps": 6, "patience": 4, "min_gain": 0.01,
                                                   "max_seconds": 120.0}


def test_the_api_takes_them_and_checks_them() -> None:
    body = ConsolidationIn(eval_every=2, min_steps=4, patience=1, min_gain=0.0, max_seconds=900)
    config = ConsolidationConfig(**body.params())
    assert (config.eval_every, config.min_steps, config.patience, config.min_gain, config.max_seconds) == (
        2, 4, 1, 0.0, 900)
    with pytest.raises(ValidationError, match="max_seconds"):
        ConsolidationIn(max_seconds=-1)
    with pytest.raises(ValidationError, match="min_steps"):
        ConsolidationIn(min_steps=-1)
    with pytest.raises(ValidationError, match="patience"):
        ConsolidationIn(patience=-2)
