"""The federated settings, two dataclasses: what the Flower app reads, and what an experiment adds.

- :class:`AppConfig`: every setting the ServerApp and the ClientApp read (``simulations/``,
  ``strategies/`` and the Flower-free parts they call): data, partition, the one strategy,
  the clients' and the server's work, faults. ``[tool.flwr.app.config]`` in pyproject.toml
  lists exactly these keys with these defaults (a test checks it).
- :class:`ExperimentConfig`: an app config plus what only ``fedcond federate`` and the
  benchmarks read: the strategies compared, the references run beside them (storage dtypes,
  epsilons, random real and herding images, the centralised upper bound), the DP folder's
  non-private part and the comparison's recipe check. ``FederateConfig`` is its older name.

One format, three ways in: ``fedcond federate --config FILE``, Flower's run config
(``flwr run . --run-config FILE``) and the in-process runner's overrides all use flat
kebab-case keys, one per field (``num-clients`` for ``num_clients``), with str/int/float/
bool values. A file of app keys alone gives the same run either way; Flower refuses a
file with an experiment key (it knows only the app's). ``from_run_config`` and
``to_run_config`` translate between a dataclass and Flower's flat dict.

Each field's help text is its ``metadata["help"]`` (:func:`setting`): ``fedcond
federate``'s options (:mod:`fedcond.commands.config_options`) and the benchmarks'
(``benchmarks/config_options.py``) are made from the fields, so a setting is declared once.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from fedcond.errors import FedcondError
from fedcond.federated.method_settings import FedAFSettings, FedDMSettings
from fedcond.precision import DEFAULT_PRECISION, PRECISIONS  # torch-free: --help stays quick
from fedcond.recipe import Recipe, check_same_recipe

PARTITIONS = ("iid", "dirichlet", "pathological")
STRATEGIES = ("fedcond", "fedcond-iterative", "feddm", "fedaf", "fedavg", "fedprox", "fedadam", "dpfedavg")
# Strategies whose clients upload distilled sets (the server pools them: strategies.fedcond.FedCond)
DISTILLED = ("fedcond", "fedcond-iterative", "feddm", "fedaf")
# ... of which these send the global model every round and refine the clients' sets against it
REFINING = ("fedcond-iterative", "feddm", "fedaf")
MODES = ("oneshot", "iterative")
_TYPES = {"str": str, "int": int, "float": float, "bool": bool}
# Fields whose None ("the method's own default") travels in Flower's run config, which holds
# scalars only, as this value (never a valid setting of the field itself).
RUN_CONFIG_NONE = {"iterations": 0}
# The refinement settings of fedcond-iterative that are DM's own unless set: each field's
# None becomes DMConfig's value when the config is built (DM's settings are referenced, not
# copied), so an instance, its run config and its checkpoints hold the number that runs.
FROM_DM = {"feddm_lr_images": "lr_images", "feddm_momentum_images": "momentum_images",
           "feddm_batch_real": "batch_real"}
# Where flwr run's app config ([tool.flwr.app.config]) differs from the dataclass: num-clients = 0
# is the federation's size, resolved from the SuperNodes the ServerApp finds (fedcond.simulations.
# federation) and from each SuperNode's num-partitions; fedcond federate simulates 10 unless told.
FLWR_RUN_DEFAULTS = {"num_clients": 0}


def setting(default: Any, help_text: str, *, flags: tuple[str, ...] = (), off: str | None = "",
            path: bool = False) -> Any:
    """A config field with its help text, declared once for every command line made from it.

    ``flags``: further option names (a short ``-d``); ``off``: a bool's negative flag
    (``""``: ``--no-<name>``; None: a switch with no negative); ``path``: a str that the
    command line takes as a path.
    """
    return field(default=default, metadata={"help": help_text, "flags": flags, "off": off, "path": path})


@dataclass
class AppConfig:
    """One federated run as the Flower app runs it: data, partition, strategy, client work,
    server work, faults.

    ``strategy`` is the one strategy the ServerApp runs; ``rounds`` applies to every
    strategy except one-shot FedCond, which always runs one.
    """

    dataset: str = setting("digits", "digits, mnist, cifar10, ...", flags=("-d",))
    data_dir: str = setting("", "read the data set from this local mirror", path=True)  # "": default place / download
    # fedcond federate's; flwr run's default is 0, the federation's size (FLWR_RUN_DEFAULTS)
    num_clients: int = setting(10, "simulated clients")
    partition: str = setting("dirichlet", "iid, dirichlet or pathological")
    alpha: float = setting(0.5, "Dirichlet concentration")
    classes_per_client: int = setting(2, "pathological: classes per client")
    seed: int = setting(0, "seed of partitions, models and sampling of failures")
    strategy: str = setting("fedcond", "the strategy this run runs: " + ", ".join(STRATEGIES))
    mode: str = setting("oneshot", "FedCond mode: oneshot or iterative")
    rounds: int = setting(5, "rounds for iterative strategies (one-shot FedCond runs 1)")
    fraction: float = setting(1.0, "fraction of clients sampled per round")
    model: str = setting("convnet", "the network of the clients and the server (fedcond.models)")
    # FedCond clients
    method: str = setting("dm", "FedCond clients' distillation method", flags=("-m",))
    method_options: str = setting("", "JSON object of the method's config fields (fedcond federate: -o key=value)")
    ipc: int = setting(10, "synthetic images per class per client")
    # per client and round; None (run config: 0): the method's own default, sized for a CPU
    # (DM and FedDM 100, DC 50, FRePo 400, DP-DM 1000, ...; DM's paper setting is 20k)
    iterations: int | None = setting(None, "distillation iterations per client (unset: the method's own default)",
                                     flags=("-n",))
    storage_dtype: str = setting("float32", "FedCond's upload dtype: float32, float16 or uint8")
    max_payload_bytes: int = setting(16 * 2**20, "the server's cap on the bytes of one reply")
    # Each client's spent epsilon is recorded; DP works with one-shot FedCond and method dm or dp-dm.
    dp_epsilon: float = setting(0.0, "FedCond clients distill with dp-dm at this epsilon (one-shot; 0: no DP)")
    dp_delta: float = setting(1e-5, "their delta")
    # Strategy dpfedavg (FedAvg with DP-SGD clients, fedcond.federated.dp_sgd): at dp_epsilon, dp_delta
    # over all its rounds; lr, local_epochs and batch_size (the noisy sum's public divisor) are FedAvg's.
    dp_clip: float = setting(1.0, "dpfedavg: each example's gradient is clipped to this L2 norm")
    dp_sample_rate: float = setting(0.0, "dpfedavg: each example's chance to be in a local step's Poisson sample, "
                                         "a public setting (0: not set; dpfedavg needs it)")
    # Empty: the data set's own normalisation (fedcond.data.load_dataset), which with DP becomes
    # "public" (digits' own is computed from the private images); "MEAN:STD" for ImageFolder data under DP.
    normalize: str = setting("", "public, train or MEAN:STD per channel (default: the data set's; with DP: public)")
    # fedcond-iterative (FedCond in iterative mode): refining a client's set against the global model
    feddm_lr_images: float | None = setting(None, "fedcond-iterative: the images' step (unset: DM's lr_images)")
    feddm_momentum_images: float | None = setting(None, "fedcond-iterative: the images' momentum (unset: DM's "
                                                        "momentum_images)")
    feddm_batch_real: int | None = setting(None, "fedcond-iterative: real images per class per step (unset: DM's "
                                                 "batch_real)")
    feddm_rho: float = setting(0.01, "fedcond-iterative: relative weight perturbation of the received model")
    # FedDM as published (fedcond.federated.method_settings)
    feddm_radius: float = setting(FedDMSettings.rho, "feddm: the L2 radius around the received model's weights in "
                                                     "which every matching iteration draws its network")
    # FedAF (FedAFSettings)
    fedaf_lambda_local: float = setting(FedAFSettings.lambda_local, "fedaf: the clients' knowledge-matching weight")
    fedaf_lambda_global: float = setting(FedAFSettings.lambda_global, "fedaf: the server's distillation weight")
    fedaf_temperature: float = setting(FedAFSettings.temperature, "fedaf: the soft labels' temperature")
    # FedAvg / FedProx / FedAdam clients: tuned on digits (benchmarks/results/federated_digits.md: 5 local
    # epochs won the grid at Dirichlet 0.5 and 0.1, lr 0.1 at 0.1 and 0.05 at 0.5)
    local_epochs: int = setting(5, "FedAvg/FedProx local epochs")
    lr: float = setting(0.1, "FedAvg/FedProx client learning rate")
    batch_size: int = setting(32, "FedAvg/FedProx/FedAdam clients' batch size")
    proximal_mu: float = setting(0.01, "FedProx mu")
    server_lr: float = setting(0.01, "FedAdam's server learning rate (eta)")
    # FedCond server: training the global model on the pooled sets
    server_epochs: int = setting(150, "FedCond server epochs on the pooled sets")
    server_lr_train: float = setting(0.01, "FedCond server's learning rate on the pooled sets")
    # The training recipe of every learner of the comparison (fedcond.recipe): SGD with momentum
    # 0.9 and weight decay 5e-4, and this DSA augmentation of every mini-batch ("auto":
    # crop_scale_rotate for one-channel images, DSA's default set for colour).
    augment: str = setting("auto", "the recipe's augmentation for every learner (clients, server, upper bound): "
                                   "auto, none or DSA families such as crop_flip")
    # Another value than "recipe" makes the comparison's learners train differently: an experiment
    # refuses it unless unequal_recipe asks for it by name.
    server_augment: str = setting("recipe", "the server's training alone: recipe (the same as --augment), or "
                                            "another augmentation, which needs --unequal-recipe")
    # Held out per class (seeded by seed) before partitioning; grids and the upper bound choose on it too.
    val_fraction: float = setting(0.1, "share of the training images held out as the validation split that picks "
                                       "the reported round (never trained on, never the test split)")
    # A reduced run (a CPU check of a large data set): this many training images per class, drawn
    # with the seed after the validation split (fedcond.federated.data_cache); 0 = all of them.
    train_per_class: int = setting(0, "keep this many training images per class, drawn with the seed after the "
                                      "validation split (0: all; validation and test untouched)")
    # faults and resources
    round_timeout: float = setting(3600.0, "seconds the server waits for a round's replies")
    fail_fraction: float = setting(0.0, "fraction of clients failing each round (seeded)")
    fail_mode: str = setting("raise", "raise (client error) or corrupt (NaN payload)")
    client_threads: int = setting(1, "torch threads of each client")
    server_threads: int = setting(0, "torch threads of the server (0: torch's default)")
    device: str = setting("cpu", "torch device of the server and the clients (cpu, cuda)")
    # auto = bfloat16 autocast where the device has fast bfloat16 (AMX CPUs, CUDA GPUs), else float32
    precision: str = setting(DEFAULT_PRECISION, "arithmetic of every training and distillation loop: auto (default: "
                                     "bfloat16 where the device runs it fast), float32 or bfloat16")
    out_dir: str = setting("", "where the ServerApp writes its per-strategy JSON (empty: nowhere)")
    run_name: str = setting("", "this run's name in results and file names (empty: the strategy's)")
    checkpoint_dir: str = setting("", "a checkpoint after every round, which a rerun resumes (empty: none)")

    def __post_init__(self) -> None:
        self._use_dm_settings()
        if self.num_clients < 0:  # 0: the federation's size (flwr run; see FLWR_RUN_DEFAULTS)
            raise FedcondError(f"--num-clients must be >= 1 (or 0 in a flwr run config: the federation's size), "
                               f"got {self.num_clients}")
        if self.partition not in PARTITIONS:
            raise FedcondError(f"--partition must be one of {', '.join(PARTITIONS)}, got {self.partition!r}")
        if self.alpha <= 0:
            raise FedcondError(f"--alpha must be > 0, got {self.alpha}")
        if self.strategy not in STRATEGIES:
            raise FedcondError(f"unknown strategy {self.strategy}: use {', '.join(STRATEGIES)}")
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
        self._check_refining_method([self.strategy])
        from fedcond.synthetic import STORAGE_DTYPES

        if self.storage_dtype not in STORAGE_DTYPES:
            raise FedcondError(f"unknown storage dtype {self.storage_dtype}: use {', '.join(STORAGE_DTYPES)}")
        if not 0 < self.val_fraction < 0.5:
            raise FedcondError(f"--val-fraction must be in (0, 0.5), got {self.val_fraction}")
        if self.train_per_class < 0:
            raise FedcondError(f"--train-per-class must be >= 0 (0: every image), got {self.train_per_class}")
        for augment in {self.augment, self.server_augment} - {"recipe"}:  # a Recipe refuses an unknown one
            Recipe(augment=augment)
        if self.precision not in PRECISIONS:
            raise FedcondError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.round_timeout <= 0 or self.server_threads < 0:
            raise FedcondError("round-timeout must be > 0 and server-threads >= 0")
        if self.dp_epsilon < 0 or not 0 < self.dp_delta < 1:
            raise FedcondError("--dp-epsilon must be >= 0 (0: no DP), --dp-epsilons > 0 and --dp-delta in (0, 1)")
        if not 0 <= self.dp_sample_rate <= 1 or not self.dp_clip > 0:
            raise FedcondError("--dp-sample-rate must be in [0, 1] (0: not set) and --dp-clip > 0")
        if "dpfedavg" in (self.strategy, *getattr(self, "strategy_names", ())) and not self.dp_epsilon > 0:
            raise FedcondError("dpfedavg (FedAvg with DP-SGD clients) needs --dp-epsilon > 0: its target epsilon")
        if self.dp_epsilon > 0:
            self._check_private([self.strategy])
        self.distill_config()  # unknown method or method option: fail here, not in a client

    def _use_dm_settings(self) -> None:
        """Fill the :data:`FROM_DM` fields left unset with DM's own settings."""
        if all(getattr(self, name) is not None for name in FROM_DM):
            return
        from fedcond.distill.dm import DMConfig  # torch: loaded to build a run, never for --help

        for name, dm_name in FROM_DM.items():
            if getattr(self, name) is None:
                setattr(self, name, getattr(DMConfig, dm_name))

    def _check_refining_method(self, strategies: list[str]) -> None:
        refining = [s for s in strategies if s in ("feddm", "fedaf")]
        if refining and self.method != "dm":
            raise FedcondError(f"{refining[0]} condenses with DM (its paper's method); --method {self.method} is "
                               "for fedcond and fedcond-iterative")

    def _check_private(self, strategies: list[str]) -> None:
        """What DP clients need: method dm or dp-dm, one-shot, public normalisation (the default then)."""
        if self.method not in ("dm", "dp-dm"):
            raise FedcondError(f"--dp-epsilon makes FedCond clients distill with dp-dm; use --method dm or "
                               f"dp-dm, not {self.method!r}")
        if self.effective_mode == "iterative" or any(s in REFINING for s in strategies):
            raise FedcondError("--dp-epsilon works with one-shot FedCond: every round of fedcond-iterative, "
                               "feddm or fedaf would spend the budget again")
        from fedcond.privacy.normalisation import public_normalisation  # the module stays torch-free

        # every run of the experiment alike, the non-private references too
        self.normalize = public_normalisation(self.normalize, "--dp-epsilon", "normalize = \"train\"")

    # ------------------------------------------------------------------ derived
    @property
    def recipe(self) -> Recipe:
        """The training recipe of the clients' local training and the upper bound (``augment``)."""
        return Recipe(augment=self.augment)

    @property
    def server_recipe(self) -> Recipe:
        """The recipe of the server's training on sets: :attr:`recipe` unless ``server_augment`` differs."""
        return self.recipe if self.server_augment == "recipe" else Recipe(augment=self.server_augment)

    def resolved_precision(self, device: str | None = None) -> str:
        """``precision`` as it runs on ``device`` (default: the run's): float32 or bfloat16."""
        from fedcond.precision import resolve_precision

        return resolve_precision(self.precision, device or self.device)

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
        from fedcond.distill import make_distiller, method_names

        if self.method not in method_names():
            raise FedcondError(f"unknown method {self.method!r}: use one of {', '.join(method_names())}")
        # The config's own settings, which method options may not set (-o ipc=3 would fight ipc). None
        # keeps the method's: clients are stateless processes (no checkpoint_dir, no resume files), and
        # without DP a dp-dm client's budget is dp-dm's own.
        fixed = {"ipc": self.ipc, "model": self.model, "iterations": self.iterations, "precision": self.precision,
                 "checkpoint_dir": None, "epsilon": None, "delta": None}
        if self.dp_epsilon > 0:
            fixed.update(epsilon=self.dp_epsilon, delta=self.dp_delta)
        return make_distiller(self.client_method, self.method_option_values, fixed=fixed)

    def feddm_config(self):
        """DM's settings for refining a client's set against the global model, by strategy:

        - ``feddm``: FedDM as published (:class:`FedDMSettings`): iterations (None: the paper's),
          every iteration's network on the sphere of radius ``feddm_radius`` around the model;
          the images' step and real batch are DM's own (its paper's);
        - ``fedaf``: FedAF's condensation (:class:`FedAFSettings`' iterations and radius, DM's own
          step and batch); its knowledge-matching term is added by :mod:`fedcond.federated.fedaf`;
        - ``fedcond-iterative`` (and FedCond in iterative mode): iterations (None: DM's own) and
          the ``feddm_*`` fields (DM's own step, momentum and batch unless set; relative Gaussian
          noise of ``feddm_rho``).

        No augmentation, no checkpoints."""
        from fedcond.distill.dm import DMConfig

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

    def with_method_options(self, options: dict[str, Any]) -> "AppConfig":
        """This config with ``options`` added to the method options (they win)."""
        merged = {**self.method_option_values, **options}
        return replace(self, method_options=json.dumps(merged, sort_keys=True) if merged else "")

    # ------------------------------------------------------------------ Flower run config
    def to_run_config(self) -> dict[str, str | int | float | bool]:
        """Flower's run config of this run: one flat kebab-case key per :class:`AppConfig`
        field (the app's keys only, also of an experiment's config), None as
        :data:`RUN_CONFIG_NONE` says."""
        values = {f.name: getattr(self, f.name) for f in fields(AppConfig)}
        return {run_config_key(k): RUN_CONFIG_NONE[k] if v is None else v for k, v in values.items()}

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any], overrides: dict[str, Any] | None = None,
                        source: str = "run config") -> Any:
        """Build from a flat kebab-case dict (Flower's run config, a config file), then apply
        ``overrides`` (same keys). The keys are ``cls``'s fields: an app config takes the
        app's keys, an experiment config its own too.

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
    def from_toml(cls, path: str | Path, **overrides: Any) -> Any:
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

    def app_settings(self) -> dict[str, Any]:
        """The app's settings as run (what a checkpoint must agree with): ``iterations``
        resolved to what the clients run (:attr:`client_iterations`)."""
        return {**{f.name: getattr(self, f.name) for f in fields(AppConfig)}, "iterations": self.client_iterations}

    def to_json(self) -> dict[str, Any]:
        """Every setting as run (results files): :meth:`app_settings`, and an experiment's own."""
        return {**asdict(self), "iterations": self.client_iterations}


@dataclass
class ExperimentConfig(AppConfig):
    """A comparison (``fedcond federate``, the benchmarks): an app config, which each of its
    runs runs, plus what only the experiment reads.

    ``strategies`` is the comma list compared, one simulation each (:meth:`for_strategy`);
    the references run beside the first FedCond strategy (:mod:`fedcond.federated.references`).
    """

    strategies: str = setting("fedcond,fedavg,fedprox", "comma list: " + ", ".join(STRATEGIES))
    storage_dtypes: str = setting("float32,float16,uint8", "comma list of upload dtypes compared: FedCond reruns "
                                                           "once per dtype other than --storage-dtype")
    random_reference: bool = setting(True, "also run FedCond with random real images at the same bytes")
    herding_reference: bool = setting(True, "also run FedCond with herding's real images at the same bytes")
    dp_epsilons: str = setting("", "comma list of epsilons: FedCond reruns once per other epsilon, for accuracy "
                                   "against epsilon")
    # Off: OUT holds DP output only (fedcond.federated.dp_folder). Without DP it changes nothing (the
    # references' non-DP runs carry it along).
    dp_non_private: bool = setting(False, "with --dp-epsilon: also run and write what is not DP (FedAvg/FedProx, "
                                          "references uploading real images, the upper bound, exact histograms, "
                                          "bytes, timings), apart in OUT/non_private/", off="--dp-private-only")
    unequal_recipe: bool = setting(False, "allow learners that train differently (the report says so in its first "
                                          "lines)", off=None)
    # the centralised upper bound: trained until the held-out loss plateaus
    central_max_epochs: int = setting(100, "the upper bound's most epochs")
    central_patience: int = setting(5, "the upper bound's epochs without a lower validation loss before its "
                                       "learning rate drops (twice) and then it stops")

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [s for s in self.strategy_names if s not in STRATEGIES]
        if unknown or not self.strategy_names:
            raise FedcondError(f"unknown strategy {', '.join(unknown) or '(none)'}: use {', '.join(STRATEGIES)}")
        self._check_refining_method(self.strategy_names)
        from fedcond.synthetic import STORAGE_DTYPES

        bad = [d for d in self.storage_dtype_names if d not in STORAGE_DTYPES]
        if bad:
            raise FedcondError(f"unknown storage dtype {', '.join(bad)}: use {', '.join(STORAGE_DTYPES)}")
        self.recipe_notes = check_same_recipe(self.learner_recipes(), self.unequal_recipe)
        if self.central_max_epochs < 1 or self.central_patience < 1:
            raise FedcondError("central-max-epochs and central-patience must be >= 1")
        if any(e <= 0 for e in self.dp_epsilon_values):
            raise FedcondError("--dp-epsilon must be >= 0 (0: no DP), --dp-epsilons > 0 and --dp-delta in (0, 1)")
        if self.dp_epsilon > 0 or self.dp_epsilon_values:
            self._check_private(self.strategy_names)

    @property
    def app(self) -> AppConfig:
        """The app config each run of this experiment starts from (its own keys left out)."""
        return AppConfig(**{f.name: getattr(self, f.name) for f in fields(AppConfig)})

    def learner_recipes(self) -> dict[str, Recipe]:
        """Each kind of learner of this comparison with its recipe (for checks and reports)."""
        return {"FedAvg/FedProx clients": self.recipe, "upper bound": self.recipe,
                "server training on sets (FedCond and its controls)": self.server_recipe}

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

    def for_strategy(self, strategy: str) -> "ExperimentConfig":
        """This config running ``strategy`` alone (one simulation of the comparison)."""
        return replace(self, strategy=strategy, strategies=strategy)


# The name every caller used before the split: an experiment's config, attributes flat.
FederateConfig = ExperimentConfig


def run_config_key(name: str) -> str:
    """The run-config key of a field: ``num_clients`` -> ``num-clients``."""
    return name.replace("_", "-")
