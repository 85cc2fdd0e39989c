"""beanstalkd's little set: a list where removal moves the last item into the hole.

beanstalkd keeps tubes, watch lists and waiting connections in this structure, and
its order is visible on the wire (list-tubes, list-tubes-watched, which waiting
client gets a job). Keeping the same structure keeps qserver's answers identical.
Removal is O(1) through an index map. Imports: stdlib only.
"""


class SwapSet:
    __slots__ = ("items", "index", "cursor")

    def __init__(self, items=()):
        self.items = []
        self.index = {}
        self.cursor = 0
        for item in items:
            self.append(item)

    def __len__(self):
        return len(self.items)

    def __iter__(self):
        return iter(self.items)

    def __contains__(self, item):
        return item in self.index

    def append(self, item) -> None:
        self.index[item] = len(self.items)
        self.items.append(item)

    def remove(self, item) -> bool:
        i = self.index.pop(item, None)
        if i is None:
            return False
        last = self.items.pop()
        if i < len(self.items):
            self.items[i] = last
            self.index[last] = i
        return True

    def take(self):
        """Remove and return the item at a cursor that moves on each time."""
        self.cursor %= len(self.items)
        item = self.items[self.cursor]
        self.remove(item)
        self.cursor += 1
        return item
