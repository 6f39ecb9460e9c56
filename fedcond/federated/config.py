"""``FederateConfig``: every setting of one federated run, as one typed dataclass.

One source of settings, three ways in, one format: ``fedcond federate --config FILE``,
Flower's run config (``[tool.flwr.app.config]`` in pyproject.toml, and ``flwr run .
--run-config FILE``) and the in-process runner's overrides all use the same flat
kebab-case keys, one per field (``num-clients`` for ``num_clients``), with str/int/float/
bool values. pyproject.toml's defaults equal the dataclass defaults (a test checks it), so
a ``configs/federated_*.toml`` file gives the same run either way. ``from_run_config`` and
``to_run_config`` translate between the dataclass and Flower's flat dict.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from fedcond.errors import FedcondError
from fedcond.federated.method_settings import FedAFSettings, FedDMSettings
from fedcond.recipe import Recipe, check_same_recipe

PARTITIONS = ("iid", "dirichlet", "pathological")
STRATEGIES = ("fedcond", "fedcond-iterative", "feddm", "fedaf", "fedavg", "fedprox", "fedadam")
# Strategies whose clients upload distilled sets (the server pools them: strategies.fedcond.FedCond)
DISTILLED = ("fedcond", "fedcond-iterative", "feddm", "fedaf")
# ... of which these send the global model every round and refine the clients' sets against it
REFINING = ("fedcond-iterative", "feddm", "fedaf")
MODES = ("oneshot", "iterative")
PRECISIONS = ("auto", "float32", "bfloat16")  # fedcond.precision's (not imported: this module stays torch-free)
# Method options that FederateConfig sets itself (``-o ipc=3`` would fight ``ipc``).
OWN_METHOD_SETTINGS = ("ipc", "model", "iterations", "checkpoint_dir", "epsilon", "delta")
_TYPES = {"str": str, "int": int, "float": float, "bool": bool}
# Fields whose None ("the method's own default") travels in Flower's run config, which holds
# scalars only, as this value (never a valid setting of the field itself).
RUN_CONFIG_NONE = {"iterations": 0}
# Where flwr run's app config ([tool.flwr.app.config]) differs from the dataclass: num-clients = 0
# is the federation's size, resolved from the SuperNodes the ServerApp finds (fedcond.simulations.
# federation) and from each SuperNode's num-partitions; fedcond federate simulates 10 unless told.
FLWR_RUN_DEFAULTS = {"num_clients": 0}


@dataclass
class FederateConfig:
    """One federated run: data, partition, strategy, client work, server work, faults.

    ``strategy`` is the one strategy a ServerApp runs (what ``flwr run .`` runs);
    ``strategies`` is the comma list ``fedcond federate`` compares, one simulation each.
    ``rounds`` applies to every strategy except one-shot FedCond, which always runs one.
    """

    dataset: str = "digits"
    data_dir: str = ""  # "" = default location / download
    num_clients: int = 10  # fedcond federate's; flwr run's default is 0, the federation's size (FLWR_RUN_DEFAULTS)
    partition: str = "dirichlet"
    alpha: float = 0.5
    classes_per_client: int = 2  # pathological partition
    seed: int = 0
    strategy: str = "fedcond"
    strategies: str = "fedcond,fedavg,fedprox"  # comma list (run-config values are scalars)
    mode: str = "oneshot"  # FedCond: oneshot | iterative
    rounds: int = 5
    fraction: float = 1.0  # clients sampled per round
    model: str = "convnet"
    # FedCond clients
    method: str = "dm"
    method_options: str = ""  # JSON object of the method's config fields (-o key=value)
    ipc: int = 10
    # per client and round; None (run config: 0): the method's own default, sized for a CPU
    # (DM and FedDM 100, DC 50, FRePo 400, DP-DM 1000, ...; DM's paper setting is 20k)
    iterations: int | None = None
    storage_dtype: str = "float32"
    # `fedcond federate` reruns FedCond once per other dtype here (float32, float16, uint8)
    storage_dtypes: str = "float32,float16,uint8"
    random_reference: bool = True  # `fedcond federate`: also FedCond with random real images
    herding_reference: bool = True  # `fedcond federate`: also FedCond with herding's real images
    max_payload_bytes: int = 16 * 2**20  # server-side cap on one reply
    # Differential privacy: > 0 makes FedCond clients distill with dp-dm at this epsilon
    # (one-shot mode; method dm or dp-dm); each client's spent epsilon is recorded.
    dp_epsilon: float = 0.0
    dp_delta: float = 1e-5
    # `fedcond federate` reruns FedCond once per other epsilon here (accuracy against epsilon)
    dp_epsilons: str = ""
    # `fedcond federate` under DP: also run and write what is not DP (FedAvg/FedProx/FedAdam, the
    # references that upload real images, the upper bound, exact histograms, bytes and timings),
    # apart in OUT/non_private/ (fedcond.federated.dp_folder). Off: OUT holds DP output only.
    # Without DP it changes nothing (the references' non-DP runs carry it along).
    dp_non_private: bool = False
    # The data's normalisation (fedcond.data.load_dataset's normalize): "" = the data set's
    # default, which with DP becomes "public" (digits' default is computed from the private
    # images); "MEAN:STD" for ImageFolder data under DP.
    normalize: str = ""
    # FedCond iterative mode: refining a client's set against the global model (FedDM)
    feddm_lr_images: float = 1.0
    feddm_momentum_images: float = 0.5
    feddm_batch_real: int = 256  # real images per class per step
    feddm_rho: float = 0.01  # relative weight perturbation of the received model
    # Strategy feddm (FedDM as published, fedcond.federated.method_settings.FedDMSettings): the L2
    # radius around the received model's weights in which every matching iteration draws its network
    feddm_radius: float = FedDMSettings.rho
    # Strategy fedaf (FedAF, FedAFSettings): the clients' knowledge-matching weight, the server's
    # distillation weight and the soft labels' temperature
    fedaf_lambda_local: float = FedAFSettings.lambda_local
    fedaf_lambda_global: float = FedAFSettings.lambda_global
    fedaf_temperature: float = FedAFSettings.temperature
    # FedAvg / FedProx / FedAdam clients
    # tuned on digits (benchmarks/results/federated_digits.md: 5 local epochs won the grid at Dirichlet 0.5 and
    # 0.1, lr 0.1 at 0.1 and 0.05 at 0.5)
    local_epochs: int = 5
    lr: float = 0.1
    batch_size: int = 32
    proximal_mu: float = 0.01
    server_lr: float = 0.01  # FedAdam's eta
    # FedCond server: training the global model on the pooled sets
    server_epochs: int = 150
    server_lr_train: float = 0.01
    # The training recipe of every learner of the comparison (fedcond.recipe): SGD with momentum
    # 0.9 and weight decay 5e-4, and this DSA augmentation of every mini-batch — FedAvg/FedProx
    # local training, the server's training on sets (FedCond and its controls) and the upper
    # bound alike ("none": no augmentation; "auto": crop_scale_rotate for one-channel images,
    # DSA's default set for colour).
    augment: str = "auto"
    # The server's training alone: "recipe" (= augment). Another value makes the comparison's
    # learners train differently, refused unless unequal_recipe asks for it by name.
    server_augment: str = "recipe"
    unequal_recipe: bool = False
    # Share of the training images held out (per class, seeded by seed) before partitioning: the
    # validation split on which the server picks the reported round, grids pick their winner
    # and the upper bound its plateau. The test split is never used to choose anything.
    val_fraction: float = 0.1
    # A reduced run (a CPU check of a large data set): this many training images per class, drawn
    # with the seed after the validation split (fedcond.federated.data_cache); 0 = all of them.
    train_per_class: int = 0
    # centralised upper bound (`fedcond federate`): trained until the held-out loss plateaus
    central_max_epochs: int = 100
    central_patience: int = 5
    # faults and resources
    round_timeout: float = 3600.0  # seconds the server waits for a round's replies
    fail_fraction: float = 0.0
    fail_mode: str = "raise"  # raise (exception -> error reply) | corrupt (NaN payload)
    client_threads: int = 1
    server_threads: int = 0  # 0 = torch's default
    device: str = "cpu"
    # Arithmetic of every training and distillation loop (fedcond.precision): auto = bfloat16
    # autocast where the device has fast bfloat16 (AMX CPUs, CUDA GPUs), else float32.
    precision: str = "auto"
    out_dir: str = ""  # where the ServerApp writes its per-strategy JSON ("" = nowhere)
    run_name: str = ""  # this run's name in results and file names ("" = the strategy's)
    checkpoint_dir: str = ""  # a checkpoint after every round; a rerun resumes ("" = none)

    def __post_init__(self) -> None:
        if self.num_clients < 0:  # 0: the federation's size (flwr run; see FLWR_RUN_DEFAULTS)
            raise FedcondError(f"--num-clients must be >= 1 (or 0 in a flwr run config: the federation's size), "
                               f"got {self.num_clients}")
        if self.partition not in PARTITIONS:
            raise FedcondError(f"--partition must be one of {', '.join(PARTITIONS)}, got {self.partition!r}")
        if self.alpha <= 0:
            raise FedcondError(f"--alpha must be > 0, got {self.alpha}")
        unknown = [s for s in (self.strategy, *self.strategy_names) if s not in STRATEGIES]
        if unknown or not self.strategy_names:
            raise FedcondError(f"unknown strategy {', '.join(unknown) or '(none)'}: use {', '.join(STRATEGIES)}")
        if self.mode not in MODES:
            raise FedcondError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.rounds < 1 or self.ipc < 1 or self.local_epochs < 1 or self.server_epochs < 1:
            raise FedcondError("--rounds, --ipc, --local-epochs and server epochs must be >= 1")
        if self.iterations is not None and self.iterations < 1:
            raise FedcondError(f"--iterations must be >= 1, got {self.iterations} (leave it out for the method's "
                               "own default)")
        if not 0 < self.fraction <= 1:
            raise FedcondError(f"--fraction must be in (0, 1], got {self.fraction}")
        if not 0 <= self.fail_fraction < 1:
            raise FedcondError(f"--fail-fraction must be in [0, 1), got {self.fail_fraction}")
        if self.fail_mode not in ("raise", "corrupt"):
            raise FedcondError(f"fail mode must be raise or corrupt, got {self.fail_mode!r}")
        if self.lr <= 0 or self.server_lr_train <= 0 or self.proximal_mu < 0:
            raise FedcondError("learning rates must be > 0 and proximal mu >= 0")
        if (
            self.feddm_lr_images <= 0
            or not 0 <= self.feddm_momentum_images < 1
            or self.feddm_batch_real < 1
            or self.feddm_rho < 0
        ):
            raise FedcondError("feddm-lr-images must be > 0, feddm-momentum-images in [0, 1), "
                               "feddm-batch-real >= 1 and feddm-rho >= 0")
        if self.feddm_radius < 0 or self.fedaf_lambda_local < 0 or self.fedaf_lambda_global < 0:
            raise FedcondError("feddm-radius, fedaf-lambda-local and fedaf-lambda-global must be >= 0")
        if self.fedaf_temperature <= 0:
            raise FedcondError(f"fedaf-temperature must be > 0, got {self.fedaf_temperature}")
        refining = [s for s in (self.strategy, *self.strategy_names) if s in ("feddm", "fedaf")]
        if refining and self.method != "dm":
            raise FedcondError(f"{refining[0]} condenses with DM (its paper's method); --method {self.method} is "
                               "for fedcond and fedcond-iterative")
        from fedcond.synthetic import STORAGE_DTYPES  # noqa: PLC0415

        bad = [d for d in (self.storage_dtype, *self.storage_dtype_names) if d not in STORAGE_DTYPES]
        if bad:
            raise FedcondError(f"unknown storage dtype {', '.join(bad)}: use {', '.join(STORAGE_DTYPES)}")
        if not 0 < self.val_fraction < 0.5:
            raise FedcondError(f"--val-fraction must be in (0, 0.5), got {self.val_fraction}")
        if self.train_per_class < 0:
            raise FedcondError(f"--train-per-class must be >= 0 (0: every image), got {self.train_per_class}")
        self.recipe_notes = check_same_recipe(self.learner_recipes(), self.unequal_recipe)
        if self.central_max_epochs < 1 or self.central_patience < 1:
            raise FedcondError("central-max-epochs and central-patience must be >= 1")
        if self.precision not in PRECISIONS:
            raise FedcondError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.round_timeout <= 0 or self.server_threads < 0:
            raise FedcondError("round-timeout must be > 0 and server-threads >= 0")
        if self.dp_epsilon < 0 or any(e <= 0 for e in self.dp_epsilon_values) or not 0 < self.dp_delta < 1:
            raise FedcondError("--dp-epsilon must be >= 0 (0: no DP), --dp-epsilons > 0 and --dp-delta in (0, 1)")
        if self.dp_epsilon > 0 or self.dp_epsilon_values:
            if self.method not in ("dm", "dp-dm"):
                raise FedcondError(f"--dp-epsilon makes FedCond clients distill with dp-dm; use --method dm or "
                                   f"dp-dm, not {self.method!r}")
            if self.effective_mode == "iterative" or any(s in REFINING for s in self.strategy_names):
                raise FedcondError("--dp-epsilon works with one-shot FedCond: every round of fedcond-iterative, "
                                   "feddm or fedaf would spend the budget again")
            if not self.normalize:  # every run of the experiment alike, the non-private references too
                self.normalize = "public"
            if self.normalize == "train":
                raise FedcondError("--dp-epsilon refuses normalize = \"train\": statistics of the private images; "
                                   "use public or MEAN:STD")
        self.distill_config()  # unknown method or method option: fail here, not in a client

    # ------------------------------------------------------------------ derived
    @property
    def recipe(self) -> Recipe:
        """The training recipe of the clients' local training and the upper bound (``augment``)."""
        return Recipe(augment=self.augment)

    @property
    def server_recipe(self) -> Recipe:
        """The recipe of the server's training on sets: :attr:`recipe` unless ``server_augment`` differs."""
        return self.recipe if self.server_augment == "recipe" else Recipe(augment=self.server_augment)

    def learner_recipes(self) -> dict[str, Recipe]:
        """Each kind of learner of this comparison with its recipe (for checks and reports)."""
        return {"FedAvg/FedProx clients": self.recipe, "upper bound": self.recipe,
                "server training on sets (FedCond and its controls)": self.server_recipe}

    def resolved_precision(self, device: str | None = None) -> str:
        """``precision`` as it runs on ``device`` (default: the run's): float32 or bfloat16."""
        from fedcond.precision import resolve_precision  # noqa: PLC0415

        return resolve_precision(self.precision, device or self.device)

    @property
    def strategy_names(self) -> list[str]:
        """``strategies`` as a list of names."""
        return [s.strip() for s in self.strategies.split(",") if s.strip()]

    @property
    def storage_dtype_names(self) -> list[str]:
        """``storage_dtypes`` as a list of names."""
        return [s.strip() for s in self.storage_dtypes.split(",") if s.strip()]

    @property
    def dp_epsilon_values(self) -> list[float]:
        """``dp_epsilons`` as a list of numbers."""
        try:
            return [float(e) for e in self.dp_epsilons.split(",") if e.strip()]
        except ValueError:
            raise FedcondError(f"--dp-epsilons must be a comma list of numbers, got {self.dp_epsilons!r}") from None

    @property
    def client_method(self) -> str:
        """The FedCond clients' distiller: dp-dm when ``dp_epsilon`` > 0, else ``method``."""
        return "dp-dm" if self.dp_epsilon > 0 else self.method

    @property
    def name(self) -> str:
        """The run's name: ``run_name``, else the strategy's."""
        return self.run_name or self.strategy

    @property
    def method_option_values(self) -> dict[str, Any]:
        """``method_options`` as a dict (``{}`` when empty)."""
        if not self.method_options.strip():
            return {}
        try:
            values = json.loads(self.method_options)
        except json.JSONDecodeError as err:
            raise FedcondError(f"method-options must be a JSON object, e.g. '{{\"lr_images\": 0.5}}': {err}") from None
        if not isinstance(values, dict):
            raise FedcondError(f"method-options must be a JSON object, got {self.method_options!r}")
        return values

    def distill_config(self):
        """The FedCond clients' distiller (:attr:`client_method`) and config: ipc, model,
        iterations (None: the method's own), method options, and with DP the budget
        (``dp_epsilon``, ``dp_delta``).

        Unknown options are a ``FedcondError`` naming them and listing the known ones.
        """
        from fedcond.distill import make_distiller, method_names  # noqa: PLC0415

        if self.method not in method_names():
            raise FedcondError(f"unknown method {self.method!r}: use one of {', '.join(method_names())}")
        budget = {"epsilon": self.dp_epsilon, "delta": self.dp_delta} if self.dp_epsilon > 0 else {}
        # Clients are stateless processes: no checkpoint_dir (its default, None), no resume files.
        return make_distiller(self.client_method, self.ipc, self.model, self.iterations, self.method_option_values,
                              settings={**budget, "precision": self.precision}, reserved=OWN_METHOD_SETTINGS)

    def feddm_config(self):
        """DM's settings for refining a client's set against the global model, by strategy:

        - ``feddm``: FedDM as published (:class:`FedDMSettings`): iterations (None: the paper's),
          every iteration's network on the sphere of radius ``feddm_radius`` around the model;
          the images' step and real batch are DM's own (its paper's);
        - ``fedaf``: FedAF's condensation (:class:`FedAFSettings`' iterations and radius, DM's own
          step and batch); its knowledge-matching term is added by :mod:`fedcond.federated.fedaf`;
        - ``fedcond-iterative`` (and FedCond in iterative mode): iterations (None: DM's own) and
          the ``feddm_*`` fields (relative Gaussian noise).

        No augmentation, no checkpoints."""
        from fedcond.distill.dm import DMConfig  # noqa: PLC0415

        common = {"ipc": self.ipc, "model": self.model, "dsa": False, "checkpoint_dir": None,
                  "precision": self.precision}
        if self.strategy in ("feddm", "fedaf"):
            own = FedDMSettings() if self.strategy == "feddm" else FedAFSettings()
            rho = self.feddm_radius if self.strategy == "feddm" else own.rho
            return DMConfig(**common, iterations=self.iterations or own.iterations, rho=rho, perturb="ball")
        iterations = {} if self.iterations is None else {"iterations": self.iterations}
        return DMConfig(**common, **iterations, lr_images=self.feddm_lr_images,
                        momentum_images=self.feddm_momentum_images, batch_real=self.feddm_batch_real,
                        rho=self.feddm_rho)

    @property
    def client_iterations(self) -> int | None:
        """The iterations a FedCond client runs: ``iterations``, else its method's own default
        (DM's for FedDM in iterative mode); None for a method that does not iterate (coresets)."""
        if self.iterations is not None:
            return self.iterations
        config = self.feddm_config() if self.effective_mode == "iterative" else self.distill_config()[1]
        return getattr(config, "iterations", None)

    @property
    def effective_mode(self) -> str:
        """``fedcond-iterative``, ``feddm`` and ``fedaf`` refine sets against the model every
        round (iterative); other names keep ``mode``."""
        return "iterative" if self.strategy in REFINING else self.mode

    @property
    def distills(self) -> bool:
        """Whether this run's clients upload distilled sets (FedCond, FedDM, FedAF)."""
        return self.strategy in DISTILLED

    @property
    def effective_rounds(self) -> int:
        """One-shot FedCond runs exactly one round; everything else ``rounds``."""
        if self.strategy.startswith("fedcond") and self.effective_mode == "oneshot":
            return 1
        return self.rounds

    def for_strategy(self, strategy: str) -> "FederateConfig":
        """This config running ``strategy`` alone (one simulation of the comparison)."""
        return replace(self, strategy=strategy, strategies=strategy)

    def with_method_options(self, options: dict[str, Any]) -> "FederateConfig":
        """This config with ``options`` added to the method options (they win)."""
        merged = {**self.method_option_values, **options}
        return replace(self, method_options=json.dumps(merged, sort_keys=True) if merged else "")

    # ------------------------------------------------------------------ Flower run config
    def to_run_config(self) -> dict[str, str | int | float | bool]:
        """Flat kebab-case dict for Flower's run config: one key per field (None as
        :data:`RUN_CONFIG_NONE` says)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {run_config_key(k): RUN_CONFIG_NONE[k] if v is None else v for k, v in values.items()}

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any], overrides: dict[str, Any] | None = None,
                        source: str = "run config") -> "FederateConfig":
        """Build from Flower's run config, then apply ``overrides`` (same kebab-case keys).

        Unknown keys and values of the wrong type are a ``FedcondError`` naming ``source``.
        """
        merged = {**dict(run_config), **(overrides or {})}
        by_key = {run_config_key(f.name): f for f in fields(cls)}
        unknown = sorted(set(merged) - set(by_key))
        if unknown:
            raise FedcondError(f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(by_key))}")
        values: dict[str, Any] = {}
        for key, value in merged.items():
            f = by_key[key]
            want = _TYPES[f.type.removesuffix(" | None")]
            # TOML writes whole floats as ints (alpha = 1) and Flower keeps them so: coerce.
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, want) or (want is int and isinstance(value, bool)):
                raise FedcondError(f"{source}: {key} must be of type {want.__name__}, got {value!r}")
            values[f.name] = None if f.name in RUN_CONFIG_NONE and value == RUN_CONFIG_NONE[f.name] else value
        return cls(**values)

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> "FederateConfig":
        """Read a flat run-config TOML (the format ``flwr run --run-config`` reads).

        ``overrides`` are field names (snake_case); those that are not None win.
        """
        path = Path(path)
        if not path.is_file():
            raise FedcondError(f"no such config file: {path}")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise FedcondError(f"cannot parse {path}: {err}") from None
        tables = sorted(k for k, v in data.items() if isinstance(v, dict))
        if tables:
            raise FedcondError(f"{path}: table(s) [{'], ['.join(tables)}] found; settings are top-level "
                               "kebab-case keys (the format `flwr run . --run-config FILE` reads)")
        flags = {k: v for k, v in overrides.items() if v is not None}
        as_given = {k: flags.pop(k) for k in RUN_CONFIG_NONE if k in flags}  # a flag's 0 is 0, not "unset"
        cfg = cls.from_run_config(data, {run_config_key(k): v for k, v in flags.items()}, source=str(path))
        return replace(cfg, **as_given) if as_given else cfg

    def to_json(self) -> dict[str, Any]:
        """The settings as run (results files, checkpoints): ``iterations`` resolved to what
        the clients run (:attr:`client_iterations`)."""
        return {**asdict(self), "iterations": self.client_iterations}


def run_config_key(name: str) -> str:
    """The run-config key of a field: ``num_clients`` -> ``num-clients``."""
    return name.replace("_", "-")
