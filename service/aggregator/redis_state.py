"""The aggregator's state in Redis, changed only through Lua scripts (each runs atomically).

Why scripts: counting must be atomic with the dedupe. ``SADD seen`` and ``HINCRBYFLOAT``
happen in one script, so after a crash at any point an event is either fully counted
(and its id is in ``seen``, so a re-delivery is skipped) or not at all (and the
re-delivery counts it). Kafka offsets are committed only after the script returned.
Whole poll batches go in one script call: one round trip per batch, not per event.

Key layout (``P`` = the deployment's redis_prefix + "agg:"):

    P imp:<iid>      string  Impression JSON
    P cnt:<iid>      hash    kind -> summed value
    P seen:<iid>     set     event ids counted for this impression
    P pend:<iid>     hash    event id -> "kind\\nvalue\\narrival\\nts" (waiting for the impression)
    P pending        zset    iid -> oldest pending arrival (unix s)
    P pending_n      string  number of pending events (bounded by pending_max)
    P dirty          zset    iid -> time of the first unpublished change (coalescing)
    P inflight       zset    iid -> lease expiry of a record being published
    P recent         zset    iid -> last publish time (sample for fitting rate edges)

Scripts touch keys they compute from arguments, which standalone Redis/Valkey allow;
Redis Cluster would need the keys hash-tagged per impression (not supported here).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from schemas import FeedbackEvent, Impression
from service.aggregator.fold import parse_counts

_APPLY_EVENTS = """
local P = ARGV[1]
local now = ARGV[2]
local pmax = tonumber(ARGV[3])
local events = cjson.decode(ARGV[4])  -- [[iid, event id, kind, value, ts], ...]
local applied, rejected = 0, {}
local known, sums, order = {}, {}, {}
local pn = tonumber(redis.call('GET', P .. 'pending_n') or '0')
for idx, e in ipairs(events) do
  local iid, eid, kind, val = e[1], e[2], e[3], e[4]
  if known[iid] == nil then known[iid] = redis.call('EXISTS', P .. 'imp:' .. iid) == 1 end
  if known[iid] then
    if redis.call('SADD', P .. 'seen:' .. iid, eid) == 1 then
      -- Sum per (impression, kind) first: one HINCRBYFLOAT per pair, not per event.
      local s = sums[iid]
      if s == nil then s = {}; sums[iid] = s; order[#order + 1] = iid end
      s[kind] = (s[kind] or 0) + tonumber(val)
      applied = applied + 1
    end
  elseif redis.call('SISMEMBER', P .. 'seen:' .. iid, eid) == 0
      and redis.call('HEXISTS', P .. 'pend:' .. iid, eid) == 0 then
    if pn >= pmax then
      rejected[#rejected + 1] = idx - 1
    else
      redis.call('HSET', P .. 'pend:' .. iid, eid, kind .. '\\n' .. val .. '\\n' .. now .. '\\n' .. e[5])
      redis.call('ZADD', P .. 'pending', 'NX', now, iid)
      pn = pn + 1
    end
  end
end
for _, iid in ipairs(order) do
  for kind, v in pairs(sums[iid]) do
    redis.call('HINCRBYFLOAT', P .. 'cnt:' .. iid, kind, string.format('%.17g', v))
  end
  redis.call('ZADD', P .. 'dirty', 'NX', now, iid)
end
redis.call('SET', P .. 'pending_n', pn)
return {applied, rejected}
"""

_STORE_IMPRESSIONS = """
local P = ARGV[1]
local now = ARGV[2]
local counted = 0
for _, imp in ipairs(cjson.decode(ARGV[3])) do  -- [[iid, Impression JSON], ...]
  local iid = imp[1]
  redis.call('SET', P .. 'imp:' .. iid, imp[2])
  local pk = P .. 'pend:' .. iid
  local pend = redis.call('HGETALL', pk)
  if #pend > 0 then
    local changed = false
    for j = 1, #pend, 2 do
      local v = pend[j + 1]
      local a = string.find(v, '\\n', 1, true)
      local b = string.find(v, '\\n', a + 1, true)
      if redis.call('SADD', P .. 'seen:' .. iid, pend[j]) == 1 then
        redis.call('HINCRBYFLOAT', P .. 'cnt:' .. iid, string.sub(v, 1, a - 1), string.sub(v, a + 1, b - 1))
        changed = true
        counted = counted + 1
      end
    end
    redis.call('DEL', pk)
    redis.call('ZREM', P .. 'pending', iid)
    redis.call('DECRBY', P .. 'pending_n', #pend / 2)
    if changed then redis.call('ZADD', P .. 'dirty', 'NX', now, iid) end
  end
end
return counted
"""

_CLAIM_DIRTY = """
local P = ARGV[1]
local now = tonumber(ARGV[2])
local ready_before = tonumber(ARGV[3])
local lease_until = ARGV[4]
local limit = tonumber(ARGV[5])
local out = {}
local ready = redis.call('ZRANGEBYSCORE', P .. 'dirty', '-inf', ready_before, 'LIMIT', 0, limit)
for _, iid in ipairs(ready) do
  redis.call('ZREM', P .. 'dirty', iid)
  redis.call('ZADD', P .. 'inflight', lease_until, iid)
  out[#out + 1] = iid
end
local expired = redis.call('ZRANGEBYSCORE', P .. 'inflight', '-inf', now, 'LIMIT', 0, limit)
for _, iid in ipairs(expired) do
  redis.call('ZADD', P .. 'inflight', lease_until, iid)
  out[#out + 1] = iid
end
return out
"""

_DROP_PENDING = """
local P = ARGV[1]
local cutoff = tonumber(ARGV[2])
local iid = ARGV[3]
local pk = P .. 'pend:' .. iid
local removed = 0
for i = 4, #ARGV do
  removed = removed + redis.call('HDEL', pk, ARGV[i])
end
redis.call('DECRBY', P .. 'pending_n', removed)
local rest = redis.call('HVALS', pk)
if #rest == 0 then
  redis.call('ZREM', P .. 'pending', iid)
else
  local oldest = nil
  for _, v in ipairs(rest) do
    local a = string.find(v, '\\n', 1, true)
    local b = string.find(v, '\\n', a + 1, true)
    local c = string.find(v, '\\n', b + 1, true)
    local t = tonumber(string.sub(v, b + 1, c - 1))
    if oldest == nil or t < oldest then oldest = t end
  end
  redis.call('ZADD', P .. 'pending', oldest, iid)
end
return removed
"""


def _num(x: float) -> str:
    return repr(float(x))


class AggregatorStore:
    """Typed access to the aggregator's Redis state. ``redis`` must use decode_responses=True."""

    def __init__(self, redis, prefix: str):
        self.redis = redis
        self.p = prefix + "agg:"
        self._apply = redis.register_script(_APPLY_EVENTS)
        self._store = redis.register_script(_STORE_IMPRESSIONS)
        self._claim = redis.register_script(_CLAIM_DIRTY)
        self._drop = redis.register_script(_DROP_PENDING)

    # ---------------------------------------------------------------- writes (atomic)
    def store_impressions(self, impressions: Sequence[Impression], now: float) -> int:
        """Store impressions; count the events that were waiting for them. Returns how many counted."""
        if not impressions:
            return 0
        batch = json.dumps([[imp.impression_id, imp.model_dump_json()] for imp in impressions])
        return int(self._store(args=[self.p, _num(now), batch]))

    def apply_events(
        self, events: Sequence[tuple[FeedbackEvent, bytes]], now: float, pending_max: int
    ) -> tuple[int, list[int]]:
        """Count joined events (deduped), park the others. Returns (counted, indexes of events
        refused because the pending store is full)."""
        if not events:
            return 0, []
        # One JSON argument, not 5 per event: redis-py packs each argument separately (slow).
        batch = json.dumps(
            [[ev.impression_id, ev.event_id, ev.kind.value, _num(ev.value), _num(ev.ts)] for ev, _raw in events]
        )
        applied, rejected = self._apply(args=[self.p, _num(now), str(pending_max), batch])
        return int(applied), [int(i) for i in rejected]

    def claim_dirty(self, now: float, coalesce_s: float, lease_s: float, limit: int = 1000) -> list[str]:
        """Impressions whose record is due: changed at least ``coalesce_s`` ago, or leased by a
        publisher that did not finish in time. They stay leased until ``release``."""
        out = self._claim(args=[self.p, _num(now), _num(now - coalesce_s), _num(now + lease_s), str(limit)])
        return list(dict.fromkeys(out))

    def release(self, iids: Iterable[str], now: float) -> None:
        pipe = self.redis.pipeline(transaction=False)
        iids = list(iids)
        if iids:
            pipe.zrem(self.p + "inflight", *iids)
            pipe.zadd(self.p + "recent", dict.fromkeys(iids, now))
            pipe.execute()

    def trim_recent(self, keep: int) -> None:
        self.redis.zremrangebyrank(self.p + "recent", 0, -keep - 1)

    def expired_pending(self, cutoff: float, limit: int = 100) -> dict[str, dict[str, tuple[float, str]]]:
        """Pending events that arrived before ``cutoff``: iid -> event id -> (arrival, event JSON).
        The JSON is the event re-serialized from its fields (the same content as sent)."""
        iids = self.redis.zrangebyscore(self.p + "pending", "-inf", cutoff, start=0, num=limit)
        if not iids:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for iid in iids:
            pipe.hgetall(self.p + "pend:" + iid)
        out: dict[str, dict[str, tuple[float, str]]] = {}
        for iid, entries in zip(iids, pipe.execute(), strict=True):
            for eid, v in entries.items():
                kind, value, arrival, ts = v.split("\n", 3)
                if float(arrival) <= cutoff:
                    ev = FeedbackEvent(event_id=eid, impression_id=iid, kind=kind, value=float(value), ts=float(ts))
                    out.setdefault(iid, {})[eid] = (float(arrival), ev.model_dump_json())
        return out

    def drop_pending(self, iid: str, event_ids: Sequence[str], cutoff: float) -> int:
        """Forget expired pending events (after they reached the dead-letter topic)."""
        return int(self._drop(args=[self.p, _num(cutoff), iid, *event_ids]))

    # ---------------------------------------------------------------- reads
    def load(self, iids: Sequence[str]) -> list[tuple[str, str | None, dict[str, float]]]:
        pipe = self.redis.pipeline(transaction=False)
        for iid in iids:
            pipe.get(self.p + "imp:" + iid)
            pipe.hgetall(self.p + "cnt:" + iid)
        res = pipe.execute()
        return [(iid, res[2 * i], parse_counts(res[2 * i + 1])) for i, iid in enumerate(iids)]

    def counts(self, iid: str) -> dict[str, float]:
        return parse_counts(self.redis.hgetall(self.p + "cnt:" + iid))

    def all_counts(self) -> dict[str, dict[str, float]]:
        keys = list(self.redis.scan_iter(match=self.p + "cnt:*", count=1000))
        pipe = self.redis.pipeline(transaction=False)
        for k in keys:
            pipe.hgetall(k)
        start = len(self.p + "cnt:")
        return {k[start:]: parse_counts(v) for k, v in zip(keys, pipe.execute(), strict=True)}

    def recent_counts(self, limit: int) -> list[dict[str, float]]:
        iids = self.redis.zrevrange(self.p + "recent", 0, limit - 1)
        pipe = self.redis.pipeline(transaction=False)
        for iid in iids:
            pipe.hgetall(self.p + "cnt:" + iid)
        return [parse_counts(c) for c in pipe.execute()]

    def pending_count(self) -> int:
        return int(self.redis.get(self.p + "pending_n") or 0)

    def backlog(self) -> int:
        """Records not yet published (dirty + in flight)."""
        return int(self.redis.zcard(self.p + "dirty")) + int(self.redis.zcard(self.p + "inflight"))

    def clear(self) -> int:
        """Delete every aggregator key (replay rebuilds them from the log)."""
        n = 0
        batch = []
        for key in self.redis.scan_iter(match=self.p + "*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                n += self.redis.delete(*batch)
                batch = []
        if batch:
            n += self.redis.delete(*batch)
        return n
