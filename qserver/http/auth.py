"""`--http-auth FILE`: who may use the HTTP listener beyond /health.

The file holds one credential per line (blank lines and `#` comments are skipped):

    user NAME pbkdf2_sha256$ITERATIONS$SALT_HEX$HASH_HEX   (HTTP Basic)
    token sha256$HASH_HEX                                   (Authorization: Bearer)

Only hashes are stored. `python -m qserver.http.auth user NAME` asks for a password
and prints a `user` line; `python -m qserver.http.auth token` makes a random token,
prints it once and its `token` line. A password is checked with PBKDF2 (slow on
purpose) in a worker thread, so the event loop never waits for it; a header that
was right once is remembered (by its SHA-256) so a dashboard polling every second
pays the PBKDF2 once. Imports: stdlib.
"""

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import sys

ITERATIONS = 200_000
REMEMBERED = 64                 # accepted Authorization headers kept


class AuthFileError(Exception):
    pass


def hash_password(password: str, iterations: int = ITERATIONS, salt: bytes = None) -> str:
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"pbkdf2_sha256${iterations}${salt.hex()}${digest.hex()}"


def hash_token(token: str) -> str:
    return "sha256$" + hashlib.sha256(token.encode()).hexdigest()


def load(path: str) -> tuple:
    """The file's credentials as (users: {name: hash}, token hashes); raises
    AuthFileError with the line at fault."""
    users, tokens = {}, []
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise AuthFileError(f"cannot read {path}: {error}") from None
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if fields[0] == "user" and len(fields) == 3 and _password_hash(fields[2]):
            users[fields[1]] = fields[2]
        elif fields[0] == "token" and len(fields) == 2 and _token_hash(fields[1]):
            tokens.append(fields[1])
        else:
            raise AuthFileError(f"{path} line {number}: want `user NAME pbkdf2_sha256$...`"
                                " or `token sha256$...`")
    if not users and not tokens:
        raise AuthFileError(f"{path} has no credentials")
    return users, tuple(tokens)


def _password_hash(text: str) -> bool:
    parts = text.split("$")
    return (len(parts) == 4 and parts[0] == "pbkdf2_sha256" and parts[1].isdigit()
            and _is_hex(parts[2]) and _is_hex(parts[3]))


def _token_hash(text: str) -> bool:
    kind, _, digest = text.partition("$")
    return kind == "sha256" and len(digest) == 64 and _is_hex(digest)


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return bool(text)


class Gate:
    """Checks a request's Authorization header against the credentials."""

    def __init__(self, credentials: tuple):
        self.users, self.tokens = credentials
        self.accepted = {}      # sha256 of an accepted header -> True (insertion order)

    async def allows(self, header) -> bool:
        if not header:
            return False
        seen = hashlib.sha256(header.encode("latin-1")).digest()
        if seen in self.accepted:
            return True
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() == "bearer":
            good = any(hmac.compare_digest(hash_token(value.strip()), token)
                       for token in self.tokens)
        elif scheme.lower() == "basic":
            good = await self._basic(value.strip())
        else:
            good = False
        if good:
            if len(self.accepted) >= REMEMBERED:
                del self.accepted[next(iter(self.accepted))]
            self.accepted[seen] = True
        return good

    async def _basic(self, value: str) -> bool:
        try:
            name, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        stored = self.users.get(name)
        if stored is None:
            return False
        _, iterations, salt, _ = stored.split("$")
        made = await asyncio.get_running_loop().run_in_executor(
            None, hash_password, password, int(iterations), bytes.fromhex(salt))
        return hmac.compare_digest(made, stored)


def main(argv) -> int:
    if argv[:1] == ["user"] and len(argv) == 2:
        import getpass
        password = getpass.getpass(f"password for {argv[1]}: ")
        if not password or password != getpass.getpass("again: "):
            print("the passwords are empty or differ", file=sys.stderr)
            return 1
        print(f"user {argv[1]} {hash_password(password)}")
        return 0
    if argv == ["token"]:
        token = base64.urlsafe_b64encode(os.urandom(24)).decode()
        print(f"# the token (send `Authorization: Bearer {token}`); keep it, it is "
              "not stored", file=sys.stderr)
        print(f"token {hash_token(token)}")
        return 0
    print("usage: python -m qserver.http.auth user NAME | token", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
