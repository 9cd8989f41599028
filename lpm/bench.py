"""Benchmarks, reported as ratios measured side by side in one run (`make bench`).

python -m lpm.bench overhead     # EnergyCallback cost per training step (target < 1%)
python -m lpm.bench projection   # projected vs fully measured energy and time (target < 5%)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lpm.energy.window import J_PER_KWH

CONF = Path(__file__).resolve().parents[1] / "conf"


def _compose(*overrides: str) -> Any:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=["logger=none", "gpus=cpu", "scale=cpu", *overrides])


def overhead(steps: int = 150, repeats: int = 5) -> dict[str, Any]:
    """lpm's lightest real workload (small 2D diffusion training on CPU) with and without the
    callback and its real meters, alternated so drift (thermal, other load) hits both alike.
    """
    import lightning.pytorch as pl
    import torch

    from lpm.config import resolve_spec
    from lpm.energy.callback import EnergyCallback
    from lpm.energy.meters import NodeMeters
    from lpm.workload.data import ImageDataModule, PhantomDataset
    from lpm.workload.ldm import AutoencoderModule, DiffusionModule

    spec = resolve_spec(_compose("model=small"), "cpu")
    module = DiffusionModule(spec, AutoencoderModule(spec).autoencoder)
    batch = spec.batch["diffusion"]
    images = torch.stack(
        [PhantomDataset(spec.image_size, steps * batch)[i] for i in range(steps * batch)]
    )
    meters = NodeMeters(tempfile.mkdtemp(prefix="lpm-bench-"), "DEU")

    def run(measured: bool) -> float:
        callbacks = [EnergyCallback(warmup=0, window=steps // 5, meters=meters)] if measured else []
        trainer = pl.Trainer(
            accelerator="cpu", max_steps=steps, logger=False, callbacks=callbacks,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        )  # fmt: skip
        data = ImageDataModule(images, batch)  # a tensor indexes like a dataset of images
        t0 = time.perf_counter()
        trainer.fit(module, data)
        return (time.perf_counter() - t0) / steps

    run(True)  # warm-up: CodeCarbon's first start probes the hardware (~1.5 s), oneDNN primitives
    base, with_cb = [], []
    for _ in range(repeats):
        base.append(run(False))
        with_cb.append(run(True))
    meters.close()
    b, w = statistics.median(base), statistics.median(with_cb)
    return {
        "workload": "diffusion training step, model=small dims=2d scale=cpu",
        "step_ms_without": b * 1e3,
        "step_ms_with": w * 1e3,
        "overhead_ratio": w / b - 1,
        "target": "< 0.01",
        "meters": {k: v for m in meters.meters or [] for k, v in m.methods.items()},
    }


def _within_run(unit: dict[str, Any], budget: int) -> tuple[float, float]:
    """(energy, seconds) ratios of a projection made inside a fully measured run to its total:
    its first sub-window taken as warm-up (a fixed cost), its second as the measured sample."""
    (n1, s1, j1), (n2, s2, j2) = unit["per_window"][:2]
    rest = budget - n1
    total_s = sum(w[1] for w in unit["per_window"])
    total_j = sum(w[2] for w in unit["per_window"])
    return (j1 + j2 / n2 * rest) / total_j, (s1 + s2 / n2 * rest) / total_s


def projection(samples: int = 40, iterations: int = 100, repeats: int = 3) -> dict[str, Any]:
    """Projection against full measurement, two ways, `repeats` times (median, min, max):

    - within_run: inside one fully measured run, the projection from its first tenth against
      its total. Same process, same conditions: the error of the method alone.
    - across_runs: a projected job against the same job measured in full, each in a fresh
      process as real jobs run. Adds run-to-run variation of the machine, which the full runs'
      own spread (`full_run_spread`: max/min of their totals) puts in scale.
    """
    import subprocess

    common = [
        "logger=none",
        "gpus=cpu",
        "scale=cpu",
        "model=small",
        f"target.autoencoder_iterations={iterations}",
        f"target.diffusion_iterations={iterations}",
        f"target.samples={samples}",
        "sampler=ddim",
        "sampler.steps=20",
        "batch.synthesis=4",
        "measure.windows=10",
    ]

    def job(full: bool) -> dict[str, Any]:
        job_dir = Path(tempfile.mkdtemp(prefix="lpm-bench-"))
        command = [sys.executable, "-m", "lpm.run", *common, f"measure.full={full}"]
        subprocess.run([*command, f"hydra.run.dir={job_dir}"], check=True, capture_output=True)
        return json.loads((job_dir / "record.json").read_text())["phases"]

    ratios: dict[str, dict[str, list[float]]] = {}
    full_totals: dict[str, list[float]] = {}

    def add(phase: str, key: str, value: float) -> None:
        ratios.setdefault(phase, {}).setdefault(key, []).append(value)

    for _ in range(repeats):
        projected, full = job(False), job(True)
        for phase, p in projected.items():
            measured = full[phase]["measured"]
            full_j = measured["energy_j"]["total"]
            full_totals.setdefault(phase, []).append(full_j)
            add(phase, "across_runs_energy", p["projected"]["energy_kwh"] * J_PER_KWH / full_j)
            add(phase, "across_runs_seconds", p["projected"]["seconds"] / measured["seconds"])
            # Synthesis interleaves units; its UNet evaluations dominate and are checked alone.
            unit = "step" if phase != "synthesis" else "unet"
            energy, seconds = _within_run(
                measured["units"][unit], measured["units"][unit]["iterations"]
            )
            add(phase, f"within_run_energy_{unit}", energy)
            add(phase, f"within_run_seconds_{unit}", seconds)
    report: dict[str, Any] = {
        phase: {
            **{
                key: {"median": statistics.median(v), "min": min(v), "max": max(v)}
                for key, v in r.items()
            },
            "full_run_spread": max(full_totals[phase]) / min(full_totals[phase]),
        }
        for phase, r in ratios.items()
    }
    report["target"] = "median within_run energy ratio within 1 ± 0.05"
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lpm.bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "which", nargs="*", choices=["overhead", "projection"], default=["overhead", "projection"]
    )
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    results = {name: globals()[name]() for name in args.which}
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
