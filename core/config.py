"""The unlearning configuration: one dataclass, validated, shared by the CLI, the worker and the benchmarks."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from core.errors import InvalidInput

METHODS = ("ihl", "ga", "gd", "kl", "npo")
INITS = ("fila", "lora", "full")
# Inits that produce a LoRA adapter on the unmodified base (what the service publishes).
ADAPTER_INITS = ("fila", "lora")


@dataclass
class UnlearnConfig:
    """Hyperparameters of one unlearning run.

    Defaults are the ones measured to work on the synthetic PII world (see README "Results"): IHL + retain
    NLL with Fisher-weighted LoRA, rank 8, stopping at the TDEC rule.
    """

    method: str = "ihl"
    init: str = "fila"
    rank: int = 8
    alpha: float = 16.0
    lr: float = 1e-3
    batch_size: int = 8  # forget records per step
    retain_batch_size: int = 16  # retain records per step (the λ·NLL(D_r) term)
    retain_weight: float = 1.0  # λ
    # Cumulative jobs (a previous version exists): the retain term becomes this weight × KL(previous version ‖
    # model) instead of λ·NLL, so earlier requests stay forgotten (the NLL re-teaches shared patterns); 0: NLL.
    previous_kl_weight: float = 3.0
    max_steps: int = 100
    eval_every: int = 4
    npo_beta: float = 0.1
    seed: int = 0
    target_modules: list[str] | None = None  # None: the architecture family's default
    el_n: int = 10
    prefix_fraction: float = 0.5  # share of a text record's tokens given as the extraction prefix
    fisher_max_examples: int = 128  # per set; Fisher on more examples costs more and changes little
    max_length: int = 256  # tokens per record; longer records are truncated
    eval_max_records: int = 200  # per evaluation set, for the before/after report
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU; fp32 | bf16 to force

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.method not in METHODS:
            raise InvalidInput(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.init not in INITS:
            raise InvalidInput(f"unknown init {self.init!r}; choose one of {', '.join(INITS)}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise InvalidInput(f"unknown precision {self.precision!r}; choose auto, fp32 or bf16")
        checks = [
            ("rank", 1 <= self.rank <= 256),
            ("alpha", 0 < self.alpha <= 4096),
            ("lr", 0 < self.lr <= 1.0),
            ("batch_size", 1 <= self.batch_size <= 1024),
            ("retain_batch_size", 0 <= self.retain_batch_size <= 1024),
            ("retain_weight", 0 <= self.retain_weight <= 100),
            ("previous_kl_weight", 0 <= self.previous_kl_weight <= 100),
            ("max_steps", 1 <= self.max_steps <= 100_000),
            ("eval_every", 1 <= self.eval_every <= 100_000),
            ("npo_beta", 0 < self.npo_beta <= 10),
            ("el_n", 1 <= self.el_n <= 64),
            ("prefix_fraction", 0 < self.prefix_fraction < 1),
            ("fisher_max_examples", 1 <= self.fisher_max_examples <= 100_000),
            ("max_length", 8 <= self.max_length <= 32_768),
            ("eval_max_records", 1 <= self.eval_max_records <= 100_000),
        ]
        for name, ok in checks:
            if not ok:
                raise InvalidInput(f"{name}={getattr(self, name)!r} is out of range")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> UnlearnConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InvalidInput(f"unknown config field(s): {', '.join(sorted(unknown))}")
        return cls(**d)
