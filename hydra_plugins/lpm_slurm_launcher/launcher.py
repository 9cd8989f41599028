"""lpm's Slurm launcher: hydra-submitit-launcher's, except for how a sweep ends.

A Hydra launcher must live in the `hydra_plugins` package to be found; what it adds lives in
:mod:`lpm.launcher`. Hydra imports this module whenever it starts: it stays light, and defines
nothing where hydra-submitit-launcher (lpm's `slurm` extra) is not installed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from omegaconf import OmegaConf

try:
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
except ImportError:  # no submitit launcher to extend, and no warning at every Hydra start
    SlurmLauncher = None

log = logging.getLogger(__name__)

if SlurmLauncher is not None:

    class LpmSlurmLauncher(SlurmLauncher):
        """Submits a sweep as one Slurm job array, as hydra-submitit-launcher 1.2 does; then
        waits for every job and ends the sweep with its summary also when some job left no
        result (:func:`lpm.launcher.collect`), instead of a traceback at the first such job."""

        def launch(
            self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
        ) -> Sequence[JobReturn]:
            # Up to `map_array`: hydra-submitit-launcher 1.2's `launch`, which cannot be
            # reused in part (it ends by raising at the first job without a result).
            import submitit

            from lpm.launcher import collect

            assert self.config is not None
            assert job_overrides
            init_keys = {"max_num_timeout", "submitit_folder"}
            executor = submitit.AutoExecutor(
                cluster=self._EXECUTOR,
                folder=self.params["submitit_folder"],
                **{
                    f"{self._EXECUTOR}_{k}": v
                    for k, v in self.params.items()
                    if k == "max_num_timeout"
                },
            )
            shared = set(OmegaConf.structured(BaseQueueConf).keys())
            executor.update_parameters(
                **{
                    k if k in shared else f"{self._EXECUTOR}_{k}": v
                    for k, v in self.params.items()
                    if k not in init_keys
                }
            )
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
            sweep_dir.mkdir(parents=True, exist_ok=True)
            if "mode" in self.config.hydra.sweep:
                sweep_dir.chmod(int(str(self.config.hydra.sweep.mode), 8))
            job_params: list[tuple[Any, ...]] = []
            for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
                log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
                job_params.append(
                    (list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}",
                     Singleton.get_state())
                )  # fmt: skip
            jobs = executor.map_array(self, *zip(*job_params, strict=True))
            return collect(self, jobs, job_overrides, initial_job_idx)
