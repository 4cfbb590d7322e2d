"""The assignment rule: which arm a unit (visitor, session, account) gets under an allocation.

This module is the one implementation of the rule written in ``docs/assignment-spec.md``,
used by the SDK's local mode and by the server (``consistent`` and ``sticky`` modes, the
validation of exposures). Other languages implement the spec and pass the shared vectors
in ``clients/spec/assignment-vectors.json``; so does this module (tests load the file).

Why a hash race and not a bucket table: the arm of a unit must follow from public data
only (salt, unit id, weights), so a storefront decides without a network hop, and a
change of weights must move as few units as possible. The rule is an *exponential race*
(P-MinHash): every arm draws a uniform ``u_i`` from the unit's hash and scores
``-ln(u_i) / w_i``; the smallest score wins. Arm ``i`` then wins with probability
``w_i`` exactly, and re-weighting moves no more units than any stateless rule must
(the spec's "Why this rule").

Stdlib only and no I/O: it runs in the SDK, the decider's hot path and replay.
:class:`Allocation` precomputes everything that does not depend on the unit (the SHA-256
state with the salt already fed, per-arm decision id suffixes) because a local decision
is meant to cost about as much as one hash.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, NamedTuple

from mab_client.errors import InvalidAllocationError, InvalidUnitIdError
from mab_client.ids import UNIT_ID_MAX_LEN, InvalidIdError, normalize_id

#: Longest salt accepted (the server's salts are 16 hex characters or an experiment id).
SALT_MAX_LEN: Final = 200
#: Most arms an allocation may have: a decision id names its arm in 1-4 digits.
MAX_ARMS: Final = 10_000
#: How far the weights of an allocation may sum from 1 (they are probabilities computed
#: in floating point by the server; anything further is a bug, refused rather than
#: silently renormalised, because the propensities logged must be the true ones).
WEIGHT_SUM_TOLERANCE: Final = 1e-6
#: The rule's name in the allocation document's ``hash.algorithm``.
ALGORITHM: Final = "mab-race-sha256-v1"

UnitIdStorage = Literal["hashed", "raw"]

#: Domain-separation prefixes: the assignment digest and the unit token are different
#: hashes of the same (salt, unit id), so publishing one reveals nothing of the other.
_ASSIGN_PREFIX: Final = b"mab-assign-v1\x00"
_TOKEN_PREFIX: Final = b"mab-unit-v1\x00"
_SEP: Final = b"\x00"
#: 2**-53: multiplying by it is exact (a power of two), the same as dividing by 2**53.
_TWO_POW_M53: Final = 2.0**-53
_ARMS_PER_BLOCK: Final = 4
_U64X4: Final = struct.Struct(">4Q")


class LocalDecision(NamedTuple):
    """One unit's arm under one allocation version.

    ``propensity`` is the arm's weight in that allocation: the probability that a unit
    drawn at random gets this arm, which is what off-policy evaluation needs.
    ``decision_id`` is deterministic per (salt, unit, version) and names the arm
    (``<24 hex digest><8 hex version>.<arm index>``), so the same local decision
    reported twice is one decision.
    """

    arm_id: str
    arm_index: int
    decision_id: str
    propensity: float
    version: int


def _unit_id_problem(unit_id: object) -> str:
    """Why ``unit_id`` is not a valid unit id (only called once it failed the check)."""
    if not isinstance(unit_id, str):
        return f"unit_id must be a string, got {type(unit_id).__name__}"
    try:
        normalize_id(unit_id, "unit_id", UNIT_ID_MAX_LEN)
    except InvalidIdError as exc:
        return str(exc)
    raise AssertionError(f"{unit_id!r} is a valid unit id")  # pragma: no cover


def normalize_unit_id(unit_id: str) -> str:
    """The unit id the rule hashes: trimmed (:meth:`str.strip`), 1-200 printable code points.

    Raises :class:`InvalidUnitIdError` naming the broken rule. The same shape as the
    experiment and arm id rule (longer bound), so a storefront can pass its visitor id
    as it stores it, and ``" v1 "`` and ``"v1"`` are one unit everywhere.
    """
    try:
        text = unit_id.strip()
        if 0 < len(text) <= UNIT_ID_MAX_LEN and text.isprintable():
            return text
    except AttributeError:
        pass
    raise InvalidUnitIdError(_unit_id_problem(unit_id))


def _check_salt(salt: str) -> bytes:
    if not isinstance(salt, str) or not 0 < len(salt) <= SALT_MAX_LEN or not salt.isprintable():
        raise InvalidAllocationError(
            f"salt must be 1-{SALT_MAX_LEN} printable characters, got {salt!r}"
        )
    return salt.encode()


def unit_token(unit_id: str, salt: str, storage: UnitIdStorage = "hashed") -> str:
    """What events and Redis carry instead of the unit id.

    ``"hashed"``: the first 32 hex digits of ``sha256("mab-unit-v1\\0" + salt + "\\0" +
    unit_id)``, a pseudonym (the salt is public: a guessable id such as an e-mail can be
    recovered by trying candidates, hence "send opaque visitor ids"). ``"raw"``: the
    normalised unit id itself.
    """
    text = normalize_unit_id(unit_id)
    if storage == "raw":
        return text
    if storage != "hashed":
        raise InvalidAllocationError(f"unit_id_storage must be 'hashed' or 'raw', got {storage!r}")
    raw = _TOKEN_PREFIX + _check_salt(salt) + _SEP + text.encode()
    return hashlib.sha256(raw).hexdigest()[:32]


def assignment_digest(unit_id: str, salt: str) -> bytes:
    """``sha256("mab-assign-v1\\0" + salt + "\\0" + unit_id)``: everything the rule draws
    for this unit comes from these 32 bytes (UTF-8 throughout, unit id normalised)."""
    text = normalize_unit_id(unit_id)
    return hashlib.sha256(_ASSIGN_PREFIX + _check_salt(salt) + _SEP + text.encode()).digest()


def _block(digest: bytes, index: int) -> bytes:
    """Block 0 is the digest; block ``b`` ≥ 1 is ``sha256(digest + b as 4 bytes big-endian)``."""
    if index == 0:
        return digest
    return hashlib.sha256(digest + index.to_bytes(4, "big")).digest()


def uniform_of(x: int) -> float:
    """The uniform in (0, 1) of a 64-bit word: its top 53 bits with the lowest forced to 1,
    over 2**53. An odd integer below 2**53 is exact in a double, and so is the division by
    a power of two, so every language computes the same float; never 0 (no ``ln 0``) and
    never 1."""
    return ((x >> 11) | 1) * _TWO_POW_M53


def arm_uniforms(digest: bytes, n_arms: int) -> list[float]:
    """The uniforms of arms ``0 .. n_arms - 1``, by arm position.

    Arm ``i`` reads the big-endian 64-bit word at byte ``8 * (i % 4)`` of block ``i // 4``.
    By position, because arms are append-only: adding an arm leaves every other arm's
    uniform unchanged, so a new arm takes units only from where it wins.
    """
    if len(digest) != 32:
        raise ValueError(f"digest must be 32 bytes, got {len(digest)}")
    if not 0 < n_arms <= MAX_ARMS:
        raise ValueError(f"n_arms must be 1..{MAX_ARMS}, got {n_arms}")
    out: list[float] = []
    for b in range((n_arms + _ARMS_PER_BLOCK - 1) // _ARMS_PER_BLOCK):
        out.extend(uniform_of(x) for x in _U64X4.unpack(_block(digest, b)))
    del out[n_arms:]
    return out


def _check_weights(weights: Iterable[float]) -> tuple[float, ...]:
    ws = tuple(float(w) for w in weights)
    if not ws:
        raise InvalidAllocationError("an allocation needs at least one arm")
    for i, w in enumerate(ws):
        if not math.isfinite(w) or w < 0:
            raise InvalidAllocationError(f"weight {i} must be finite and >= 0, got {w!r}")
    if not any(w > 0 for w in ws):
        raise InvalidAllocationError("at least one weight must be positive")
    return ws


def race(uniforms: Sequence[float], weights: Sequence[float]) -> tuple[int, float]:
    """The exponential race: ``(arm_index, weight)`` of the smallest ``-ln(u_i) / w_i``.

    Arms of weight 0 never run. Equal scores go to the lower position (the first arm
    seen wins, later arms must be strictly smaller). ``-ln(u) / w`` is computed as
    written (a division, not a product with ``1/w``) because the spec fixes the float
    operations and a reciprocal may round differently.
    """
    if len(uniforms) != len(weights):
        raise ValueError(f"{len(uniforms)} uniforms for {len(weights)} weights")
    ws = _check_weights(weights)
    best = -1
    best_score = 0.0
    for i, (u, w) in enumerate(zip(uniforms, ws, strict=True)):
        if w > 0:
            score = -math.log(u) / w
            if best < 0 or score < best_score:
                best, best_score = i, score
    return best, ws[best]


def decision_id_of(digest: bytes, version: int, arm_index: int) -> str:
    """``<first 12 digest bytes as 24 hex><version mod 2**32 as 8 hex>.<arm index>``.

    The shape of every decision id (``[0-9a-f]{32}\\.[0-9]{1,4}``), so rewards and the
    fold treat local and server decisions alike; deterministic per (unit, version), so
    the same decision reported twice (a retried exposure) is counted once.
    """
    if not 0 <= arm_index < MAX_ARMS:
        raise ValueError(f"arm_index must be 0..{MAX_ARMS - 1}, got {arm_index}")
    return f"{digest[:12].hex()}{version & 0xFFFFFFFF:08x}.{arm_index}"


@dataclass(frozen=True, slots=True)
class Allocation:
    """The weights the bandit wants for one epoch (``version``), and the rule's inputs.

    Immutable and validated when built (:class:`InvalidAllocationError`), so
    :meth:`choose` cannot fail on the allocation's side. ``valid_until`` (epoch seconds)
    and ``min_arm_share`` are carried for the caller (when to refresh, what floor the
    weights include); the rule itself uses neither.
    """

    experiment_id: str
    version: int
    arm_ids: tuple[str, ...]
    weights: tuple[float, ...]
    salt: str
    unit_id_storage: UnitIdStorage = "hashed"
    valid_until: float = 0.0
    min_arm_share: float = 0.0
    # Derived in __post_init__: what every decision under this allocation shares.
    _assign_state: hashlib._Hash = field(init=False, repr=False, compare=False)
    _token_state: hashlib._Hash = field(init=False, repr=False, compare=False)
    #: (arm index, weight) of the arms that run, in position order.
    _runners: tuple[tuple[int, float], ...] = field(init=False, repr=False, compare=False)
    #: Per arm: ``<version hex>.<index>``, the decision id's tail.
    _tails: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _blocks: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        arm_ids = tuple(self.arm_ids)
        weights = _check_weights(self.weights)
        if len(arm_ids) != len(weights):
            raise InvalidAllocationError(f"{len(arm_ids)} arm ids for {len(weights)} weights")
        if len(arm_ids) > MAX_ARMS:
            raise InvalidAllocationError(f"at most {MAX_ARMS} arms, got {len(arm_ids)}")
        if len(set(arm_ids)) != len(arm_ids):
            raise InvalidAllocationError("arm ids must be distinct")
        total = math.fsum(weights)
        if abs(total - 1.0) > WEIGHT_SUM_TOLERANCE:
            raise InvalidAllocationError(f"weights must sum to 1, they sum to {total!r}")
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 0:
            raise InvalidAllocationError(f"version must be an integer >= 0, got {self.version!r}")
        if self.unit_id_storage not in ("hashed", "raw"):
            raise InvalidAllocationError(
                f"unit_id_storage must be 'hashed' or 'raw', got {self.unit_id_storage!r}"
            )
        if not math.isfinite(self.min_arm_share) or not 0 <= self.min_arm_share * len(arm_ids) <= 1:
            raise InvalidAllocationError(
                f"min_arm_share must be in [0, 1/{len(arm_ids)}], got {self.min_arm_share!r}"
            )
        salt = _check_salt(self.salt)
        set_ = object.__setattr__
        set_(self, "arm_ids", arm_ids)
        set_(self, "weights", weights)
        set_(self, "_assign_state", hashlib.sha256(_ASSIGN_PREFIX + salt + _SEP))
        set_(self, "_token_state", hashlib.sha256(_TOKEN_PREFIX + salt + _SEP))
        set_(self, "_runners", tuple((i, w) for i, w in enumerate(weights) if w > 0))
        v = self.version & 0xFFFFFFFF
        set_(self, "_tails", tuple(f"{v:08x}.{i}" for i in range(len(arm_ids))))
        set_(self, "_blocks", (len(arm_ids) + _ARMS_PER_BLOCK - 1) // _ARMS_PER_BLOCK)

    def digest(self, unit_id: str) -> bytes:
        """:func:`assignment_digest` under this allocation's salt."""
        h = self._assign_state.copy()
        h.update(normalize_unit_id(unit_id).encode())
        return h.digest()

    def unit_token(self, unit_id: str) -> str:
        """:func:`unit_token` under this allocation's salt and storage."""
        text = normalize_unit_id(unit_id)
        if self.unit_id_storage == "raw":
            return text
        h = self._token_state.copy()
        h.update(text.encode())
        return h.hexdigest()[:32]

    def choose(self, unit_id: str) -> LocalDecision:
        """The unit's arm: :func:`race` over :func:`arm_uniforms` of its digest.

        Written out rather than composed from those functions (one hash, one unpack, no
        intermediate lists for up to four arms): this is the per-page-view cost of local
        mode. The unit tests check it against the composition and the shared vectors.
        Raises :class:`InvalidUnitIdError` for a bad unit id.
        """
        try:
            text = unit_id.strip()
            ok = 0 < len(text) <= UNIT_ID_MAX_LEN and text.isprintable()
        except AttributeError:
            ok = False
        if not ok:
            raise InvalidUnitIdError(_unit_id_problem(unit_id))
        return self._choose(text)

    def choose_with_token(self, unit_id: str) -> tuple[LocalDecision, str]:
        """:meth:`choose` and :meth:`unit_token` of one unit id, validated once (the
        server logs both for every consistent decision)."""
        text = normalize_unit_id(unit_id)
        if self.unit_id_storage == "raw":
            return self._choose(text), text
        h = self._token_state.copy()
        h.update(text.encode())
        return self._choose(text), h.hexdigest()[:32]

    def _choose(self, text: str) -> LocalDecision:
        """:meth:`choose` of a unit id already normalised."""
        h = self._assign_state.copy()
        h.update(text.encode())
        digest = h.digest()
        log = math.log
        best = -1
        best_score = 0.0
        if self._blocks == 1:
            xs = _U64X4.unpack(digest)
            for i, w in self._runners:
                score = -log(((xs[i] >> 11) | 1) * _TWO_POW_M53) / w
                if best < 0 or score < best_score:
                    best, best_score = i, score
        else:
            block = digest
            block_no = 0
            xs = _U64X4.unpack(digest)
            for i, w in self._runners:
                b = i >> 2
                if b != block_no:
                    block_no = b
                    block = hashlib.sha256(digest + b.to_bytes(4, "big")).digest()
                    xs = _U64X4.unpack(block)
                score = -log(((xs[i & 3] >> 11) | 1) * _TWO_POW_M53) / w
                if best < 0 or score < best_score:
                    best, best_score = i, score
        return _new_decision(
            LocalDecision,
            (
                self.arm_ids[best],
                best,
                digest[:12].hex() + self._tails[best],
                self.weights[best],
                self.version,
            ),
        )


#: ``tuple.__new__`` called directly: building the NamedTuple through its generated
#: ``__new__`` costs a Python-level call per decision.
_new_decision: Final = tuple.__new__
