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
  P:j:<id>            HASH    tube pri delay ttr body state created due, and
                              once set: bury reserves timeouts releases buries
                              kicks holder (absent: 0, "")
  P:t:<tube>:ready    ZSET    score pri, member the id padded to 20 digits (equal
                              scores sort by member bytes: (pri, id) order)
  P:t:<tube>:delayed  ZSET    score due time (µs)
  P:t:<tube>:buried   ZSET    score bury sequence (kick order)
  P:t:<tube>          HASH    total_jobs cmd_delete reserved
  P:tubes             SET     the tubes that exist: with jobs, or referred to
  P:reserved          ZSET    score TTR deadline (µs), member padded id
  P:h:<holder>        SET     padded ids a holder (node:connection) has reserved
  P:nodes             ZSET    score lease end (µs), member a node's id
  P:n:<node>          SET     the tubes the node's connections use or watch
  P:hn:<node>         SET     the node's holders that reserved jobs
  P:replid            STRING  the replication id of the primary the ids were
                              last fenced on (see "ids after a failover")
  P:bury_seq          STRING  the bury order counter
  P:total_jobs, P:job_timeouts  STRING  stats counters of the whole cluster
  P:t:<tube> also     pause (s) and unpause (µs): a pause-tube
  P:w:<tube>          STRING  how many nodes have a reserve waiting on the tube
  P:ws:<tube>         SET     those nodes (see "Wake-ups")
Times come from the store's clock (TIME), the one clock of every node. Redis 7
replicates a function's effects, so reading TIME before writing is allowed.
A reply is a status word first ("OK", "NOT_FOUND", ...), then values.
]]

-- Lua numbers are doubles: ids are exact below 2^53 (285 years at a million puts
-- a second); past it put fails rather than hand out a wrong id.
local MAX_ID = 9007199254740992

-- Times are microseconds of the store's clock: two changes a millisecond apart
-- keep their order as in beanstalkd (a delay of 2^32-1 s still fits below 2^53).
local SECOND = 1000000
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * SECOND + tonumber(t[2])
end

-- A wait hint for the node: whole milliseconds, rounded up (-1 stays -1).
local function in_ms(us)
  if us < 0 then return -1 end
  return math.ceil(us / 1000)
end

local function pad(id)
  return string.format('%020d', id)
end

-- Every number handed to redis.call is a string made here (or a literal): Redis
-- 7.0 writes a Lua number argument with printf's %.17g, about 0.8 µs of its CPU
-- each, several times what string.format('%d') costs (bench/README.md, "Several
-- nodes on Redis"). The numbers are whole (ids, µs, priorities, counts).
local function id_text(id) return string.format('%d', id) end

-- (string.format, not `..`: Lua 5.1 writes numbers of 15 digits or more with an
-- exponent.)
local function job_key(P, id) return P .. ':j:' .. string.format('%d', id) end
local function list_key(P, tube, list) return P .. ':t:' .. tube .. ':' .. list end
local function node_of(holder) return string.match(holder, '^[^:]*') end

-- Tube lifetime (protocol.md, "Tube lifetime"): a tube exists while it has jobs
-- or a connection of a live node uses or watches it; then it is forgotten with its
-- counters and pause, as beanstalkd forgets it. "default" always exists.
local function referred(P, tube, now)
  for _, node in ipairs(redis.call('ZRANGEBYSCORE', P .. ':nodes', id_text(now), '+inf')) do
    if redis.call('SISMEMBER', P .. ':n:' .. node, tube) == 1 then return true end
  end
  return false
end

-- (`now` may be nil: the clock is read only if it is needed.)
local function forget_if_unused(P, tube, now)
  if tube == 'default' then return end
  -- One EXISTS for the five lists (it counts the keys that exist).
  if redis.call('EXISTS', list_key(P, tube, 'ready'), list_key(P, tube, 'delayed'),
                list_key(P, tube, 'buried'), list_key(P, tube, 'reserved'),
                list_key(P, tube, 'held')) > 0 then
    return
  end
  if referred(P, tube, now or now_us()) then return end
  redis.call('DEL', P .. ':t:' .. tube, P .. ':w:' .. tube, P .. ':ws:' .. tube)
  redis.call('SREM', P .. ':tubes', tube)
end

-- Delayed jobs of a tube whose time has come become ready (at most 1000 per call:
-- a function never does unbounded work). Returns the µs until the tube's next
-- delayed job is due (0: more are due now; -1: none is delayed). When none is due
-- yet, that is one look at the first delayed job.
local function promote_due(P, tube, now)
  local delayed = list_key(P, tube, 'delayed')
  local top = redis.call('ZRANGE', delayed, '0', '0', 'WITHSCORES')
  if not top[1] then return -1 end
  local wait = tonumber(top[2]) - now
  if wait > 0 then return wait end
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', id_text(now), 'LIMIT', '0', '1000')
  for _, member in ipairs(due) do
    local key = job_key(P, tonumber(member))
    redis.call('ZREM', delayed, member)
    redis.call('ZADD', list_key(P, tube, 'ready'), redis.call('HGET', key, 'pri'), member)
    redis.call('HSET', key, 'state', 'ready', 'due', '0')
  end
  top = redis.call('ZRANGE', delayed, '0', '0', 'WITHSCORES')
  if not top[1] then return -1 end
  wait = tonumber(top[2]) - now
  if wait < 0 then wait = 0 end
  return wait
end

-- == Wake-ups (protocol.md, "Several nodes") ==
-- A change that makes a job ready publishes the tube's name on P:wake (each
-- message wakes one waiting reserve of a node), but only while some node has a
-- reserve waiting on the tube: a node marks the tubes in the same call as the look
-- that found nothing (reserve_wait), and unmarks them (unwait) once none of its
-- reserves has waited on them for a while. A mark left behind only costs messages;
-- a mark missing (a lost store) costs a waiting reserve at most its re-poll.
local function wake(P, tube)
  if redis.call('GET', P .. ':w:' .. tube) then
    redis.call('PUBLISH', P .. ':wake', tube)
  end
end

local function mark_waiting(P, node, tube)
  if redis.call('SADD', P .. ':ws:' .. tube, node) == 1 then
    redis.call('INCR', P .. ':w:' .. tube)
  end
end

local function unmark_waiting(P, node, tube)
  if redis.call('SREM', P .. ':ws:' .. tube, node) == 1 and
      redis.call('DECR', P .. ':w:' .. tube) <= 0 then
    redis.call('DEL', P .. ':w:' .. tube)
  end
end

local function make_ready(P, key, tube, member, pri)
  redis.call('ZADD', list_key(P, tube, 'ready'), pri, member)     -- pri: a string
  redis.call('HSET', key, 'state', 'ready', 'due', '0', 'holder', '')
  wake(P, tube)
end

-- == Events (protocol.md, "subscribe") ==
--   P:events_on   STRING  the window (events kept) while some node has had a
--                         subscriber (it renews it); absent: nothing is recorded
--   P:event_seq   STRING  the last sequence number given (starts at the wall
--                         clock in µs, so numbers from an older stream are lower)
--   P:events      STREAM  entry id "<seq>-1": n name, i job id, t tube, a attempt,
--                         w time (µs); trimmed to about the window
-- `key` names the job's hash for its attempts (nil: 0).
local function record(P, window, name, id, tube, key)
  local seq = redis.call('INCR', P .. ':event_seq')
  local attempt = '0'
  if key then attempt = redis.call('HGET', key, 'attempts') or '0' end
  redis.call('XADD', P .. ':events', 'MAXLEN', '~', window, id_text(seq) .. '-1',
             'n', name, 'i', id_text(id), 't', tube, 'a', attempt, 'w', id_text(now_us()))
end

local function event(P, name, id, tube, key)
  local window = redis.call('GET', P .. ':events_on')
  if window then record(P, window, name, id, tube, key) end
end

-- == Per-key concurrency (protocol.md, "Per-key concurrency") ==
--   P:lk:<tube>:<lock>  STRING  how many jobs with the lock are reserved
--   P:lh:<tube>:<lock>  ZSET    the lock's held jobs, score and member the id
--   P:t:<tube>:held     ZSET    the tube's held jobs (list-jobs), score the id
--   job hash field: lock
local function lock_count(P, tube, lock) return P .. ':lk:' .. tube .. ':' .. lock end
local function lock_held(P, tube, lock) return P .. ':lh:' .. tube .. ':' .. lock end

local function lock_limit(P, tube)
  return tonumber(redis.call('HGET', P .. ':policy:' .. tube, 'lock-limit') or 1)
end

local function lock_free(P, tube, lock)
  return tonumber(redis.call('GET', lock_count(P, tube, lock)) or 0) < lock_limit(P, tube)
end

-- A ready job whose lock is full is held: out of the ready list until a holder ends.
local function hold(P, key, tube, member, lock)
  redis.call('ZREM', list_key(P, tube, 'ready'), member)
  redis.call('ZADD', list_key(P, tube, 'held'), tonumber(member), member)
  redis.call('ZADD', lock_held(P, tube, lock), tonumber(member), member)
  redis.call('HSET', key, 'state', 'held')
  event(P, 'held', tonumber(member), tube, key)
end

-- A reservation of a job with a lock ended: the oldest held job of the lock is
-- ready again if the limit allows (a held job flushed meanwhile is passed over).
local function holder_ended(P, tube, lock)
  local count = redis.call('DECR', lock_count(P, tube, lock))
  if count <= 0 then redis.call('DEL', lock_count(P, tube, lock)) end
  if count >= lock_limit(P, tube) then return end
  local held = lock_held(P, tube, lock)
  for _ = 1, 100 do
    local top = redis.call('ZRANGE', held, 0, 0)
    if not top[1] then return end
    redis.call('ZREM', held, top[1])
    if redis.call('ZREM', list_key(P, tube, 'held'), top[1]) == 1 then
      local key = job_key(P, tonumber(top[1]))
      make_ready(P, key, tube, top[1], redis.call('HGET', key, 'pri'))
      return
    end
  end
end

-- Take a job out of whatever list its state puts it in.
local function unlist(P, key, member, job)
  local state, tube = job.state, job.tube
  if state == 'ready' or state == 'delayed' or state == 'buried' then
    redis.call('ZREM', list_key(P, tube, state), member)
  elseif state == 'reserved' then
    redis.call('ZREM', P .. ':reserved', member)
    redis.call('ZREM', list_key(P, tube, 'reserved'), member)
    redis.call('SREM', P .. ':h:' .. job.holder, member)
    if job.lock then holder_ended(P, tube, job.lock) end
  elseif state == 'held' then
    redis.call('ZREM', list_key(P, tube, 'held'), member)
    redis.call('ZREM', lock_held(P, tube, job.lock), member)
  end
end

-- The job's fields a change needs, in one HMGET (its body only `with_body`: peek,
-- reserve-job), or nil when it is gone.
local function load(key, with_body)
  local f
  if with_body then
    f = redis.call('HMGET', key, 'tube', 'state', 'holder', 'pri', 'ttr', 'cancelled',
                   'lock', 'key', 'tags', 'body')
  else
    f = redis.call('HMGET', key, 'tube', 'state', 'holder', 'pri', 'ttr', 'cancelled',
                   'lock', 'key', 'tags')
  end
  if not f[1] then return nil end
  return {tube = f[1], state = f[2], holder = f[3] or '', pri = f[4], ttr = tonumber(f[5]),
          cancelled = f[6], lock = f[7], key = f[8], tags = f[9], body = f[10]}
end

-- A job flushed but not yet removed (flush-tube takes a tube's lists away at once
-- and removes their jobs in steps): in a list state, but not in its tube's list.
-- Nothing may see or touch it.
local function hidden(P, job, member)
  local state = job.state
  return (state == 'ready' or state == 'delayed' or state == 'buried' or
          state == 'held') and not redis.call('ZSCORE', list_key(P, job.tube, state), member)
end

-- A reserved job's key, member and fields, the fields nil unless `holder` has it
-- reserved (the commands only its holder may give: release, bury, touch, fail, ...).
local function held(P, id, holder)
  local key, member = job_key(P, id), pad(id)
  local job = load(key)
  if job == nil or job.state ~= 'reserved' or job.holder ~= holder then job = nil end
  return key, member, job
end

-- The job, unless it is gone or flushed.
local function find(P, key, member, with_body)
  local job = load(key, with_body)
  if job == nil or hidden(P, job, member) then return nil end
  return job
end

local function restart_ttr(P, key, member, job)
  local ttr = job.ttr
  if ttr < 1 then ttr = 1 end
  local deadline = id_text(now_us() + ttr * SECOND)
  redis.call('HSET', key, 'due', deadline)
  redis.call('ZADD', P .. ':reserved', deadline, member)
  redis.call('ZADD', list_key(P, job.tube, 'reserved'), deadline, member)
end

-- == Steering (protocol.md, "put-ex", "cancel-tag", "flush-tube") ==
--   P:k:<tube>:<key>  STRING  the id of the live job or retained record that holds
--                             the unique key
--   P:tag:<tag>       SET     padded ids of the live jobs with the tag
--   job hash (and record) fields: key, tags (space-separated), cancelled
local function key_name(P, tube, key) return P .. ':k:' .. tube .. ':' .. key end

-- The id of the live job or unexpired record holding `unique` in `tube`, or nil (a
-- flushed job's key is free at once).
local function key_holder(P, tube, unique, now)
  local name = key_name(P, tube, unique)
  local holder = redis.call('GET', name)
  if not holder then return nil end
  local job = load(job_key(P, tonumber(holder)))
  if job ~= nil then
    if not hidden(P, job, pad(tonumber(holder))) then return holder end
  elseif tonumber(redis.call('HGET', P .. ':r:' .. holder, 'expires') or 0) > now then
    return holder
  end
  redis.call('DEL', name)
  return nil
end

-- Drop a leaving job's tags, and its key unless a record keeps it (`job`: its
-- fields as `load` gave them, or nil to read them).
local function unindex(P, key, member, keep_key, job)
  local meta
  if job then
    meta = {job.tube, job.key, job.tags}
  else
    meta = redis.call('HMGET', key, 'tube', 'key', 'tags')
  end
  if meta[2] and not keep_key then
    local name = key_name(P, meta[1], meta[2])
    if redis.call('GET', name) == id_text(tonumber(member)) then redis.call('DEL', name) end
  end
  if meta[3] then
    for tag in string.gmatch(meta[3], '%S+') do
      redis.call('SREM', P .. ':tag:' .. tag, member)
    end
  end
end

-- == Job lifecycle (protocol.md, "Job lifecycle"): keys of its own ==
--   P:policy:<tube>  HASH  config-tube values by name; the tube is configured
--                          while it exists (policies belong to the tube name)
--   P:policies       SET   configured tube names
--   P:f:<id>         LIST  the job's last failures, each "<unix seconds> <reason>"
--   P:r:<id>         HASH  a retained record: the job's fields but the body, state
--                          completed or dead, result, expires (µs)
--   P:retained       ZSET  score the record's expiry (µs), member padded id
--   P:ext            HASH  failures retries dead_letters completions (the cluster's)
-- and in a job's hash: attempts, progress.
local FAILURES_KEPT = 5
local REASON_LIMIT = 4096


-- The tube's policy, or nil when config-tube never set anything on it.
local function policy_of(P, tube)
  local key = P .. ':policy:' .. tube
  if redis.call('EXISTS', key) == 0 then return nil end
  local v = redis.call('HMGET', key, 'max-attempts', 'backoff', 'dead-letter', 'retain')
  return {max_attempts = tonumber(v[1] or 0), backoff = v[2] or 'none',
          dead_letter = v[3] or 'bury', retain = tonumber(v[4] or 0)}
end

-- Whole seconds before the next attempt after failure number `attempts`: none,
-- fixed:S, or exp:BASE:CAP with equal jitter in [ceil(D/2), D], D = min(CAP,
-- BASE*2^(attempts-1)) (math.random is not seeded alike per call in Redis 7).
local function retry_delay(backoff, attempts)
  if backoff == 'none' then return 0 end
  local kind, a, b = string.match(backoff, '^(%a+):(%d+):?(%d*)$')
  if kind == 'fixed' then return tonumber(a) end
  local base, cap = tonumber(a), tonumber(b)
  local exponent = attempts - 1
  if exponent < 0 then exponent = 0 end
  local full = cap
  if exponent < 32 then full = math.min(cap, base * 2 ^ exponent) end
  local low = full - math.floor(full / 2)
  return math.min(full, low + math.floor(math.random() * (full - low + 1)))
end

local function bury_job(P, key, tube, member)
  local seq = id_text(redis.call('INCR', P .. ':bury_seq'))
  redis.call('HSET', key, 'state', 'buried', 'bury', seq, 'due', '0', 'holder', '')
  redis.call('HINCRBY', key, 'buries', '1')
  redis.call('ZADD', list_key(P, tube, 'buried'), seq, member)
  event(P, 'bury', tonumber(member), tube, key)
end

-- A job in no list goes back: delayed `delay` seconds, or ready.
local function schedule(P, key, tube, member, pri, delay, now)
  redis.call('HSET', key, 'delay', id_text(delay), 'holder', '')
  if delay > 0 then
    local due = id_text(now + delay * SECOND)
    redis.call('HSET', key, 'state', 'delayed', 'due', due)
    redis.call('ZADD', list_key(P, tube, 'delayed'), due, member)
  else
    make_ready(P, key, tube, member, pri)
  end
end

-- A finished job (in no list) leaves; with `retain` seconds its record stays
-- readable (job-info, peek-result) with state `state` and `result`.
-- A job in no list is gone for good (delete, cancel-tag, flush-tube: no record).
-- (`job`: the job's fields from `load`, or nil; `now` may be nil.)
local function remove_job(P, key, id, tube, now, job)
  unindex(P, key, pad(id), false, job)
  redis.call('DEL', key, P .. ':f:' .. id_text(id))
  forget_if_unused(P, tube, now)
end

local function finish(P, key, id, tube, state, result, retain, now, job)
  redis.call('HINCRBY', P .. ':t:' .. tube, 'cmd_delete', '1')
  if retain <= 0 then
    remove_job(P, key, id, tube, now, job)
    return
  end
  unindex(P, key, pad(id), true, job)   -- the record keeps its key taken
  now = now or now_us()
  local record = P .. ':r:' .. id_text(id)
  local expires = now + retain * SECOND
  redis.call('RENAME', key, record)
  redis.call('HDEL', record, 'body')
  redis.call('HSET', record, 'state', state, 'holder', '', 'expires', expires)
  if result then redis.call('HSET', record, 'result', result) end
  redis.call('ZADD', P .. ':retained', expires, pad(id))
  redis.call('ZADD', P .. ':rt:' .. tube .. ':' .. state, expires, pad(id))
  forget_if_unused(P, tube, now)
end

-- A job going to another tube takes its unique key along, unless a job there
-- holds that key already.
local function move_key(P, key, id, from, to, now)
  local unique = redis.call('HGET', key, 'key')
  if not unique then return end
  local old = key_name(P, from, unique)
  if redis.call('GET', old) == id_text(id) then redis.call('DEL', old) end
  if not key_holder(P, to, unique, now) then
    redis.call('SET', key_name(P, to, unique), id_text(id))
  end
end

local function count_failure(P, key, id, reason, now)
  redis.call('HINCRBY', key, 'attempts', 1)
  local list = P .. ':f:' .. id_text(id)
  redis.call('RPUSH', list, id_text(math.floor(now / SECOND)) .. ' ' ..
             string.sub(reason, 1, REASON_LIMIT))
  redis.call('LTRIM', list, -FAILURES_KEPT, -1)
  redis.call('HINCRBY', P .. ':ext', 'failures', 1)
end

-- A reservation of the job ended in failure (the job is in no list now): count it
-- and let its tube's policy decide (the state machine of "Job lifecycle").
-- Returns fail's reply word and argument.
local function failed(P, key, id, member, job, reason, now)
  count_failure(P, key, id, reason, now)
  event(P, 'fail', id, job.tube, key)
  local policy = policy_of(P, job.tube)
  if policy == nil then
    bury_job(P, key, job.tube, member)
    return 'BURIED'
  end
  local attempts = tonumber(redis.call('HGET', key, 'attempts'))
  if policy.max_attempts == 0 or attempts < policy.max_attempts then
    local delay = retry_delay(policy.backoff, attempts)
    redis.call('HINCRBY', P .. ':ext', 'retries', 1)
    event(P, 'retry', id, job.tube, key)
    schedule(P, key, job.tube, member, job.pri, delay, now)
    return 'RETRYING', delay
  end
  redis.call('HINCRBY', P .. ':ext', 'dead_letters', 1)
  event(P, 'dead', id, job.tube, key)
  if policy.dead_letter == 'bury' then
    bury_job(P, key, job.tube, member)
    return 'BURIED'
  end
  if policy.dead_letter == 'delete' then
    finish(P, key, id, job.tube, 'dead', nil, policy.retain, now, job)
    return 'DELETED'
  end
  local target = string.sub(policy.dead_letter, 6)     -- "tube:NAME"
  move_key(P, key, id, job.tube, target, now)
  redis.call('HSET', key, 'attempts', 0, 'tube', target)
  redis.call('HINCRBY', P .. ':t:' .. target, 'total_jobs', 1)
  redis.call('SADD', P .. ':tubes', target)
  make_ready(P, key, target, member, job.pri)
  forget_if_unused(P, job.tube, now)
  return 'MOVED', target
end

-- A reservation ended without a word from its worker (TTR, connection gone): in a
-- configured tube a counted failure, else the job is ready again as in beanstalkd
-- (a `release` event when the server released it for a closed connection).
local function ended_silently(P, key, id, member, job, reason, now, released)
  if redis.call('EXISTS', P .. ':policy:' .. job.tube) == 1 then
    failed(P, key, id, member, job, reason, now)
  else
    make_ready(P, key, job.tube, member, job.pri)
    if released then event(P, 'release', id, job.tube, key) end
  end
end

-- put(P; tube, pri, delay s, ttr s, body) -> {"OK", id}
-- A new job from put's arguments (tube, pri, delay, ttr, body) and its extra
-- fields (put-ex's), listed; its id, or nil past 2^53.
local function new_job(P, args, now, ...)
  -- (pri, delay and ttr stay the strings the node sent: see id_text)
  local tube, pri, delay, ttr, body = args[1], args[2], args[3], args[4], args[5]
  local id = redis.call('INCR', P .. ':seq')
  if id >= MAX_ID then return nil end
  local key, member = job_key(P, id), pad(id)
  local state, due = 'ready', '0'
  if tonumber(delay) > 0 then state, due = 'delayed', id_text(now + delay * SECOND) end
  -- One write (the counters, holder and bury order start absent: 0 and ''; every
  -- redis.call costs a node's put about 2 µs of the store's CPU).
  redis.call('HSET', key, 'tube', tube, 'pri', pri, 'delay', delay, 'ttr', ttr,
             'body', body, 'created', id_text(now), 'state', state, 'due', due, ...)
  -- A tube's hash exists only while the tube is in P:tubes (forget_if_unused removes
  -- both): only the first job counted in a hash may need the SADD.
  if redis.call('HINCRBY', P .. ':t:' .. tube, 'total_jobs', '1') == 1 then
    redis.call('SADD', P .. ':tubes', tube)
  end
  redis.call('INCR', P .. ':total_jobs')
  if state == 'delayed' then
    redis.call('ZADD', list_key(P, tube, 'delayed'), due, member)
  else
    redis.call('ZADD', list_key(P, tube, 'ready'), pri, member)
  end
  -- Whether events are recorded and whether a node waits on the tube: one MGET.
  local flags = redis.call('MGET', P .. ':events_on', P .. ':w:' .. tube)
  if flags[2] and state == 'ready' then redis.call('PUBLISH', P .. ':wake', tube) end
  if flags[1] then record(P, flags[1], 'put', id, tube, nil) end
  return id
end

local TOO_MANY_IDS = 'qserver: job ids have reached 2^53, past which Lua cannot hold them exactly'

local function put(keys, args)
  local id = new_job(keys[1], args, now_us())
  if id == nil then return redis.error_reply(TOO_MANY_IDS) end
  return {'OK', id}
end

-- The soonest TTR deadline (µs) of the jobs `holder` has reserved, or nil.
local function soonest_deadline(P, holder)
  local soonest
  for _, member in ipairs(redis.call('SMEMBERS', P .. ':h:' .. holder)) do
    local due = tonumber(redis.call('HGET', job_key(P, tonumber(member)), 'due'))
    if due and (soonest == nil or due < soonest) then soonest = due end
  end
  return soonest
end

local SAFETY_MARGIN_US = SECOND  -- DEADLINE_SOON: the last second of a TTR

-- The job's fields `take` needs, in this order (one HMGET).
local function take_fields(key)
  return redis.call('HMGET', key, 'lock', 'ttr', 'reserves', 'body')
end

-- `found`: the job's take_fields. Returns its body.
local function take(P, key, tube, member, holder, now, found)
  local ttr = tonumber(found[2])
  if found[1] then redis.call('INCR', lock_count(P, tube, found[1])) end
  if ttr < 1 then ttr = 1 end
  local deadline = id_text(now + ttr * SECOND)
  local reserves = 1
  if found[3] then reserves = tonumber(found[3]) + 1 end
  redis.call('HSET', key, 'state', 'reserved', 'due', deadline, 'holder', holder,
             'reserves', id_text(reserves))
  redis.call('ZADD', P .. ':reserved', deadline, member)
  redis.call('ZADD', list_key(P, tube, 'reserved'), deadline, member)
  redis.call('SADD', P .. ':h:' .. holder, member)
  redis.call('SADD', P .. ':hn:' .. node_of(holder), holder)
  event(P, 'reserve', tonumber(member), tube, key)
  return found[4]
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
-- The ready job with the smallest (pri, id) over tubes[2..] that are not paused:
-- its tube and member (nil: none), whether any of them has ready jobs, and the µs
-- until the soonest pause ends (-1: none).
local function best_ready(P, tubes, now)
  local best_tube, best_member, best_pri
  local any_ready = false
  local wait = -1
  for i = 2, #tubes do
    local tube = tubes[i]
    local top = redis.call('ZRANGE', list_key(P, tube, 'ready'), '0', '0', 'WITHSCORES')
    if top[1] then
      any_ready = true
      local until_us = unpause_at(P, tube)
      if until_us > now then
        if wait < 0 or until_us - now < wait then wait = until_us - now end
      else
        local pri = tonumber(top[2])
        if best_member == nil or pri < best_pri or (pri == best_pri and top[1] < best_member) then
          best_tube, best_member, best_pri = tube, top[1], pri
        end
      end
    end
  end
  return best_tube, best_member, any_ready, wait
end

local HOLDS_PER_CALL = 100      -- bounded work: past it the node asks again at once

local function reserve(keys, args)
  local P, holder = keys[1], args[1]
  local now = now_us()
  local due = -1                  -- µs until a delayed job of the tubes is due
  for i = 2, #args do
    local wait = promote_due(P, args[i], now)
    if wait >= 0 and (due < 0 or wait < due) then due = wait end
  end
  local best_tube, best_member, any_ready, wait = best_ready(P, args, now)
  -- A best job whose lock is full is held and the next best is taken.
  local key, found
  for _ = 1, HOLDS_PER_CALL do
    if best_member == nil then break end
    key = job_key(P, tonumber(best_member))
    found = take_fields(key)
    local lock = found[1]
    if not lock or lock_free(P, best_tube, lock) then break end
    hold(P, key, best_tube, best_member, lock)
    best_tube, best_member = best_ready(P, args, now)
    if best_member ~= nil and _ == HOLDS_PER_CALL then return {'NONE', 0} end
  end
  if best_member ~= nil then
    redis.call('ZREM', list_key(P, best_tube, 'ready'), best_member)
    return {'OK', tonumber(best_member),
            take(P, key, best_tube, best_member, holder, now, found)}
  end
  -- None (DEADLINE_SOON needs no ready job in any of the tubes, paused or not).
  if due >= 0 and (wait < 0 or due < wait) then wait = due end
  local soonest = soonest_deadline(P, holder)
  if soonest and not any_ready and now >= soonest - SAFETY_MARGIN_US then
    return {'DEADLINE_SOON'}
  end
  if soonest then
    local margin = soonest - SAFETY_MARGIN_US - now
    if margin < 0 then margin = 0 end
    if wait < 0 or margin < wait then wait = margin end
  end
  return {'NONE', in_ms(wait)}
end

-- reserve_wait(P; holder, tube...): reserve, for a reserve that waits when it
-- finds nothing: then the holder's node is marked as waiting on the tubes in the
-- same step (see "Wake-ups"), so that any job made ready after it wakes the node.
local function reserve_wait(keys, args)
  local reply = reserve(keys, args)
  if reply[1] == 'NONE' then
    local node = node_of(args[1])
    for i = 2, #args do mark_waiting(keys[1], node, args[i]) end
  end
  return reply
end

-- unwait(P; node, tube...) -> {"OK"}: no reserve of the node waits on the tubes now.
local function unwait(keys, args)
  for i = 2, #args do unmark_waiting(keys[1], args[1], args[i]) end
  return {'OK'}
end

-- reserve_job(P; id, holder) -> {"OK", id, body} | {"NOT_FOUND"}: a ready, delayed or
-- buried job by id, whatever its tube or a pause; never DEADLINE_SOON.
local function reserve_job(keys, args)
  local P, id, holder = keys[1], tonumber(args[1]), args[2]
  local key, member = job_key(P, id), pad(id)
  local job = find(P, key, member)
  if job == nil or job.state == 'reserved' or job.state == 'held' or
      (job.lock and not lock_free(P, job.tube, job.lock)) then
    return {'NOT_FOUND'}
  end
  unlist(P, key, member, job)
  return {'OK', id, take(P, key, job.tube, member, holder, now_us(), take_fields(key))}
end

-- pause(P; tube, seconds) -> {"OK"}: reserves skip the tube for `seconds` (0: the
-- pause ends now); waiting reserves hear of the end through their wait hint.
local function pause(keys, args)
  local P, tube, seconds = keys[1], args[1], tonumber(args[2])
  local hash = P .. ':t:' .. tube
  redis.call('HSET', hash, 'pause', seconds, 'unpause', now_us() + seconds * SECOND)
  redis.call('HINCRBY', hash, 'cmd_pause', 1)
  redis.call('SADD', P .. ':tubes', tube)
  if seconds == 0 then wake(P, tube) end
  return {'OK'}
end

-- tube_counts(P; tube...) -> {"OK", now, then per tube: urgent ready reserved delayed
-- buried total_jobs cmd_delete cmd_pause pause unpause exists}: what stats and
-- stats-tube show (delayed jobs that are due count as ready).
local function tube_counts(keys, args)
  local P = keys[1]
  local now = now_us()
  local out = {'OK', now}
  for i = 1, #args do
    local tube = args[i]
    promote_due(P, tube, now)
    local ready = list_key(P, tube, 'ready')
    local hash = redis.call('HMGET', P .. ':t:' .. tube, 'reserved', 'total_jobs',
                            'cmd_delete', 'cmd_pause', 'pause', 'unpause')
    table.insert(out, redis.call('ZCOUNT', ready, '-inf', 1023))
    table.insert(out, redis.call('ZCARD', ready))
    table.insert(out, redis.call('ZCARD', list_key(P, tube, 'reserved')))
    table.insert(out, redis.call('ZCARD', list_key(P, tube, 'delayed')))
    table.insert(out, redis.call('ZCARD', list_key(P, tube, 'buried')))
    for j = 2, 6 do table.insert(out, tonumber(hash[j] or 0)) end
    table.insert(out, redis.call('SISMEMBER', P .. ':tubes', tube))
  end
  return out
end

-- tubes(P) -> {"OK", name...}: the tubes that exist (see forget_if_unused).
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
  if find(P, job_key(P, id), pad(id)) == nil then return {'NOT_FOUND'} end
  local fields = redis.call('HGETALL', job_key(P, id))
  local out = {'OK', now_us()}
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
  local job = find(P, key, pad(id))
  if job == nil or (job.state == 'reserved' and job.holder ~= holder) then
    return {'NOT_FOUND'}
  end
  event(P, 'delete', id, job.tube, key)
  unlist(P, key, pad(id), job)
  finish(P, key, id, job.tube, nil, nil, 0, nil, job)
  return {'OK'}
end

-- release(P; id, holder, pri, delay s) -> {"OK"} | {"NOT_FOUND"}
local function release(keys, args)
  local P, id, holder, pri, delay = keys[1], tonumber(args[1]), args[2], args[3],
    tonumber(args[4])
  local key, member, job = held(P, id, holder)
  if job == nil then return {'NOT_FOUND'} end
  unlist(P, key, member, job)
  redis.call('HSET', key, 'pri', pri)
  redis.call('HINCRBY', key, 'releases', '1')
  schedule(P, key, job.tube, member, pri, delay, now_us())
  event(P, 'release', id, job.tube, key)
  return {'OK'}
end

-- bury(P; id, holder, pri) -> {"OK"} | {"NOT_FOUND"}
local function bury(keys, args)
  local P, id, holder, pri = keys[1], tonumber(args[1]), args[2], args[3]
  local key, member, job = held(P, id, holder)
  if job == nil then return {'NOT_FOUND'} end
  unlist(P, key, member, job)
  redis.call('HSET', key, 'pri', pri)
  bury_job(P, key, job.tube, member)
  return {'OK'}
end

-- touch(P; id, holder) -> {"OK"} | {"NOT_FOUND"}: the TTR starts again.
local function touch(keys, args)
  local P, id, holder = keys[1], tonumber(args[1]), args[2]
  local key, member, job = held(P, id, holder)
  if job == nil then return {'NOT_FOUND'} end
  if job.cancelled then return {'CANCELLED'} end
  restart_ttr(P, key, member, job)
  return {'OK'}
end

local function kick_one(P, key, member, job)
  unlist(P, key, member, job)
  redis.call('HINCRBY', key, 'kicks', '1')
  make_ready(P, key, job.tube, member, job.pri)
  event(P, 'kick', tonumber(member), job.tube, key)
end

-- kick(P; tube, bound, list) -> {"OK", n, list}: buried jobs first (oldest first),
-- else delayed ones, at most 1000 a call; `list` ("" the first time) keeps the
-- calls of one kick on the list the first one chose.
local function kick(keys, args)
  local P, tube, bound, list = keys[1], args[1], tonumber(args[2]), args[3]
  promote_due(P, tube, now_us())
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
  local job = find(P, key, pad(id))
  if job == nil or (job.state ~= 'buried' and job.state ~= 'delayed') then
    return {'NOT_FOUND'}
  end
  kick_one(P, key, pad(id), job)
  return {'OK'}
end

-- peek(P; id) -> {"OK", id, body} | {"NOT_FOUND"}
local function peek(keys, args)
  local P, id = keys[1], tonumber(args[1])
  local job = find(P, job_key(P, id), pad(id), true)
  if job == nil then return {'NOT_FOUND'} end
  return {'OK', id, job.body}
end

-- peek_list(P; tube, "ready"|"delayed"|"buried") -> {"OK", id, body} | {"NOT_FOUND"}
local function peek_list(keys, args)
  local P, tube, list = keys[1], args[1], args[2]
  promote_due(P, tube, now_us())
  local top = redis.call('ZRANGE', list_key(P, tube, list), 0, 0)
  if not top[1] then return {'NOT_FOUND'} end
  local id = tonumber(top[1])
  return {'OK', id, redis.call('HGET', job_key(P, id), 'body')}
end

-- Flushes started `age` µs ago or more and not finished: their node may be gone,
-- and any node finishes them (flush_step).
local function orphan_flushes(P, now, age)
  local out = {}
  for _, flush in ipairs(redis.call('SMEMBERS', P .. ':flushes')) do
    local started = tonumber(redis.call('HGET', P .. ':fl:' .. flush, 'started') or 0)
    if now - started >= age then table.insert(out, flush) end
  end
  return out
end

-- Retained records past their expiry go (at most `limit` per call).
local function expire_records(P, now, limit)
  local gone = redis.call('ZRANGEBYSCORE', P .. ':retained', '-inf', now, 'LIMIT', 0, limit)
  for _, member in ipairs(gone) do
    local id = id_text(tonumber(member))
    local record = P .. ':r:' .. id
    local found = redis.call('HMGET', record, 'tube', 'state', 'key')
    if found[3] and redis.call('GET', key_name(P, found[1], found[3])) == id then
      redis.call('DEL', key_name(P, found[1], found[3]))
    end
    if found[1] then redis.call('ZREM', P .. ':rt:' .. found[1] .. ':' .. found[2], member) end
    redis.call('DEL', record, P .. ':f:' .. id)
    redis.call('ZREM', P .. ':retained', member)
  end
end

-- expire(P; limit, orphan age µs) -> {"OK", n, ms, flush...}: reserved jobs past
-- their TTR go back to ready (at most `limit` per call), how long until the next
-- TTR runs out (-1: no job is reserved), and the flushes left unfinished that
-- long; idempotent, any node may run it.
local function expire(keys, args)
  local P, limit = keys[1], tonumber(args[1])
  local now = now_us()
  local due = redis.call('ZRANGEBYSCORE', P .. ':reserved', '-inf', id_text(now), 'LIMIT', '0',
                         id_text(limit))
  for _, member in ipairs(due) do
    local key = job_key(P, tonumber(member))
    local job = load(key)
    unlist(P, key, member, job)
    redis.call('HINCRBY', key, 'timeouts', '1')
    redis.call('INCR', P .. ':job_timeouts')
    event(P, 'timeout', tonumber(member), job.tube, key)
    ended_silently(P, key, tonumber(member), member, job, 'TTR expired', now, false)
  end
  expire_records(P, now, limit)
  local next = redis.call('ZRANGE', P .. ':reserved', '0', '0', 'WITHSCORES')
  local wait = -1
  if next[1] then
    wait = tonumber(next[2]) - now
    if wait < 0 then wait = 0 end
  end
  local out = {'OK', #due, in_ms(wait)}
  for _, flush in ipairs(orphan_flushes(P, now, tonumber(args[2]))) do
    table.insert(out, flush)
  end
  return out
end

local function release_jobs_of(P, holder)
  local members = redis.call('SMEMBERS', P .. ':h:' .. holder)
  for _, member in ipairs(members) do
    local key = job_key(P, tonumber(member))
    local job = load(key)
    if job ~= nil and job.state == 'reserved' and job.holder == holder then
      unlist(P, key, member, job)
      ended_silently(P, key, tonumber(member), member, job, 'connection closed', now_us(),
                     true)
    end
  end
  redis.call('DEL', P .. ':h:' .. holder)
  redis.call('SREM', P .. ':hn:' .. node_of(holder), holder)
  return #members
end

-- release_holder(P; holder) -> {"OK", n}: a closed connection's jobs are ready again.
local function release_holder(keys, args)
  return {'OK', release_jobs_of(keys[1], args[1])}
end

-- A node whose lease ran out is gone (killed, or cut off from the store for longer
-- than its lease): its connections' jobs are ready again, as if they had closed,
-- and its tubes are forgotten unless something else keeps them.
local function reap_node(P, node, now)
  for _, holder in ipairs(redis.call('SMEMBERS', P .. ':hn:' .. node)) do
    release_jobs_of(P, holder)
  end
  redis.call('DEL', P .. ':hn:' .. node)
  local tubes = redis.call('SMEMBERS', P .. ':n:' .. node)
  redis.call('DEL', P .. ':n:' .. node)
  redis.call('ZREM', P .. ':nodes', node)
  for _, tube in ipairs(tubes) do
    unmark_waiting(P, node, tube)
    forget_if_unused(P, tube, now)
  end
end

-- beat(P; node, lease ms, tube...) -> {"OK", reaped}: the node is alive for `lease`
-- ms more and its connections refer to exactly `tube...` (tubes it no longer names
-- may be forgotten); nodes whose lease ran out are reaped (a few per call).
local function beat(keys, args)
  local P, node, lease = keys[1], args[1], tonumber(args[2])
  local now = now_us()
  local dead = redis.call('ZRANGEBYSCORE', P .. ':nodes', '-inf', now - 1, 'LIMIT', 0, 10)
  for _, gone in ipairs(dead) do
    if gone ~= node then reap_node(P, gone, now) end
  end
  redis.call('ZADD', P .. ':nodes', now + lease * 1000, node)
  local set = P .. ':n:' .. node
  local before = redis.call('SMEMBERS', set)
  redis.call('DEL', set)
  for i = 3, #args do
    redis.call('SADD', set, args[i])
    redis.call('SADD', P .. ':tubes', args[i])
  end
  for _, tube in ipairs(before) do forget_if_unused(P, tube, now) end
  return {'OK', #dead}
end

-- refer(P; node, tube) -> {"OK"}: a connection of the node uses or watches the tube
-- (the first one of the node to do so).
local function refer(keys, args)
  local P, node, tube = keys[1], args[1], args[2]
  redis.call('SADD', P .. ':n:' .. node, tube)
  redis.call('SADD', P .. ':tubes', tube)
  return {'OK'}
end

-- unrefer(P; node, tube) -> {"OK"}: the node's last connection to refer to the
-- tube stopped; the tube is forgotten if nothing else keeps it.
local function unrefer(keys, args)
  local P, node, tube = keys[1], args[1], args[2]
  redis.call('SREM', P .. ':n:' .. node, tube)
  forget_if_unused(P, tube, now_us())
  return {'OK'}
end

-- == The lifecycle commands ==

-- config(P; tube, name, value) -> {"OK"}: one policy value (checked by the node).
local function config(keys, args)
  local P, tube = keys[1], args[1]
  redis.call('HSET', P .. ':policy:' .. tube, args[2], args[3])
  redis.call('SADD', P .. ':policies', tube)
  return {'OK'}
end

-- policy(P; tube) -> {"OK", name, value, ...}: the values set (none: unconfigured).
local function policy(keys, args)
  local out = {'OK'}
  for _, value in ipairs(redis.call('HGETALL', keys[1] .. ':policy:' .. args[1])) do
    table.insert(out, value)
  end
  return out
end

-- fail(P; id, holder, reason) -> {"OK", word[, argument]} | {"NOT_FOUND"}
local function fail(keys, args)
  local P, id, holder = keys[1], tonumber(args[1]), args[2]
  local key, member, job = held(P, id, holder)
  if job == nil then return {'NOT_FOUND'} end
  unlist(P, key, member, job)
  local word, argument = failed(P, key, id, member, job, args[3], now_us())
  return {'OK', word, argument}
end

-- complete(P; id, holder, result) -> {"OK"} | {"NOT_FOUND"}: removed as by delete;
-- the record is kept the tube's `retain` seconds.
local function complete(keys, args)
  local P, id, holder = keys[1], tonumber(args[1]), args[2]
  local key, member, job = held(P, id, holder)
  if job == nil then return {'NOT_FOUND'} end
  if job.cancelled then return {'CANCELLED'} end
  event(P, 'complete', id, job.tube, key)
  unlist(P, key, member, job)
  redis.call('HINCRBY', P .. ':ext', 'completions', 1)
  local policy = policy_of(P, job.tube)
  finish(P, key, id, job.tube, 'completed', args[3], policy and policy.retain or 0, now_us(),
         job)
  return {'OK'}
end

-- progress(P; id, holder, data) -> {"OK"} | {"NOT_FOUND"}: kept, and the TTR starts
-- again as by touch.
local function progress(keys, args)
  local P, id, holder = keys[1], tonumber(args[1]), args[2]
  local key, member, job = held(P, id, holder)
  if job == nil then return {'NOT_FOUND'} end
  if job.cancelled then return {'CANCELLED'} end
  redis.call('HSET', key, 'progress', args[3])
  restart_ttr(P, key, member, job)
  event(P, 'progress', id, job.tube, key)
  return {'OK'}
end

-- job_info(P; id) -> {"OK", now µs, max_attempts, {field, value, ...}, {failure...}}
-- | {"NOT_FOUND"}: a live job, or a retained record until it expires.
local function job_info(keys, args)
  local P, id = keys[1], tonumber(args[1])
  local now = now_us()
  local fields = {}
  if find(P, job_key(P, id), pad(id)) ~= nil then
    fields = redis.call('HGETALL', job_key(P, id))
  end
  if #fields == 0 then
    local record = P .. ':r:' .. id_text(id)
    if tonumber(redis.call('HGET', record, 'expires') or 0) <= now then
      return {'NOT_FOUND'}
    end
    fields = redis.call('HGETALL', record)
  end
  local tube
  for i = 1, #fields, 2 do
    if fields[i] == 'tube' then tube = fields[i + 1] end
  end
  local policy = policy_of(P, tube)
  return {'OK', now, policy and policy.max_attempts or 0, fields,
          redis.call('LRANGE', P .. ':f:' .. id_text(id), 0, -1)}
end

-- peek_result(P; id) -> {"OK", id, result} | {"NOT_FOUND"}
local function peek_result(keys, args)
  local P, id = keys[1], tonumber(args[1])
  local record = P .. ':r:' .. id_text(id)
  local found = redis.call('HMGET', record, 'expires', 'result')
  if tonumber(found[1] or 0) <= now_us() or not found[2] then return {'NOT_FOUND'} end
  return {'OK', id, found[2]}
end

-- ext_totals(P) -> {"OK", failures, retries, dead_letters, completions, retained,
-- configured tubes}: the cluster's figures of stats-ext.
local function ext_totals(keys, args)
  local P = keys[1]
  local v = redis.call('HMGET', P .. ':ext', 'failures', 'retries', 'dead_letters',
                       'completions', 'duplicates', 'flushed', 'cancelled_removed',
                       'cancelled_flagged')
  local retained = redis.call('ZCOUNT', P .. ':retained', '(' .. id_text(now_us()), '+inf')
  return {'OK', tonumber(v[1] or 0), tonumber(v[2] or 0), tonumber(v[3] or 0),
          tonumber(v[4] or 0), retained, redis.call('SCARD', P .. ':policies'),
          tonumber(v[5] or 0), tonumber(v[6] or 0), tonumber(v[7] or 0),
          tonumber(v[8] or 0)}
end

-- == The steering commands ==

-- put_ex(P; tube, pri, delay, ttr, body, key, tags, lock) -> {"OK", id} |
-- {"DUPLICATE", id}: key and lock "" for none, tags space-separated ("" for
-- none); the id is taken only when the job is made.
local function put_ex(keys, args)
  local P, tube, unique, tags, lock = keys[1], args[1], args[6], args[7], args[8]
  local now = now_us()
  if unique ~= '' then
    local holder = key_holder(P, tube, unique, now)
    if holder then
      redis.call('HINCRBY', P .. ':ext', 'duplicates', 1)
      return {'DUPLICATE', tonumber(holder)}
    end
  end
  local extra = {}
  if unique ~= '' then table.insert(extra, 'key'); table.insert(extra, unique) end
  if tags ~= '' then table.insert(extra, 'tags'); table.insert(extra, tags) end
  if lock ~= '' then table.insert(extra, 'lock'); table.insert(extra, lock) end
  local id = new_job(P, args, now, unpack(extra))
  if id == nil then return redis.error_reply(TOO_MANY_IDS) end
  if unique ~= '' then redis.call('SET', key_name(P, tube, unique), id_text(id)) end
  for tag in string.gmatch(tags, '%S+') do
    redis.call('SADD', P .. ':tag:' .. tag, pad(id))
  end
  return {'OK', id}
end

-- cancel_tag(P; tag) -> {"OK", removed, flagged}: the tag's jobs that are not
-- reserved are removed, the reserved ones flagged (touch, progress and complete
-- then answer CANCELLED). One atomic step for the whole tag.
local function cancel_tag(keys, args)
  local P = keys[1]
  local now = now_us()
  local removed, flagged = 0, 0
  for _, member in ipairs(redis.call('SMEMBERS', P .. ':tag:' .. args[1])) do
    local id = tonumber(member)
    local key = job_key(P, id)
    local job = find(P, key, member)
    if job ~= nil then event(P, 'cancel', id, job.tube, key) end
    if job ~= nil and job.state == 'reserved' then
      redis.call('HSET', key, 'cancelled', 1)
      flagged = flagged + 1
    elseif job ~= nil then
      unlist(P, key, member, job)
      remove_job(P, key, id, job.tube, now, job)
      removed = removed + 1
    end
  end
  redis.call('HINCRBY', P .. ':ext', 'cancelled_removed', removed)
  redis.call('HINCRBY', P .. ':ext', 'cancelled_flagged', flagged)
  return {'OK', removed, flagged}
end

-- flush_start(P; tube) -> {"OK", flush, n}: the tube's ready, delayed, buried and
-- held lists are taken away at once (O(1) renames: from now on their jobs are hidden,
-- see `hidden`); flush_step removes them. flush 0: there was nothing.
local FLUSH_LISTS = {'ready', 'delayed', 'buried', 'held'}

local function flush_start(keys, args)
  local P, tube = keys[1], args[1]
  local now = now_us()
  promote_due(P, tube, now)
  if redis.call('SISMEMBER', P .. ':tubes', tube) == 1 then
    event(P, 'flush', 0, tube, nil)       -- one event for the lot
  end
  local flush = redis.call('INCR', P .. ':flush_seq')
  local count = 0
  for _, list in ipairs(FLUSH_LISTS) do
    local n = redis.call('ZCARD', list_key(P, tube, list))
    if n > 0 then
      redis.call('RENAME', list_key(P, tube, list), P .. ':fl:' .. flush .. ':' .. list)
      count = count + n
    end
  end
  if count == 0 then return {'OK', 0, 0} end
  redis.call('HSET', P .. ':fl:' .. flush, 'tube', tube, 'started', now)
  redis.call('SADD', P .. ':flushes', flush)
  redis.call('HINCRBY', P .. ':ext', 'flushed', count)
  return {'OK', flush, count}
end

-- flush_step(P; flush, limit) -> {"OK", left}: up to `limit` of the flush's jobs
-- are removed (no record, no cmd-delete); idempotent, any node may run it.
local function flush_step(keys, args)
  local P, flush, limit = keys[1], args[1], tonumber(args[2])
  local tube = redis.call('HGET', P .. ':fl:' .. flush, 'tube')
  if not tube then return {'OK', 0} end
  local now = now_us()
  local left = 0
  for _, list in ipairs(FLUSH_LISTS) do
    local name = P .. ':fl:' .. flush .. ':' .. list
    for _, member in ipairs(redis.call('ZRANGE', name, 0, limit - 1)) do
      local id = tonumber(member)
      redis.call('ZREM', name, member)
      if list == 'held' then
        local lock = redis.call('HGET', job_key(P, id), 'lock')
        if lock then redis.call('ZREM', lock_held(P, tube, lock), member) end
      end
      remove_job(P, job_key(P, id), id, tube, now)
      limit = limit - 1
    end
    left = left + redis.call('ZCARD', name)
  end
  if left == 0 then
    redis.call('DEL', P .. ':fl:' .. flush)
    redis.call('SREM', P .. ':flushes', flush)
    forget_if_unused(P, tube, now)
  end
  return {'OK', left}
end

-- The zset of a tube's jobs in one state, in the state's own order (list-jobs).
local function state_list(P, tube, letter)
  if letter == 'r' then return list_key(P, tube, 'ready') end
  if letter == 'd' then return list_key(P, tube, 'delayed') end
  if letter == 's' then return list_key(P, tube, 'reserved') end
  if letter == 'b' then return list_key(P, tube, 'buried') end
  if letter == 'h' then return list_key(P, tube, 'held') end
  if letter == 'c' then return P .. ':rt:' .. tube .. ':completed' end
  return P .. ':rt:' .. tube .. ':dead'
end

-- The rank just after (score, id) in a zset, whether or not that entry is still
-- there (a cursor's job may have gone): added for a moment if it is not.
local function rank_after(name, score, member)
  local added = redis.call('ZADD', name, 'NX', score, member)
  local rank = redis.call('ZRANK', name, member)
  if added == 1 then redis.call('ZREM', name, member) end
  return rank + 1
end

-- list_jobs(P; tube, letters, after letter, after score, after id, limit) ->
-- {"OK", now µs, next ("" on the last page), {letter, fields...}...}: one page of
-- a tube's jobs, walking the states named by `letters` in order.
local function list_jobs(keys, args)
  local P, tube, letters, after, limit = keys[1], args[1], args[2], args[3], tonumber(args[6])
  local now = now_us()
  promote_due(P, tube, now)
  local out, shown, last = {'OK', now, ''}, 0, nil
  local started = after == ''
  for i = 1, #letters do
    local letter = string.sub(letters, i, i)
    local name = state_list(P, tube, letter)
    local first = 0
    if letter == after then
      first = rank_after(name, args[4], pad(tonumber(args[5])))
      started = true
    end
    if started and redis.call('EXISTS', name) == 1 then
      local found = redis.call('ZRANGE', name, first, first + limit - shown - 1, 'WITHSCORES')
      for j = 1, #found, 2 do
        local id = tonumber(found[j])
        local key = job_key(P, id)
        if letter == 'c' or letter == 'x' then key = P .. ':r:' .. id_text(id) end
        local f = redis.call('HMGET', key, 'state', 'pri', 'created', 'delay', 'due',
                             'expires', 'attempts', 'key', 'tags')
        table.insert(out, {letter, id, f[1], f[2], f[3], f[4], f[5] or 0, f[6] or 0,
                           f[7] or 0, f[8] or '', f[9] or '',
                           redis.call('HSTRLEN', key, 'body')})
        shown = shown + 1
        last = {letter, found[j + 1], id, name, first + (j + 1) / 2}
      end
      if shown == limit then
        local more = redis.call('ZCARD', name) > last[5]
        for k = i + 1, #letters do
          if more then break end
          more = redis.call('EXISTS', state_list(P, tube, string.sub(letters, k, k))) == 1
        end
        if more then out[3] = last[1] .. ':' .. last[2] .. ':' .. id_text(last[3]) end
        return out
      end
    end
  end
  return out
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
  local P, margin, seen = keys[1], tonumber(args[1]), tonumber(args[2] or '0')
  -- The counter is never below an id a node has handed out (a promoted replica
  -- may lack the last INCRs, or the whole counter).
  local seq = tonumber(redis.call('GET', P .. ':seq') or '0')
  if seq < seen then
    redis.call('SET', P .. ':seq', id_text(seen))
    seq = seen
  end
  local info = redis.call('INFO', 'replication')
  local replid = string.match(info, 'master_replid:(%x+)')
  if replid == nil then
    return redis.error_reply('qserver: no master_replid in INFO replication')
  end
  if redis.call('GET', P .. ':replid') == replid then
    return {'OK', 0, replid}
  end
  redis.call('SET', P .. ':replid', replid)
  if seq == 0 then          -- a new store: ids start at 1, as in beanstalkd
    return {'OK', 0, replid}
  end
  redis.call('INCRBY', P .. ':seq', margin)
  return {'OK', margin, replid}
end
-- ---------------------------------------------------------- end of ids after a failover

-- events_on(P; window, ttl ms) -> {"OK", last seq}: record events (again) for `ttl`
-- ms, keeping about `window` of them; the last sequence number given so far.
local function events_on(keys, args)
  local P = keys[1]
  redis.call('SET', P .. ':events_on', args[1], 'PX', args[2])
  local seq = redis.call('GET', P .. ':event_seq')
  if not seq then
    seq = now_us()
    redis.call('SET', P .. ':event_seq', id_text(seq))
  end
  return {'OK', tonumber(seq)}
end

-- (A plain loop: the library's loading code may not use pairs or ipairs.)
local WRITING = {
  {'qs_put', put}, {'qs_reserve', reserve}, {'qs_reserve_wait', reserve_wait},
  {'qs_unwait', unwait}, {'qs_reserve_job', reserve_job},
  {'qs_delete', delete}, {'qs_release', release}, {'qs_bury', bury},
  {'qs_touch', touch}, {'qs_kick', kick}, {'qs_kick_job', kick_job},
  {'qs_peek_list', peek_list}, {'qs_expire', expire},
  {'qs_release_holder', release_holder}, {'qs_pause', pause},
  {'qs_tube_counts', tube_counts}, {'qs_beat', beat}, {'qs_refer', refer},
  {'qs_unrefer', unrefer}, {'qs_config', config}, {'qs_fail', fail},
  {'qs_complete', complete}, {'qs_progress', progress}, {'qs_put_ex', put_ex},
  {'qs_cancel_tag', cancel_tag}, {'qs_flush_start', flush_start},
  {'qs_flush_step', flush_step}, {'qs_list_jobs', list_jobs},
  {'qs_events_on', events_on}}
-- Read-only: allowed on a replica too.
local READING = {{'qs_peek', peek}, {'qs_tubes', tubes}, {'qs_stats_job', stats_job},
                 {'qs_totals', totals}, {'qs_policy', policy}, {'qs_job_info', job_info},
                 {'qs_peek_result', peek_result}, {'qs_ext_totals', ext_totals}}
for i = 1, #WRITING do
  redis.register_function(WRITING[i][1], WRITING[i][2])
end
for i = 1, #READING do
  redis.register_function{function_name = READING[i][1], callback = READING[i][2],
                          flags = {'no-writes'}}
end
redis.register_function('qs_fence', fence)
