"""core.accel.torch_threads: when the pack frees a core for its frame writer."""

import os

import pytest

from core.accel.torch_threads import planned_threads, usable_cores


@pytest.mark.parametrize("current, cores, accelerated, setting, expected", [
    (16, 16, True, None, 15),        # torch takes every core next to a GPU: free one
    (16, 16, True, "auto", 15),
    (16, 16, True, " AUTO ", 15),
    (16, 16, True, "", 15),          # set but empty: the default
    (32, 16, True, None, 15),        # more threads than cores
    (15, 16, True, None, None),      # the writer's core is free already
    (8, 16, True, None, None),
    (16, 16, False, None, None),     # on the CPU the sampler needs every core
    (3, 3, True, None, None),        # too few cores to give one up
    (4, 4, True, None, 3),
    (16, 16, True, "keep", None),
    (16, 16, True, "12", 12),
    (16, 16, False, "2", 2),
])
def test_planned_threads(current, cores, accelerated, setting, expected):
    assert planned_threads(current, cores, accelerated, setting) == expected


@pytest.mark.parametrize("setting", ["0", "-3", "many", "1.5"])
def test_a_bad_setting_names_the_choices(setting):
    with pytest.raises(ValueError, match="auto, keep or a whole number"):
        planned_threads(16, 16, True, setting)


def test_usable_cores_without_affinity_falls_back_to_the_cpu_count(monkeypatch):
    assert 1 <= usable_cores() <= (os.cpu_count() or 1)
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert usable_cores() == 6
