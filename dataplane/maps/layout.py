"""Check that a hand-written ctypes mirror has exactly the C layout of a BPF map's key or value.

Every BPF map module in flowscope mirrors its C structs as ctypes.Structure classes and proves,
in a test, that they match what bcc compiled (bcc hands back ctypes Key/Leaf types for each map):

    obj = CompiledObject.compile(...)
    spec = obj.maps["nat_v4"]
    assert_map_layout("nat_v4", NatKey, NatEntry, spec.key_type, spec.value_type)

Both types are flattened into leaves (path, offset, size, kind), recursing through nested
structs, unions and arrays of structs; arrays of scalars stay one leaf ("u8[2]"). Names, offsets,
sizes and kinds (signedness and width, e.g. u32, i16, char8, f64) must all agree, as must the
total size. Padding bcc inserted itself (fields named `__pad*`) is skipped: only the total size
covers it, so mirrors should spell out padding explicitly, as the C structs do.
"""

from __future__ import annotations

import ctypes as ct
from dataclasses import dataclass

_KINDS = {
    "b": "i",
    "h": "i",
    "i": "i",
    "l": "i",
    "q": "i",
    "B": "u",
    "H": "u",
    "I": "u",
    "L": "u",
    "Q": "u",
    "f": "f",
    "d": "f",
    "g": "f",
    "c": "char",
    "?": "bool",
    "P": "ptr",
    "z": "ptr",
}


class LayoutMismatch(AssertionError):
    """A ctypes mirror does not match the compiled C type. The message lists every difference."""


@dataclass(frozen=True)
class Leaf:
    path: str
    offset: int
    size: int
    kind: str


def _scalar_kind(t: type) -> str:
    code = getattr(t, "_type_", None)
    if not isinstance(code, str) or code not in _KINDS:
        raise TypeError(f"{t!r} is not a ctypes scalar, struct, union or array")
    return f"{_KINDS[code]}{ct.sizeof(t) * 8}"


def _is_aggregate(t: type) -> bool:
    return isinstance(t, type) and issubclass(t, (ct.Structure, ct.Union))


def _is_array(t: type) -> bool:
    return isinstance(t, type) and issubclass(t, ct.Array)


def flatten(t: type, path: str = "", base: int = 0) -> list[Leaf]:
    """The leaves of a ctypes type, in offset order; paths read like C (`a.b`, `a[1].c`)."""
    if _is_aggregate(t):
        leaves: list[Leaf] = []
        for entry in t._fields_:
            name, ftype = entry[0], entry[1]
            if name.startswith("__pad"):
                continue
            child = f"{path}.{name}" if path else name
            desc = getattr(t, name)
            if len(entry) > 2:  # bitfield: ctypes packs (bit offset, width) into desc.size
                leaves.append(Leaf(child, base + desc.offset, desc.size, f"bits{entry[2]}"))
            else:
                leaves.extend(flatten(ftype, child, base + desc.offset))
        return leaves
    if _is_array(t) and _is_compound(t._type_):
        step = ct.sizeof(t._type_)
        out: list[Leaf] = []
        for i in range(t._length_):
            out.extend(flatten(t._type_, f"{path}[{i}]", base + i * step))
        return out
    return [_leaf(t, path or "<value>", base)]


def _is_compound(t: type) -> bool:
    return _is_aggregate(t) or (_is_array(t) and _is_compound(t._type_))


def _leaf(t: type, path: str, offset: int) -> Leaf:
    if _is_array(t):
        inner = _leaf(t._type_, path, offset)
        return Leaf(path, offset, ct.sizeof(t), f"{inner.kind}[{t._length_}]")
    return Leaf(path, offset, ct.sizeof(t), _scalar_kind(t))


def differences(mirror: type, generated: type) -> list[str]:
    """Every way `mirror` differs from `generated`; empty when the layouts are identical."""
    problems: list[str] = []
    if ct.sizeof(mirror) != ct.sizeof(generated):
        problems.append(f"size {ct.sizeof(mirror)} != compiled {ct.sizeof(generated)}")
    ours = {leaf.path: leaf for leaf in flatten(mirror)}
    theirs = {leaf.path: leaf for leaf in flatten(generated)}
    for path in sorted(theirs.keys() - ours.keys(), key=lambda p: theirs[p].offset):
        problems.append(f"missing field {path} (compiled at offset {theirs[path].offset})")
    for path in sorted(ours.keys() - theirs.keys(), key=lambda p: ours[p].offset):
        problems.append(f"extra field {path} (not in the compiled type)")
    for path in sorted(ours.keys() & theirs.keys(), key=lambda p: theirs[p].offset):
        a, b = ours[path], theirs[path]
        for attr in ("offset", "size", "kind"):
            if getattr(a, attr) != getattr(b, attr):
                problems.append(
                    f"field {path}: {attr} {getattr(a, attr)} != compiled {getattr(b, attr)}"
                )
    return problems


def assert_same_layout(what: str, mirror: type, generated: type) -> None:
    problems = differences(mirror, generated)
    if problems:
        lines = "\n  ".join(problems)
        raise LayoutMismatch(
            f"{what}: ctypes mirror {mirror.__name__} does not match the compiled C type:"
            f"\n  {lines}"
        )


def assert_map_layout(
    name: str,
    key_mirror: type,
    value_mirror: type,
    key_generated: type,
    value_generated: type,
    *,
    percpu: bool = False,
) -> None:
    """Check a map's key and value mirrors. For per-CPU maps bcc's value type is the array over
    CPUs; the mirror describes one CPU's value."""
    if percpu:
        if not _is_array(value_generated):
            raise LayoutMismatch(f"{name}: per-CPU value type {value_generated!r} is not an array")
        value_generated = value_generated._type_
    problems = [f"key: {p}" for p in differences(key_mirror, key_generated)]
    problems += [f"value: {p}" for p in differences(value_mirror, value_generated)]
    if problems:
        lines = "\n  ".join(problems)
        raise LayoutMismatch(
            f"map {name}: ctypes mirror does not match the compiled C types:\n  {lines}"
        )
