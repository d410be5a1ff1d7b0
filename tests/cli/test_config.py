"""The Hydra config tree ``conf/`` and its validation (``saferl.config.validate``).

No Ray, no training: every test composes configs and validates them into typed settings
(``RunConfig.setup``: the world's ``WorldSettings`` or the hub's ``HubSettings``;
``RunConfig.settings``: the chosen learner's settings, and only its).

1. Every option of every group composes and validates (alone, or in the combination it needs);
   inconsistent combinations raise a ConfigError naming the keys.
2. The published presets carry the published values (docs/algorithms.md §2, §4, §5); the world presets
   build the built-in world's setup.
3. Validation errors name the dotted key and the bad value (also where the rule lives in a settings
   dataclass, constructed directly).
4. Sweep presets are multiruns over keys that exist, and every swept point validates.
5. Launcher presets select the right Hydra launcher plugin.
6. Every field in ``conf/`` has a one-line comment.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from saferl.cli import CONFIG_DIR
from saferl.cli_errors import missing_launcher_plugin
from saferl.config import ConfigError, RunConfig, validate
from saferl.learners.mocan import MocanSettings
from saferl.learners.pecan import PecanSettings
from saferl.learners.ppo_lag import PPOLagSettings, PPOSettings
from saferl.learners.preference import PreferenceSettings
from saferl.learners.settings import CDPOSettings, RBRSettings
from saferl.runtime.resources import Resources
from saferl.setups.hub import HubSettings
from saferl.setups.world import WorldSettings

CONF = Path(CONFIG_DIR)

# Groups whose files define fields (every key documented where it is defined) and groups of presets
# (files that set fields defined elsewhere). A new folder under conf/ must be added to one of them.
FIELD_GROUPS = (
    "learner", "model", "data", "scorers", "multiplier", "runtime", "deepspeed", "generation",
    "logger", "job", "world",
)
PRESET_GROUPS = ("experiment", "sweep", "debug", "debug_learner", "launcher")

# A hub setup that validates: the published models and data with their score models.
HUB = ("model=beaver_v1", "data=pku_saferlhf", "scorers=pretrained")
# Options that only run in combination with other groups' options.
COMBINATION = {
    ("model", "beaver_v1"): ("data=pku_saferlhf", "scorers=pretrained"),
    ("model", "falcon_11b"): ("data=pku_saferlhf", "learner=preference"),
    ("data", "pku_saferlhf"): ("model=beaver_v1", "scorers=pretrained"),
    ("scorers", "pretrained"): ("model=beaver_v1", "data=pku_saferlhf"),
    ("generation", "safe_rlhf"): HUB,
}

PUBLISHED_PRESETS = ("beaver_v1", "mocan", "pecan", "bfpo", "safe_nca")
WORLD_PRESETS = {  # preset -> (learner, preference loss or None)
    "world_ppo_lag": ("ppo_lag", None),
    "world_mocan": ("mocan", None),
    "world_pecan": ("pecan", None),
    "world_bfpo": ("preference", "bfpo"),
    "world_safe_nca": ("preference", "safe_nca"),
    "world_two_costs": ("ppo_lag", None),
    "world_rbr": ("rbr", None),
    "world_cdpo": ("cdpo", None),
}
ALPACA = "PKU-Alignment/alpaca-7b-reproduced"
# The type of ``RunConfig.settings`` for each learner.
SETTINGS = {
    "ppo_lag": PPOLagSettings,
    "mocan": MocanSettings,
    "pecan": PecanSettings,
    "preference": PreferenceSettings,
    "rbr": RBRSettings,
    "cdpo": CDPOSettings,
}


def assert_settings_of(run: RunConfig, learner: str) -> None:
    """``run.settings`` is ``learner``'s settings, and no other learner's were built."""
    assert run.learner == learner
    assert type(run.settings) is SETTINGS[learner], (learner, type(run.settings))
    for name, cls in SETTINGS.items():
        assert isinstance(run.settings, cls) == (name == learner), name


def ppo_of(run: RunConfig) -> PPOSettings | None:
    """The PPO loop's settings (the ``learner.*`` PPO keys) where the learner has them: ppo_lag's
    own, MoCAN's through its PPO-Lagrangian stage; None for PeCAN and the preference losses."""
    if isinstance(run.settings, PPOLagSettings):
        return run.settings.ppo
    if isinstance(run.settings, MocanSettings | RBRSettings):
        assert isinstance(run.settings.ppo, PPOLagSettings)
        return run.settings.ppo.ppo
    assert not hasattr(run.settings, "ppo"), type(run.settings)
    return None


def composed(*overrides: str, hydra_cfg: bool = False) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra_cfg)


@cache
def default_groups() -> dict[str, str]:
    """{group: package} of the root defaults list (``optional debug_learner@learner: ...`` gives
    ``{"debug_learner": "learner"}``; a group without ``@`` is at its own name)."""
    groups = {}
    for entry in OmegaConf.load(CONF / "config.yaml").defaults:
        if entry == "_self_":
            continue
        name = next(iter(entry)).split()[-1]  # drop `optional` / `override`
        group, _, package = name.partition("@")
        groups[group] = package or group
    return groups


def selection(group: str, option: str) -> tuple[tuple[str, ...], str]:
    """The overrides that select ``option`` of ``group`` (with the options it needs), and its key in
    ``hydra.runtime.choices``."""
    if group == "debug_learner":  # chosen by interpolation: ${debug}_${learner}
        debug, learner = option.split("_", 1)
        return (f"debug={debug}", f"learner={learner}"), "debug_learner@learner"
    return (f"{group}={option}", *COMBINATION.get((group, option), ())), group


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


def group_options(groups: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(group, option) for group in groups for option in options(group)]


# The launcher presets need their plugins (the launchers extra; .[dev] installs it, so CI runs them).
RAY_PLUGIN_MISSING = missing_launcher_plugin("ray")
SLURM_PLUGIN_MISSING = missing_launcher_plugin("submitit_slurm")
needs_ray_launcher = pytest.mark.skipif(RAY_PLUGIN_MISSING is not None, reason=str(RAY_PLUGIN_MISSING))
needs_slurm_launcher = pytest.mark.skipif(SLURM_PLUGIN_MISSING is not None, reason=str(SLURM_PLUGIN_MISSING))
PLUGIN_MARKS = {("launcher", "ray"): needs_ray_launcher, ("launcher", "slurm"): needs_slurm_launcher}


def with_plugin_marks(pairs: list[tuple[str, str]]) -> list:
    return [pytest.param(*pair, marks=PLUGIN_MARKS[pair]) if pair in PLUGIN_MARKS else pair for pair in pairs]


# ---------------------------------------------------------------------------------------------
# 1. Every option of every group composes and validates.
# ---------------------------------------------------------------------------------------------


def test_every_conf_folder_is_a_known_group_and_every_default_group_exists():
    folders = {path.name for path in CONF.iterdir() if path.is_dir()}
    assert folders == set(FIELD_GROUPS) | set(PRESET_GROUPS)
    assert set(default_groups()) == folders


@pytest.mark.parametrize(("group", "option"), with_plugin_marks(group_options(FIELD_GROUPS + PRESET_GROUPS)))
def test_every_group_option_composes_and_validates(group, option):
    overrides, choice = selection(group, option)
    cfg = composed(*overrides, hydra_cfg=True)
    assert cfg.hydra.runtime.choices[choice] == option
    run = validate(cfg)
    assert isinstance(run, RunConfig)
    # Exactly one of the two setups: the built-in world's settings or the hub's models and data.
    assert isinstance(run.setup, (WorldSettings, HubSettings))
    assert isinstance(run.setup, WorldSettings) != isinstance(run.setup, HubSettings)
    # The chosen learner's settings, and only its.
    assert_settings_of(run, cfg.learner.name)
    assert isinstance(run.resources, Resources)
    assert run.resources.group.num_ranks == cfg.runtime.num_ranks and run.resources.seed == run.seed == cfg.seed


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (("model=beaver_v1",), ["model.source='hub'", "data.source='world'"]),
        (("model=falcon_11b", "learner=preference"), ["model.source='hub'", "data.source='world'"]),
        # The world's tiny models train on a PKU-format file, but no ground truth calibrates them.
        (("data=pku_saferlhf",), ["scorers.calibrate=true"]),
        (("generation=safe_rlhf",), ["generation.max_new_tokens", "256"]),
        ((*HUB, "model.cost_model=null"), ["model.cost_model", "None"]),
    ],
    ids=["hub-model-world-data", "falcon-world-data", "world-model-hub-data", "hub-generation-world",
         "pretrained-without-cost-model"],
)
def test_inconsistent_combinations_name_their_keys(overrides, fragments):
    with pytest.raises(ConfigError, match=named(*fragments)):
        validate(composed(*overrides))


# ---------------------------------------------------------------------------------------------
# 2. Presets.
# ---------------------------------------------------------------------------------------------


def test_the_published_and_world_presets_are_all_the_experiment_options():
    assert set(options("experiment")) == set(PUBLISHED_PRESETS) | set(WORLD_PRESETS)


@pytest.mark.parametrize("preset", PUBLISHED_PRESETS)
def test_published_preset_is_a_hub_setup_on_pku_saferlhf_at_scale(preset):
    cfg = composed(f"experiment={preset}")
    run = validate(cfg)
    assert isinstance(run.setup, HubSettings) and not isinstance(run.setup, WorldSettings)
    assert run.setup.path.startswith("PKU-Alignment/PKU-SafeRLHF")
    assert run.setup.template == "safe_rlhf" and run.setup.max_length == 512  # max length 512 [§2]
    assert run.setup.dtype == "bfloat16"
    assert cfg.deepspeed.zero_stage == 3 and cfg.deepspeed.precision == "bf16"  # ZeRO-3, bf16 [§2]
    assert run.resources.deepspeed.zero_stage == 3 and run.resources.deepspeed.precision == "bf16"
    assert list(cfg.deepspeed.adam_betas) == [0.9, 0.95]
    assert tuple(run.resources.deepspeed.adam_betas) == (0.9, 0.95)
    assert cfg.runtime.num_ranks == 8 and cfg.runtime.gpus_per_rank == 1.0
    assert run.resources.group.num_ranks == 8 and run.resources.group.gpus_per_rank == 1.0
    # 512 tokens in all [§2]: 256 for the response, the rest for the prompt (data.max_length − this).
    assert cfg.generation.max_new_tokens == 256 and run.setup.max_length - cfg.generation.max_new_tokens == 256
    assert run.setup.generation.max_new_tokens == run.generation.max_new_tokens == 256


def test_beaver_v1_is_the_published_safe_rlhf():
    cfg = composed("experiment=beaver_v1")
    run = validate(cfg)
    assert run.learner == "ppo_lag" and cfg.learner.name == "ppo_lag"
    assert_settings_of(run, "ppo_lag")
    # The problem: β = 0.01, d = 0 [§2].
    assert cfg.beta == 0.01 and cfg.learner.kl_coeff == 0.01
    assert run.beta == 0.01 and run.settings.ppo.kl_coeff == 0.01
    assert cfg.cost_limit == 0.0 and run.cost_limit == 0.0 and run.settings.cost_limit == 0.0
    # PPO [§2]: clip 0.2, score clip 50, value clip 5, γ = 1, λ_GAE = 0.95, one pass, +β·kl in cost.
    assert cfg.learner.clip_eps == 0.2
    assert cfg.learner.clip_range_score == 50.0
    assert cfg.learner.clip_eps_value == 5.0
    assert cfg.learner.gamma == 1.0 and cfg.learner.gae_lambda == 0.95
    assert cfg.learner.ppo_epochs == 1 and cfg.learner.kl_in_cost_stream is True
    assert cfg.learner.prompts_per_iteration == 16 * cfg.runtime.num_ranks  # 16 prompts per device
    ppo = run.settings.ppo
    assert (ppo.clip_eps, ppo.clip_range_score, ppo.clip_eps_value) == (0.2, 50.0, 5.0)
    assert (ppo.gamma, ppo.gae_lambda, ppo.ppo_epochs, ppo.kl_in_cost_stream) == (1.0, 0.95, 1, True)
    assert ppo.prompts_per_iteration == 16 * run.resources.group.num_ranks
    # Optimisation [§2]: actor 1e-5, critic 5e-6.
    assert cfg.learner.policy_learning_rate == 1e-5
    assert cfg.learner.critic_learning_rate == 5e-6
    assert run.settings.policy_learning_rate == 1e-5 and run.settings.critic_learning_rate == 5e-6
    # The multiplier [§2]: λ_init 1, lr 0.1 on log λ, no delay, λ_max 5; the published window is 128
    # costs on each rank, all-reduced over 8 ranks: 1,024 gathered costs here.
    published = {
        "kind": "log_gradient_ascent", "initial_value": 1.0, "lr": 0.1, "window": 128 * 8, "delay": 0,
        "max_value": 5.0,
    }
    assert dict(cfg.multiplier) == published
    assert run.settings.multiplier == published
    # The published models and data.
    assert cfg.scorers.kind == "pretrained" and cfg.scorers.calibrate is False
    assert isinstance(run.setup, HubSettings)
    assert run.setup.policy == ALPACA
    assert run.setup.reward_model == "PKU-Alignment/beaver-7b-v1.0-reward"
    assert run.setup.cost_model == "PKU-Alignment/beaver-7b-v1.0-cost"
    assert run.setup.path == "PKU-Alignment/PKU-SafeRLHF-30K"


def test_mocan_preset_is_the_published_mocan():
    cfg = composed("experiment=mocan")
    run = validate(cfg)
    assert_settings_of(run, "mocan")  # not PeCAN's, not the preference losses'
    assert cfg.beta == 0.1 and run.settings.beta == 0.1  # β = 0.1 [§4]
    assert run.settings.num_samples == 128  # K = 128 [§4]
    assert run.settings.stage == "dpo" and run.settings.soft_labels is False  # Bernoulli relabelling + DPO
    assert run.settings.anchor_weight == 0.0  # the published DPO alone, without saferl's anchor
    assert validate(composed("learner=mocan")).settings.anchor_weight == 1.0  # saferl's default has it
    assert run.settings.frontier_grid == (0.10, 0.35, 0.50, 0.75, 1.13, 2.0, 3.0)  # the published λ grid
    assert cfg.scorers.kind == "pretrained"
    assert isinstance(run.setup, HubSettings)
    assert (run.setup.policy, run.setup.reward_model, run.setup.cost_model) == (
        ALPACA, "PKU-Alignment/beaver-7b-v1.0-reward", "PKU-Alignment/beaver-7b-v1.0-cost",
    )
    # The hub's prompts are sampled and scored in calls of one DPO step's rows.
    assert run.setup.rows_per_call == 2 * run.settings.dpo_pairs_per_step


def test_pecan_preset_is_the_published_pecan():
    cfg = composed("experiment=pecan")
    run = validate(cfg)
    assert_settings_of(run, "pecan")  # not MoCAN's
    assert cfg.beta == 0.1 and run.settings.num_samples == 128  # β = 0.1, K = 128 [§4]
    assert run.settings.beta == 0.1
    assert run.settings.consistent is True  # saferl's consistent labels (documented departure)
    assert run.settings.anchor_weight == 0.0  # the published final DPO alone, without saferl's anchor
    assert isinstance(run.setup, HubSettings)
    assert run.setup.policy == ALPACA
    assert run.setup.reward_model is None and run.setup.cost_model is None  # preferences only


def test_bfpo_preset_has_the_published_hyperparameters():
    run = validate(composed("experiment=bfpo"))
    assert_settings_of(run, "preference")
    assert run.settings.loss == "bfpo" and run.settings.ordering == "better"
    assert run.settings.hyperparameters == {"tau": 0.01, "b1": 3.0, "alpha": 0.5}  # [§5]
    assert isinstance(run.setup, HubSettings)
    assert run.setup.policy == ALPACA


def test_safe_nca_preset_is_nca_on_safety_pairs_from_falcon():
    cfg = composed("experiment=safe_nca")
    run = validate(cfg)
    assert_settings_of(run, "preference")
    assert run.settings.loss == "safe_nca" and run.settings.ordering == "safer"
    assert cfg.beta == 0.1 and run.settings.beta == 0.1
    assert isinstance(run.setup, HubSettings)
    assert run.setup.policy == "tiiuae/falcon-11B"
    assert run.setup.reward_model is None and run.setup.cost_model is None


@pytest.mark.parametrize("preset", sorted(WORLD_PRESETS))
def test_world_preset_builds_the_world_setup_with_its_learner(preset):
    learner, loss = WORLD_PRESETS[preset]
    cfg = composed(f"experiment={preset}")
    run = validate(cfg)
    assert isinstance(run.setup, WorldSettings) and not isinstance(run.setup, HubSettings)
    assert run.learner == learner
    limits = tuple(cfg.cost_limit) if OmegaConf.is_list(cfg.cost_limit) else (cfg.cost_limit,)
    assert run.setup.beta == cfg.beta and run.setup.cost_limit == run.cost_limits == limits
    assert run.beta == cfg.beta and run.cost_limit == (limits if len(limits) > 1 else limits[0])
    assert run.setup.costs == run.costs == tuple(cfg.world.costs) and len(run.costs) == len(limits)
    assert run.setup.generation.max_new_tokens == 3
    assert run.setup.scorers in ("learned", "oracle")
    assert run.setup.reference == run.reference
    ppo = ppo_of(run)
    if learner in ("ppo_lag", "mocan", "rbr"):
        assert ppo is not None
        assert ppo.kl_coeff == cfg.beta  # the learner's KL coefficient is the problem's β
    else:
        assert ppo is None
    # The learner's own settings, and no other learner's.
    assert_settings_of(run, learner)
    if learner not in ("ppo_lag", "rbr"):
        assert run.settings.beta == cfg.beta
    if loss is not None:
        assert run.settings.loss == loss
    if preset == "world_bfpo":
        assert run.settings.hyperparameters == {"tau": 0.01, "b1": 3.0, "alpha": 0.5}
    if preset == "world_safe_nca":
        assert run.settings.ordering == "safer"


@pytest.mark.parametrize("preset", sorted(WORLD_PRESETS))
def test_debug_tiny_shrinks_every_world_preset_and_its_learner(preset):
    learner, _ = WORLD_PRESETS[preset]
    full = validate(composed(f"experiment={preset}"))
    cfg = composed(f"experiment={preset}", "debug=tiny", hydra_cfg=True)
    assert cfg.hydra.runtime.choices["debug_learner@learner"] == f"tiny_{learner}"
    tiny = validate(cfg)
    assert tiny.learner == learner
    assert_settings_of(tiny, learner)
    assert isinstance(tiny.setup, WorldSettings) and isinstance(full.setup, WorldSettings)
    assert tiny.setup.sft.steps < full.setup.sft.steps
    assert tiny.setup.num_sft < full.setup.num_sft
    if learner in ("ppo_lag", "mocan", "rbr"):
        assert ppo_of(tiny).iterations < ppo_of(full).iterations
    if learner == "rbr":
        assert tiny.settings.num_samples < full.settings.num_samples
    if learner in ("mocan", "pecan", "cdpo"):
        assert tiny.settings.num_samples < full.settings.num_samples
        assert tiny.settings.dpo_steps < full.settings.dpo_steps
    if learner == "cdpo":
        assert tiny.settings.rounds < full.settings.rounds
    if learner == "preference":
        assert tiny.settings.steps < full.settings.steps
        assert tiny.settings.loss == full.settings.loss  # the preset's loss is kept


# ---------------------------------------------------------------------------------------------
# 3. Validation errors name the dotted key and the bad value.
# ---------------------------------------------------------------------------------------------


def named(*fragments: str) -> str:
    """A regex that finds each fragment, in order, as a whole token (``0`` does not match inside
    ``0.0``, ``beta`` not inside ``world_beta``)."""
    return ".*".join(rf"(?<!\w)(?<!\d\.){re.escape(fragment)}(?!\w|\.\d)" for fragment in fragments)


NOT_A_RUN = str(CONF)  # a folder without stages.json
ERRORS = [
    # Unknown names.
    ("unknown-learner", ("learner.name=foo",), ["learner.name", "'foo'"]),
    ("unknown-loss", ("learner=preference", "learner.preference.loss=foo"), ["learner.preference.loss", "'foo'"]),
    # PTX on a hub setup needs data.ptx_path (the world's own demonstrations serve on the world).
    ("ptx-without-data", ("experiment=beaver_v1", "data.ptx_path=null"), ["learner.ptx_coeff", "16.0", "data.ptx_path"]),
    ("ptx-without-data-tiny", ("data=pku_saferlhf", "data.path=/d/pairs.jsonl", "scorers.calibrate=false",
                               "learner.ptx_coeff=1"), ["learner.ptx_coeff", "1", "data.ptx_path"]),
    ("ptx-empty-path", ("experiment=beaver_v1", "data.ptx_path=''"), ["data.ptx_path", "''"]),
    ("ptx-negative", ("learner.ptx_coeff=-1",), ["learner.ptx_coeff", "-1"]),
    ("ptx-key-on-world", ("+data.ptx_path=x.jsonl",), ["data", "ptx_path"]),
    # The deepspeed group holds what every engine shares; the actor's schedule is the learner's key.
    ("deepspeed-scheduler", ("+deepspeed.scheduler=cosine",), ["deepspeed.scheduler", "'cosine'",
                                                               "learner.policy_lr_schedule"]),
    ("deepspeed-warmup", ("+deepspeed.warmup_steps=10",), ["deepspeed.warmup_steps", "10",
                                                           "learner.policy_lr_warmup_ratio"]),
    ("deepspeed-learning-rate", ("+deepspeed.learning_rate=0.1",), ["deepspeed.learning_rate", "0.1",
                                                                    "learner.policy_learning_rate"]),
    ("unknown-multiplier", ("multiplier.kind=foo",), ["multiplier.kind", "'foo'"]),
    # Checked whichever the learner, even one that does not read it.
    ("unknown-multiplier-pecan", ("learner=pecan", "multiplier.kind=foo"), ["multiplier.kind", "'foo'"]),
    ("unknown-ordering", ("learner=preference", "learner.preference.ordering=foo"),
     ["learner.preference.ordering", "'foo'"]),
    ("unknown-mocan-stage", ("learner=mocan", "learner.mocan.stage=foo"), ["learner.mocan.stage", "'foo'"]),
    ("unknown-job", ("job.name=foo",), ["job.name", "'foo'"]),
    ("unknown-logger-kind", ("logger.kind=foo",), ["logger.kind", "'foo'"]),
    # Signs: β > 0 and a positive KL coefficient.
    ("negative-beta", ("beta=-0.1",), ["beta", "-0.1"]),
    ("zero-beta", ("beta=0",), ["beta", "0"]),
    ("zero-kl-coeff", ("learner.kl_coeff=0",), ["learner.kl_coeff", "0"]),
    # On the world the run is scored against the optimum at beta: its PPO stage must use the same β.
    ("kl-coeff-not-beta-world", ("learner.kl_coeff=0.25",), ["learner.kl_coeff", "0.25", "beta", "0.5"]),
    ("kl-coeff-not-beta-mocan-ppo", ("learner=mocan", "learner.mocan.stage=ppo", "learner.kl_coeff=0.25"),
     ["learner.kl_coeff", "0.25"]),
    # MoCAN's PPO stage holds λ at λ̂: only the §1 streams aim at π_λ̂.
    ("mocan-ppo-published-streams", ("learner=mocan", "learner.mocan.stage=ppo", "learner.kl_in_cost_stream=true"),
     ["learner.kl_in_cost_stream"]),
    # On the world, d and the exact evaluation are in ground-truth units.
    ("uncalibrated-world", ("scorers.calibrate=false",), ["scorers.calibrate"]),
    ("negative-kl-coeff", ("learner.kl_coeff=-0.01",), ["learner.kl_coeff", "-0.01"]),
    ("negative-loss-beta", ("learner=preference", "learner.preference.hyperparameters={beta:-0.1}"),
     ["learner.preference.hyperparameters.beta", "-0.1"]),
    # Every learning rate must be > 0.
    ("negative-policy-lr", ("learner.policy_learning_rate=-0.5",), ["learner.policy_learning_rate", "-0.5"]),
    ("negative-critic-lr", ("learner.critic_learning_rate=-0.5",), ["learner.critic_learning_rate", "-0.5"]),
    ("negative-sft-lr", ("model.sft.learning_rate=-0.5",), ["model.sft.learning_rate", "-0.5"]),
    ("negative-reward-model-lr", ("scorers.reward_model.learning_rate=-0.5",),
     ["scorers.reward_model.learning_rate", "-0.5"]),
    ("negative-cost-model-lr", ("scorers.cost_model.learning_rate=-0.5",),
     ["scorers.cost_model.learning_rate", "-0.5"]),
    # The reference's SFT reads model.sft and data.num_sft; world.reference is only its shape.
    ("reference-training-key", ("+world.reference.learning_rate=0.1",), ["world.reference", "learning_rate"]),
    ("zero-reference-width", ("world.reference.hidden_size=0",), ["world.reference.hidden_size", "0"]),
    ("negative-preference-lr", ("learner=preference", "learner.preference.learning_rate=-0.5"),
     ["learner.preference.learning_rate", "-0.5"]),
    ("negative-mocan-dpo-lr", ("learner=mocan", "learner.mocan.dpo_learning_rate=-0.5"),
     ["learner.mocan.dpo_learning_rate", "-0.5"]),
    ("negative-pecan-dpo-lr", ("learner=pecan", "learner.pecan.dpo_learning_rate=-0.5"),
     ["learner.pecan.dpo_learning_rate", "-0.5"]),
    ("negative-multiplier-lr", ("multiplier.lr=-0.5",), ["multiplier.lr", "-0.5"]),
    # Batch sizes that do not divide over the ranks of a role.
    ("prompts-over-3-ranks", ("runtime.num_ranks=3",),
     ["learner.prompts_per_iteration=64", "runtime.num_ranks=3"]),
    ("sft-rows-over-4-ranks", ("model.sft.rows_per_step=10", "runtime.num_ranks=4"),
     ["model.sft.rows_per_step=10", "runtime.num_ranks=4"]),
    ("pairs-over-4-ranks", ("learner=preference", "learner.preference.pairs_per_step=10", "runtime.num_ranks=4"),
     ["learner.preference.pairs_per_step=10", "runtime.num_ranks=4"]),
    ("dpo-pairs-over-4-ranks", ("learner=mocan", "learner.mocan.dpo_pairs_per_step=10", "runtime.num_ranks=4"),
     ["learner.mocan.dpo_pairs_per_step=10", "runtime.num_ranks=4"]),
    # Unknown keys: the message names the section and the key.
    ("unknown-learner-key", ("+learner.clip=0.3",), ["learner", "clip"]),
    ("unknown-deepspeed-key", ("+deepspeed.foo=1",), ["deepspeed", "foo"]),
    ("unknown-logger-key", ("+logger.foo=1",), ["logger", "foo"]),
    ("unknown-model-key", ("+model.foo=1",), ["model", "foo"]),
    ("unknown-data-key", ("+data.foo=1",), ["data", "foo"]),
    ("unknown-scorers-key", ("+scorers.foo=1",), ["scorers", "foo"]),
    ("unknown-runtime-key", ("+runtime.foo=1",), ["runtime", "foo"]),
    ("unknown-generation-key", ("+generation.foo=1",), ["generation", "foo"]),
    ("unknown-multiplier-key", ("+multiplier.foo=1",), ["multiplier", "foo"]),
    ("unknown-reference-key", ("+world.reference.foo=1",), ["world.reference", "foo"]),
    ("unknown-world-key", ("+world.foo=1",), ["world", "foo"]),
    ("unknown-job-key", ("+job.foo=1",), ["job", "foo"]),
    # Safety judges of job=evaluate: each entry's key is named.
    ("judge-without-path", ("job=evaluate", "job.judges=[{kind:llamaguard}]"), ["job.judges[0].path", "None"]),
    ("unknown-judge-kind", ("job=evaluate", "job.judges=[ground_truth,{kind:guard}]"),
     ["job.judges[1].kind", "'guard'"]),
    ("judge-option-of-another-kind", ("job=evaluate", "job.judges=[{kind:classifier,path:m,max_new_tokens:3}]"),
     ["job.judges[0]", "max_new_tokens", "kind=classifier"]),
    ("unknown-root-key", ("+foo=1",), ["foo"]),
    # DeepSpeed.
    ("zero-stage-4", ("deepspeed.zero_stage=4",), ["deepspeed.zero_stage", "4"]),
    ("zero-stage-negative", ("deepspeed.zero_stage=-1",), ["deepspeed.zero_stage", "-1"]),
    ("bad-precision", ("deepspeed.precision=fp8",), ["deepspeed.precision", "'fp8'"]),
    # The world's exact evaluation needs responses of at most 3 tokens.
    ("world-max-new-tokens", ("generation.max_new_tokens=4",), ["generation.max_new_tokens", "4"]),
    # Root keys.
    ("resume-yes", ("resume=yes",), ["resume", "'yes'"]),
    ("resume-true", ("resume=true",), ["resume", "True"]),
    ("checkpoint-every-0", ("checkpoint_every=0",), ["checkpoint_every", "0"]),
    ("negative-seed", ("seed=-1",), ["seed", "-1"]),
    # Scorers that do not fit the setup.
    ("pretrained-on-world", ("scorers=pretrained",), ["scorers.kind", "'pretrained'"]),
    ("oracle-on-hub", ("experiment=beaver_v1", "scorers=oracle"), ["scorers.kind", "'oracle'"]),
    # Reusing a run folder that is not one.
    ("from-run-not-a-run", (f"model.from_run={NOT_A_RUN}",), ["model.from_run", repr(NOT_A_RUN)]),
    # Several costs: one limit per cost, the world's cost names, only where several constraints run.
    ("two-costs-one-limit", ("world.costs=[harm,refusal]",),
     ["cost_limit: expected a list of 2 numbers", "found -0.8", "world.costs = ['harm', 'refusal']"]),
    ("one-cost-two-limits", ("cost_limit=[-0.8,0.02]",),
     ["cost_limit: expected a number", "found [-0.8, 0.02]", "world.costs = ['harm']"]),
    ("unknown-cost-name", ("world.costs=[harm,toxicity]", "cost_limit=[-0.8,0.1]"),
     ["world.costs", "'refusal'", "toxicity"]),
    ("cost-limit-not-a-number", ("cost_limit=[-0.8,low]", "world.costs=[harm,refusal]"),
     ["cost_limit", "'low'"]),
    ("two-costs-pecan", ("world.costs=[harm,refusal]", "cost_limit=[-0.8,0.02]", "learner=pecan"),
     ["learner=pecan with 2 costs (world.costs)", "learner=ppo_lag or learner=mocan"]),
    ("two-costs-hub", (*HUB, "world.costs=[harm,refusal]", "cost_limit=[-0.8,0.02]"),
     ["world.costs=['harm', 'refusal']", "model.source='hub'"]),
    ("two-costs-multiplier-cap-length", ("experiment=world_two_costs", "multiplier.max_value=[5.0,5.0,5.0]"),
     ["multiplier.max_value", "2 values"]),
    # W&B's `disabled` mode is logger.kind=none here.
    ("logger-mode-disabled", ("logger.mode=disabled",), ["logger.mode", "'disabled'"]),
]


@pytest.mark.parametrize(("overrides", "fragments"), [case[1:] for case in ERRORS], ids=[case[0] for case in ERRORS])
def test_validation_error_names_the_key_and_the_bad_value(overrides, fragments):
    cfg = composed(*overrides)
    with pytest.raises(ConfigError, match=named(*fragments)):
        validate(cfg)


def test_evaluate_job_judges_validate():
    validate(composed("job=evaluate", "job.judges=[ground_truth,{kind:llamaguard,path:/m/guard,dtype:bfloat16},"
                      "{kind:classifier,path:/m/cls,unsafe_label:LABEL_1}]"))
    validate(composed("job=evaluate"))  # none by default


# Rules that live in the settings dataclasses: constructed directly (not through validate), their
# ValueError already names the dotted config key and the bad value.
DATACLASS_ERRORS = [
    ("ppo-zero-kl-coeff", lambda: PPOSettings(iterations=1, prompts_per_iteration=1, kl_coeff=0),
     ["learner.kl_coeff", "0"]),
    ("ppo-negative-kl-coeff", lambda: PPOSettings(iterations=1, prompts_per_iteration=1, kl_coeff=-0.01),
     ["learner.kl_coeff", "-0.01"]),
    ("ppo-zero-iterations", lambda: PPOSettings(iterations=0, prompts_per_iteration=1), ["learner.iterations", "0"]),
    ("ppo-lag-negative-policy-lr",
     lambda: PPOLagSettings(ppo=PPOSettings(iterations=1, prompts_per_iteration=1), multiplier=None, cost_limit=0.0,
                            policy_learning_rate=-0.5),
     ["learner.policy_learning_rate", "-0.5"]),
    ("ppo-ptx-not-a-number", lambda: PPOSettings(iterations=1, prompts_per_iteration=1, ptx_coeff=float("inf")),
     ["learner.ptx_coeff", "inf"]),
    ("preference-negative-beta", lambda: PreferenceSettings(loss="dpo", hyperparameters={"beta": -1}),
     ["learner.preference.hyperparameters.beta", "-1"]),
    ("preference-unknown-ordering", lambda: PreferenceSettings(ordering="foo"),
     ["learner.preference.ordering", "'foo'"]),
    ("preference-negative-lr", lambda: PreferenceSettings(learning_rate=-0.5),
     ["learner.preference.learning_rate", "-0.5"]),
    ("mocan-unknown-stage", lambda: MocanSettings(stage="foo"), ["learner.mocan.stage", "'foo'"]),
    ("mocan-negative-margin", lambda: MocanSettings(margin=-0.1), ["learner.mocan.margin", "-0.1"]),
    ("pecan-negative-dpo-lr", lambda: PecanSettings(dpo_learning_rate=-0.5),
     ["learner.pecan.dpo_learning_rate", "-0.5"]),
]


@pytest.mark.parametrize(("build", "fragments"), [case[1:] for case in DATACLASS_ERRORS],
                         ids=[case[0] for case in DATACLASS_ERRORS])
def test_settings_dataclass_refuses_a_bad_value_naming_its_key(build, fragments):
    with pytest.raises(ValueError, match=named(*fragments)):
        build()


def test_a_dataclass_message_reaches_the_config_error_unchanged():
    """validate() passes a dataclass's own message on (it already starts with the dotted key)."""
    with pytest.raises(ValueError) as direct:
        PPOSettings(iterations=1, prompts_per_iteration=1, kl_coeff=0)
    with pytest.raises(ConfigError) as through_config:
        validate(composed("learner.kl_coeff=0"))
    assert str(through_config.value) == str(direct.value)


# ---------------------------------------------------------------------------------------------
# 4. Sweeps.
# ---------------------------------------------------------------------------------------------

_ABSENT = object()


def sweep_points(cfg: DictConfig) -> dict[str, list[str]]:
    """The sweeper's params as {key: [value, ...]} (Hydra's own parser of sweep overrides)."""
    parser = OverridesParser.create()
    points = {}
    for key, value in cfg.hydra.sweeper.params.items():
        (override,) = parser.parse_overrides([f"{key}={value}"])
        assert override.is_sweep_override(), (key, value)
        points[override.key_or_group] = list(override.sweep_string_iterator())
    return points


LEARNED_HARM_MARGIN = OmegaConf.load(Path(CONFIG_DIR) / "scorers" / "learned.yaml").cost_margin.harm


def typed(run: RunConfig, key: str):
    """Where a swept key lands in the typed settings (checking that every copy agrees)."""
    if key == "beta":
        assert run.beta == run.setup.beta
        if not isinstance(run.settings, PPOLagSettings):
            assert run.settings.beta == run.setup.beta
        return run.setup.beta
    if key == "cost_limit":
        assert run.cost_limits == run.setup.cost_limit  # the setup holds one limit per cost
        if isinstance(run.settings, (PPOLagSettings, MocanSettings)):
            # The learner aims at d − δ (scorers.cost_margin, learned scorers), the setup at d.
            margin = LEARNED_HARM_MARGIN if run.setup.scorers == "learned" else 0.0
            assert run.settings.cost_limit == pytest.approx(run.cost_limit - margin)
        return run.cost_limit
    if key.startswith("multiplier."):
        lagrangian = run.settings.ppo if isinstance(run.settings, MocanSettings) else run.settings
        assert isinstance(lagrangian, PPOLagSettings)
        return lagrangian.multiplier[key.removeprefix("multiplier.")]
    if key == "learner.mocan.margin":
        assert isinstance(run.settings, MocanSettings)
        return run.settings.margin
    raise AssertionError(f"add {key} to typed()")


@pytest.mark.parametrize("sweep", options("sweep"))
def test_sweep_preset_is_a_multirun_over_existing_keys_and_every_point_validates(sweep):
    cfg = composed(f"sweep={sweep}", hydra_cfg=True)
    assert cfg.hydra.mode == RunMode.MULTIRUN
    points = sweep_points(cfg)
    assert points
    for key, values in points.items():
        assert OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT, f"sweep {sweep}: {key} is not a config key"
        assert len(values) >= 2
        for value in values:
            point = composed(f"sweep={sweep}", f"{key}={value}")
            run = validate(point)
            assert OmegaConf.select(point, key) == pytest.approx(float(value))
            assert typed(run, key) == pytest.approx(float(value))
            if key == "beta":  # the learner's KL coefficient follows β
                assert ppo_of(run).kl_coeff == pytest.approx(float(value))


def test_sweeps_select_the_groups_their_keys_need():
    assert composed("sweep=pid_gains").multiplier.kind == "pid"
    assert composed("sweep=mocan_margin").learner.name == "mocan"
    assert composed("sweep=initial_multiplier").multiplier.kind == "log_gradient_ascent"


def test_cost_limit_sweep_has_four_points():
    points = sweep_points(composed("sweep=cost_limit", hydra_cfg=True))
    assert points == {"cost_limit": ["-1.2", "-1.0", "-0.8", "-0.6"]}


def test_pid_gains_sweep_is_a_two_by_two_grid():
    points = sweep_points(composed("sweep=pid_gains", hydra_cfg=True))
    assert set(points) == {"multiplier.kp", "multiplier.ki"}
    assert all(len(values) == 2 for values in points.values())


# ---------------------------------------------------------------------------------------------
# 5. Launchers.
# ---------------------------------------------------------------------------------------------

RAY_LAUNCHER = "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"


@needs_ray_launcher
def test_ray_launcher_submits_to_the_cluster_the_actor_groups_join():
    cfg = composed("launcher=ray", "sweep=cost_limit", hydra_cfg=True)
    assert cfg.hydra.launcher._target_ == RAY_LAUNCHER
    assert cfg.runtime.address == "auto"
    assert cfg.hydra.launcher.ray.init.address == "auto"
    assert cfg.hydra.mode == RunMode.MULTIRUN
    validate(cfg)


@needs_slurm_launcher
def test_slurm_launcher_is_submitit_and_each_job_starts_its_own_ray():
    cfg = composed("launcher=slurm", hydra_cfg=True)
    assert cfg.hydra.launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert cfg.runtime.address is None
    assert cfg.hydra.launcher.max_num_timeout > 0  # requeued jobs resume
    validate(cfg)


def test_basic_launcher_is_the_default():
    basic = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
    assert composed("launcher=basic", hydra_cfg=True).hydra.launcher._target_ == basic
    assert composed(hydra_cfg=True).hydra.launcher._target_ == basic


@needs_ray_launcher
def test_hydra_launcher_ray_given_directly_composes():
    cfg = composed("hydra/launcher=ray", hydra_cfg=True)
    assert cfg.hydra.launcher._target_ == RAY_LAUNCHER
    assert cfg.runtime.address is None  # only launcher=ray also points the actor groups at the cluster
    validate(cfg)


# ---------------------------------------------------------------------------------------------
# 6. Every field has a one-line comment.
#
# The rule, per line of every YAML file (blank lines, whole-line comments, the `# @package` header
# and the entries of a `defaults:` list are not fields):
# - field groups (FIELD_GROUPS and config.yaml): every `key: value` line and every section header
#   `key:` carries a same-line `# comment`, except a key that the file re-sets from the option it
#   extends through its own `defaults:` list (logger/jsonl.yaml's `kind`), documented there;
# - presets (PRESET_GROUPS): section headers need no comment, and a `key: value` line needs one
#   unless it sets a field documented in a field group (a preset's comments are for what is not
#   obvious: e.g. a launcher plugin's settings); `hydra.mode` and a sweeper param whose key is such
#   a documented field need none either;
# - every file starts with a comment saying what it is.
# ---------------------------------------------------------------------------------------------

_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w.]*):(?:\s+(?P<rest>.*))?$")


@cache
def yaml_fields(path: Path) -> list[tuple[int, str, str, bool, bool]]:
    """(line number, dotted key relative to the file's package, line, is a section header, has a
    same-line comment) for every field line of ``path``."""
    fields, stack, in_defaults = [], [], False
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(line.lstrip(" "))
        if in_defaults and (indent > 0 or stripped.startswith("-")):
            continue
        in_defaults = False
        match = _LINE.match(line)
        assert match, f"{path.relative_to(CONF)}:{number}: not a `key: value` line: {line!r}"
        key, rest = match["key"], (match["rest"] or "").strip()
        if indent == 0 and key == "defaults":
            in_defaults = True
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([*(name for _, name in stack), key])
        header = rest == "" or rest.startswith("#")
        commented = rest.startswith("#") if header else re.search(r"\s#\s?\S", rest) is not None
        if header:
            stack.append((indent, key))
        fields.append((number, dotted, line, header, commented))
    return fields


def package(path: Path) -> str:
    """The dotted prefix of a file's keys in the composed config."""
    if path.parent == CONF:
        return ""
    if "# @package _global_" in path.read_text().splitlines()[:2]:
        return ""
    return default_groups()[path.parent.name]


def prefixed(path: Path, dotted: str) -> str:
    return ".".join(filter(None, (package(path), dotted)))


def field_group_files() -> list[Path]:
    return [CONF / "config.yaml", *(p for group in FIELD_GROUPS for p in sorted((CONF / group).glob("*.yaml")))]


def preset_files() -> list[Path]:
    return [p for group in PRESET_GROUPS for p in sorted((CONF / group).glob("*.yaml"))]


def documented(path: Path) -> set[str]:
    """The full dotted keys that ``path`` defines with a same-line comment."""
    return {prefixed(path, dotted) for _, dotted, _, _, commented in yaml_fields(path) if commented}


def extended(path: Path) -> set[str]:
    """The documented keys of the options ``path`` extends through its own ``defaults:`` list."""
    keys = set()
    for entry in OmegaConf.load(path).get("defaults", []):
        if isinstance(entry, str) and entry != "_self_" and "/" not in entry:
            base = path.parent / f"{entry}.yaml"
            if base.is_file():
                keys |= documented(base) | extended(base)
    return keys


@cache
def all_documented() -> set[str]:
    return set().union(*(documented(path) for path in field_group_files()))


def relative(path: Path) -> str:
    return str(path.relative_to(CONF))


@pytest.mark.parametrize("path", field_group_files(), ids=relative)
def test_every_field_of_a_field_group_has_a_one_line_comment(path):
    inherited = extended(path)
    missing = [
        f"{relative(path)}:{number}: {line.strip()}"
        for number, dotted, line, _, commented in yaml_fields(path)
        if not commented and prefixed(path, dotted) not in inherited
    ]
    assert not missing, "fields without a same-line comment:\n" + "\n".join(missing)


@pytest.mark.parametrize("path", preset_files(), ids=relative)
def test_every_non_obvious_preset_key_has_a_one_line_comment(path):
    known = all_documented()
    missing = []
    for number, dotted, line, header, commented in yaml_fields(path):
        key = prefixed(path, dotted)
        if header or commented or key in known or key == "hydra.mode":
            continue
        if key.startswith("hydra.sweeper.params.") and key.removeprefix("hydra.sweeper.params.") in known:
            continue
        missing.append(f"{relative(path)}:{number}: {line.strip()}")
    assert not missing, "preset keys that are neither documented fields nor commented:\n" + "\n".join(missing)


@pytest.mark.parametrize("path", sorted(CONF.rglob("*.yaml")), ids=relative)
def test_every_config_file_starts_with_a_comment_saying_what_it_is(path):
    lines = [line for line in path.read_text().splitlines() if not line.startswith("# @package")]
    assert lines and lines[0].startswith("# ") and len(lines[0]) > 10, relative(path)


def test_the_comment_rule_sees_every_kind_of_line():
    """The parser behind the rule: dotted keys, headers, comments, the defaults list skipped."""
    fields = {dotted: (header, commented) for _, dotted, _, header, commented in yaml_fields(CONF / "config.yaml")}
    assert "defaults" not in fields and "learner" not in fields
    assert fields["cost_limit"] == (False, True)
    fields = {dotted: (header, commented) for _, dotted, _, header, commented in yaml_fields(CONF / "world" / "default.yaml")}
    assert fields["reference"] == (True, True)
    assert fields["reference.hidden_size"] == (False, True)
    assert "world.reference.hidden_size" in all_documented()
    assert "logger.kind" in extended(CONF / "logger" / "jsonl.yaml")
    assert prefixed(CONF / "sweep" / "beta.yaml", "hydra.sweeper.params.beta") == "hydra.sweeper.params.beta"


def test_the_default_streams_target_the_stated_problem_and_the_published_preset_keeps_its_own():
    """The world's PPO-Lagrangian uses streams whose fixed point is π* of §0 (no +β·kl in the cost
    stream), and scores against the optimum at the same β; beaver_v1 reproduces the published ones."""
    world = validate(composed())
    assert world.settings.ppo.kl_in_cost_stream is False and world.settings.ppo.kl_coeff == world.beta
    for preset in ("world_ppo_lag",):
        assert validate(composed(f"experiment={preset}")).settings.ppo.kl_in_cost_stream is False
    assert validate(composed("experiment=beaver_v1")).settings.ppo.kl_in_cost_stream is True
    # A hub setup has no exact optimum to match: another KL coefficient is the user's choice.
    hub = validate(composed("experiment=beaver_v1", "learner.kl_coeff=0.05"))
    assert hub.settings.ppo.kl_coeff == 0.05 and hub.beta == 0.01


def test_the_cost_sign_weight_reaches_the_cost_stage_only_and_a_negative_one_is_refused():
    """``scorers.sign_weight`` weights the cost loss's safety-sign terms: it changes what the cost
    stage trains (so its record, and a reusing run's match, names it) and never the reward stage."""
    default, bt_only = validate(composed()), validate(composed("scorers.sign_weight=0"))
    assert isinstance(bt_only.setup, WorldSettings) and bt_only.setup.sign_weight == 0.0
    assert bt_only.setup.stage_settings("reward_model") == default.setup.stage_settings("reward_model")
    assert bt_only.setup.stage_settings("cost_model")["sign_weight"] == 0.0
    assert "sign_weight" not in default.setup.stage_settings("reward_model")
    assert default.setup.stage_settings("cost_model").get("sign_weight", 1.0) == default.setup.sign_weight
    with pytest.raises(ConfigError, match=named("scorers.sign_weight", ">= 0.0", "found -1")):
        validate(composed("scorers.sign_weight=-1"))


def test_the_cost_margin_lowers_the_learners_limit_and_never_the_problems():
    """``scorers.cost_margin`` δ: learned scorers' learners aim at ``d − δ`` while the setup (the exact
    evaluation) and the summary keep ``d``; oracle scorers default to no margin; several costs need
    one margin each."""
    learned = validate(composed())
    assert learned.cost_limit == -0.8 and learned.setup.cost_limit == (-0.8,)
    assert learned.settings.cost_limit == pytest.approx(-0.8 - LEARNED_HARM_MARGIN)
    assert validate(composed("scorers=oracle")).settings.cost_limit == -0.8
    mocan = validate(composed("learner=mocan", "scorers.cost_margin.harm=0.25"))
    assert mocan.settings.cost_limit == pytest.approx(-1.05) and mocan.setup.cost_limit == (-0.8,)
    assert validate(composed("scorers.cost_margin=0")).settings.cost_limit == -0.8
    # Two costs: the harm margin alone by default (a refusal rate is in other units), or one each.
    two = validate(composed("experiment=world_two_costs"))
    assert two.settings.cost_limit == pytest.approx((-0.8 - LEARNED_HARM_MARGIN, 0.02)) and two.setup.cost_limit == (-0.8, 0.02)
    both = validate(composed("experiment=world_two_costs", "scorers.cost_margin.refusal=0.005"))
    assert both.settings.cost_limit == pytest.approx((-0.8 - LEARNED_HARM_MARGIN, 0.015))
    with pytest.raises(ConfigError, match=named("scorers.cost_margin", "a margin per cost name", "0.1")):
        validate(composed("experiment=world_two_costs", "scorers.cost_margin=0.1"))
    with pytest.raises(ConfigError, match=named("scorers.cost_margin", "margins ≥ 0", "-0.1")):
        validate(composed("scorers.cost_margin.harm=-0.1"))
    with pytest.raises(ConfigError, match=named("scorers.cost_margin", "'toxicity'", "'harm', 'refusal'")):
        validate(composed("+scorers.cost_margin.toxicity=0.1"))


def test_off_the_world_the_default_margin_is_not_applied_and_another_is_a_lower_cost_limit(tmp_path):
    """Off the world (the tiny models on a PKU-format file) the learned scores are in the cost
    model's units and judged there: the learned file's margin, sized in the world's ground-truth
    units, is not applied (the learner aims at ``d``), and any other nonzero margin is refused,
    naming the ``cost_limit`` that says the same."""
    data = tmp_path / "pairs.jsonl"
    data.write_text("")
    tiny = ("data=pku_saferlhf", f"data.path={data}", "scorers.calibrate=false")
    default = validate(composed(*tiny))
    assert default.settings.cost_limit == default.cost_limit == -0.8  # not -0.8 - LEARNED_HARM_MARGIN
    assert validate(composed(*tiny, "scorers.cost_margin.harm=0")).settings.cost_limit == -0.8
    with pytest.raises(ConfigError, match=named("scorers.cost_margin", "built-in world", "cost_limit=-1")):
        validate(composed(*tiny, "scorers.cost_margin.harm=0.2"))
    with pytest.raises(ConfigError, match=named("scorers.cost_margin=0.1", "cost_limit=-0.9")):
        validate(composed(*tiny, "scorers.cost_margin=0.1"))


def test_the_world_pairs_come_from_the_policy_by_default_and_a_bad_source_is_refused():
    default = validate(composed())
    assert default.setup.pair_source == "policy" and default.setup.stage_settings("pairs")["pair_source"] == "policy"
    # The pairs' stage, not the demonstrations', depends on where the pairs come from.
    demonstrator = validate(composed("data.pair_source=demonstrator")).setup
    assert demonstrator.stage_settings("data") == default.setup.stage_settings("data")
    assert demonstrator.stage_settings("pairs") != default.setup.stage_settings("pairs")
    with pytest.raises(ConfigError, match=named("data.pair_source", "policy, demonstrator", "'web'")):
        validate(composed("data.pair_source=web"))


def test_the_calibration_map_is_isotonic_by_default_and_a_bad_one_is_refused():
    assert validate(composed()).setup.calibration == "isotonic"
    assert validate(composed("scorers.calibration=affine")).setup.calibration == "affine"
    with pytest.raises(ConfigError, match=named("scorers.calibration", "isotonic, affine", "'spline'")):
        validate(composed("scorers.calibration=spline"))


def test_the_actor_schedule_reaches_the_settings_and_a_bad_one_is_refused():
    """``learner.policy_lr_schedule`` and ``learner.policy_lr_warmup_ratio``: linear with no warmup
    on the world, the published cosine after a 3 % warmup in beaver_v1; the steps they span are
    the run's optimizer steps (one per rollout and epoch)."""
    world = validate(composed()).settings
    assert (world.policy_lr_schedule, world.policy_lr_warmup_ratio) == ("linear", 0.0)
    assert world.policy_schedule_steps() == (0, world.ppo.iterations * world.ppo.ppo_epochs)
    published = validate(composed("experiment=beaver_v1")).settings
    assert (published.policy_lr_schedule, published.policy_lr_warmup_ratio) == ("cosine", 0.03)
    assert published.policy_schedule_steps() == (round(0.03 * 210), 210)
    epochs = validate(composed("learner.ppo_epochs=3", "learner.policy_lr_warmup_ratio=0.1")).settings
    assert epochs.policy_schedule_steps() == (90, 900)
    for override, fragment in (("learner.policy_lr_schedule=step", "learner.policy_lr_schedule: expected one of"),
                               ("learner.policy_lr_warmup_ratio=1.0", "learner.policy_lr_warmup_ratio: expected a "
                                                                      "fraction of the steps in [0, 1); found 1.0")):
        with pytest.raises(ConfigError, match=re.escape(fragment)):
            validate(composed(override))


def test_beaver_v1_has_the_published_ptx_term_and_cosine_schedule():
    """PTX at 16 on Alpaca (Safe RLHF's ``--ptx_datasets alpaca --ptx_coeff 16``), the actor's cosine
    schedule after a 3 % warmup; composed without the hub (nothing is loaded)."""
    from saferl.learners import ppo_lag

    run = validate(composed("experiment=beaver_v1"))
    assert run.settings.ppo.ptx_coeff == 16.0 and ppo_lag.needs(run.settings).ptx
    assert (run.setup.ptx_path, run.setup.ptx_split, run.setup.ptx_revision) == ("tatsu-lab/alpaca", "train", None)
    assert (run.settings.policy_lr_schedule, run.settings.policy_lr_warmup_ratio) == ("cosine", 0.03)
    # No PTX set by default, and none needed at ptx_coeff 0.
    default = validate(composed(*HUB))
    assert default.setup.ptx_path is None and default.settings.ppo.ptx_coeff == 0.0
    assert not ppo_lag.needs(default.settings).ptx
    # On the world the world's SFT demonstrations are the PTX set: no data key needed.
    world = validate(composed("learner.ptx_coeff=2")).settings
    assert world.ppo.ptx_coeff == 2.0 and ppo_lag.needs(world).ptx
    # MoCAN's and RBR's PPO stages read it too.
    from saferl.learners import mocan, rbr

    assert mocan.needs(validate(composed("experiment=world_mocan", "learner.mocan.stage=ppo",
                                         "learner.ptx_coeff=1")).settings).ptx
    assert rbr.needs(validate(composed("experiment=world_rbr", "learner.ptx_coeff=1")).settings).ptx


def test_skip_nonfinite_batches_reaches_the_ppo_and_preference_settings_and_a_bad_one_is_refused():
    """``learner.skip_nonfinite_batches``: off by default (a NaN stops the run), on when set, for
    the PPO learners and every learner's DPO steps (preference, PeCAN, C-DPO, MoCAN); a string is
    refused with the key named."""
    assert validate(composed()).settings.ppo.skip_nonfinite_batches is False
    assert validate(composed("learner.skip_nonfinite_batches=true")).settings.ppo.skip_nonfinite_batches is True
    for learner in ("preference", "pecan", "cdpo", "mocan"):  # their DPO steps: the same guard
        assert validate(composed(f"learner={learner}")).settings.skip_nonfinite_batches is False
        on = validate(composed(f"learner={learner}", "learner.skip_nonfinite_batches=true")).settings
        assert on.skip_nonfinite_batches is True, learner
    for learner in ("ppo_lag", "preference", "pecan", "cdpo"):
        with pytest.raises(ConfigError, match=re.escape("learner.skip_nonfinite_batches: expected true or false")):
            validate(composed(f"learner={learner}", "learner.skip_nonfinite_batches=sometimes"))


def test_a_long_sft_first_starts_one_rank_process_early_and_any_other_run_two(monkeypatch, tmp_path):
    """saferl.cli._start_rank_processes: a fresh world run whose SFT is long (the default job's 300
    steps) starts one rank process before the driver's start-up (the setup starts the second as
    the SFT begins); a short SFT (debug=tiny), a run on another run's models and an explicit limit
    of processes start min(limit, 2). Ray's start and the pool are recorded, not started."""
    from saferl import cli
    from saferl.runtime import cluster, pool

    started: list[int] = []
    monkeypatch.setattr(cluster, "init_ray", lambda runtime: None)
    monkeypatch.setattr(pool, "prestart_workers", lambda runtime, group, count: started.append(count))

    def early(*overrides: str) -> int:
        started.clear()
        cli._start_rank_processes(validate(composed("runtime.max_single_rank_processes=4", *overrides)))
        return started[0]

    (tmp_path / "stages.json").write_text("{}")
    assert cli.LONG_SFT_STEPS <= OmegaConf.select(composed(), "model.sft.steps")
    assert early() == 1
    assert early("debug=tiny") == 2
    assert early(f"model.from_run={tmp_path}") == 2
    assert early(f"model.sft.steps={cli.LONG_SFT_STEPS - 1}") == 2
    assert early("runtime.max_single_rank_processes=1", "debug=tiny") == 1


def test_runtime_vllm_builds_the_engines_spec_for_a_ppo_loop_and_is_refused_without_one(monkeypatch):
    """``runtime.vllm``: null generates in the policy group; a mapping is the rollout engines'
    spec of every learner that runs the PPO loop; without the ``vllm`` package, for a learner
    without a PPO loop, with an unknown key or a bad value it is refused, naming the key."""
    import importlib.util

    from saferl.runtime.specs import VLLMSpec

    assert validate(composed()).resources.vllm is None
    engines = "runtime.vllm={num_engines:2,gpu_memory_utilization:0.3}"
    if importlib.util.find_spec("vllm") is None:  # this machine: said before any stage runs
        with pytest.raises(ConfigError, match=named("runtime.vllm", "'vllm' package is not installed")):
            validate(composed(engines))
        find_spec = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *args: object() if name == "vllm" else find_spec(name, *args))
    for overrides in ((), ("learner=rbr",), ("learner=mocan", "learner.mocan.stage=ppo")):
        vllm = validate(composed(engines, *overrides)).resources.vllm
        assert vllm == VLLMSpec(num_engines=2, gpu_memory_utilization=0.3), overrides
    for learner in ("preference", "mocan", "pecan"):  # mocan's default stage is DPO
        with pytest.raises(ConfigError, match=named("runtime.vllm", f"learner={learner}", "runtime.vllm=null")):
            validate(composed(engines, f"learner={learner}"))
    with pytest.raises(ConfigError, match=named("runtime.vllm", "gpus")):
        validate(composed("runtime.vllm={gpus:1}"))
    with pytest.raises(ConfigError, match=named("runtime.vllm.gpu_memory_utilization", "(0, 1]", "1.5")):
        validate(composed("runtime.vllm={gpu_memory_utilization:1.5}"))
