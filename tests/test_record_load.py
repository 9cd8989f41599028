"""The one record loader `lpm.price` and `lpm.report` share."""

from __future__ import annotations

import json
from pathlib import Path

from lpm.record.load import check, dig, load_records

OK = {"schema": "lpm.record/1", "status": "ok", "carbon": {"pue": 1.2}}


def test_names_are_relative_to_the_root_and_sorted(tmp_path: Path) -> None:
    for name in ("b/job2", "a", "b/job1"):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "record.json").write_text(json.dumps(OK))
    loaded = load_records(tmp_path)
    assert [r.name for r in loaded] == ["a", "b/job1", "b/job2"]
    assert all(r.ok and r.record == OK and r.error is None for r in loaded)
    # A job directory given itself is named after itself.
    assert [r.name for r in load_records(tmp_path / "a")] == ["a"]


def test_required_keys_make_an_ok_record_incomplete() -> None:
    assert check(OK, ("carbon.pue",)) == ("ok", None)
    many = [f"x.k{i}" for i in range(6)]
    assert check(OK, ("carbon.zone", *many[:1])) == (
        "incomplete",
        "status ok but missing carbon.zone, x.k0",
    )
    assert check(OK, many)[1] == "status ok but missing x.k0, x.k1, x.k2, x.k3 and 2 more"
    # Only ok records are held to them: a failed job is listed under its own status and error.
    failed = {**OK, "status": "failed", "error": "boom"}
    assert check(failed, ("carbon.zone",)) == ("failed", "boom")


def test_statuses_of_unusable_records() -> None:
    assert check([OK]) == ("unreadable", "not a JSON object but list")
    assert check({**OK, "schema": "lpm.record/0"})[0] == "unsupported"
    assert check({**OK, "status": None}) == ("incomplete", "unknown status None")
    assert check({**OK, "status": "running"}) == (
        "running",
        "no final status: the job was killed mid-run",
    )


def test_dig() -> None:
    assert dig({"a": {"b": 0}}, "a.b") == 0
    assert dig({"a": [1]}, "a.b") is None and dig(None, "a") is None
