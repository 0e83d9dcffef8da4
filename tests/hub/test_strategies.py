"""Every strategy against results computed by hand on small arrays, and the robust ones under attack."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from hub.strategies import FEDBN_PATTERNS, STRATEGIES, ClientUpdate, make_strategy
from hub.strategies.fedadagrad import FedAdagrad
from hub.strategies.fedadam import FedAdam
from hub.strategies.fedavg import FedAvg
from hub.strategies.fedavgm import FedAvgM
from hub.strategies.fedmedian import FedMedian
from hub.strategies.fedprox import FedProx
from hub.strategies.fedyogi import FedYogi
from hub.strategies.krum import Krum, MultiKrum
from hub.strategies.trimmed_mean import TrimmedMean
from schemas.config import AggregationConfig, StrategyConfig, StrategyName
from schemas.errors import ConfigError
from schemas.messages import TrainingConfig


def scalar_updates(*values: float, examples: tuple[int, ...] | None = None) -> list[ClientUpdate]:
    counts = examples or (1,) * len(values)
    return [
        ClientUpdate(f"e{i}", n, {"w": np.array([v], np.float32)})
        for i, (v, n) in enumerate(zip(values, counts, strict=True))
    ]


BASE = {"w": np.array([0.0], np.float32)}


def test_fedavg_weights_by_examples() -> None:
    base: dict[str, np.ndarray] = {"w": np.array([0.0, 0.0], np.float32), "steps": np.array(10, np.int64)}
    updates = [
        ClientUpdate("a", 1, {"w": np.array([1.0, 2.0], np.float32), "steps": np.array(2, np.int64)}),
        ClientUpdate("b", 3, {"w": np.array([3.0, 4.0], np.float32), "steps": np.array(2, np.int64)}),
    ]
    result = FedAvg().aggregate(base, updates)
    # (1 * [1, 2] + 3 * [3, 4]) / 4 = [2.5, 3.5]; integer buffers: 10 + round(2) = 12
    np.testing.assert_allclose(result["w"], [2.5, 3.5])
    assert result["w"].dtype == np.float32
    assert result["steps"] == 12 and result["steps"].dtype == np.int64


def test_fedavg_streams_a_generator_once() -> None:
    consumed = []

    def gen() -> Iterator[ClientUpdate]:
        for update in scalar_updates(0.0, 4.0, 10.0, examples=(1, 1, 2)):
            consumed.append(update.edge_id)
            yield update

    # (0 + 4 + 2 * 10) / 4 = 6
    np.testing.assert_allclose(FedAvg().aggregate(BASE, gen())["w"], np.array([6.0]))
    assert consumed == ["e0", "e1", "e2"]


def test_fedavg_needs_updates() -> None:
    with pytest.raises(ValueError, match="no updates"):
        FedAvg().aggregate(BASE, [])


def test_fedprox_carries_mu_and_averages_like_fedavg() -> None:
    strategy = FedProx(mu=0.05)
    assert strategy.configure_training(TrainingConfig()).proximal_mu == 0.05
    np.testing.assert_allclose(strategy.aggregate(BASE, scalar_updates(1.0, 3.0))["w"], [2.0])


def test_fedadam_two_rounds() -> None:
    strategy = FedAdam(eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-9)
    base = {"w": np.array([0.0, 0.0], np.float32)}
    update = [ClientUpdate("a", 1, {"w": np.array([1.0, -2.0], np.float32)})]
    # m = 0.1 d = [0.1, -0.2]; v = 0.01 d^2 = [0.01, 0.04]; step = 0.1 m / sqrt(v) = [0.1, -0.1]
    first = strategy.aggregate(base, update)
    np.testing.assert_allclose(first["w"], [0.1, -0.1], rtol=1e-6)
    # m = 0.9 * 0.1 + 0.1 * 1 = 0.19; v = 0.99 * 0.01 + 0.01 * 1 = 0.0199; step = 0.019 / 0.1410674 = 0.134688
    second = strategy.aggregate(first, update)
    np.testing.assert_allclose(second["w"], [0.1 + 0.134688, -0.1 - 0.134688], rtol=1e-5)


def test_fedyogi_two_rounds() -> None:
    strategy = FedYogi(eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-9)
    update = scalar_updates(1.0)
    # v = 0 - 0.01 * 1 * sign(0 - 1) = 0.01, as Adam: step 0.1
    first = strategy.aggregate(BASE, update)
    np.testing.assert_allclose(first["w"], [0.1], rtol=1e-6)
    # v = 0.01 - 0.01 * sign(0.01 - 1) = 0.02; m = 0.19; step = 0.019 / sqrt(0.02) = 0.134350
    np.testing.assert_allclose(strategy.aggregate(first, update)["w"], [0.1 + 0.134350], rtol=1e-5)


def test_fedadagrad_two_rounds() -> None:
    strategy = FedAdagrad(eta=0.1, tau=1e-9)
    update = scalar_updates(2.0)
    # beta_1 = 0: m = d = 2; v = 4; step = 0.1 * 2 / 2 = 0.1
    first = strategy.aggregate(BASE, update)
    np.testing.assert_allclose(first["w"], [0.1], rtol=1e-6)
    # v = 8; step = 0.2 / sqrt(8) = 0.0707107
    np.testing.assert_allclose(strategy.aggregate(first, update)["w"], [0.1 + 0.0707107], rtol=1e-5)


def test_fedopt_state_round_trips() -> None:
    first = FedAdam()
    first.aggregate(BASE, scalar_updates(1.0))
    second = FedAdam()
    second.load_state(first.state())
    np.testing.assert_allclose(
        second.aggregate(BASE, scalar_updates(1.0))["w"], first.aggregate(BASE, scalar_updates(1.0))["w"]
    )


def test_fedavgm_three_rounds_by_hand() -> None:
    strategy = FedAvgM(server_learning_rate=0.5, server_momentum=0.9)
    base: dict[str, np.ndarray] = {"w": np.array([0.0, 0.0], np.float32), "steps": np.array(10, np.int64)}
    updates = [
        ClientUpdate("a", 1, {"w": np.array([1.0, 2.0], np.float32), "steps": np.array(4, np.int64)}),
        ClientUpdate("b", 3, {"w": np.array([3.0, -2.0], np.float32), "steps": np.array(4, np.int64)}),
    ]
    # round 1: d = (1 * [1, 2] + 3 * [3, -2]) / 4 = [2.5, -1]; v = d; w = 0 + 0.5 v = [1.25, -0.5]
    first = strategy.aggregate(base, updates)
    np.testing.assert_allclose(first["w"], [1.25, -0.5], rtol=1e-6)
    assert first["steps"] == 10 + 2  # integer buffers: round(0.5 * 4)
    # round 2, the same d: v = 0.9 [2.5, -1] + [2.5, -1] = [4.75, -1.9]; w = [1.25, -0.5] + 0.5 v = [3.625, -1.45]
    second = strategy.aggregate(first, updates)
    np.testing.assert_allclose(second["w"], [3.625, -1.45], rtol=1e-6)
    # round 3, d = [0, 0]: the velocity alone moves on: v = [4.275, -1.71]; w = [3.625 + 2.1375, -1.45 - 0.855]
    still = [ClientUpdate("a", 1, {"w": np.zeros(2, np.float32), "steps": np.array(0, np.int64)})]
    third = strategy.aggregate(second, still)
    np.testing.assert_allclose(third["w"], [5.7625, -2.305], rtol=1e-6)


def test_fedavgm_without_momentum_is_fedavg_and_its_velocity_survives_a_restart() -> None:
    updates = scalar_updates(1.0, 3.0, examples=(3, 1))
    np.testing.assert_allclose(
        FedAvgM(server_learning_rate=1.0, server_momentum=0.0).aggregate(BASE, updates)["w"],
        FedAvg().aggregate(BASE, updates)["w"],
    )
    first = FedAvgM()
    first.aggregate(BASE, scalar_updates(1.0))
    restarted = FedAvgM()
    restarted.load_state(first.state())
    # v = 0.5 * 1 + 1 = 1.5 for both (the default momentum is 0.5): the restarted hub remembers the velocity
    np.testing.assert_allclose(restarted.aggregate(BASE, scalar_updates(1.0))["w"], [1.5])
    np.testing.assert_allclose(first.aggregate(BASE, scalar_updates(1.0))["w"], [1.5])
    with pytest.raises(ValueError, match="server_momentum"):
        FedAvgM(server_momentum=1.0)


@pytest.mark.parametrize("strategy", [FedAvgM(server_momentum=0.9), FedAdam(eta=0.5)], ids=["fedavgm", "fedadam"])
def test_server_optimizers_average_batchnorm_statistics_plainly(strategy: FedAvgM | FedAdam) -> None:
    """A velocity (or an adaptive step) on a running variance drove it below zero; statistics are averaged."""
    base: dict[str, np.ndarray] = {"bn.running_var": np.array([1.0], np.float32), "w": np.array([0.0], np.float32)}
    weights = base
    for _ in range(3):  # every plant measures a smaller variance than the global has
        local = {"bn.running_var": weights["bn.running_var"] * np.float32(0.5) - weights["bn.running_var"]}
        weights = strategy.aggregate(weights, [ClientUpdate("a", 1, local | {"w": np.array([0.1], np.float32)})])
    np.testing.assert_allclose(weights["bn.running_var"], [0.125], rtol=1e-6)  # halved three times, like FedAvg
    assert weights["w"][0] > 0.1, "the trained weights still get the server optimizer's step"


def test_a_variance_is_never_below_zero_after_aggregation() -> None:
    base: dict[str, np.ndarray] = {"bn.running_var": np.array([1.0, 1.0], np.float32), "w": np.zeros(2, np.float32)}
    delta = {"bn.running_var": np.array([-1.0005, -0.25], np.float32), "w": np.array([-2.0, 1.0], np.float32)}
    result = FedAvg().aggregate(base, [ClientUpdate("a", 1, delta)])
    np.testing.assert_allclose(result["bn.running_var"], [0.0, 0.75], rtol=1e-6)
    np.testing.assert_allclose(result["w"], [-2.0, 1.0])  # other tensors may well be negative


def test_fedmedian() -> None:
    np.testing.assert_allclose(FedMedian().aggregate(BASE, scalar_updates(1, 2, 3, 4, 1000))["w"], [3.0])
    np.testing.assert_allclose(FedMedian().aggregate(BASE, scalar_updates(1, 2, 3, 4))["w"], [2.5])


def test_trimmed_mean() -> None:
    # 20 % of 5 = 1 from each end: mean(2, 3, 4) = 3
    np.testing.assert_allclose(
        TrimmedMean(trim_fraction=0.2).aggregate(BASE, scalar_updates(1, 2, 3, 4, 1000))["w"], [3.0]
    )
    with pytest.raises(ValueError, match="trim_fraction"):
        TrimmedMean(trim_fraction=0.5)


def test_krum_and_multikrum() -> None:
    # f = 1, n = 5: each score sums squared distances to the 2 nearest others:
    # 1: 1 + 4 = 5; 2: 1 + 1 = 2; 3: 1 + 1 = 2; 4: 1 + 4 = 5; 1000: huge. Ties go to the earlier update.
    krum = Krum(byzantine=1)
    np.testing.assert_allclose(krum.aggregate(BASE, scalar_updates(1, 2, 3, 4, 1000))["w"], [2.0])
    assert krum.selected == ["e1"]
    multi = MultiKrum(byzantine=1, keep=3)
    np.testing.assert_allclose(multi.aggregate(BASE, scalar_updates(1, 2, 3, 4, 1000))["w"], [2.0])  # mean(2, 3, 1)
    assert multi.selected == ["e1", "e2", "e0"]
    with pytest.raises(ValueError, match="needs more than 4"):
        krum.aggregate(BASE, scalar_updates(1, 2, 3, 4))


def test_fedbn_keeps_batchnorm_local() -> None:
    base = {"conv.weight": np.zeros(2, np.float32), "bn.running_mean": np.zeros(2, np.float32)}
    update = [ClientUpdate("a", 1, {k: np.ones(2, np.float32) for k in base})]
    result = FedAvg(keep_local=FEDBN_PATTERNS).aggregate(base, update)
    np.testing.assert_allclose(result["conv.weight"], [1, 1])
    np.testing.assert_allclose(result["bn.running_mean"], [0, 0])


@pytest.fixture
def attacked() -> tuple[list[ClientUpdate], np.ndarray]:
    """Five edges with similar deltas; the last one's is scaled by 1000."""
    rng = np.random.default_rng(0)
    honest = [1.0 + 0.05 * rng.standard_normal(50) for _ in range(4)]
    updates = [ClientUpdate(f"e{i}", 10, {"w": d.astype(np.float32)}) for i, d in enumerate(honest)]
    updates.append(ClientUpdate("evil", 10, {"w": (1000 * honest[0]).astype(np.float32)}))
    return updates, np.mean(honest, axis=0)


@pytest.mark.parametrize(
    "strategy",
    [FedMedian(), TrimmedMean(trim_fraction=0.2), Krum(byzantine=1), MultiKrum(byzantine=1, keep=3)],
    ids=lambda s: s.name,
)
def test_robust_strategies_resist_a_scaled_update(strategy, attacked) -> None:  # type: ignore[no-untyped-def]
    updates, honest_mean = attacked
    result = strategy.aggregate({"w": np.zeros(50, np.float32)}, updates)["w"]
    assert np.abs(result - honest_mean).max() < 0.2


def test_fedavg_does_not_resist_it(attacked) -> None:  # type: ignore[no-untyped-def]
    updates, honest_mean = attacked
    assert np.abs(FedAvg().aggregate({"w": np.zeros(50, np.float32)}, updates)["w"] - honest_mean).max() > 100


def test_make_strategy_from_config() -> None:
    assert (
        set(STRATEGIES)
        == {name.value for name in StrategyName}
        == {
            "fedavg",
            "fedavgm",
            "fedprox",
            "fedadam",
            "fedyogi",
            "fedadagrad",
            "fedmedian",
            "trimmed_mean",
            "krum",
            "multikrum",
        }
    )
    strategy = make_strategy(AggregationConfig(strategy="fedadam", params={"eta": 0.01}, fedbn=True))
    assert isinstance(strategy, FedAdam) and strategy.eta == 0.01
    assert strategy.is_local("model.0.bn.weight") and not strategy.is_local("model.0.conv.weight")
    with pytest.raises(ConfigError, match=r"aggregation\.params: fedadam does not take"):
        make_strategy(AggregationConfig(strategy="fedadam", params={"etta": 0.01}))
    with pytest.raises(ConfigError, match=r"aggregation\.params: trim_fraction"):
        make_strategy(AggregationConfig(strategy="trimmed_mean", params={"trim_fraction": 0.7}))


def test_each_model_line_gets_its_own_aggregation_or_the_hubs() -> None:
    from hub.strategies import line_strategies
    from schemas.config import HubConfig

    config = HubConfig.model_validate(
        {
            "aggregation": {"strategy": "fedavgm", "params": {"server_momentum": 0.5}},
            "rounds": [
                {"model_name": "pcb-classifier"},
                {"model_name": "pcb-detector", "aggregation": {"strategy": "fedavg", "fedbn": True}},
            ],
        }
    )
    strategies = line_strategies(config)
    classifier, detector = strategies["pcb-classifier"], strategies["pcb-detector"]
    assert (
        isinstance(classifier, FedAvgM) and classifier.server_momentum == 0.5 and not classifier.is_local("bn.weight")
    )
    assert type(detector) is FedAvg and detector.is_local("model.0.bn.weight")
    bad = config.model_copy(
        update={"rounds": [config.rounds[0], config.rounds[1].model_copy(update={"aggregation": _fedavg_with("mu")})]}
    )
    with pytest.raises(ConfigError, match=r"rounds\[1\]\.aggregation\.params: fedavg does not take"):
        line_strategies(bad)
    with pytest.raises(ValueError, match="clip_factor"):  # the bounds on updates are the hub's, for every line
        HubConfig.model_validate({"rounds": [{"model_name": "m", "aggregation": {"clip_factor": 3.0}}]})


def _fedavg_with(param: str) -> StrategyConfig:
    return StrategyConfig(strategy="fedavg", params={param: 0.1})


def test_zero_dimensional_tensors_stay_arrays_after_aggregation() -> None:
    """BatchNorm's num_batches_tracked is a 0-d tensor: it must come back as an array safetensors can store."""
    import numpy as np

    from hub.strategies.base import ClientUpdate
    from hub.strategies.fedavg import FedAvg

    base: dict[str, np.ndarray] = {"steps": np.array(3, np.int64), "w": np.zeros((), np.float32)}
    update = ClientUpdate("a", 1, {"steps": np.array(2, np.int64), "w": np.array(0.5, np.float32)})
    weights = FedAvg().aggregate(base, [update])
    assert all(isinstance(v, np.ndarray) and v.shape == () for v in weights.values())
    assert (int(weights["steps"]), float(weights["w"])) == (5, 0.5)
