#!lua name=qserver
--[[
qserver's shared store: every change of a job's state is one function call, one
atomic step in Redis (never "pop, then record", which loses the job when a node
dies between the two). Loaded with FUNCTION LOAD REPLACE by qserver.store.redis;
functions persist in the RDB/AOF and replicate, so a restarted or promoted Redis
has them too.

All keys share one hash tag, KEYS[1] = "{prefix}", so they live in one slot (one
primary, Sentinel, or a one-shard cluster). Layout (P = KEYS[1]):
  P:seq               STRING  the job id counter
  P:j:<id>            HASH    tube pri delay ttr body state created due bury
                              reserves timeouts releases buries kicks holder
  P:t:<tube>:ready    ZSET    score pri, member the id padded to 20 digits (equal
                              scores sort by member bytes: (pri, id) order)
  P:t:<tube>:delayed  ZSET    score due time (ms)
  P:t:<tube>:buried   ZSET    score bury sequence (kick order)
  P:t:<tube>          HASH    total_jobs cmd_delete reserved
  P:tubes             SET     tube names that have or had jobs
  P:reserved          ZSET    score TTR deadline (ms), member padded id
  P:h:<holder>        SET     padded ids a holder (node:connection) has reserved
  P:bury_seq          STRING  the bury order counter
  P:total_jobs, P:job_timeouts  STRING  stats counters of the whole cluster
  P:t:<tube> also     pause (s) and unpause (ms): a pause-tube
Times come from the store's clock (TIME), the one clock of every node. Redis 7
replicates a function's effects, so reading TIME before writing is allowed.
A reply is a status word first ("OK", "NOT_FOUND", ...), then values.
]]

-- Lua numbers are doubles: ids are exact below 2^53 (285 years at a million puts
-- a second); past it put fails rather than hand out a wrong id.
local MAX_ID = 9007199254740992

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function pad(id)
  return string.format('%020d', id)
end

local function job_key(P, id) return P .. ':j:' .. id end
local function list_key(P, tube, list) return P .. ':t:' .. tube .. ':' .. list end

-- Delayed jobs of a tube whose time has come become ready (at most 1000 per call:
-- a function never does unbounded work).
local function promote_due(P, tube, now)
  local delayed = list_key(P, tube, 'delayed')
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, 1000)
  for _, member in ipairs(due) do
    local key = job_key(P, tonumber(member))
    redis.call('ZREM', delayed, member)
    redis.call('ZADD', list_key(P, tube, 'ready'), redis.call('HGET', key, 'pri'), member)
    redis.call('HSET', key, 'state', 'ready', 'due', 0)
  end
  return #due
end

local function make_ready(P, key, tube, member, pri)
  redis.call('ZADD', list_key(P, tube, 'ready'), pri, member)
  redis.call('HSET', key, 'state', 'ready', 'due', 0, 'holder', '')
  redis.call('PUBLISH', P .. ':wake', tube)
end

-- Take a job out of whatever list its state puts it in.
local function unlist(P, key, member, job)
  local state, tube = job.state, job.tube
  if state == 'ready' or state == 'delayed' or state == 'buried' then
    redis.call('ZREM', list_key(P, tube, state), member)
  elseif state == 'reserved' then
    redis.call('ZREM', P .. ':reserved', member)
    redis.call('SREM', P .. ':h:' .. job.holder, member)
    redis.call('HINCRBY', P .. ':t:' .. tube, 'reserved', -1)
  end
end

local function load(key)
  local fields = redis.call('HMGET', key, 'tube', 'state', 'holder', 'pri', 'ttr', 'body')
  if not fields[1] then return nil end
  return {tube = fields[1], state = fields[2], holder = fields[3] or '',
          pri = fields[4], ttr = tonumber(fields[5]), body = fields[6]}
end

-- put(P; tube, pri, delay s, ttr s, body) -> {"OK", id}
local function put(keys, args)
  local P = keys[1]
  local tube, pri, delay, ttr, body = args[1], tonumber(args[2]), tonumber(args[3]),
    tonumber(args[4]), args[5]
  local id = redis.call('INCR', P .. ':seq')
  if id >= MAX_ID then
    return redis.error_reply('qserver: job ids have reached 2^53, past which Lua cannot hold them exactly')
  end
  local now = now_ms()
  local key, member = job_key(P, id), pad(id)
  redis.call('HSET', key, 'tube', tube, 'pri', pri, 'delay', delay, 'ttr', ttr,
             'body', body, 'created', now, 'bury', 0, 'reserves', 0, 'timeouts', 0,
             'releases', 0, 'buries', 0, 'kicks', 0, 'holder', '')
  redis.call('HINCRBY', P .. ':t:' .. tube, 'total_jobs', 1)
  redis.call('INCR', P .. ':total_jobs')
  redis.call('SADD', P .. ':tubes', tube)
  if delay > 0 then
    redis.call('HSET', key, 'state', 'delayed', 'due', now + delay * 1000)
    redis.call('ZADD', list_key(P, tube, 'delayed'), now + delay * 1000, member)
  else
    make_ready(P, key, tube, member, pri)
  end
  return {'OK', id}
end

-- Milliseconds until the soonest of `tubes`' delayed jobs is due, or -1.
local function next_due(P, tubes, first, now)
  local soonest = -1
  for i = first, #tubes do
    local top = redis.call('ZRANGE', list_key(P, tubes[i], 'delayed'), 0, 0, 'WITHSCORES')
    if top[1] then
      local wait = tonumber(top[2]) - now
      if wait < 0 then wait = 0 end
      if soonest < 0 or wait < soonest then soonest = wait end
    end
  end
  return soonest
end

-- The soonest TTR deadline (ms) of the jobs `holder` has reserved, or nil.
local function soonest_deadline(P, holder)
  local soonest
  for _, member in ipairs(redis.call('SMEMBERS', P .. ':h:' .. holder)) do
    local due = tonumber(redis.call('HGET', job_key(P, tonumber(member)), 'due'))
    if due and (soonest == nil or due < soonest) then soonest = due end
  end
  return soonest
end

local SAFETY_MARGIN_MS = 1000   -- DEADLINE_SOON: the last second of a TTR

local function take(P, key, tube, member, holder, now)
  local ttr = tonumber(redis.call('HGET', key, 'ttr'))
  if ttr < 1 then ttr = 1 end
  local deadline = now + ttr * 1000
  redis.call('HSET', key, 'state', 'reserved', 'due', deadline, 'holder', holder)
  redis.call('HINCRBY', key, 'reserves', 1)
  redis.call('HINCRBY', P .. ':t:' .. tube, 'reserved', 1)
  redis.call('ZADD', P .. ':reserved', deadline, member)
  redis.call('SADD', P .. ':h:' .. holder, member)
end

local function unpause_at(P, tube)
  return tonumber(redis.call('HGET', P .. ':t:' .. tube, 'unpause') or 0)
end

-- reserve(P; holder, tube...) -> {"OK", id, body} | {"DEADLINE_SOON"} | {"NONE", ms}:
-- the ready job with the smallest (pri, id) over the given tubes that are not
-- paused, reserved for `holder` until its TTR (protocol.md, "reserve",
-- "DEADLINE_SOON"); else how long a waiting reserve may sleep before something can
-- change without a wake-up: a delayed job due, a pause ending, or one of the
-- holder's jobs entering its safety margin (-1: nothing of the kind).
local function reserve(keys, args)
  local P, holder = keys[1], args[1]
  local now = now_ms()
  local best_tube, best_member, best_pri
  local any_ready = false
  local wait = -1
  for i = 2, #args do
    local tube = args[i]
    promote_due(P, tube, now)
    local top = redis.call('ZRANGE', list_key(P, tube, 'ready'), 0, 0, 'WITHSCORES')
    if top[1] then
      any_ready = true
      local until_ms = unpause_at(P, tube)
      if until_ms > now then
        if wait < 0 or until_ms - now < wait then wait = until_ms - now end
      else
        local pri = tonumber(top[2])
        if best_member == nil or pri < best_pri or (pri == best_pri and top[1] < best_member) then
          best_tube, best_member, best_pri = tube, top[1], pri
        end
      end
    end
  end
  local due = next_due(P, args, 2, now)    -- after the promotions: not yet due
  if due >= 0 and (wait < 0 or due < wait) then wait = due end
  local soonest = soonest_deadline(P, holder)
  if soonest and not any_ready and now >= soonest - SAFETY_MARGIN_MS then
    return {'DEADLINE_SOON'}
  end
  if best_member == nil then
    if soonest then
      local margin = soonest - SAFETY_MARGIN_MS - now
      if margin < 0 then margin = 0 end
      if wait < 0 or margin < wait then wait = margin end
    end
    return {'NONE', wait}
  end
  local id = tonumber(best_member)
  local key = job_key(P, id)
  redis.call('ZREM', list_key(P, best_tube, 'ready'), best_member)
  take(P, key, best_tube, best_member, holder, now)
  return {'OK', id, redis.call('HGET', key, 'body')}
end

-- reserve_job(P; id, holder) -> {"OK", id, body} | {"NOT_FOUND"}: a ready, delayed or
-- buried job by id, whatever its tube or a pause; never DEADLINE_SOON.
local function reserve_job(keys, args)
  local P, id, holder = keys[1], tonumber(args[1]), args[2]
  local key, member = job_key(P, id), pad(id)
  local job = load(key)
  if job == nil or job.state == 'reserved' then return {'NOT_FOUND'} end
  unlist(P, key, member, job)
  take(P, key, job.tube, member, holder, now_ms())
  return {'OK', id, job.body}
end

-- pause(P; tube, seconds) -> {"OK"}: reserves skip the tube for `seconds` (0: the
-- pause ends now); waiting reserves hear of the end through their wait hint.
local function pause(keys, args)
  local P, tube, seconds = keys[1], args[1], tonumber(args[2])
  local hash = P .. ':t:' .. tube
  redis.call('HSET', hash, 'pause', seconds, 'unpause', now_ms() + seconds * 1000)
  redis.call('HINCRBY', hash, 'cmd_pause', 1)
  redis.call('SADD', P .. ':tubes', tube)
  if seconds == 0 then redis.call('PUBLISH', P .. ':wake', tube) end
  return {'OK'}
end

-- tube_counts(P; tube...) -> {"OK", now, then per tube: urgent ready reserved delayed
-- buried total_jobs cmd_delete cmd_pause pause unpause}: what stats and stats-tube
-- show (delayed jobs that are due count as ready).
local function tube_counts(keys, args)
  local P = keys[1]
  local now = now_ms()
  local out = {'OK', now}
  for i = 1, #args do
    local tube = args[i]
    promote_due(P, tube, now)
    local ready = list_key(P, tube, 'ready')
    local hash = redis.call('HMGET', P .. ':t:' .. tube, 'reserved', 'total_jobs',
                            'cmd_delete', 'cmd_pause', 'pause', 'unpause')
    table.insert(out, redis.call('ZCOUNT', ready, '-inf', 1023))
    table.insert(out, redis.call('ZCARD', ready))
    table.insert(out, tonumber(hash[1] or 0))
    table.insert(out, redis.call('ZCARD', list_key(P, tube, 'delayed')))
    table.insert(out, redis.call('ZCARD', list_key(P, tube, 'buried')))
    for j = 2, 6 do table.insert(out, tonumber(hash[j] or 0)) end
  end
  return out
end

-- tubes(P) -> {"OK", name...}: the tubes that ever had jobs or a pause.
local function tubes(keys, args)
  local out = {'OK'}
  for _, name in ipairs(redis.call('SMEMBERS', keys[1] .. ':tubes')) do
    table.insert(out, name)
  end
  return out
end

-- stats_job(P; id) -> {"OK", now in microseconds, field, value, ...} | {"NOT_FOUND"}
-- (microseconds: a TTR of 30 s just reserved has 29 s left, as beanstalkd says,
-- even within the millisecond).
local function stats_job(keys, args)
  local P, id = keys[1], tonumber(args[1])
  local fields = redis.call('HGETALL', job_key(P, id))
  if #fields == 0 then return {'NOT_FOUND'} end
  local t = redis.call('TIME')
  local out = {'OK', tonumber(t[1]) * 1000000 + tonumber(t[2])}
  for _, value in ipairs(fields) do table.insert(out, value) end
  return out
end

-- totals(P) -> {"OK", total_jobs, job_timeouts}
local function totals(keys, args)
  local values = redis.call('MGET', keys[1] .. ':total_jobs', keys[1] .. ':job_timeouts')
  return {'OK', tonumber(values[1] or 0), tonumber(values[2] or 0)}
end

-- delete(P; id, holder) -> {"OK"} | {"NOT_FOUND"}: a reserved job only by its holder.
local function delete(keys, args)
  local P, id, holder = keys[1], tonumber(args[1]), args[2]
  local key = job_key(P, id)
  local job = load(key)
  if job == nil or (job.state == 'reserved' and job.holder ~= holder) then
    return {'NOT_FOUND'}
  end
  unlist(P, key, pad(id), job)
  redis.call('DEL', key)
  redis.call('HINCRBY', P .. ':t:' .. job.tube, 'cmd_delete', 1)
  return {'OK'}
end

-- release(P; id, holder, pri, delay s) -> {"OK"} | {"NOT_FOUND"}
local function release(keys, args)
  local P, id, holder, pri, delay = keys[1], tonumber(args[1]), args[2],
    tonumber(args[3]), tonumber(args[4])
  local key, member = job_key(P, id), pad(id)
  local job = load(key)
  if job == nil or job.state ~= 'reserved' or job.holder ~= holder then
    return {'NOT_FOUND'}
  end
  unlist(P, key, member, job)
  redis.call('HSET', key, 'pri', pri, 'delay', delay, 'holder', '')
  redis.call('HINCRBY', key, 'releases', 1)
  if delay > 0 then
    local due = now_ms() + delay * 1000
    redis.call('HSET', key, 'state', 'delayed', 'due', due)
    redis.call('ZADD', list_key(P, job.tube, 'delayed'), due, member)
  else
    make_ready(P, key, job.tube, member, pri)
  end
  return {'OK'}
end

-- bury(P; id, holder, pri) -> {"OK"} | {"NOT_FOUND"}
local function bury(keys, args)
  local P, id, holder, pri = keys[1], tonumber(args[1]), args[2], tonumber(args[3])
  local key, member = job_key(P, id), pad(id)
  local job = load(key)
  if job == nil or job.state ~= 'reserved' or job.holder ~= holder then
    return {'NOT_FOUND'}
  end
  unlist(P, key, member, job)
  local seq = redis.call('INCR', P .. ':bury_seq')
  redis.call('HSET', key, 'pri', pri, 'state', 'buried', 'bury', seq, 'due', 0, 'holder', '')
  redis.call('HINCRBY', key, 'buries', 1)
  redis.call('ZADD', list_key(P, job.tube, 'buried'), seq, member)
  return {'OK'}
end

-- touch(P; id, holder) -> {"OK"} | {"NOT_FOUND"}: the TTR starts again.
local function touch(keys, args)
  local P, id, holder = keys[1], tonumber(args[1]), args[2]
  local key, member = job_key(P, id), pad(id)
  local job = load(key)
  if job == nil or job.state ~= 'reserved' or job.holder ~= holder then
    return {'NOT_FOUND'}
  end
  local ttr = job.ttr
  if ttr < 1 then ttr = 1 end
  local deadline = now_ms() + ttr * 1000
  redis.call('HSET', key, 'due', deadline)
  redis.call('ZADD', P .. ':reserved', deadline, member)
  return {'OK'}
end

local function kick_one(P, key, member, job)
  unlist(P, key, member, job)
  redis.call('HINCRBY', key, 'kicks', 1)
  make_ready(P, key, job.tube, member, job.pri)
end

-- kick(P; tube, bound, list) -> {"OK", n, list}: buried jobs first (oldest first),
-- else delayed ones, at most 1000 a call; `list` ("" the first time) keeps the
-- calls of one kick on the list the first one chose.
local function kick(keys, args)
  local P, tube, bound, list = keys[1], args[1], tonumber(args[2]), args[3]
  promote_due(P, tube, now_ms())
  if list == '' then
    list = 'buried'
    if redis.call('ZCARD', list_key(P, tube, 'buried')) == 0 then list = 'delayed' end
  end
  if bound <= 0 then return {'OK', 0, list} end
  if bound > 1000 then bound = 1000 end
  local members = redis.call('ZRANGE', list_key(P, tube, list), 0, bound - 1)
  for _, member in ipairs(members) do
    local key = job_key(P, tonumber(member))
    kick_one(P, key, member, load(key))
  end
  return {'OK', #members, list}
end

-- kick_job(P; id) -> {"OK"} | {"NOT_FOUND"}: a buried or delayed job.
local function kick_job(keys, args)
  local P, id = keys[1], tonumber(args[1])
  local key = job_key(P, id)
  local job = load(key)
  if job == nil or (job.state ~= 'buried' and job.state ~= 'delayed') then
    return {'NOT_FOUND'}
  end
  kick_one(P, key, pad(id), job)
  return {'OK'}
end

-- peek(P; id) -> {"OK", id, body} | {"NOT_FOUND"}
local function peek(keys, args)
  local P, id = keys[1], tonumber(args[1])
  local body = redis.call('HGET', job_key(P, id), 'body')
  if not body then return {'NOT_FOUND'} end
  return {'OK', id, body}
end

-- peek_list(P; tube, "ready"|"delayed"|"buried") -> {"OK", id, body} | {"NOT_FOUND"}
local function peek_list(keys, args)
  local P, tube, list = keys[1], args[1], args[2]
  promote_due(P, tube, now_ms())
  local top = redis.call('ZRANGE', list_key(P, tube, list), 0, 0)
  if not top[1] then return {'NOT_FOUND'} end
  local id = tonumber(top[1])
  return {'OK', id, redis.call('HGET', job_key(P, id), 'body')}
end

-- expire(P; limit) -> {"OK", n, ms}: reserved jobs past their TTR go back to ready
-- (at most `limit` per call), and how long until the next TTR runs out (-1: no job
-- is reserved); idempotent, any node may run it.
local function expire(keys, args)
  local P, limit = keys[1], tonumber(args[1])
  local now = now_ms()
  local due = redis.call('ZRANGEBYSCORE', P .. ':reserved', '-inf', now, 'LIMIT', 0, limit)
  for _, member in ipairs(due) do
    local key = job_key(P, tonumber(member))
    local job = load(key)
    unlist(P, key, member, job)
    redis.call('HINCRBY', key, 'timeouts', 1)
    redis.call('INCR', P .. ':job_timeouts')
    make_ready(P, key, job.tube, member, job.pri)
  end
  local next = redis.call('ZRANGE', P .. ':reserved', 0, 0, 'WITHSCORES')
  local wait = -1
  if next[1] then
    wait = tonumber(next[2]) - now
    if wait < 0 then wait = 0 end
  end
  return {'OK', #due, wait}
end

-- release_holder(P; holder) -> {"OK", n}: a closed connection's jobs are ready again.
local function release_holder(keys, args)
  local P, holder = keys[1], args[1]
  local members = redis.call('SMEMBERS', P .. ':h:' .. holder)
  for _, member in ipairs(members) do
    local key = job_key(P, tonumber(member))
    local job = load(key)
    if job ~= nil and job.state == 'reserved' and job.holder == holder then
      unlist(P, key, member, job)
      make_ready(P, key, job.tube, member, job.pri)
    end
  end
  redis.call('DEL', P .. ':h:' .. holder)
  return {'OK', #members}
end

-- ---------------------------------------------------------------- ids after a failover
-- fence(P; margin) -> {"OK", jumped, replid}: run by each node on each new connection
-- to the primary, before anything else. Asynchronous replication can lose a
-- primary's last writes, INCRs of P:seq among them, when a replica is promoted (and
-- a restart without appendfsync always loses its last ones): the ids of jobs it
-- acknowledged would be given again. A primary whose replication id (INFO
-- replication's master_replid: new for a promoted replica and for a restarted Redis)
-- is not the one recorded in P:replid makes the counter jump `margin` once; the
-- first node to meet it does, the others find the id recorded (idempotent per
-- primary). A store with no counter yet has given no id: nothing to jump over.
local function fence(keys, args)
  local P, margin = keys[1], tonumber(args[1])
  local info = redis.call('INFO', 'replication')
  local replid = string.match(info, 'master_replid:(%x+)')
  if replid == nil then
    return redis.error_reply('qserver: no master_replid in INFO replication')
  end
  if redis.call('GET', P .. ':replid') == replid then
    return {'OK', 0, replid}
  end
  redis.call('SET', P .. ':replid', replid)
  if redis.call('EXISTS', P .. ':seq') == 0 then
    return {'OK', 0, replid}
  end
  redis.call('INCRBY', P .. ':seq', margin)
  return {'OK', margin, replid}
end
-- ---------------------------------------------------------- end of ids after a failover

-- (A plain loop: the library's loading code may not use pairs or ipairs.)
local WRITING = {
  {'qs_put', put}, {'qs_reserve', reserve}, {'qs_reserve_job', reserve_job},
  {'qs_delete', delete}, {'qs_release', release}, {'qs_bury', bury},
  {'qs_touch', touch}, {'qs_kick', kick}, {'qs_kick_job', kick_job},
  {'qs_peek_list', peek_list}, {'qs_expire', expire},
  {'qs_release_holder', release_holder}, {'qs_pause', pause},
  {'qs_tube_counts', tube_counts}}
-- Read-only: allowed on a replica too.
local READING = {{'qs_peek', peek}, {'qs_tubes', tubes}, {'qs_stats_job', stats_job},
                 {'qs_totals', totals}}
for i = 1, #WRITING do
  redis.register_function(WRITING[i][1], WRITING[i][2])
end
for i = 1, #READING do
  redis.register_function{function_name = READING[i][1], callback = READING[i][2],
                          flags = {'no-writes'}}
end
redis.register_function('qs_fence', fence)
