"""Pytest fixtures for the simulators (loaded with `pytest_plugins = ["tests.fixtures_sim"]`).

- `clazar_sim`: a fresh ClazarSimulator on a free loopback port for one test (rate limit off, so tests
  that send many requests are not throttled unless they configure it).
- `clazar_sim_server`: one simulator for the whole session; `clazar_sim_shared` hands it to a test after a
  `reset()` (objects, tokens, faults, log and settings back to the defaults). Cheaper when many tests
  only need a Clazar to talk to.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from clazar_dest.simulators.clazar import ClazarSimulator
from clazar_dest.simulators.salesforce import SalesforceSimulator


@pytest.fixture
def clazar_sim() -> Iterator[ClazarSimulator]:
    sim = ClazarSimulator(rate_limit=0).start()
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture(scope="session")
def clazar_sim_server() -> Iterator[ClazarSimulator]:
    sim = ClazarSimulator(rate_limit=0).start()
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def clazar_sim_shared(clazar_sim_server: ClazarSimulator) -> ClazarSimulator:
    clazar_sim_server.reset()
    return clazar_sim_server


# -- Salesforce ------------------------------------------------------------------------------------
# `sf_sim`: a fresh SalesforceSimulator (20 Accounts, 60 Opportunities) on a free loopback port for one
# test. `sf_sim_server`: one for the whole session; `sf_sim_shared` hands it to a test after a `reset()`
# (data re-seeded; tokens, faults, log and settings back to the defaults).


@pytest.fixture
def sf_sim() -> Iterator[SalesforceSimulator]:
    sim = SalesforceSimulator().start()
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture(scope="session")
def sf_sim_server() -> Iterator[SalesforceSimulator]:
    sim = SalesforceSimulator().start()
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def sf_sim_shared(sf_sim_server: SalesforceSimulator) -> SalesforceSimulator:
    sf_sim_server.reset()
    return sf_sim_server
