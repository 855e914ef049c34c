"""Experiment trackers as callbacks: `training.loggers: [tensorboard, mlflow]`.

A tracker only mirrors what the run directory holds: when it cannot be written or reached, it says so once (stderr)
and stops, and training goes on; metrics.csv, the checkpoints and summary.json are complete either way. Only the
process that writes the run directory (MPI rank 0) logs.

    tensorboard   RUN/tensorboard/{train,validation,test}/ event files, read by `tensorboard --logdir runs/`:
                  loss and accuracy under the same names in train/ and validation/ (TensorBoard overlays them, as
                  for Keras), learning_rate and samples_per_second, gradient_norm/<layer> with
                  training.log_gradients, and the resolved config as text.
    mlflow        one MLflow run per dltrain run (a resumed run continues it): the resolved config flattened to
                  parameters (optimizer.lr, model.1.linear.units: MLflow allows no brackets), each epoch's
                  metrics (step = epoch), the test metrics, and config.yaml, summary.json, curves.png and the best
                  checkpoint as artifacts; by default into ./mlruns (mlflow.db and artifacts/: see it with
                  `mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db`).
"""

from __future__ import annotations

import abc
import json
import logging
import os
import sys
import time
from pathlib import Path

import yaml

from ..config import flatten_keys
from . import rundir as files
from .callbacks import Callback

TENSORBOARD_DIR = "tensorboard"
MLFLOW_RUN_FILE = "mlflow.json"  # the MLflow run this run directory logs to (a resumed run continues it)
_FINISHED = ("completed", "early_stopping", "pruned", "callback")


class _Tracker(Callback, abc.ABC):
    """A logger that turns itself off, with one warning, at its first failure. Subclasses give `imports()` (the
    package's parts, imported only when the run starts) and `start(trainer, parts)`."""

    name = "tracker"
    package = "tracker"

    def __init__(self):
        self.active = False

    def on_train_begin(self, trainer):
        if not trainer.run.writable:  # MPI ranks other than 0
            return
        self.active = True
        try:
            parts = self.imports()
        except ImportError:
            self.warn(f"the {self.package} package is not installed (pip install 'dltrain[{self.name}]')")
            return
        self.guarded(self.start, trainer, parts)

    @abc.abstractmethod
    def imports(self):
        """The package's parts the tracker uses (ImportError when it is not installed)."""

    @abc.abstractmethod
    def start(self, trainer, parts) -> None:
        """Open the tracker's destination for this run."""

    def warn(self, problem: str) -> None:
        self.active = False
        print(f"warning: training.loggers: {self.name}: {problem}; training goes on, the run directory is complete",
              file=sys.stderr, flush=True)
        try:
            self.shutdown()
        except Exception:  # noqa: BLE001 (already failing: what can be closed is closed)
            pass

    def shutdown(self) -> None:
        """Release what the tracker holds after it failed (files, threads, a run left open)."""

    def guarded(self, action, *args) -> None:
        if not self.active:
            return
        try:
            action(*args)
        except Exception as exc:  # noqa: BLE001 (a tracker's failure must never stop training)
            self.warn(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


# ---------------------------------------------------------------- TensorBoard


class TensorBoardLogger(_Tracker):
    name = package = "tensorboard"

    def imports(self):
        from tensorboard.compat.proto import event_pb2, summary_pb2  # noqa: PLC0415
        from tensorboard.plugins.text.summary_v2 import text_pb  # noqa: PLC0415
        from tensorboard.summary.writer.event_file_writer import EventFileWriter  # noqa: PLC0415

        return event_pb2, summary_pb2, text_pb, EventFileWriter

    def start(self, trainer, parts):
        self.event_pb2, self.summary_pb2, self.text_pb, writer_class = parts
        self.train_seconds = trainer.train_seconds
        root = trainer.run.path / TENSORBOARD_DIR
        self.writers = {}  # filled one by one: shutdown() closes the ones made if a later one fails
        for part in ("train", "validation"):
            self.writers[part] = writer_class(str(root / part))
        self.writer_class, self.root = writer_class, root
        if trainer.start_epoch == 0:
            text = yaml.safe_dump(trainer.config.to_dict(), sort_keys=False)
            # four spaces: TensorBoard renders markdown, and an indented block keeps the YAML as written
            summary = self.text_pb("config", "\n".join("    " + line for line in text.splitlines()))
            self._emit("train", summary, 0)

    def _emit(self, part: str, summary, step: int) -> None:
        self.writers[part].add_event(self.event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def _scalars(self, part: str, values: dict, step: int) -> None:
        values = {tag: float(v) for tag, v in values.items() if v not in (None, "")}
        if values:
            self._emit(part, self.summary_pb2.Summary(value=[self.summary_pb2.Summary.Value(tag=tag, simple_value=v)
                                                             for tag, v in values.items()]), step)

    def on_epoch_end(self, trainer, epoch, logs):
        self.guarded(self._epoch, trainer, epoch, logs)

    def _epoch(self, trainer, epoch, logs):
        seconds, self.train_seconds = trainer.train_seconds - self.train_seconds, trainer.train_seconds
        self._scalars("train", {"loss": logs.get("train_loss"), "accuracy": logs.get("train_accuracy"),
                                "learning_rate": logs.get("lr"),
                                "samples_per_second": len(trainer.splits.train) / seconds if seconds else None}, epoch)
        self._scalars("validation", {"loss": logs.get("val_loss"), "accuracy": logs.get("val_accuracy"),
                                     "mae": logs.get("val_mae"), "r2": logs.get("val_r2")}, epoch)
        if trainer.config.training.log_gradients:
            row = trainer.run.read_table(files.GRADIENTS)[-1]  # the row GradientLogger wrote for this epoch
            self._scalars("train", {f"gradient_norm/{k}": v for k, v in row.items() if k != "epoch"}, epoch)
        for writer in self.writers.values():
            writer.flush()  # a TensorBoard already open shows the epoch now

    def on_train_end(self, trainer, summary):
        self.guarded(self._close, summary)

    def shutdown(self):
        for writer in getattr(self, "writers", {}).values():
            writer.close()

    def _close(self, summary):
        if summary and ("test_loss" in summary):
            self.writers["test"] = self.writer_class(str(self.root / "test"))
            self._scalars("test", {"loss": summary.get("test_loss"), "accuracy": summary.get("test_accuracy"),
                                   "mae": summary.get("test_mae"), "r2": summary.get("test_r2")},
                          summary["epochs_run"])
        for writer in self.writers.values():
            writer.close()
        self.active = False


# ---------------------------------------------------------------- MLflow


LOCAL_STORE = Path("mlruns")  # the default: mlruns/mlflow.db (SQLite) and mlruns/artifacts/, beside the runs


def tracking_uri(settings) -> tuple[str, str | None]:
    """(tracking URI, artifact location for new experiments): MLFLOW_TRACKING_URI, else
    training.mlflow.tracking_uri, else a local SQLite store in ./mlruns (MLflow 3 keeps its plain-file store in
    maintenance mode and refuses it by default)."""
    given = os.environ.get("MLFLOW_TRACKING_URI") or settings.tracking_uri
    if given:
        return given, None
    folder = LOCAL_STORE.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri()


class MlflowLogger(_Tracker):
    name, package = "mlflow", "mlflow-skinny"

    def __init__(self, settings, experiment: str):
        super().__init__()
        self.settings, self.experiment = settings, settings.experiment or experiment

    def imports(self):
        from mlflow.entities import Metric, Param  # noqa: PLC0415
        from mlflow.tracking import MlflowClient  # noqa: PLC0415

        return Metric, Param, MlflowClient

    def start(self, trainer, parts):
        self.Metric, self.Param, client_class = parts
        # an unreachable server should cost seconds, not MLflow's default minutes of retries (set for this process,
        # unless the user set them)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its INFO lines about creating tables
        logging.getLogger("alembic").setLevel(logging.WARNING)
        self.uri, artifacts = tracking_uri(self.settings)
        marker = trainer.run.file(MLFLOW_RUN_FILE)
        if trainer.start_epoch and marker.is_file():  # a resumed run continues its MLflow run, where it is
            logged = json.loads(marker.read_text())
            self.uri, self.run_id = logged["tracking_uri"], logged["run_id"]
            self.client = client_class(tracking_uri=self.uri)
            self.client.update_run(self.run_id, status="RUNNING")
            return
        self.client = client_class(tracking_uri=self.uri)
        experiment_id = self._experiment_id(artifacts)
        run = self.client.create_run(experiment_id, run_name=trainer.run.path.name,
                                     tags={"dltrain.run_dir": str(trainer.run.path.resolve())})
        self.run_id = run.info.run_id
        files.atomic_write(marker, json.dumps({"tracking_uri": self.uri, "experiment": self.experiment,
                                               "run_id": self.run_id}).encode())
        settings = flatten_keys(trainer.config.to_dict())
        params = [self.Param(mlflow_key(key), _text(value)) for key, value in settings.items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per call
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def _experiment_id(self, artifacts: str | None) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found:
            return found.experiment_id
        try:
            return self.client.create_experiment(self.experiment, artifact_location=artifacts)
        except Exception:  # noqa: BLE001 (another process, e.g. a tune worker, created it first)
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

    def shutdown(self):
        if getattr(self, "run_id", None):
            self.client.set_terminated(self.run_id, status="FAILED")

    def _metrics(self, values: dict, step: int) -> None:
        now = int(time.time() * 1000)
        metrics = [self.Metric(key, float(v), now, step) for key, v in values.items() if v not in (None, "")]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def on_epoch_end(self, trainer, epoch, logs):
        self.guarded(self._metrics, {k: logs.get(k) for k in files.METRIC_COLUMNS if k != "epoch"}, epoch)

    def on_train_end(self, trainer, summary):
        self.guarded(self._finish, trainer, summary)

    def _finish(self, trainer, summary):
        if summary:
            figures = {k: summary.get(k) for k in ("test_loss", "test_accuracy", "test_mae", "test_r2", "best_value",
                                                   "train_samples_per_second", "total_seconds")}
            self._metrics(figures, summary["epochs_run"])
            self.client.set_tag(self.run_id, "dltrain.stop_reason", summary["stop_reason"])
        for name in (files.CONFIG, files.SUMMARY, files.CURVES, files.METRICS):
            if trainer.run.file(name).is_file():
                self.client.log_artifact(self.run_id, str(trainer.run.file(name)))
        if trainer.run.file(files.BEST).is_file():
            self.client.log_artifact(self.run_id, str(trainer.run.file(files.BEST)), "checkpoints")
        reason = summary["stop_reason"] if summary else "failed"
        status = "FINISHED" if reason in _FINISHED else "KILLED" if reason == "interrupted" else "FAILED"
        self.client.set_terminated(self.run_id, status=status)
        self.active = False


def mlflow_key(key: str) -> str:
    """model[1].linear.units -> model.1.linear.units: MLflow's names allow no brackets."""
    return key.replace("[", ".").replace("]", "")


def _text(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:6000]  # MLflow's limit on a parameter's value


def make_loggers(trainer) -> list[Callback]:
    training = trainer.config.training
    made = []
    for name in training.loggers:
        if name == "tensorboard":
            made.append(TensorBoardLogger())
        elif name == "mlflow":
            made.append(MlflowLogger(training.mlflow, trainer.config_name or trainer.run.path.name))
    return made
