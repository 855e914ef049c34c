"""dltrain tune CONFIG [--space SPACE.yaml] [--trials N] [--workers K] [--storage URL] [--storage-timeout SECONDS]
[--study NAME] [--dir DIR] [--timeout SECONDS] [--device D] [--set k=v]... [--code FILE]"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import typer

from .options import CODE_OPTION
from .output import print_table


def tune(
    config: Path = typer.Argument(..., metavar="CONFIG",
                                  help="The config to search around (its `tune:` section, or --space)."),
    space: Path | None = typer.Option(None, "--space", metavar="FILE", help="A YAML file with the `tune:` section."),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE",
                                   help="Override a config key in every trial (repeatable)."),
    trials: int | None = typer.Option(None, "--trials", min=1, metavar="N",
                                      help="Finished trials to reach (default tune.trials)."),
    workers: int = typer.Option(1, "--workers", min=1, metavar="N",
                                help="Local processes running trials side by side."),
    storage: str | None = typer.Option(None, "--storage", metavar="URL", envvar="DLTRAIN_STORAGE", show_envvar=True,
                                       help="An SQLAlchemy URL shared by workers on several machines, e.g. "
                                            "postgresql+psycopg2://user:password@host/db "
                                            "(default: sqlite in the study directory; from the environment, "
                                            "a password stays out of `ps`)."),
    storage_timeout: int = typer.Option(10, "--storage-timeout", min=1, metavar="SECONDS",
                                        help="Seconds a --storage database server has to answer a connection "
                                             "(PostgreSQL, MySQL)."),
    study: str | None = typer.Option(None, "--study", metavar="NAME",
                                     help="The study's name (default: the config file's name)."),
    directory: Path | None = typer.Option(None, "--dir", metavar="DIR",
                                          help="The study directory (default runs/<study>)."),
    timeout: float | None = typer.Option(None, "--timeout", min=0, metavar="SECONDS",
                                         help="Start no trial after this many seconds (running ones finish)."),
    device: str | None = typer.Option(None, "--device", metavar="DEVICE", help="cpu, gpu or auto, for every trial."),
    code: list[Path] = CODE_OPTION,
    worker: int | None = typer.Option(None, "--worker", hidden=True, metavar="N",
                                      help="Run as worker N of a --workers study."),
) -> None:
    """Search hyperparameters with Optuna: each trial a run directory; trials.csv, best.yaml and plots at the end."""
    from ..errors import ConfigError, Interrupted, SearchIncomplete, Terminated  # noqa: PLC0415
    from ..plugins import load_code  # noqa: PLC0415
    from ..training.trainer import sigterm_interrupts  # noqa: PLC0415
    from ..tune.space import load_search  # noqa: PLC0415

    load_code(code)
    search = load_search(config, set_, space)  # the whole search checked before Optuna is imported
    if trials is not None:
        search.trials = trials
    try:
        from ..tune import study as studies  # noqa: PLC0415
    except ImportError as exc:
        raise ConfigError(f"dltrain tune needs Optuna ({exc}): pip install 'dltrain[tune]'") from None
    name = study or config.stem
    study_dir = directory or Path("runs") / name
    url = storage or studies.default_storage(study_dir)
    if storage is None:  # SQLite in the study directory: the directory first, removed again if the study fails
        created = _make_dir(study_dir)
        database_existed = (study_dir / studies.STORAGE_FILE).exists()
        try:
            opened = studies.open_study(search, studies.open_storage(url, storage_timeout), name, worker or 0)
        except BaseException:
            if not database_existed:
                (study_dir / studies.STORAGE_FILE).unlink(missing_ok=True)
            _remove_empty(created)
            raise
    else:  # a database server: the directory only once the study is open there
        opened = studies.open_study(search, studies.open_storage(url, storage_timeout), name, worker or 0)
        _make_dir(study_dir)
    deadline = None if timeout is None else time.time() + timeout
    if worker is not None:
        studies.run_worker(search, opened, study_dir, device=device, deadline=deadline, announce=_say)
        return

    _say(f"study {name!r} in {study_dir}"
         + (f" (storage {studies.mask_url(storage)})" if storage else "")
         + f": {studies.target_trials(search)} trials, {search.metric} "
         f"({search.direction}), sampler {search.sampler}, pruner {search.pruner}"
         + (f", {workers} workers" if workers > 1 else "")
         + (f"; trials keep their best {search.monitor} epoch (training.early_stopping.monitor)"
            if search.monitor != search.metric else ""))
    started = time.perf_counter()
    problem = None
    try:
        with sigterm_interrupts():  # SIGTERM, as Ctrl-C: workers stop, the results of what finished are written
            if workers == 1:
                studies.run_worker(search, opened, study_dir, device=device, deadline=deadline, announce=_say)
            else:
                problem = _run_workers(workers, config, space, set_, search.trials, url, name, study_dir, deadline,
                                       device, code, storage_timeout)
    except Terminated:
        raise Interrupted("terminated (SIGTERM): the finished trials are kept; run the same command to continue "
                          "the study", 143) from None
    finally:  # also after Ctrl-C or a failed trial: the table of what finished
        studies.fail_stale_trials(opened)
        results = studies.write_results(opened, search, study_dir, name)
        _print_results(results, search, name, study_dir, time.perf_counter() - started)
    done, _ = studies.counts(opened)
    target = studies.target_trials(search)
    if done < target and (deadline is None or time.time() < deadline):
        raise SearchIncomplete(f"the study has {done} of its {target} trials" + (f": {problem}" if problem else "")
                               + "; run the same command to continue it")


def _say(text: str) -> None:
    print(text, flush=True)


def _make_dir(path: Path) -> list[Path]:
    """mkdir -p; returns the directories it created, deepest last."""
    from ..errors import ConfigError  # noqa: PLC0415

    missing = [p for p in (path, *path.parents) if not p.exists()][::-1]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--dir {path}: cannot create the study directory ({exc})") from None
    return missing


def _remove_empty(created: list[Path]) -> None:
    """Remove the directories this process created, deepest first, where nothing else has been put in them."""
    for path in reversed(created):
        try:
            path.rmdir()
        except OSError:
            return


def _run_workers(count, config, space, set_, trials, url, name, study_dir, deadline, device, code, storage_timeout):
    """K processes on one study; each gets cores / K threads unless DLTRAIN_THREADS says otherwise."""
    from ..backend import default_threads  # noqa: PLC0415
    from ..errors import Terminated  # noqa: PLC0415

    env = dict(os.environ)
    if not env.get("DLTRAIN_THREADS"):
        env["DLTRAIN_THREADS"] = str(max(1, default_threads() // count))
    env["DLTRAIN_STORAGE"] = url  # not on the command line, where `ps` would show its password
    command = [sys.executable, "-m", "dltrain", "tune", str(config), "--trials", str(trials),
               "--storage-timeout", str(storage_timeout), "--study", name, "--dir", str(study_dir)]
    command += ["--space", str(space)] if space else []
    command += [part for expression in set_ for part in ("--set", expression)]
    command += ["--device", device] if device else []
    command += [part for path in code for part in ("--code", str(path))]
    processes = []
    try:
        for i in range(count):
            remaining = [] if deadline is None else ["--timeout", f"{max(0.0, deadline - time.time()):.1f}"]
            processes.append(subprocess.Popen([*command, *remaining, "--worker", str(i)], env=env))
        codes = [process.wait() for process in processes]
    except KeyboardInterrupt:  # Ctrl-C reached the workers too; each writes its run's summary
        for process in processes:
            process.wait()
        raise
    except Terminated:  # SIGTERM reached this process alone: pass it on
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait()
        raise
    failed = [(i, code) for i, code in enumerate(codes) if code != 0]
    for i, code in failed:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        print(f"warning: worker {i} {how}", file=sys.stderr, flush=True)
    return f"{len(failed)} of {count} workers failed (see above)" if failed else None


def _print_results(results: dict, search, name: str, study_dir: Path, seconds: float) -> None:
    rows = results["rows"]
    counts = {state: sum(row["state"] == state for row in rows) for state in ("complete", "pruned", "failed")}
    head = (f"study {name!r}: {len(rows)} trials ({counts['complete']} complete, {counts['pruned']} pruned, "
            f"{counts['failed']} failed) in {seconds:.1f}s")
    best = results["best"]
    if best is None:
        _say(head + "; no trial completed")
        return
    _say(f"{head}; best trial {best['number']}: {search.metric} {best['value']:.4f}")
    ranked = sorted((row for row in rows if row["state"] == "complete"), key=lambda row: row["value"],
                    reverse=search.direction == "maximize")[:5]
    keys = [p.key for p in search.parameters]
    header = ["trial", search.metric, *keys, "epochs", "seconds"]
    lines = [[str(row["number"]), f"{row['value']:.4f}", *(_cell(row[key]) for key in keys), str(row["epochs"]),
              f"{row['seconds']:.1f}" if row["seconds"] is not None else ""] for row in ranked]
    print_table(header, lines, right=True, title="best trials")
    _say(f"best config: {study_dir / 'best.yaml'}; all trials: {study_dir / 'trials.csv'}")


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def register(app: typer.Typer, reports_errors) -> None:
    app.command("tune")(reports_errors(tune))
