"""More torch threads per Ray actor than any node of the cluster has CPUs: one line at once, not a wait for ever.

Each CPU actor asks Ray for as many CPUs as it runs torch threads (the driver's count, which keeps the values
bit-identical). ``forensics --threads 4 memorization … --engine ray`` on a local Ray instance of 2 CPUs built the
engine, and its pipeline then waited for ever for an actor Ray could never place. Ray runs locally
(``ray.init(num_cpus=2)``) for the module, as in ``test_ray.py``.
"""

from __future__ import annotations

import pytest

from forensics.engine import make_engine
from forensics.errors import UsageError
from tests.test_ray import protocol, ray_local  # noqa: F401  (fixtures)


@pytest.mark.slow  # starts Ray
def test_more_threads_per_actor_than_a_node_has_cpus_is_refused(ray_local, protocol, plugin_host):  # noqa: F811
    with pytest.raises(UsageError, match=r"runs torch at 3 threads .* largest node has 2: give --threads 2 or "
                                         r"fewer") as info:
        make_engine(protocol, engine="ray", threads=3)
    assert "\n" not in str(info.value)
    engine = make_engine(protocol, engine="ray", threads=2)  # as many as a node has: one actor of 2 CPUs
    assert (engine.threads, engine.actors) == (2, 1)
