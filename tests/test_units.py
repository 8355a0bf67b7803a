import pytest

from sectrace.errors import UserError
from sectrace.units import parse_duration, parse_rate, parse_size


@pytest.mark.parametrize("text,want", [("50ms", 0.05), ("0.05s", 0.05), ("0.05", 0.05), ("2min", 120.0),
                                       ("250 us", 0.00025), ("1e-3s", 0.001)])
def test_durations(text, want):
    assert parse_duration(text) == pytest.approx(want)


@pytest.mark.parametrize("text,want", [("20Mbit/s", 2.5e6), ("20Mbps", 2.5e6), ("100kbit/s", 12500.0),
                                       ("2.5MB/s", 2.5e6), ("1Gbit/s", 1.25e8)])
def test_rates(text, want):
    assert parse_rate(text) == pytest.approx(want)


@pytest.mark.parametrize("text,want", [("64B", 64), ("1.5kB", 1500), ("2MB", 2_000_000), ("100", 100)])
def test_sizes(text, want):
    assert parse_size(text) == want


@pytest.mark.parametrize("fn,text", [(parse_duration, "fast"), (parse_duration, "50 parsecs"),
                                     (parse_rate, "20Mbit"), (parse_rate, "0Mbit/s"), (parse_size, "lots")])
def test_bad_units(fn, text):
    with pytest.raises(UserError):
        fn(text)
