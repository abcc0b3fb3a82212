"""In-process rate-limit state: for a single gateway instance (no `redis.url`), and the
fallback while Redis is unavailable with `failure_mode: open`.

Same arithmetic as Redis (algorithms.py), decided atomically for all the limits of a request
(the event loop runs one check at a time), with memory bounded by an LRU of keys.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence

from gateway.ratelimit.algorithms import Outcome, State, evaluate
from gateway.ratelimit.keys import Item


class MemoryBackend:
    def __init__(self, max_keys: int = 100_000) -> None:
        self.max_keys = max_keys
        self._states: OrderedDict[str, State] = OrderedDict()

    def __len__(self) -> int:
        return len(self._states)

    def check(self, items: Sequence[Item], now_ms: int = 0) -> tuple[bool, list[Outcome]]:
        """(admitted, one outcome per item); state changes only when admitted."""
        now = now_ms or time.time_ns() // 1_000_000
        states = self._states
        outcomes = []
        admitted = True
        for policy, key in items:
            outcome = evaluate(policy, states.get(key), now)
            outcomes.append(outcome)
            if not outcome.allowed and policy.enforced:
                admitted = False
        if admitted:
            for (_, key), outcome in zip(items, outcomes, strict=True):
                if outcome.allowed:
                    states[key] = outcome.state
                    states.move_to_end(key)
            while len(states) > self.max_keys:
                states.popitem(last=False)
        return admitted, outcomes
