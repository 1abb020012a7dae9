"""``apex.audit.offsets`` on a real broker: committed records only, as the consumer reads them.

The audit's reader filters aborted transactions itself (it sends plain Fetch
requests); here a real aborted transaction sits between committed ones, and
the answer must equal what aiokafka's committed consumer gives.
"""

from __future__ import annotations

import pytest

from apex.audit.offsets import fetch_offsets
from apex.config import Settings
from apex.kafka.event_log import EventLogReader, MissingOffsets
from tests.integration.mixed_log import write_mixed_log


async def test_an_aborted_transaction_is_never_part_of_a_history(apex_settings: Settings) -> None:
    topic, everything = await write_mixed_log(apex_settings)
    committed = [offset for offset, _ in everything]
    async with EventLogReader(apex_settings) as reader:
        for gap in (0, 1, 100):
            got, _, _ = await fetch_offsets(reader, topic, 0, committed, gap=gap)
            assert [(r.offset, r.value) for r in got] == everything, gap
            got, _, _ = await fetch_offsets(reader, topic, 0, committed[3:], gap=gap)
            assert [(r.offset, r.value) for r in got] == everything[3:], gap
        others = [o for o in range(committed[-1]) if o not in committed]
        assert len(others) == 4  # two aborted records, the two markers before the last commit
        for offset in others:  # hold no committed record: never part of a history
            with pytest.raises(MissingOffsets):
                await fetch_offsets(reader, topic, 0, [offset], gap=0)
