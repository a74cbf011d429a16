"""Change points over releases of several runs: a real step is found where it is, with its
effect and what changed with it; noise, a one-run spike and a one-release excursion are
not changes; a change at the end of the series is only tentative."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lmgauge.changepoints import Release, Settings, coinciding, detect, group_releases


def history(
    seed: int, n: int = 60, runs: int = 3, sd: float = 0.10, steps: dict[int, float] | None = None
) -> list[Release]:
    rng = np.random.default_rng(seed)
    level = np.zeros(n)
    for at, size in (steps or {}).items():
        level[at:] += math.log1p(size)
    figures = np.exp(level[:, None] + rng.normal(0, sd, (n, runs))) * 40.0
    return [
        Release(f"#{i}", tuple(map(float, figures[i])), {"backend_version": f"0.{i}"})
        for i in range(n)
    ]


def test_a_20_percent_drop_is_found_at_its_release_with_its_effect() -> None:
    releases = history(1, steps={30: -0.20})
    found = detect(releases)
    assert len(found) == 1
    change = found[0]
    assert abs(change.index - 30) <= 1
    assert not change.tentative
    assert change.ratio == pytest.approx(0.80, abs=0.06)
    assert change.low < 0.80 < change.high
    assert change.high < 0.95  # the interval excludes "no change"
    assert change.p_value < 1e-3
    assert change.runs_before >= 6
    assert change.runs_after >= 6


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_pure_noise_has_no_change_point(seed: int) -> None:
    assert detect(history(seed, n=200)) == []


def test_a_single_wild_run_is_not_a_change() -> None:
    releases = history(5)
    figures = list(releases[25].run_figures)
    figures[1] *= 0.5
    releases[25] = Release("#25", tuple(figures), releases[25].fields)
    assert detect(releases) == []


def test_a_one_release_excursion_that_returns_is_a_spike() -> None:
    releases = history(6)
    releases[25] = Release("#25", tuple(f * 0.6 for f in releases[25].run_figures), {})
    assert detect(releases) == []


def test_a_change_at_the_end_is_tentative() -> None:
    releases = history(7, n=40, steps={38: -0.30})
    found = detect(releases)
    assert [c.tentative for c in found] == [True]
    assert found[0].index >= 37
    assert "tentative change" in found[0].describe()


def test_the_change_says_what_changed_with_it() -> None:
    releases = history(8, steps={30: 0.25})
    for i in range(len(releases)):
        fields = {"backend": "llamacpp", "backend_version": "0.3.1" if i < 30 else "0.3.2"}
        releases[i] = Release(f"#{i}", releases[i].run_figures, fields)
    found = detect(releases)
    assert [c.index for c in found] == [30]
    assert found[0].coinciding == ("backend_version: 0.3.1 -> 0.3.2",)
    assert "backend_version: 0.3.1 -> 0.3.2" in found[0].describe()


def test_consecutive_runs_with_one_key_are_one_release() -> None:
    a = {"backend": "ollama", "backend_version": "0.5.1", "git_commit": "abcdef1234"}
    b = {**a, "config_sha256": "ff00"}
    releases = group_releases([(a, 1.0), (a, 2.0), (b, 3.0), (a, 4.0)])
    assert [r.run_figures for r in releases] == [(1.0, 2.0), (3.0,), (4.0,)]
    assert releases[0].label == "#0 0.5.1 @abcdef12"
    assert coinciding(releases[0], releases[1]) == ("config_sha256: None -> ff00",)


def test_single_run_releases_still_work() -> None:
    found = detect(history(9, runs=1, sd=0.03, steps={30: -0.20}))
    assert [abs(c.index - 30) <= 1 for c in found] == [True]


def test_short_or_flat_series_are_no_trouble() -> None:
    assert detect([]) == []
    assert detect([Release("#0", (1.0, 1.0))]) == []
    flat = [Release(f"#{i}", (5.0, 5.0, 5.0)) for i in range(20)]
    assert detect(flat, Settings()) == []
    no_errors = [Release(f"#{i}", (0.0, 0.0, 0.0)) for i in range(20)]  # an error rate
    assert detect(no_errors) == []
