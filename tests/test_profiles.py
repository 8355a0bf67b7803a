import numpy as np
import pytest

from sectrace.errors import UserError
from sectrace.network import parse_jitter
from sectrace.simulate import CostModel, Network
from sectrace.simulate.profiles import (
    CLOUD_DEVICES,
    EDGE_DEVICES,
    NETWORK_PRESETS,
    cloud_device,
    edge_device,
    network_preset,
)
from sectrace.simulate.replay import FI
from sectrace.simulate.timing import cost_vector


def test_every_preset_has_a_source():
    for table in (EDGE_DEVICES, CLOUD_DEVICES):
        for name, dev in table.items():
            assert dev.name == name and len(dev.source) > 20
    for name, p in NETWORK_PRESETS.items():
        assert p.network.name == name and len(p.source) > 20


def test_study_devices_match_the_study_table():
    e = edge_device("study-cpu-2core").apply(CostModel())
    c = cloud_device("study-a100").apply(CostModel())
    # the study's rows read as OET = the whole call: N = OTPS × OET tokens, the first from the prefill (TTFT),
    # N − 1 decoded in OET − TTFT; so a caption of the row's length takes OET, as the study measured
    n_e, n_c = 2.10 * 34.80, 24.16 * 3.25
    assert e.edge_prefill_a == 7.74 and e.edge_prefill_a + (n_e - 1) * e.edge_step_a == pytest.approx(34.80)
    assert c.cloud_prefill_a == 0.39 and c.cloud_prefill_a + (n_c - 1) * c.cloud_step_a == pytest.approx(3.25)
    assert 1 / e.edge_step_a == pytest.approx(2.66, abs=0.005) and 1 / c.cloud_step_a == pytest.approx(27.1, abs=0.05)
    # the x4 what-if is exactly 4x the preset
    x4 = edge_device("study-cpu-2core-x4").apply(CostModel())
    assert x4.edge_step_a == pytest.approx(e.edge_step_a / 4) and x4.edge_prefill_a == pytest.approx(7.74 / 4)
    # a faster GPU is faster
    h = cloud_device("h100-sxm").apply(CostModel())
    assert h.cloud_step_a < c.cloud_step_a and h.verify_b < c.verify_b


def test_unknown_names_are_user_errors():
    for fn in (edge_device, cloud_device, network_preset):
        with pytest.raises(UserError):
            fn("no-such-thing")


def test_network_presets_are_ordered_by_rtt_sensibly():
    rtt = {n: network_preset(n).rtt_s for n in NETWORK_PRESETS}
    assert rtt["lan"] < rtt["wifi"] < rtt["5g"] < rtt["4g"] < rtt["satellite"]
    assert rtt["satellite"] >= 0.477  # GEO propagation floor


def test_jitter_specs():
    d = parse_jitter("expon(scale=0.002)")
    assert d.mean() == pytest.approx(0.002)
    assert parse_jitter(None) is None and parse_jitter("none") is None
    for bad in ("expon", "nosuch(scale=1)", "norm(loc=0,scale=1)", "expon(scale)", "poisson(mu=3)"):
        with pytest.raises(UserError):
            parse_jitter(bad)


def test_closed_form_prices_jitter_and_loss_at_their_mean():
    base = Network(rtt_s=0.05)
    noisy = Network(rtt_s=0.05, jitter="expon(scale=0.004)", loss=0.1, rto_s=0.2)
    extra = 0.004 + 0.1 / 0.9 * 0.2
    assert noisy.expected_extra_s == pytest.approx(extra)
    a, b = cost_vector(CostModel(), base), cost_vector(CostModel(), noisy)
    diff = b - a
    assert diff[FI["up_msgs"]] == pytest.approx(extra) and diff[FI["down_msgs"]] == pytest.approx(extra)
    diff[[FI["up_msgs"], FI["down_msgs"]]] = 0
    assert np.all(diff == 0)


def test_bad_network_values():
    with pytest.raises(UserError):
        Network(loss=1.0)
    with pytest.raises(UserError):
        Network(jitter="expon(scale=-1)")
