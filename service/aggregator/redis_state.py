"""The aggregator's state in Redis, changed only through Lua scripts (each runs atomically).

Why scripts: counting must be atomic with the dedupe and with the consumer offsets. One
script per poll batch stores its impressions (counting the events that waited for them),
dedupes and counts its events, and records the batch's next offsets, so after a crash at
any point -- or after Redis itself restarts from an older snapshot -- the counts, the
``seen`` sets and the offsets agree: the consumer seeks to the stored offsets
(``Aggregator.seek_to_stored``) and re-reads exactly what the state lacks. Kafka commits
still happen (lag monitoring, first start) but Redis's offsets are the truth.

Validate, then write: Redis does not undo a script's writes when it fails half-way, so a
script that wrote ``seen`` and then failed on ``HINCRBYFLOAT`` (a value that overflows)
would mark events as counted that never were -- and fail again on every re-delivery. The
batch script therefore reads and checks everything first (argument shapes, each event's
value against its kind's bound, each counter's new total) and only then writes; a bad
event is returned as refused (the caller dead-letters it), never an error.

Key layout (``P`` = the deployment's redis_prefix + "agg:"):

    P imp:<iid>      string  Impression JSON                                  (TTL)
    P cnt:<iid>      hash    kind -> summed value                             (TTL)
    P seen:<iid>     set     event ids counted for this impression            (TTL)
    P pend:<iid>     hash    event id -> "kind\\nvalue\\narrival\\nts" (waiting for the impression)
    P pending        zset    iid -> oldest pending arrival (unix s)
    P pending_n      string  number of pending events (bounded by pending_max)
    P offsets        hash    "topic:partition" -> next offset to read (written with the counts)
    P topic_ids      hash    topic -> id of the topic those offsets were read from (incarnation.py)
    P dirty          zset    iid -> time of the first unpublished change (coalescing)
    P inflight       zset    iid -> lease expiry of a record being published
    P recent         zset    iid -> last publish time (sample for fitting rate edges)

TTL: every write to an impression's ``imp:``/``cnt:``/``seen:`` sets their TTL to ``key_ttl_s``
(service.aggregator.retention: longer than the oldest event still accepted, so dedupe stays
exact). ``pend:`` keys have none: ``expire_pending`` dead-letters and drops them, and a TTL
would make ``pending_n`` drift.

Scripts touch keys they compute from arguments, which standalone Redis/Valkey allow. Redis
Cluster allows it when every key is in the slot of the script's KEYS: each script passes
one key it touches as KEYS[1] (so a cluster client routes it there), and the prefix must carry a
hash tag (``RLHB_REDIS_PREFIX={rlhb}:``, checked by core.settings) so all keys share that slot.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from pydantic import ValidationError

from schemas import FeedbackEvent, Impression
from schemas.feedback import MAX_VALUE
from service.aggregator.fold import parse_counts
from service.aggregator.retention import key_ttl_s

_APPLY_BATCH = r"""
local P = ARGV[1]
local now = ARGV[2]
local pmax = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local imps = cjson.decode(ARGV[5])    -- [[iid, Impression JSON], ...]
local events = cjson.decode(ARGV[6])  -- [[iid, event id, kind, value, ts, tp index (1-based, 0 none), offset], ...]
local tps = cjson.decode(ARGV[7])     -- [["topic:partition", next offset], ...]
local limits = cjson.decode(ARGV[8])  -- kind -> largest value of one event
local EXACT = 9007199254740992        -- 2^53: beyond it a float counter stops counting exactly

local function finite(x)
  local v = tonumber(x)
  if v == nil or v ~= v or v == math.huge or v == -math.huge then return nil end
  return v
end
local function text(x) return type(x) == 'string' and #x > 0 end
local function check_value(kind, v)
  if type(kind) ~= 'string' or limits[kind] == nil then return 'unknown kind' end
  local n = finite(v)
  if n == nil then return 'value is not a finite number' end
  if n < 0 or n > limits[kind] then return 'value outside 0..' .. limits[kind] .. ' for ' .. kind end
  return nil
end

-- ---------------------------------------------------------------- phase 1: read and decide
for _, imp in ipairs(imps) do
  if not (text(imp[1]) and text(imp[2])) then return redis.error_reply('apply_batch: malformed impression') end
end
for _, t in ipairs(tps) do
  if not (text(t[1]) and finite(t[2])) then return redis.error_reply('apply_batch: malformed offset') end
end

local known, seen_now, parked_now = {}, {}, {}
local counts = {}     -- {iid, eid, kind, value, source}; source = event index or 'pend'
local parks = {}      -- {iid, eid, pending entry}
local drained = {}    -- iids whose pending entries are consumed
local rejected = {}   -- {event index (0-based), reason}
local dropped = {}    -- {iid, eid, stored entry, reason}: pending entries that cannot count
local cap = {}        -- tp index -> lowest offset of a refused event (the stored offset stops there)
local pn = tonumber(redis.call('GET', P .. 'pending_n') or '0')

local seen_db = {}  -- iid -> {eid -> true}: one SMISMEMBER per impression, not one call per event
local function is_seen(iid, eid)
  if seen_now[iid .. '\0' .. eid] then return true end
  local cached = seen_db[iid]
  if cached ~= nil and cached[eid] ~= nil then return cached[eid] end
  return redis.call('SISMEMBER', P .. 'seen:' .. iid, eid) == 1
end
do
  local ids = {}
  for _, e in ipairs(events) do
    if type(e[1]) == 'string' and type(e[2]) == 'string' then
      local l = ids[e[1]]
      if l == nil then l = {}; ids[e[1]] = l end
      l[#l + 1] = e[2]
    end
  end
  for iid, l in pairs(ids) do
    local cached = {}
    for i = 1, #l, 500 do
      local last = math.min(i + 499, #l)
      local found = redis.call('SMISMEMBER', P .. 'seen:' .. iid, unpack(l, i, last))
      for j = i, last do cached[l[j]] = found[j - i + 1] == 1 end
    end
    seen_db[iid] = cached
  end
end
local function refuse(idx, e, reason)
  rejected[#rejected + 1] = {idx - 1, reason}
  local t, off = tonumber(e[6]), tonumber(e[7])
  if t and t > 0 and off and (cap[t] == nil or off < cap[t]) then cap[t] = off end
end

for _, imp in ipairs(imps) do
  local iid = imp[1]
  known[iid] = true
  local pend = redis.call('HGETALL', P .. 'pend:' .. iid)
  if #pend > 0 then drained[#drained + 1] = {iid, #pend / 2} end
  for j = 1, #pend, 2 do
    local eid, v = pend[j], pend[j + 1]
    local a = string.find(v, '\n', 1, true)
    local b = a and string.find(v, '\n', a + 1, true)
    local kind, val = a and string.sub(v, 1, a - 1), b and string.sub(v, a + 1, b - 1)
    local bad = (a == nil or b == nil) and 'unreadable pending entry' or check_value(kind, val)
    if bad then
      dropped[#dropped + 1] = {iid, eid, v, bad}
    elseif not is_seen(iid, eid) then
      seen_now[iid .. '\0' .. eid] = true
      counts[#counts + 1] = {iid, eid, kind, tonumber(val), 'pend'}
    end
  end
end

for idx, e in ipairs(events) do
  local iid, eid, kind = e[1], e[2], e[3]
  local bad = (not (text(iid) and text(eid))) and 'empty impression or event id' or check_value(kind, e[4])
  if bad == nil and finite(e[5]) == nil then bad = 'ts is not a finite number' end
  if bad then
    refuse(idx, e, 'invalid: ' .. bad)
  else
    if known[iid] == nil then known[iid] = redis.call('EXISTS', P .. 'imp:' .. iid) == 1 end
    if known[iid] then
      if not is_seen(iid, eid) then
        seen_now[iid .. '\0' .. eid] = true
        counts[#counts + 1] = {iid, eid, kind, tonumber(e[4]), idx}
      end
    elseif not is_seen(iid, eid) and not parked_now[iid .. '\0' .. eid]
        and redis.call('HEXISTS', P .. 'pend:' .. iid, eid) == 0 then
      if pn >= pmax then
        refuse(idx, e, 'pending_full')
      else
        parked_now[iid .. '\0' .. eid] = true
        parks[#parks + 1] = {iid, eid, kind .. '\n' .. e[4] .. '\n' .. now .. '\n' .. e[5]}
        pn = pn + 1
      end
    end
  end
end

-- Each counter's new total must stay a finite, exact count: sum per (impression, kind) and
-- compare with what Redis holds; the events of a pair that would break it are refused.
local sums, order = {}, {}
for _, c in ipairs(counts) do
  local k = c[1] .. '\0' .. c[3]
  if sums[k] == nil then sums[k] = {c[1], c[3], 0}; order[#order + 1] = k end
  sums[k][3] = sums[k][3] + c[4]
end
local broken = {}
for _, k in ipairs(order) do
  local s = sums[k]
  local cur = redis.call('HGET', P .. 'cnt:' .. s[1], s[2])
  local n = cur == false and 0 or finite(cur)
  if n == nil or n + s[3] > EXACT then broken[k] = n == nil and 'stored counter is not a finite number'
    or 'counter would exceed 2^53' end
end
local ok = {}
for _, c in ipairs(counts) do
  local why = broken[c[1] .. '\0' .. c[3]]
  if why == nil then
    ok[#ok + 1] = c
  elseif c[5] == 'pend' then
    dropped[#dropped + 1] = {c[1], c[2], c[3] .. '\n' .. c[4], why}
  else
    refuse(c[5], events[c[5]], why)
  end
end

-- ---------------------------------------------------------------- phase 2: write
local function keep(key) if ttl > 0 then redis.call('EXPIRE', key, ttl) end end
for _, imp in ipairs(imps) do
  redis.call('SET', P .. 'imp:' .. imp[1], imp[2])
  keep(P .. 'imp:' .. imp[1])
end
local drained_n = 0
for _, d in ipairs(drained) do
  redis.call('DEL', P .. 'pend:' .. d[1])
  redis.call('ZREM', P .. 'pending', d[1])
  drained_n = drained_n + d[2]
end
pn = pn - drained_n
for _, p in ipairs(parks) do
  redis.call('HSET', P .. 'pend:' .. p[1], p[2], p[3])
  redis.call('ZADD', P .. 'pending', 'NX', now, p[1])
end
local touched, fresh, from_pending = {}, {}, 0
for _, c in ipairs(ok) do
  local ids = fresh[c[1]]
  if ids == nil then ids = {}; fresh[c[1]] = ids end
  ids[#ids + 1] = c[2]
  touched[c[1]] = true
  if c[5] == 'pend' then from_pending = from_pending + 1 end
end
for iid, ids in pairs(fresh) do
  for i = 1, #ids, 500 do  -- one SADD per impression (in chunks: unpack has a stack limit)
    redis.call('SADD', P .. 'seen:' .. iid, unpack(ids, i, math.min(i + 499, #ids)))
  end
end
for _, k in ipairs(order) do
  local s = sums[k]
  if broken[k] == nil then
    -- One HINCRBYFLOAT per (impression, kind), not per event.
    redis.call('HINCRBYFLOAT', P .. 'cnt:' .. s[1], s[2], string.format('%.17g', s[3]))
  end
end
for iid, _ in pairs(touched) do
  redis.call('ZADD', P .. 'dirty', 'NX', now, iid)
  keep(P .. 'imp:' .. iid); keep(P .. 'cnt:' .. iid); keep(P .. 'seen:' .. iid)
end
redis.call('SET', P .. 'pending_n', pn)
for i, t in ipairs(tps) do
  local nxt = tonumber(t[2])
  if cap[i] ~= nil and cap[i] < nxt then nxt = cap[i] end
  local cur = tonumber(redis.call('HGET', P .. 'offsets', t[1]) or '-1')
  if nxt > cur then redis.call('HSET', P .. 'offsets', t[1], string.format('%d', nxt)) end
end
return {#ok - from_pending, from_pending, rejected, dropped}
"""

_SAVE_OFFSETS = r"""
local key = ARGV[1]
for i = 2, #ARGV, 2 do
  local cur = tonumber(redis.call('HGET', key, ARGV[i]) or '-1')
  if tonumber(ARGV[i + 1]) > cur then redis.call('HSET', key, ARGV[i], ARGV[i + 1]) end
end
return 1
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


def tp_key(topic: str, partition: int) -> str:
    """The ``offsets`` hash field of a partition (topic names cannot contain ':')."""
    return f"{topic}:{partition}"


_LIMITS = json.dumps({kind.value: limit for kind, limit in MAX_VALUE.items()})


@dataclass
class Applied:
    """What one batch script did."""

    counted: int = 0
    """Events of the batch counted now."""
    drained: int = 0
    """Events that waited for an impression of the batch and were counted now."""
    rejected: list[tuple[int, str]] = field(default_factory=list)
    """(index in the batch's events, reason): refused, not written -- the caller dead-letters them.
    Reasons: 'pending_full', 'invalid: ...', or why the counter would break."""
    dropped: list[tuple[str, str, str, str]] = field(default_factory=list)
    """(impression id, event id, stored entry, reason): waiting events that could not be counted
    (corrupt or overflowing) and were removed -- the caller dead-letters them."""


def _pending_entry(iid: str, eid: str, entry: str, cutoff: float) -> tuple[float, str]:
    """(arrival, event JSON) of a ``pend:`` entry. An entry that no longer reads as a valid event
    (written by an older version, or damaged) is still returned -- as its raw fields, expired at
    once -- so it reaches the dead-letter topic instead of stopping the expiry."""
    parts = entry.split("\n", 3)
    try:
        kind, value, arrival, ts = parts
        ev = FeedbackEvent(event_id=eid, impression_id=iid, kind=kind, value=float(value), ts=float(ts))
        return float(arrival), ev.model_dump_json()
    except (ValueError, ValidationError):
        return cutoff, json.dumps({"event_id": eid, "impression_id": iid, "pending_entry": entry})


def _where(pos: tuple[str, int] | None, index: Mapping[str, int]) -> list[int]:
    if pos is None or pos[0] not in index:
        return [0, 0]
    return [index[pos[0]], int(pos[1])]


class AggregatorStore:
    """Typed access to the aggregator's Redis state. ``redis`` must use decode_responses=True.

    ``key_ttl_s``: TTL of each impression's ``imp:``/``cnt:``/``seen:`` keys, renewed at each
    write (None or 0: no TTL); see service.aggregator.retention."""

    def __init__(self, redis, prefix: str, key_ttl_s: float | None = key_ttl_s()):
        self.redis = redis
        self.p = prefix + "agg:"
        self.key_ttl_s = key_ttl_s
        self._batch = redis.register_script(_APPLY_BATCH)
        self._save_offsets = redis.register_script(_SAVE_OFFSETS)
        self._claim = redis.register_script(_CLAIM_DIRTY)
        self._drop = redis.register_script(_DROP_PENDING)
        # Each script names one key it touches as KEYS[1] (it computes the others from ARGV), so a
        # Redis Cluster client routes it to the node of that key's slot; with a hash-tagged prefix
        # every other key is in that slot too (module docstring).
        self._route = [self.p + "offsets"]  # batch and offsets scripts

    # ---------------------------------------------------------------- writes (atomic)
    def apply_batch(
        self,
        impressions: Sequence[Impression],
        events: Sequence[FeedbackEvent],
        now: float,
        pending_max: int,
        positions: Sequence[tuple[str, int] | None] | None = None,
        offsets: Mapping[str, int] | None = None,
    ) -> Applied:
        """One poll batch in one atomic script: store the impressions (counting the events that
        waited for them), count the joined events (deduped), park the others, and record
        ``offsets`` (partition key -> next offset to read).

        ``positions[i]``: the partition key and offset event ``i`` was read from. A refused
        event holds its partition's stored offset at its own offset, so a crash before its dead
        letter is acknowledged re-reads it; ``save_offsets`` moves past it afterwards."""
        if not impressions and not events and not offsets:
            return Applied()
        tps = list((offsets or {}).items())
        index = {key: i + 1 for i, (key, _next) in enumerate(tps)}
        positions = positions or [None] * len(events)
        # One JSON argument per part, not several per event: redis-py packs each argument separately (slow).
        batch = [
            [ev.impression_id, ev.event_id, ev.kind.value, _num(ev.value), _num(ev.ts), *_where(pos, index)]
            for ev, pos in zip(events, positions, strict=True)
        ]
        ttl = math.ceil(self.key_ttl_s) if self.key_ttl_s else 0
        counted, drained, rejected, dropped = self._batch(
            keys=self._route,
            args=[
                self.p,
                _num(now),
                str(pending_max),
                str(ttl),
                json.dumps([[imp.impression_id, imp.model_dump_json()] for imp in impressions]),
                json.dumps(batch),
                json.dumps([[key, int(nxt)] for key, nxt in tps]),
                _LIMITS,
            ],
        )
        return Applied(
            int(counted),
            int(drained),
            [(int(i), str(reason)) for i, reason in rejected],
            [(str(iid), str(eid), str(entry), str(reason)) for iid, eid, entry, reason in dropped],
        )

    def store_impressions(self, impressions: Sequence[Impression], now: float) -> int:
        """Store impressions; count the events that were waiting for them. Returns how many counted."""
        return self.apply_batch(impressions, [], now, pending_max=0).drained

    def apply_events(
        self, events: Sequence[tuple[FeedbackEvent, object]], now: float, pending_max: int
    ) -> tuple[int, list[int]]:
        """Count joined events (deduped), park the others. Returns (counted, indexes of the events
        refused: pending store full, or invalid)."""
        done = self.apply_batch([], [ev for ev, _raw in events], now, pending_max)
        return done.counted, [i for i, _reason in done.rejected]

    def save_offsets(self, offsets: Mapping[str, int]) -> None:
        """Move stored offsets forward (never back: a member that lost its partitions may still
        finish an old batch)."""
        if offsets:
            self._save_offsets(
                keys=self._route, args=[self.p + "offsets", *(x for k, v in offsets.items() for x in (k, int(v)))]
            )

    def offsets(self) -> dict[str, int]:
        """Partition key -> next offset to read, as recorded with the counts."""
        return {k: int(v) for k, v in self.redis.hgetall(self.p + "offsets").items()}

    def claim_dirty(self, now: float, coalesce_s: float, lease_s: float, limit: int = 1000) -> list[str]:
        """Impressions whose record is due: changed at least ``coalesce_s`` ago, or leased by a
        publisher that did not finish in time. They stay leased until ``release``."""
        out = self._claim(
            keys=[self.p + "dirty"], args=[self.p, _num(now), _num(now - coalesce_s), _num(now + lease_s), str(limit)]
        )
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
                arrival, raw = _pending_entry(iid, eid, v, cutoff)
                if arrival <= cutoff:
                    out.setdefault(iid, {})[eid] = (arrival, raw)
        return out

    def drop_pending(self, iid: str, event_ids: Sequence[str], cutoff: float) -> int:
        """Forget expired pending events (after they reached the dead-letter topic)."""
        return int(self._drop(keys=[self.p + "pending"], args=[self.p, _num(cutoff), iid, *event_ids]))

    # ---------------------------------------------------------------- reads
    def load(self, iids: Sequence[str]) -> list[tuple[str, str | None, dict[str, str]]]:
        """(iid, Impression JSON or None, raw counts as stored: parse them with ``parse_counts``)."""
        pipe = self.redis.pipeline(transaction=False)
        for iid in iids:
            pipe.get(self.p + "imp:" + iid)
            pipe.hgetall(self.p + "cnt:" + iid)
        res = pipe.execute()
        return [(iid, res[2 * i], res[2 * i + 1]) for i, iid in enumerate(iids)]

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
