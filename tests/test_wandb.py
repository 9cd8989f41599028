"""The W&B run of each job, read back from its offline run file: config (axes and resolved
config), group, job type, tags, summary, history; and W&B writes nothing outside the job."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import wandb
from conftest import REPO, SHORT_DIRNAMES, SIZE_2D, TINY, lpm_run, read_record
from test_report import make_record
from test_report_quality import with_efficiency, with_embodied, with_quality
from wandb.proto import wandb_internal_pb2

from lpm.record.sinks import (
    WANDB_TARGET,
    close_wandb,
    keep_wandb_in,
    log_wandb,
    tags,
    wandb_summary,
)

BLOCK = 32 * 1024  # the .wandb file is a LevelDB-style log: 32 KiB blocks of chunked records
HEADER = 7  # ":W&B", a 2-byte magic and a version byte; each chunk: crc32, length, type
FULL, LAST = 1, 4


@dataclass
class WandbRun:
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def read_run(path: Path) -> WandbRun:
    """What an offline run file holds (W&B 0.31 ships no reader of its own)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    run, pos, chunk = WandbRun(), HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        chunk += data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind not in (FULL, LAST):
            continue
        record = wandb_internal_pb2.Record.FromString(chunk)
        chunk = b""
        kind_name = record.WhichOneof("record_type")
        if kind_name == "run":
            run.group, run.job_type = record.run.run_group, record.run.job_type
            run.tags = list(record.run.tags)
            updates = record.run.config.update
        elif kind_name == "config":
            updates = record.config.update
        elif kind_name == "summary":
            run.summary |= {_key(u): json.loads(u.value_json) for u in record.summary.update}
            continue
        elif kind_name == "history":
            run.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
            continue
        else:
            continue
        run.config |= {u.key: json.loads(u.value_json) for u in updates}
    return run


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under `root` with its size and modification time."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


# Variables that would send what lands under $HOME elsewhere: unset, so the test sees lpm's own.
HOME_ELSEWHERE = (
    *("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "MPLCONFIGDIR"),
    *("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"),
)


class Sweep(NamedTuple):
    out: Path
    proc: subprocess.CompletedProcess[str]
    home_before: dict[str, tuple[int, int]]
    home_after: dict[str, tuple[int, int]]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    """Two tiny W&B jobs in one process, $HOME an empty directory but for matplotlib's font cache
    (Lightning imports matplotlib; any machine that ran it once has that cache)."""
    tmp = tmp_path_factory.mktemp("wandb")
    home, out = tmp / "home", tmp / "sweep"
    home.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        for key in HOME_ELSEWHERE:
            mp.delenv(key, raising=False)
        cache = [sys.executable, "-c", "import matplotlib.font_manager"]
        subprocess.run(cache, check=True, cwd=REPO, env=dict(os.environ), capture_output=True)
        before = tree(home)
        args = [o for o in TINY if o != "logger=none"]
        proc = lpm_run(*args, "logger=wandb", *SIZE_2D, "model=small,base", SHORT_DIRNAMES,
                       out=out, multirun=True)  # fmt: skip
        after = tree(home)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return Sweep(out, proc, before, after)


def jobs(sweep: Sweep) -> dict[str, tuple[dict[str, Any], WandbRun]]:
    """Model -> (record, W&B run) for each job of the sweep."""
    found = {}
    for path in sorted(sweep.out.glob("*/record.json")):
        (run_file,) = path.parent.glob("wandb/offline-run-*/run-*.wandb")
        record = read_record(path.parent)
        found[record["axes"]["model"]] = (record, read_run(run_file))
    assert sorted(found) == ["base", "small"]
    return found


def test_the_run_config_holds_the_axes_and_the_resolved_config(sweep: Sweep) -> None:
    for model, (record, run) in jobs(sweep).items():
        axes = record["axes"]
        assert {k: run.config[k] for k in axes} == axes  # the precision that ran, too
        cfg = run.config["cfg"]
        assert cfg["model"]["name"] == model and cfg["dims"]["image_size"] == [16, 16]
        assert cfg["logger"]["_target_"] == WANDB_TARGET
        assert cfg["measure"]["windows"] == 3  # resolved and complete, not just the overrides


def test_the_run_is_grouped_by_sweep_typed_and_tagged_by_its_axes(sweep: Sweep) -> None:
    for model, (record, run) in jobs(sweep).items():
        assert run.group == sweep.out.name
        assert run.job_type == f"{model}-2d"
        assert run.tags == tags(record["axes"])
        assert {f"model={model}", "dims=2d", "scale=cpu"} <= set(run.tags)


def test_the_summary_holds_projected_kwh_and_co2e_per_phase_and_verdicts(sweep: Sweep) -> None:
    for record, run in jobs(sweep).values():
        for name, phase in record["phases"].items():
            key = f"projected/{name}"
            assert run.summary[f"{key}/energy_kwh"] == phase["projected"]["energy_kwh"]
            assert [run.summary[f"{key}/energy_kwh_{b}"] for b in ("lo", "hi")] == (
                phase["projected"]["energy_kwh_ci95"]
            )
            assert run.summary[f"{key}/co2e_kg"] == phase["co2e_kg"]["projected"]
            assert run.summary[f"verdict/{name}"] == phase["verdict"]["status"]
        totals = record["totals"]
        assert run.summary["projected/total/energy_kwh"] == totals["energy_kwh"]
        assert run.summary["projected/total/co2e_kg"] == pytest.approx(totals["co2e_kg"])
        assert run.summary["projected/total/car_km"] == totals["car_km"]


def test_the_summary_holds_each_phases_flops_and_embodied_kg(sweep: Sweep) -> None:
    for record, run in jobs(sweep).values():
        for name, phase in record["phases"].items():
            efficiency = phase["efficiency"]
            for unit, flops in efficiency["flops_per_iteration"].items():
                key = f"efficiency/{name}/{unit}"
                assert run.summary[f"{key}/flops"] == flops
                joules = efficiency["joules_per_pflop"][unit]
                assert run.summary.get(f"{key}/j_per_pflop") == (joules or {}).get("value")
                assert run.summary.get(f"{key}/mfu") == (efficiency["mfu"] or {}).get(unit)
                low = ((efficiency.get("mfu_ci95") or {}).get(unit) or [None])[0]
                assert run.summary.get(f"{key}/mfu_lo") == low
            embodied = phase["embodied_kg"]["projected"]
            assert run.summary[f"projected/{name}/embodied_kg"] == pytest.approx(embodied)
        totals = record["totals"]
        assert run.summary["projected/total/embodied_kg"] == pytest.approx(totals["embodied_kg"])
        assert run.summary["projected/total/co2e_with_embodied_kg"] == pytest.approx(
            totals["co2e_with_embodied_kg"]
        )


def test_the_history_has_power_and_energy_of_every_window(sweep: Sweep) -> None:
    for record, run in jobs(sweep).values():
        for name, phase in record["phases"].items():
            for unit, measured in phase["measured"]["units"].items():
                key = f"energy/{name}/{unit}"
                logged = [row for row in run.history if f"{key}/joules_per_it" in row]
                windows = measured["per_window"]
                assert [row[f"{key}/joules_per_it"] for row in logged] == pytest.approx(
                    [joules / iterations for iterations, _, joules in windows]
                )
                for component in measured["energy_j"].keys() - {"total"}:
                    assert all(row[f"{key}/{component}_w"] > 0 for row in logged)


def test_the_summary_holds_quality_efficiency_and_embodied_flat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record with the contract's newer blocks, logged to an offline run in this process and
    read back from the run file."""
    record = with_embodied(with_efficiency(with_quality(make_record(), 25.0, fid=33.0)))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    keep_wandb_in(tmp_path)
    try:
        wandb.init(project="lpm-test", mode="offline", dir=tmp_path)
        assert log_wandb(record)
    finally:
        close_wandb()
    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    summary = read_run(run_file).summary
    assert summary["quality/sampler/psnr_db"] == 25.0
    assert summary["quality/sampler/psnr_db_lo"] == 23.5
    assert summary["quality/autoencoder/ssim"] == 0.9 and summary["quality/fid"] == 33.0
    assert summary["quality/diversity/ms_ssim"] == 0.3
    assert summary["quality/sampler/identical"] is False
    assert summary["efficiency/synthesis/unet/flops"] == 2e12
    assert summary["efficiency/synthesis/decode/j_per_pflop"] == 1000.0
    assert summary["efficiency/diffusion/step/mfu"] == 0.3
    assert summary["projected/total/embodied_kg"] == record["totals"]["embodied_kg"]
    assert summary["projected/total/co2e_with_embodied_kg"] == pytest.approx(
        record["totals"]["co2e_with_embodied_kg"]
    )
    assert summary["projected/total/co2e_kg"] == pytest.approx(record["totals"]["co2e_kg"])
    new = {
        k: v
        for k, v in wandb_summary(record).items()
        if k.startswith(("quality/", "efficiency/")) or "embodied" in k
    }
    assert len(new) > 30 and {k: summary[k] for k in new} == new


def test_nothing_under_home_changes_and_each_job_keeps_its_own_wandb_files(sweep: Sweep) -> None:
    assert sweep.home_after == sweep.home_before
    for path in sweep.out.glob("*/record.json"):
        wandb_dir = path.parent / "wandb"
        assert list(wandb_dir.glob("cache/wandb/logs/core-debug-*.log")), path.parent.name
        assert list(wandb_dir.glob("data/artifacts/staging/*")), path.parent.name


def test_the_wandb_directories_are_given_back_after_the_job(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_CACHE_DIR", "/users/cache")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.delenv("WANDB_DATA_DIR", raising=False)
    keep_wandb_in(tmp_path / "job1")
    assert os.environ["WANDB_DIR"] == str(tmp_path / "job1")
    assert os.environ["WANDB_CACHE_DIR"] == str(tmp_path / "job1" / "wandb" / "cache")
    close_wandb()
    assert os.environ["WANDB_CACHE_DIR"] == "/users/cache"
    assert "WANDB_DIR" not in os.environ and "WANDB_DATA_DIR" not in os.environ


def test_no_wandb_warnings_on_the_console(sweep: Sweep) -> None:
    output = sweep.proc.stdout + sweep.proc.stderr
    assert "wandb: WARNING" not in output and "anonymous" not in output
