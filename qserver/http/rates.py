"""The rates the dashboard charts: this node's put, reserve, delete and fail commands
per second over the last five minutes, sampled from the command counters every
INTERVAL seconds (one timer; nothing is counted on the command path for it).
Imports: stdlib.
"""

import collections

INTERVAL = 2.0
SAMPLES = 150                   # 5 minutes
# Chart line -> the command counters (`stats`, `stats-ext`) it adds up.
LINES = {"put": ("put", "put-ex"),
         "reserve": ("reserve", "reserve-with-timeout", "reserve-job"),
         "delete": ("delete", "complete"),
         "fail": ("fail",)}


class Rates:
    def __init__(self, loop, counts: dict):
        self.loop = loop
        self.counts = counts
        self.totals = collections.deque(maxlen=SAMPLES + 1)     # one tuple per sample
        self.timer = None
        self._sample()

    def _sample(self) -> None:
        counts = self.counts
        self.totals.append(tuple(sum(counts.get(name, 0) for name in names)
                                 for names in LINES.values()))
        self.timer = self.loop.call_later(INTERVAL, self._sample)

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def series(self) -> dict:
        """{"interval": s, "put": [per-second rates, oldest first], ...}."""
        totals = list(self.totals)
        steps = list(zip(totals, totals[1:]))
        series = {"interval": INTERVAL}
        for column, line in enumerate(LINES):
            series[line] = [round((after[column] - before[column]) / INTERVAL, 1)
                            for before, after in steps]
        return series
