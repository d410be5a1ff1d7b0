"""Everything ``saferl`` checks before Hydra makes a run folder, W&B starts or an actor starts:

1. compose the config with Hydra's compose API (a mistyped key or option is said with the nearest
   valid one, see :mod:`saferl.cli_errors`) — this needs only Hydra, so these answers are quick;
2. validate it (``saferl.config.validate``), for every job of a sweep;
3. read the data files a hub or tiny setup trains on (a missing field, a malformed line) and
   run the hub setup's own preflight (model paths, prompt budget).

Every failure is a :class:`~saferl.cli_errors.UsageError`; nothing is written.
"""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf

from saferl.cli_errors import UsageError, explain_composition_error
from saferl.conf_tree import CONFIG_DIR

__all__ = ["compose", "preflight", "job_overrides", "resumed_hydra_subdir"]


def compose(overrides: Sequence[str]) -> DictConfig:
    """The root config composed with ``overrides``, Hydra's own section included."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def _composed(overrides: Sequence[str]) -> DictConfig:
    try:
        return compose(overrides)
    except Exception as error:  # Hydra's composition errors have no common base but HydraException
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        if isinstance(error, (HydraException, OmegaConfBaseException)):
            raise explain_composition_error(error, overrides, compose, CONFIG_DIR) from error
        raise


def job_overrides(overrides: Sequence[str], multirun: bool) -> list[list[str]]:
    """The overrides of every job the command runs: one job, or a sweep's jobs (the command
    line's sweeps and the ``hydra.sweeper.params`` of a sweep preset, as Hydra's basic sweeper
    expands them)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(list(overrides))
    except OverrideParseException as error:
        raise explain_composition_error(error, overrides, compose, CONFIG_DIR) from error
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    base = _composed(fixed)
    mode = OmegaConf.select(base, "hydra.mode")
    if not (multirun or str(mode).endswith("MULTIRUN")):
        _composed(overrides)  # a sweep's syntax without -m is a mistake Hydra explains
        return [list(overrides)]
    params = OmegaConf.select(base, "hydra.sweeper.params") or {}
    swept = [f"{key}={value}" for key, value in params.items()]
    return BasicSweeper.split_arguments(parser.parse_overrides(swept + list(overrides)), None)[0]


def _job_config(overrides: Sequence[str]) -> DictConfig:
    cfg = _composed(overrides)
    OmegaConf.set_struct(cfg, False)
    cfg.pop("hydra")  # validate() reads the job's config, as the task function receives it
    return cfg


def check_data(config) -> None:
    """Step 3: the local data files a hub or tiny setup reads, loaded and validated as the setup
    will load them, and the hub setup's own preflight (before any model is downloaded)."""
    from importlib import import_module

    from saferl.setups.settings import WorldSettings

    setup = config.setup
    if isinstance(setup, WorldSettings):  # the built-in world writes its own data (and needs no hub modules)
        return
    from pathlib import Path

    from saferl.data.local_paths import looks_like_local_path, require_existing

    # A missing local file is said before the hub modules and datasets load (seconds).
    if looks_like_local_path(setup.path):
        require_existing(Path(setup.path).expanduser())
    from saferl.setups import hub
    from saferl.setups.tiny import TinySettings

    if not isinstance(setup, (hub.HubSettings, TinySettings)):
        return
    needs = import_module(f"saferl.learners.{config.learner}").needs(config.settings)
    if isinstance(setup, hub.HubSettings) and config.job == "train":
        hub.preflight(setup, needs, config.learner)
    elif needs.ptx and config.job == "train":
        hub.check_ptx_path(setup, config.learner)
    local_ptx = needs.ptx and config.job == "train" and looks_like_local_path(setup.ptx_path)
    if not looks_like_local_path(setup.path) and not local_ptx:
        return  # hub datasets: their loaders name what is wrong when the setup reads them
    import datasets

    # The error is ours to say: not datasets' progress bar and its own log line about the parse.
    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        _load_data(config, needs)
    finally:
        datasets.utils.logging.set_verbosity(datasets.logging.WARNING)


def _load_data(config, needs) -> None:
    from saferl.data import load_preference_dataset, load_prompt_dataset
    from saferl.data.local_paths import looks_like_local_path
    from saferl.setups.hub import load_ptx_dataset
    from saferl.setups.tiny import TinySettings

    setup = config.setup
    if needs.ptx and config.job == "train" and looks_like_local_path(setup.ptx_path):
        load_ptx_dataset(setup)
    if not looks_like_local_path(setup.path):
        return
    if config.job == "evaluate":
        load_prompt_dataset(setup.path, split=setup.test_split, revision=setup.data_revision)
        return
    if isinstance(setup, TinySettings) or needs.pairs:  # the tiny setup's SFT reads the pairs too
        load_preference_dataset(setup.path, split=setup.train_split, revision=setup.data_revision)
    if needs.prompts:
        load_prompt_dataset(setup.path, split=setup.train_split, revision=setup.data_revision)


def preflight(overrides: Sequence[str], multirun: bool = False) -> None:
    """Steps 1–3 for every job of the command.

    Raises:
        UsageError: the first mistake, with the message ``saferl`` prints.
    """
    jobs = job_overrides(overrides, multirun)
    configs = [_job_config(job) for job in jobs]
    # validate() checks the root keys and the light sections (runtime, deepspeed, learner) before
    # it loads the setups' modules (torch); after step 1.
    from saferl.config import ConfigError, validate

    checked_data: set[str] = set()
    for job, cfg in zip(jobs, configs, strict=True):
        prefix = f"sweep job {' '.join(job)}: " if len(jobs) > 1 else ""
        try:
            config = validate(cfg)
        except ConfigError as error:
            raise UsageError(prefix + str(error)) from error
        if not multirun and len(jobs) == 1 and config.job in ("train", "evaluate"):
            _check_run_folder(cfg, job, config)
        if repr(config.setup) in checked_data:  # a sweep's jobs mostly share their data
            continue
        checked_data.add(repr(config.setup))
        try:
            check_data(config)
        # Data errors (DataError is a ValueError), missing files, and the hub preflight's checks,
        # which name their config key.
        except (ValueError, FileNotFoundError, NotADirectoryError) as error:
            raise UsageError(prefix + str(error)) from error


def _check_run_folder(cfg: DictConfig, overrides: Sequence[str], config) -> None:
    """A fresh run pointed at a folder holding another run is refused here, before Hydra writes
    its ``.hydra/`` files there (they would replace the other run's ``overrides.yaml``)."""
    from pathlib import Path

    from saferl.learners.run_state import RunFolderInUseError, claim_run_folder

    folder = config.output_dir
    if folder is None:
        try:
            folder = Path(str(OmegaConf.select(compose(overrides), "hydra.run.dir")))
        except Exception:  # a run folder named by an interpolation only Hydra's run resolves
            return
    try:
        claim_run_folder(folder, config.resume)
    except RunFolderInUseError as error:
        raise UsageError(str(error)) from error


def resumed_hydra_subdir(overrides: Sequence[str]) -> str | None:
    """Where Hydra writes this start's files when it continues a run (``resume=auto``) whose
    folder already holds Hydra's ``.hydra/``: a fresh ``.hydra/resume-<k>`` (k = 1, 2, ...), so
    that the original ``overrides.yaml`` and ``config.yaml`` stay the ones the run started with.
    None for a fresh run (Hydra writes ``.hydra/`` as usual)."""
    from pathlib import Path

    cfg = compose(overrides)
    if OmegaConf.select(cfg, "resume") != "auto":
        return None
    try:
        folder = Path(str(OmegaConf.select(cfg, "hydra.run.dir")))
        subdir = OmegaConf.select(cfg, "hydra.output_subdir")
    except Exception:  # a run folder named by an interpolation only Hydra's run resolves
        return None
    if subdir is None or not (folder / str(subdir) / "overrides.yaml").is_file():
        return None
    k = 1
    while (folder / str(subdir) / f"resume-{k}").exists():
        k += 1
    return f"{subdir}/resume-{k}"
