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

CONF = Path(__file__).resolve().parents[1] / "conf"


def _compose(*overrides: str) -> Any:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=["logger=none", "gpus=cpu", "scale=cpu", *overrides])


def overhead(steps: int = 200, repeats: int = 5) -> dict[str, Any]:
    """Training steps with and without the callback and its real meters, alternated.

    Alternating A/B runs cancel drift (thermal, other load); the ratio of medians is reported.
    """
    import lightning.pytorch as pl
    import torch

    from lpm.energy.callback import EnergyCallback
    from lpm.energy.meters import NodeMeters

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(256, 256), torch.nn.GELU(), torch.nn.Linear(256, 1)
            )

        def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
            return self.net(batch).pow(2).mean()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters())

    data = torch.randn(steps * 32, 256)
    out = Path(tempfile.mkdtemp(prefix="lpm-bench-"))
    meters = NodeMeters(out, "DEU")

    def run(measured: bool) -> float:
        callbacks = [
            EnergyCallback(
                warmup=0,
                window=steps // 5,
                meters=meters,
            )
        ] if measured else []  # fmt: skip
        trainer = pl.Trainer(
            accelerator="cpu", max_steps=steps, logger=False, callbacks=callbacks,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        )  # fmt: skip
        loader = torch.utils.data.DataLoader(data, batch_size=32)
        t0 = time.perf_counter()
        trainer.fit(Tiny(), loader)
        return (time.perf_counter() - t0) / steps

    run(True)  # warm-up: CodeCarbon's first start probes the hardware (~1.5 s)
    base, with_cb = [], []
    for _ in range(repeats):
        base.append(run(False))
        with_cb.append(run(True))
    meters.close()
    b, w = statistics.median(base), statistics.median(with_cb)
    return {
        "step_ms_without": b * 1e3,
        "step_ms_with": w * 1e3,
        "overhead_ratio": w / b - 1,
        "target": "< 0.01",
        "meters": {k: v for m in meters.meters or [] for k, v in m.methods.items()},
    }


def projection(samples: int = 40, iterations: int = 100) -> dict[str, Any]:
    """One small job projected from its windows, and the same job measured over its whole budget.

    Each runs in a fresh process, as a real job does: one-time start-up costs land in both.
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
    ]
    phases: dict[str, dict[str, Any]] = {}
    for mode in ("projected", "full"):
        job_dir = Path(tempfile.mkdtemp(prefix=f"lpm-bench-{mode}-"))
        command = [sys.executable, "-m", "lpm.run", *common, f"measure.full={mode == 'full'}"]
        subprocess.run([*command, f"hydra.run.dir={job_dir}"], check=True, capture_output=True)
        phases[mode] = json.loads((job_dir / "record.json").read_text())["phases"]
    report: dict[str, Any] = {}
    for phase in ("autoencoder", "diffusion", "synthesis"):
        p, f = phases["projected"][phase], phases["full"][phase]
        measured = [f["measured"], *f["measured"]["warmup"].values()]
        full_kwh = sum(block["energy_j"]["total"] for block in measured) / 3.6e6
        full_seconds = sum(block["seconds"] for block in measured)
        report[phase] = {
            "projected_kwh": p["projected"]["energy_kwh"],
            "projected_kwh_ci95": p["projected"]["energy_kwh_ci95"],
            "full_measured_kwh": full_kwh,
            "energy_ratio": p["projected"]["energy_kwh"] / full_kwh,
            "seconds_ratio": p["projected"]["seconds"] / full_seconds,
        }
    report["target"] = "energy_ratio within 1 ± 0.05"
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
