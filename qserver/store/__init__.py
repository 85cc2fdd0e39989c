"""Where the queue's state lives when it is shared by several nodes (issue 12).

The default store is the in-memory engine with its own log (`engine`, `journal`):
synchronous, embedded, and untouched by anything here. `redis` keeps every job in
Redis (or Valkey) and changes it with one atomic Redis Function per operation
(`functions.lua`), so several qserver nodes can serve the same tubes. Nothing here
is imported unless a store is asked for (redis-py alone takes about 100 ms to
import). `commands` is the server's command table in store mode; it serves the core
beanstalkd commands so far (protocol.md, "Several nodes").
"""
