"""prune-cli's Hydra plugins (found by Hydra in the ``hydra_plugins`` namespace): the joblib launcher and the
basic sweeper, planning a sweep's configs by shape (``prune_cli/app/sweeps.py``). Kept light: Hydra imports
every plugin module when it starts."""
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher


class ShapedJoblibLauncher(JoblibLauncher):
    """``hydra/launcher=joblib`` in prune-cli: Hydra's joblib launcher, one composition per sweep shape."""
    plans_batches = True

    def launch(self, job_overrides, initial_job_idx):
        from prune_cli.app.sweeps import launch
        return launch(self, job_overrides, initial_job_idx)


class ShapedBasicSweeper(BasicSweeper):
    """Hydra's basic sweeper, validating a batch with one composition per shape instead of one per job."""

    def sweep(self, arguments):
        try:
            return super().sweep(arguments)
        finally:
            from prune_cli.app.sweeps import release_workers
            release_workers(self.launcher)

    def validate_batch_is_legal(self, batch) -> None:
        from prune_cli.app.sweeps import validate_by_shape
        validate_by_shape(self, batch)
