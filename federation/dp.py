"""Differentially private federated averaging: clipping, OpenDP noise, accounting.

Privacy unit: one domain's whole contribution to a round (add or remove a domain).
Every domain clips its model update to L2 norm ``clipping_norm`` (C) — the bound that
also limits what any one record or subject inside the domain can change — and, with
client-side DP, adds Gaussian noise from OpenDP. Under SecAgg+ the coordinator only sees
the sum of the updates, so each released round is a Gaussian mechanism of sensitivity C
whose scale is the noise that sum contains: rho = 1 / (2 z^2) in zero-concentrated DP
at scale ``z * C``, composed over rounds and converted to (epsilon, delta) by OpenDP.

**Noise sized for the domains taking part.** When ``n`` domains shared keys for a round,
each adds noise of standard deviation ``z * C / sqrt(n)`` (:meth:`DPConfig.domain_scale`):
when all ``n`` vectors arrive, the sum holds exactly ``z * C``. Sizing for ``min-domains``
instead (``domain_noise_scale``, the former default) puts ``sqrt(n / min-domains)`` times
the noise needed into every round: with six domains and ``min-domains = 2``, 1.7x.
If only ``m < n`` vectors arrive, the sum holds ``z * C * sqrt(m / n)`` and that round is
charged ``n / m`` times the privacy (:meth:`Accountant.spent_rounds`).

**Why ``m`` cannot be small (the SecAgg+ threshold argument).** The coordinator can
unmask a sum only with ``t`` shares (the reconstruction threshold) of each masked node's
seed, and only masked nodes that are still alive reveal shares; so every sum it can
unmask holds at least ``t`` vectors, whatever it claims about dropouts. With
``min-domains`` it also abandons a round below that count. The released sum therefore
always holds the noise of at least ``floor = max(t, min-domains)`` domains
(:func:`noise_floor`), and the worst round costs ``n / floor`` times the planned rho;
the preflight (:func:`outlook`) prints both the planned and this worst-case epsilon.

**Adaptive clipping** (Andrew et al., 2021, "Differentially Private Learning with
Adaptive Clipping"): a fixed C far above the updates' norms makes the noise (sized by C)
drown them. :class:`AdaptiveClipping` moves C geometrically towards a quantile of the
update norms, estimated privately from each domain's bit ``||update|| <= C`` summed
with Gaussian noise; the bits' noise takes part of the round's budget and the update's
noise multiplier rises to keep the total rho at ``1 / (2 z^2)``
(:func:`split_noise_multiplier`).

**Before a run**, :func:`outlook` states the expected noise-to-signal of a round's mean
update and of the final model, and :func:`refuse_useless` stops a configuration whose
noise would exceed any signal the model could accumulate (``--force`` overrides).

DP rounds average the domains uniformly: weighting by example counts would multiply a
domain's sensitivity by its weight.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from federation.errors import InvalidDPConfig, NoiseDrownsSignal

Clipping = Literal["client", "server"]


@dataclass(frozen=True)
class DPConfig:
    """DP-FedAvg parameters of a run."""

    noise_multiplier: float
    """z: noise standard deviation of a round's sum, in units of ``clipping_norm``."""
    clipping_norm: float
    """C: L2 bound on each domain's update per round (also applied without DP)."""
    delta: float
    """The delta of the reported (epsilon, delta) guarantee."""
    min_domains: int
    """The fewest domains whose noise a released round sum contains."""
    clipping: Clipping = "client"
    """Where updates are clipped and noised: each domain (works with SecAgg+), or the
    coordinator after seeing them in clear (plain aggregation only)."""
    adaptive: bool = False
    """Whether C adapts each round towards a quantile of the update norms
    (:class:`AdaptiveClipping`; ``clipping_norm`` is then its first value). A run's
    default is on (``dp-adaptive-clipping`` in the run config)."""
    clipping_quantile: float = 0.5
    """The quantile of the domains' update norms adaptive clipping aims C at."""
    clipping_learning_rate: float = 0.2
    """eta: C moves by at most a factor ``exp(eta / 2)`` per round."""

    def __post_init__(self) -> None:
        if not self.noise_multiplier >= 0 or not math.isfinite(self.noise_multiplier):
            raise InvalidDPConfig(
                f"dp-noise-multiplier must be >= 0 (0 disables DP), got {self.noise_multiplier}"
            )
        if not self.clipping_norm > 0 or not math.isfinite(self.clipping_norm):
            raise InvalidDPConfig(f"clipping-norm must be > 0, got {self.clipping_norm}")
        if not 0 < self.delta < 1:
            raise InvalidDPConfig(f"dp-delta must be in (0, 1), got {self.delta}")
        if self.min_domains < 1:
            raise InvalidDPConfig(f"min-domains must be >= 1, got {self.min_domains}")
        if not 0 < self.clipping_quantile < 1:
            raise InvalidDPConfig(
                f"dp-clipping-quantile must be in (0, 1), got {self.clipping_quantile}"
            )
        if not 0 < self.clipping_learning_rate <= 10:
            raise InvalidDPConfig(
                f"dp-clipping-learning-rate must be in (0, 10], got {self.clipping_learning_rate}"
            )

    @property
    def enabled(self) -> bool:
        """True when rounds are noised."""
        return self.noise_multiplier > 0

    @property
    def domain_noise_scale(self) -> float:
        """Standard deviation of the noise one domain adds per coordinate when sized for
        ``min_domains`` (the worst case; :meth:`domain_scale` sizes it for the round)."""
        return self.noise_multiplier * self.clipping_norm / math.sqrt(self.min_domains)

    def domain_scale(
        self,
        participants: int,
        noise_multiplier: float | None = None,
        clipping_norm: float | None = None,
    ) -> float:
        """Standard deviation of the noise each of a round's ``participants`` domains adds
        per coordinate, so that their sum holds ``z * C`` (``noise_multiplier`` replaces
        z, e.g. the update's share under adaptive clipping; ``clipping_norm`` replaces C,
        e.g. the round's adaptive norm)."""
        if participants < 1:
            raise InvalidDPConfig(f"a DP round needs at least one domain, got {participants}")
        z = self.noise_multiplier if noise_multiplier is None else noise_multiplier
        norm = self.clipping_norm if clipping_norm is None else clipping_norm
        return z * norm / math.sqrt(participants)

    def adaptive_clipping(self) -> AdaptiveClipping | None:
        """The run's adaptive clipping state (None: DP off, or C fixed)."""
        if not (self.enabled and self.adaptive):
            return None
        return AdaptiveClipping(
            self.clipping_norm,
            self.noise_multiplier,
            self.clipping_quantile,
            self.clipping_learning_rate,
        )

    @property
    def update_noise_multiplier(self) -> float:
        """z_u: the noise multiplier of the updates themselves (below z when adaptive
        clipping's bits take part of each round's budget)."""
        clipping = self.adaptive_clipping()
        return clipping.update_noise_multiplier if clipping else self.noise_multiplier

    @property
    def sum_noise_scale(self) -> float:
        """Guaranteed standard deviation of the noise in a released round sum."""
        return self.noise_multiplier * self.clipping_norm


def clip(update: NDArray[np.floating], norm: float) -> tuple[NDArray[np.float64], bool]:
    """``update`` scaled down to L2 norm ``norm`` if longer; and whether it was."""
    vector = np.asarray(update, dtype=np.float64)
    length = float(np.linalg.norm(vector))
    if not math.isfinite(length):
        raise InvalidDPConfig("the update holds NaN or infinite values")
    if length <= norm:
        return vector, False
    return vector * (norm / length), True


def gaussian_noise(vector: NDArray[np.floating], scale: float) -> NDArray[np.float64]:
    """``vector`` plus OpenDP Gaussian noise of standard deviation ``scale`` per element.

    OpenDP samples each element exactly (float32 here: the model's own precision); it
    takes about 30 us per element on this machine, so noise for a 1M-parameter model
    costs about 30 s per round and domain.
    """
    values = np.asarray(vector, dtype=np.float32)
    if scale <= 0:
        return values.astype(np.float64)
    mechanism = _vector_gaussian(len(values), float(scale))
    return np.asarray(mechanism(values), dtype=np.float64)


@cache
def _vector_gaussian(size: int, scale: float):  # type: ignore[no-untyped-def]
    import opendp.prelude as dp

    dp.enable_features("contrib")
    space = (
        dp.vector_domain(dp.atom_domain(T="f32", nan=False), size=size),
        dp.l2_distance(T="f32"),
    )
    return space >> dp.m.then_gaussian(scale=scale)


@dataclass(frozen=True)
class PrivacySpent:
    """Privacy loss of some rounds: zCDP rho and the (epsilon, delta) it implies."""

    rounds: int
    rho: float
    epsilon: float
    delta: float


class Accountant:
    """zCDP accounting of DP-FedAvg rounds with OpenDP's composition and conversion."""

    def __init__(self, config: DPConfig) -> None:
        if not config.enabled:
            raise InvalidDPConfig("accounting needs dp-noise-multiplier > 0")
        self.config = config

    def spent(self, rounds: int) -> PrivacySpent:
        """The loss of ``rounds`` released rounds whose sums each hold ``z * C``."""
        return self.spent_rounds([(1, 1)] * rounds)

    def spent_rounds(self, rounds: Sequence[tuple[int, int]]) -> PrivacySpent:
        """The loss of released rounds given as ``(arrived, participants)``: a round whose
        noise was sized for ``participants`` domains, of which ``arrived`` vectors are in
        the sum, holds ``z * C * sqrt(arrived / participants)``."""
        import opendp.prelude as dp

        dp.enable_features("contrib")
        if not rounds:
            return PrivacySpent(0, 0.0, 0.0, self.config.delta)
        for arrived, participants in rounds:
            if not 1 <= arrived <= participants:
                raise InvalidDPConfig(
                    f"a released round holds 1..participants vectors, got {arrived} of "
                    f"{participants}"
                )
        space = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l2_distance(T=float)
        scale = self.config.sum_noise_scale
        mechanisms = [
            space >> dp.m.then_gaussian(scale=scale * math.sqrt(m / n)) for m, n in rounds
        ]
        composed = dp.c.make_composition(mechanisms)
        rho = float(composed.map(self.config.clipping_norm))
        curve = dp.c.make_zCDP_to_approxDP(composed).map(self.config.clipping_norm)
        epsilon = float(curve.epsilon(self.config.delta))
        return PrivacySpent(len(rounds), rho, epsilon, self.config.delta)


def noise_floor(threshold: int, min_domains: int) -> int:
    """The fewest domains whose noise any released round sum holds: the coordinator
    cannot unmask a sum of fewer than ``threshold`` vectors (it needs that many shares of
    each masked node's seed, and only masked nodes reveal), and abandons one of fewer
    than ``min_domains``."""
    if threshold < 1 or min_domains < 1:
        raise InvalidDPConfig(
            f"threshold and min-domains are at least 1, got {threshold} and {min_domains}"
        )
    return max(threshold, min_domains)


ADAPTIVE_QUANTILE = 0.5
"""The update-norm quantile adaptive clipping aims C at (the median, Andrew et al.)."""
ADAPTIVE_LEARNING_RATE = 0.2
"""Geometric step of C per round: ``C *= exp(-eta * (fraction_below - quantile))``."""
BIT_NOISE_RATIO = 1.0
"""The clipped-bit sum's noise standard deviation, in units of z: one quarter of a
round's rho goes to the bits, and the update's noise multiplier rises by 2/sqrt(3)."""


def split_noise_multiplier(noise_multiplier: float, bit_noise: float) -> float:
    """The update's noise multiplier z_u when the bits' sum carries noise ``bit_noise``.

    A domain's bit, centred to +-1/2, has sensitivity 1/2: the bits cost
    ``rho_b = 1 / (8 bit_noise^2)`` and the update ``1 / (2 z_u^2)``; their total stays
    ``1 / (2 z^2)`` when ``z_u = (z^-2 - (2 bit_noise)^-2)^(-1/2)``, which needs
    ``bit_noise > z / 2``.
    """
    if not noise_multiplier > 0:
        raise InvalidDPConfig("adaptive clipping needs dp-noise-multiplier > 0")
    if not bit_noise > noise_multiplier / 2:
        raise InvalidDPConfig(
            f"the clipped-bit noise {bit_noise:g} must exceed half the noise multiplier "
            f"({noise_multiplier / 2:g}), or the bits alone would spend the round's budget"
        )
    return float((noise_multiplier**-2 - (2 * bit_noise) ** -2) ** -0.5)


@dataclass
class AdaptiveClipping:
    """Quantile-based clipping norm, privately estimated (Andrew et al., 2021).

    Each domain clips with the current ``norm`` and adds its bit ``||update|| <= norm``
    (centred: +-1/2) to the masked vector with Gaussian noise; from the unmasked noisy
    sum the coordinator moves ``norm`` geometrically towards the ``quantile`` of the
    domains' update norms. The norm is public (every domain receives it), so clipping
    with it leaks nothing beyond the noisy bits, which are accounted.
    """

    norm: float
    """C of the next round, in the model's parameter units (L2 norm of an update)."""
    noise_multiplier: float
    """z of the whole round (bits and update together)."""
    quantile: float = ADAPTIVE_QUANTILE
    """The fraction of update norms C aims to be above."""
    learning_rate: float = ADAPTIVE_LEARNING_RATE
    """eta of the geometric update (per round)."""
    bit_noise_ratio: float = BIT_NOISE_RATIO
    """Standard deviation of the bits' sum noise, in units of ``noise_multiplier``."""

    def __post_init__(self) -> None:
        if not self.norm > 0 or not math.isfinite(self.norm):
            raise InvalidDPConfig(f"the initial clipping norm must be > 0, got {self.norm}")
        if not 0 < self.quantile < 1:
            raise InvalidDPConfig(f"the clipping quantile is in (0, 1), got {self.quantile}")
        if not self.learning_rate > 0:
            raise InvalidDPConfig(
                f"the clipping learning rate must be > 0, got {self.learning_rate}"
            )
        split_noise_multiplier(self.noise_multiplier, self.bit_noise)  # refuses bad splits

    @property
    def bit_noise(self) -> float:
        """Standard deviation of the noise in the sum of the domains' bits."""
        return self.bit_noise_ratio * self.noise_multiplier

    @property
    def update_noise_multiplier(self) -> float:
        """z_u: the updates' noise multiplier once the bits took their share."""
        return split_noise_multiplier(self.noise_multiplier, self.bit_noise)

    def bits_limit(self, participants: int) -> float:
        """The largest magnitude a domain's noised bit may take in SecAgg+ (1/2 plus 12
        standard deviations of its noise; a larger one is refused, odds ~1e-32)."""
        return 0.5 + 12.0 * self.domain_bit_noise(participants)

    def bit(self, update_norm: float) -> float:
        """A domain's centred bit: +1/2 if its update is within the norm, else -1/2."""
        return 0.5 if update_norm <= self.norm else -0.5

    def domain_bit_noise(self, participants: int) -> float:
        """The noise each of ``participants`` domains adds to its bit."""
        return self.bit_noise / math.sqrt(participants)

    def noisy_bit_sum(self, within: Sequence[bool]) -> float:
        """The centred bits of updates seen in clear (server-side clipping: whether each
        was within the norm), summed, with the bits' whole noise from OpenDP."""
        total = sum(0.5 if w else -0.5 for w in within)
        return float(gaussian_noise(np.array([total]), self.bit_noise)[0])

    def step(self, noisy_bit_sum: float, arrived: int) -> float:
        """The next round's norm from the unmasked noisy sum of ``arrived`` centred bits."""
        if arrived < 1:
            raise InvalidDPConfig("no bits arrived to adapt the clipping norm")
        below = noisy_bit_sum / arrived + 0.5
        self.norm *= math.exp(-self.learning_rate * (below - self.quantile))
        return self.norm


NOISE_TO_SIGNAL_LIMIT = 1.0
"""The final model's expected noise-to-signal above which a run is refused: beyond it
the noise exceeds the largest movement R rounds of clipped updates can make."""


@dataclass(frozen=True)
class NoiseOutlook:
    """What a DP configuration will do to a run, computed before it starts."""

    participants: int
    """Domains expected in each round."""
    sized_for: int
    """The domain count each domain's noise is sized for (``participants``, or
    ``min-domains`` where the noise is still sized for the worst case)."""
    floor: int
    """The fewest domains a released sum can hold (:func:`noise_floor`)."""
    parameters: int
    rounds: int
    update_noise_multiplier: float
    per_round: float
    """Noise norm over the largest signal norm (C) of one round's mean update:
    ``z_u * sqrt(d / (n * sized_for))``."""
    final_model: float
    """The same over R rounds: noise grows as sqrt(R), the signal at most as R."""
    epsilon: float
    """epsilon after R rounds with every domain in each (delta: the config's)."""
    epsilon_worst: float
    """epsilon if every round were released with only ``floor`` vectors."""
    adaptive: bool = False
    """Whether C adapts to the update norms (its first value starts the run)."""

    @property
    def useless(self) -> bool:
        """Whether the noise would exceed any signal the model could accumulate."""
        return self.final_model > NOISE_TO_SIGNAL_LIMIT

    def describe(self) -> str:
        """One paragraph for the CLI, before a run."""
        return (
            f"DP: noise sized for {self.sized_for} of {self.participants} domains "
            f"(a released sum holds at least {self.floor}); {self.parameters:,} parameters, "
            f"{self.rounds} rounds, update noise multiplier "
            f"{self.update_noise_multiplier:.3g}"
            + (
                " (adaptive clipping: C follows a quantile of the update norms, from "
                "noisy bits that take a quarter of each round's budget)"
                if self.adaptive
                else " (fixed clipping norm)"
            )
            + ". Expected noise-to-signal: "
            f"{self.per_round:.3g} per round, {self.final_model:.3g} in the final model "
            f"(limit {NOISE_TO_SIGNAL_LIMIT:g}); epsilon {self.epsilon:.3g} "
            f"(worst case with dropouts {self.epsilon_worst:.3g})."
        )


def outlook(
    config: DPConfig,
    participants: int,
    floor: int,
    parameters: int,
    rounds: int,
    adaptive: AdaptiveClipping | None = None,
    sized_for: int | None = None,
) -> NoiseOutlook:
    """The expected noise-to-signal and privacy loss of a DP run.

    The signal of a round's mean update is at most C (a mean of vectors no longer than C);
    its noise has ``z_u * C / n`` per coordinate when each of the ``n`` domains' noise is
    sized for ``n`` (``sqrt(n / sized_for)`` times that when sized for fewer), so a norm
    near ``z_u * C * sqrt(d) / n``.
    Over R rounds the noise adds up to ``sqrt(R)`` times that and the signal to at most
    ``R * C``. Both ratios are lower bounds: with a fixed C far above the real update
    norms the signal is smaller still (adaptive clipping keeps C near them).
    """
    if not config.enabled:
        raise InvalidDPConfig("the noise outlook needs dp-noise-multiplier > 0")
    sized = participants if sized_for is None else sized_for
    if not 1 <= floor <= participants or sized < 1 or parameters < 1 or rounds < 1:
        raise InvalidDPConfig(
            f"need 1 <= floor <= participants, parameters >= 1 and rounds >= 1, got floor "
            f"{floor}, participants {participants}, parameters {parameters}, rounds {rounds}"
        )
    z = adaptive.update_noise_multiplier if adaptive else config.update_noise_multiplier
    per_round = z * math.sqrt(parameters / (participants * sized))
    accountant = Accountant(config)
    return NoiseOutlook(
        participants=participants,
        sized_for=sized,
        floor=floor,
        parameters=parameters,
        rounds=rounds,
        update_noise_multiplier=z,
        per_round=per_round,
        final_model=per_round / math.sqrt(rounds),
        epsilon=accountant.spent(rounds).epsilon,
        epsilon_worst=accountant.spent_rounds([(floor, participants)] * rounds).epsilon,
        adaptive=adaptive is not None or config.adaptive,
    )


def refuse_useless(expected: NoiseOutlook, force: bool) -> None:
    """Raise :class:`NoiseDrownsSignal` when the noise would leave the model useless,
    unless ``force`` (the explicit opt-in, checked here at the point of use)."""
    if expected.useless and not force:
        raise NoiseDrownsSignal(
            f"{expected.describe()} The final model's noise would exceed any signal it "
            f"can learn. Lower dp-noise-multiplier (now {expected.update_noise_multiplier:.3g}"
            " for the updates), train more rounds, add domains or use a smaller model; or pass"
            " --force to train anyway."
        )
