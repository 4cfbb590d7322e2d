"""Generate ``assignment-vectors.json``, the test vectors every SDK's tests must pass.

``python clients/spec/generate_vectors.py`` rewrites the file next to this script;
``--out PATH`` writes elsewhere (the SDK's tests regenerate into a temporary file and
compare bytes, so the checked-in file is always this script's output).

The expected values are computed here by a literal, deliberately naive reading of
``docs/assignment-spec.md`` (big integers, one hash per block, a list of scores), not by
``mab_client.assignment``: vectors produced by the code they test would prove nothing,
and a disagreement between the two readings is exactly what the SDK's tests catch.
Deterministic: no randomness, no clock; the same inputs give the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Final

HERE: Final = Path(__file__).resolve().parent
DEFAULT_OUT: Final = HERE / "assignment-vectors.json"
ALGORITHM: Final = "mab-race-sha256-v1"
#: Vectors list their uniforms only up to this many arms (1,000 uniforms per vector
#: would bury the file; the digest and the arm index still pin the larger ones).
LIST_UNIFORMS_UP_TO: Final = 17


# --- The rule, read literally from the spec -------------------------------------------


def normalize(unit_id: str) -> str:
    text = unit_id.strip()
    if not 1 <= len(text) <= 200:
        raise ValueError("length")
    if not all(ch.isprintable() for ch in text):
        raise ValueError("not printable")
    return text


def digest_of(salt: str, unit_id: str) -> bytes:
    message = b"mab-assign-v1" + b"\x00" + salt.encode("utf-8") + b"\x00" + unit_id.encode("utf-8")
    return hashlib.sha256(message).digest()


def token_of(salt: str, unit_id: str) -> str:
    message = b"mab-unit-v1" + b"\x00" + salt.encode("utf-8") + b"\x00" + unit_id.encode("utf-8")
    return hashlib.sha256(message).hexdigest()[:32]


def word(digest: bytes, arm: int) -> int:
    """The 64-bit word of arm ``arm``: block ``arm // 4``, bytes ``8 * (arm % 4)`` on."""
    block_no = arm // 4
    block = (
        digest if block_no == 0 else hashlib.sha256(digest + block_no.to_bytes(4, "big")).digest()
    )
    offset = 8 * (arm % 4)
    return int.from_bytes(block[offset : offset + 8], "big")


def uniform(x: int) -> float:
    odd = (x >> 11) | 1  # an odd integer in [1, 2**53 - 1]
    return float(odd) / float(2**53)


def scores_of(uniforms: list[float], weights: list[float]) -> list[tuple[float, int]]:
    return [
        (-math.log(u) / w, i)
        for i, (u, w) in enumerate(zip(uniforms, weights, strict=True))
        if w > 0
    ]


def winner(uniforms: list[float], weights: list[float]) -> int:
    return min(scores_of(uniforms, weights))[1]  # smallest score; equal scores: lowest position


#: A hashed vector whose two best scores are closer than this (relative) is refused:
#: platforms' ``ln`` may differ in the last bit (~1e-16), and a vector must not depend
#: on it. (Exact ties are pinned by the race vectors, from chosen words.)
MIN_REL_GAP: Final = 1e-13


def check_robust(uniforms: list[float], weights: list[float]) -> None:
    ranked = sorted(scores_of(uniforms, weights))
    if len(ranked) > 1:
        (a, _), (b, _) = ranked[0], ranked[1]
        if b - a <= MIN_REL_GAP * b:
            raise AssertionError(f"scores {a!r} and {b!r} too close for a portable vector")


def decision_id(digest: bytes, version: int, arm: int) -> str:
    return digest.hex()[:24] + format(version % 2**32, "08x") + "." + str(arm)


# --- The cases ----------------------------------------------------------------------

SALTS: Final = (
    "0123456789abcdef",
    "5f1d3c0a9b8e7d6c",
    "cta-button-test",  # an experiment created before salts: its id is its salt
    "Livraison gratuite été",
    "a",
)

UNIT_IDS: Final = (
    "visitor-1",
    "3f2b8c1e-9a4d-4e6f-8b7a-0c1d2e3f4a5b",
    "alice@example.com",
    "  padded visitor  ",  # trimmed to "padded visitor"
    "\t\ncookie-77\r\n",  # trimmed: every kind of whitespace at the ends
    "Zoë Ångström",
    "e\u0301te\u0301",  # combining marks (category Mn) are printable
    "用户-42",
    "مرحبا بالعالم",
    "🎉🎉 party",
    "😀",
    "a b c",
    "\u3000ideographic\u3000",  # U+3000 at both ends is trimmed
    "x" * 200,
    "7",
    "10% off {json} [x] 'q' \"dq\" \\ /",
)


def normalized(weights: list[float]) -> list[float]:
    total = math.fsum(weights)
    return [w / total for w in weights]


WEIGHT_CASES: Final[list[tuple[str, list[float]]]] = [
    ("2 arms, even", [0.5, 0.5]),
    ("2 arms, 90/10", [0.9, 0.1]),
    ("2 arms, 1% arm", [0.99, 0.01]),
    ("2 arms, weight 1 on arm 0", [1.0, 0.0]),
    ("2 arms, weight 1 on arm 1", [0.0, 1.0]),
    ("3 arms, uneven", [0.2, 0.3, 0.5]),
    ("3 arms, zero in the middle", [0.5, 0.0, 0.5]),
    ("3 arms, thirds", [1 / 3, 1 / 3, 1 / 3]),
    ("5 arms, uneven", normalized([1, 2, 3, 4, 5])),
    ("5 arms, weight 1 on arm 4 (second block)", [0.0, 0.0, 0.0, 0.0, 1.0]),
    ("5 arms, floor 0.05 applied", [0.05 + 0.75 * p for p in (0.6, 0.1, 0.1, 0.1, 0.1)]),
    ("17 arms, even", [1 / 17] * 17),
    (
        "17 arms, zeros across blocks",
        normalized([0, 1, 0, 2, 0, 0, 0, 3, 1, 0, 0, 0, 0, 0, 0, 0, 5]),
    ),
    ("17 arms, one dominant", normalized([100.0] + [1.0] * 16)),
]

THOUSAND_ARM_CASES: Final[list[tuple[str, list[float]]]] = [
    ("1000 arms, even", [1 / 1000] * 1000),
    ("1000 arms, weight 1 on the last", [0.0] * 999 + [1.0]),
    ("1000 arms, Zipf", normalized([1 / (i + 1) for i in range(1000)])),
]

VERSIONS: Final = (0, 1, 29_000_000, 2**32 + 5, 2**40 + 123_456)


def vector(
    name: str, salt: str, unit_id: str, weights: list[float], version: int
) -> dict[str, Any]:
    text = normalize(unit_id)
    digest = digest_of(salt, text)
    uniforms = [uniform(word(digest, i)) for i in range(len(weights))]
    check_robust(uniforms, weights)
    arm = winner(uniforms, weights)
    out: dict[str, Any] = {
        "name": name,
        "salt": salt,
        "unit_id": unit_id,
        "normalized_unit_id": text,
        "weights": weights,
        "version": version,
        "digest": digest.hex(),
    }
    if len(weights) <= LIST_UNIFORMS_UP_TO:
        out["uniforms"] = uniforms
    out |= {
        "arm_index": arm,
        "propensity": weights[arm],
        "decision_id": decision_id(digest, version, arm),
        "token_hashed": token_of(salt, text),
        "token_raw": text,
    }
    return out


def near_tie(salt: str, unit_id: str, rel_gap: float, favour: int, version: int) -> dict[str, Any]:
    """Two arms whose scores differ by ``rel_gap`` (relative), ``favour`` ahead.

    Weights solve ``-ln(u0) / w0 = -ln(u1) / w1`` and are then nudged by ``rel_gap``:
    the winner depends on the last few digits of the scores, far above the one-ulp
    differences between platforms' ``ln`` (about 1e-16 relative).
    """
    digest = digest_of(salt, normalize(unit_id))
    u0, u1 = uniform(word(digest, 0)), uniform(word(digest, 1))
    ratio = math.log(u0) / math.log(u1)  # w0 / w1 at an exact tie
    ratio *= 1 + rel_gap if favour == 0 else 1 - rel_gap
    weights = [ratio / (1 + ratio), 1 / (1 + ratio)]
    v = vector(
        f"2 arms, near tie ({rel_gap:g} relative), arm {favour} ahead",
        salt,
        unit_id,
        weights,
        version,
    )
    if v["arm_index"] != favour:
        raise AssertionError(f"near tie construction failed: {v}")
    return v


#: The example worked through step by step in the spec (its tests check the numbers there).
WORKED_EXAMPLE: Final = "worked example (docs/assignment-spec.md)"


def assignment_vectors() -> list[dict[str, Any]]:
    out = [vector(WORKED_EXAMPLE, SALTS[0], "  Zoë 🎉  ", [0.2, 0.3, 0.5], VERSIONS[2])]
    n = 0
    for name, weights in WEIGHT_CASES:
        for _ in range(4):
            unit_id = UNIT_IDS[n % len(UNIT_IDS)]
            salt = SALTS[n % len(SALTS)]
            version = VERSIONS[n % len(VERSIONS)]
            out.append(vector(name, salt, unit_id, weights, version))
            n += 1
    for name, weights in THOUSAND_ARM_CASES:
        for unit_id in ("visitor-1", "用户-42"):
            out.append(vector(name, SALTS[0], unit_id, weights, VERSIONS[2]))
    for i, (rel_gap, favour) in enumerate(((1e-9, 0), (1e-9, 1), (1e-12, 0), (1e-12, 1))):
        out.append(near_tie(SALTS[1], f"near-tie-{i}", rel_gap, favour, VERSIONS[2]))
    return out


def race_vectors() -> list[dict[str, Any]]:
    """The race alone, from given 64-bit words: exact ties cannot be reached through
    SHA-256, so the tie rule is pinned here. Each word becomes ``u`` as in the spec."""
    half = 0x8000000000000000
    cases: list[tuple[str, list[int], list[float]]] = [
        ("exact tie, 2 arms: the lower position wins", [half, half], [0.5, 0.5]),
        ("exact tie, 3 arms: the lower position wins", [half, 0x1234 << 11, half], [0.4, 0.2, 0.4]),
        ("zero weight never wins, even with the best word", [0, half, half], [0.0, 0.5, 0.5]),
        ("extreme words: u = 2**-53 and u = 1 - 2**-53", [0, 2**64 - 1], [1e-6, 1.0 - 1e-6]),
        ("u = 1 - 2**-53 scores near 0 even at weight 0.001", [half, 2**64 - 1], [0.999, 0.001]),
        ("the low 11 bits are ignored", [half | 0x7FF, half], [0.5, 0.5]),
    ]
    out = []
    for name, words, weights in cases:
        uniforms = [uniform(x) for x in words]
        out.append(
            {
                "name": name,
                "words": [format(x, "016x") for x in words],
                "uniforms": uniforms,
                "weights": weights,
                "arm_index": winner(uniforms, weights),
            }
        )
    return out


INVALID_UNIT_IDS: Final[list[tuple[str, str]]] = [
    ("", "empty"),
    ("   ", "blank after trimming"),
    ("\t\n", "blank after trimming"),
    ("x" * 201, "201 characters"),
    ("tab\tinside", "control character U+0009 inside"),
    ("nul\x00", "control character U+0000"),
    ("del\x7f", "control character U+007F"),
    ("zero\u200bwidth", "format character U+200B"),
    ("👩\u200d💻", "emoji ZWJ sequence: U+200D is a format character"),
    ("no\u00a0break", "separator U+00A0 inside"),
    ("line\u2028sep", "separator U+2028 inside"),
    ("\ufeffbom", "U+FEFF is a format character, not trimmed"),
    ("private\ue000", "private-use U+E000"),
    ("unassigned\U000e0080", "unassigned U+E0080 (Unicode 14)"),
]


def invalid_vectors() -> list[dict[str, str]]:
    out = []
    for unit_id, why in INVALID_UNIT_IDS:
        try:
            normalize(unit_id)
        except ValueError:
            out.append({"unit_id": unit_id, "why": why})
        else:
            raise AssertionError(f"{unit_id!r} is valid")
    return out


def document() -> dict[str, Any]:
    return {
        "algorithm": ALGORITHM,
        "spec": "docs/assignment-spec.md",
        "generator": "clients/spec/generate_vectors.py",
        "unicode_version": "14.0.0",
        "assignment": assignment_vectors(),
        "race": race_vectors(),
        "invalid_unit_ids": invalid_vectors(),
    }


def render(doc: dict[str, Any]) -> str:
    """One vector per line: diffs stay readable and a reviewer sees which vector changed."""

    def line(item: Any) -> str:
        return json.dumps(item, ensure_ascii=False, sort_keys=False)

    head = {k: v for k, v in doc.items() if not isinstance(v, list)}
    parts = ["{"]
    for key, value in head.items():
        parts.append(f"  {line(key)}: {line(value)},")
    lists = [k for k, v in doc.items() if isinstance(v, list)]
    for n, key in enumerate(lists):
        parts.append(f"  {line(key)}: [")
        items = doc[key]
        for i, item in enumerate(items):
            parts.append(f"    {line(item)}{',' if i < len(items) - 1 else ''}")
        parts.append("  ]" + ("," if n < len(lists) - 1 else ""))
    parts.append("}")
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="write the assignment test vectors")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    args.out.write_text(render(document()), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
