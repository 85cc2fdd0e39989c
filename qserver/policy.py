"""Tube policies: what happens to a job after a counted failure (protocol.md,
"config-tube" and "Job lifecycle").

A `Policy` is an immutable value; setting one name gives a new policy. It makes pure
decisions (the delay before the next attempt, whether attempts are used up) and
keeps no state of its own. Parsing and printing the `config-tube` values live here
so the command handler, the log and the YAML reply agree on one spelling.
Imports: `wire` (the tube-name rule), `errors`.
"""

from qserver.errors import BadFormat
from qserver.wire import parse_tube

U32_MAX = 0xFFFFFFFF

BACKOFF_NONE, BACKOFF_FIXED, BACKOFF_EXP = "none", "fixed", "exp"
DEAD_BURY, DEAD_DELETE, DEAD_TUBE = "bury", "delete", "tube"

NAMES = ("max-attempts", "backoff", "dead-letter", "retain", "lock-limit")


class PolicyError(ValueError):
    """A config-tube name or value that cannot be used (BAD_FORMAT)."""


class Policy:
    __slots__ = ("max_attempts", "backoff", "dead_letter", "retain", "lock_limit")

    def __init__(self, max_attempts=0, backoff=(BACKOFF_NONE,), dead_letter=(DEAD_BURY,),
                 retain=0, lock_limit=1):
        self.max_attempts = max_attempts
        self.backoff = backoff            # ("none",), ("fixed", S) or ("exp", BASE, CAP)
        self.dead_letter = dead_letter    # ("bury",), ("delete",) or ("tube", NAME)
        self.retain = retain              # seconds a finished job's record is kept
        self.lock_limit = lock_limit      # jobs with one lock key reserved at once

    def __eq__(self, other):
        return isinstance(other, Policy) and self.pairs() == other.pairs()

    def with_value(self, tube: str, name: str, value: str) -> "Policy":
        """A copy with one value changed; PolicyError when it cannot be."""
        fields = {slot: getattr(self, slot) for slot in Policy.__slots__}
        if name == "max-attempts":
            fields["max_attempts"] = _count(value)
        elif name == "backoff":
            fields["backoff"] = _backoff(value)
        elif name == "dead-letter":
            fields["dead_letter"] = _dead_letter(value, tube)
        elif name == "retain":
            fields["retain"] = _count(value)
        elif name == "lock-limit":
            fields["lock_limit"] = _count(value)
            if not fields["lock_limit"]:
                raise PolicyError("lock-limit must be at least 1")
        else:
            raise PolicyError(f"unknown policy name {name!r}")
        return Policy(**fields)

    def pairs(self) -> list:
        """(name, value text) in the order `config-tube` prints them."""
        return [
            ("max-attempts", str(self.max_attempts)),
            ("backoff", ":".join(str(part) for part in self.backoff)),
            ("dead-letter", ":".join(self.dead_letter)),
            ("retain", str(self.retain)),
            ("lock-limit", str(self.lock_limit)),
        ]

    def to_text(self) -> str:
        """The policy as `name value` lines (the log's POLICY payload)."""
        return "".join(f"{name} {value}\n" for name, value in self.pairs())

    @classmethod
    def from_text(cls, tube: str, text: str) -> "Policy":
        policy = cls()
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            policy = policy.with_value(tube, name, value)
        return policy

    # -- decisions --------------------------------------------------------------

    def exhausted(self, attempts: int) -> bool:
        """Whether a job with this many counted failures goes to its dead letter."""
        return 0 < self.max_attempts <= attempts

    def retry_delay(self, attempts: int, rand) -> int:
        """Whole seconds before the next attempt after failure number `attempts`.

        `rand(a, b)` gives a random int in [a, b] (random.randint; injected so tests
        can pin the jitter). Exponential backoff uses equal jitter: a random delay
        in [ceil(D/2), D] with D = min(CAP, BASE * 2^(attempts-1)), so retries of
        many jobs that failed together spread out but never exceed CAP.
        """
        kind = self.backoff[0]
        if kind == BACKOFF_NONE:
            return 0
        if kind == BACKOFF_FIXED:
            return self.backoff[1]
        base, cap = self.backoff[1], self.backoff[2]
        exponent = max(0, attempts - 1)
        full = cap if exponent >= 32 else min(cap, base << exponent)
        return rand(full - full // 2, full)


DEFAULT = Policy()


def _count(text: str) -> int:
    if not text.isdigit() or not text.isascii() or int(text) > U32_MAX:
        raise PolicyError(f"not a number from 0 to {U32_MAX}: {text!r}")
    return int(text)


def _backoff(text: str) -> tuple:
    kind, _, rest = text.partition(":")
    if kind == BACKOFF_NONE and not rest and text == kind:
        return (BACKOFF_NONE,)
    if kind == BACKOFF_FIXED and rest:
        return (BACKOFF_FIXED, _count(rest))
    if kind == BACKOFF_EXP:
        base_text, colon, cap_text = rest.partition(":")
        if colon:
            base, cap = _count(base_text), _count(cap_text)
            if 1 <= base <= cap:
                return (BACKOFF_EXP, base, cap)
    raise PolicyError(f"backoff must be none, fixed:S or exp:BASE:CAP: {text!r}")


def _dead_letter(text: str, tube: str) -> tuple:
    if text in (DEAD_BURY, DEAD_DELETE):
        return (text,)
    kind, colon, name = text.partition(":")
    if kind == DEAD_TUBE and colon and valid_tube_name(name) and name != tube:
        return (DEAD_TUBE, name)
    raise PolicyError(f"dead-letter must be bury, delete or tube:NAME "
                      f"(another tube): {text!r}")


def valid_tube_name(name: str) -> bool:
    """The rule of protocol.md, "Tube names", as `use` checks it."""
    try:
        parse_tube(name.encode("ascii"))
    except (BadFormat, UnicodeEncodeError):
        return False
    return True
