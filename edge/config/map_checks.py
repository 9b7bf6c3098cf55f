"""The checks of a register map that pydantic cannot see, and its compilation to TagSpecs.

After the shape check, each tag is checked in plain code against the protocol: its
address (parsed by protocols.address), whether its type fits the address, its role's
rules (counter, state, alarm, parameter), and overlaps with the other tags. Checks run
per tag, so one broken tag does not hide the problems of the others; problems come out in
the order of the tags in the file. Pure: no file I/O (edge.config.loading reads files).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from edge.config.map_models import MapConfig, TagConfig
from edge.config.problems import ConfigError, Problem
from edge.config.shape import pydantic_problems, without_broken_keys
from edge.config.toml import parse_toml, toml_key
from protocols.address import check_fits, parse_address, tag_extent
from protocols.errors import AddressError
from protocols.model import Address, DataType, Order, Protocol, S7Address, TagSpec

__all__ = [
    "compile_map",
    "infer_protocol",
    "parse_map_text",
    "raw_addresses",
    "validate_map",
    "validate_raw_map",
]

_S7_LIKE = re.compile(r"^%?(DB\d|[MIQEA][BWDX]?\d)", re.IGNORECASE)


def infer_protocol(addresses: Iterable[str]) -> Protocol:
    """The protocol a map's addresses imply: s7 when most look like Siemens notation."""
    s7 = modbus = 0
    for text in addresses:
        if _S7_LIKE.match(text.strip()):
            s7 += 1
        else:
            modbus += 1
    return "s7" if s7 > modbus else "modbus-tcp"


def _address_bit(addr: Address) -> int | None:
    return addr.bit


def _check_tag(name: str, tag: TagConfig, map_cfg: MapConfig | None, protocol: Protocol,
               shown: str, context: str) -> tuple[TagSpec | None, list[Problem]]:
    """Everything about one tag that pydantic cannot see. Returns its spec when usable."""
    problems: list[Problem] = []
    base = f"tags.{toml_key(name)}"
    dtype = DataType(tag.type)

    # role rules
    if tag.role == "counter":
        if not dtype.is_unsigned_int:
            problems.append(Problem(
                shown, f"{base}.type",
                f"a counter must be an unsigned integer, not {tag.type}",
                "use uint16 or uint32"))
        if tag.counts is None:
            problems.append(Problem(shown, f"{base}.counts",
                                    "a counter needs to say what it counts",
                                    'e.g. counts = "good" (good | scrap | total)'))
    elif tag.counts is not None:
        problems.append(Problem(shown, f"{base}.counts",
                                f"counts is only for role = \"counter\", this tag is {tag.role}",
                                'remove it or set role = "counter"'))
    for table, role, example in (("states", "state", '{ 0 = "off", 1 = "idle", 2 = "running" }'),
                                 ("alarms", "alarm", '{ 1001 = "Spindle overload" }')):
        value = getattr(tag, table)
        if tag.role == role:
            if not value:
                article = "an" if role[0] in "aeiou" else "a"
                problems.append(Problem(shown, f"{base}.{table}",
                                        f"{article} {role} tag needs {article} {table} table",
                                        f"e.g. {table} = {example}"))
            if not (dtype.is_integer or dtype is DataType.BOOL):
                problems.append(Problem(shown, f"{base}.type",
                                        f"{'an' if role == 'alarm' else 'a'} {role} tag must "
                                        f"be an integer, not {tag.type}",
                                        "use uint16"))
        elif value is not None:
            problems.append(Problem(shown, f"{base}.{table}",
                                    f"{table} is only for role = \"{role}\", this tag is "
                                    f"{tag.role}", f'set role = "{role}" or remove it'))
    if tag.limits is not None:
        lo, hi = tag.limits
        if lo >= hi:
            problems.append(Problem(shown, f"{base}.limits",
                                    f"lo must be below hi, got [{lo:g}, {hi:g}]",
                                    "e.g. limits = [10.0, 65.0]"))
        if tag.role != "parameter":
            problems.append(Problem(shown, f"{base}.limits",
                                    f"limits are only for role = \"parameter\", this tag is "
                                    f"{tag.role}", 'set role = "parameter"'))
    if tag.deadband is not None and tag.role not in ("parameter", "sample"):
        problems.append(Problem(shown, f"{base}.deadband",
                                f"deadband is only for parameters and samples, this tag is "
                                f"{tag.role}", "remove it"))
    if tag.scale == 0:
        problems.append(Problem(shown, f"{base}.scale", "scale 0 makes every value 0",
                                "e.g. scale = 0.1"))

    # the address and the type
    try:
        addr = parse_address(tag.address, protocol)
    except AddressError as exc:
        message = exc.message if repr(tag.address) in exc.message else (
            f"{tag.address!r}: {exc.message}")
        problems.append(Problem(shown, f"{base}.address", message + context,
                                f"e.g. {exc.example}" if exc.example else None))
        return None, problems

    length = tag.length
    if dtype is DataType.STRING:
        s7_len = addr.string_len if isinstance(addr, S7Address) else None
        if length is None and s7_len is None:
            problems.append(Problem(shown, f"{base}.length",
                                    "a string needs a length in characters",
                                    "e.g. length = 16"))
            return None, problems
        if length is None:
            length = s7_len
    elif length is not None:
        problems.append(Problem(shown, f"{base}.length",
                                f"length is only for strings, this tag is {tag.type}",
                                "remove it"))
        length = None
    default_bo = map_cfg.byte_order if map_cfg else "big"
    default_wo = map_cfg.word_order if map_cfg else "big"
    spec = TagSpec(
        name=name, address=addr, type=dtype, length=length,
        byte_order=Order(tag.byte_order or default_bo),
        word_order=Order(tag.word_order or default_wo),
        scale=tag.scale, offset=tag.offset,
    )
    try:
        check_fits(spec)
    except AddressError as exc:
        problems.append(Problem(shown, f"{base}.address", exc.message + context,
                                f"e.g. {exc.example}" if exc.example else None))
        return None, problems
    return (spec if not problems else None), problems


def _overlaps(specs: Sequence[TagSpec], shown: str) -> list[Problem]:
    """Two tags reading the same register/byte, except bit tags on different bits."""
    problems: list[Problem] = []
    extents: list[tuple[str, int, int, int, TagSpec]] = []
    for spec in specs:
        area, db, start, count = tag_extent(spec)
        extents.append((area, db, start, start + count, spec))
    extents.sort(key=lambda e: (e[0], e[1], e[2], e[3]))
    reported: set[str] = set()
    for i, (area, db, start, end, spec) in enumerate(extents):
        for other_area, other_db, other_start, other_end, other in extents[i + 1:]:
            if (other_area, other_db) != (area, db) or other_start >= end:
                break
            if other_end <= start:
                continue
            a_bit, b_bit = _address_bit(spec.address), _address_bit(other.address)
            both_bits = (spec.type is DataType.BOOL and other.type is DataType.BOOL
                         and a_bit is not None and b_bit is not None)
            if both_bits and a_bit != b_bit:
                continue
            if other.name in reported:
                continue
            reported.add(other.name)
            problems.append(Problem(
                shown, f"tags.{toml_key(other.name)}.address",
                f"{other.address} ({other.type.value}) overlaps tag {spec.name!r} at "
                f"{spec.address} ({spec.type.value})",
                "give each tag its own registers/bytes"))
    return problems


def _tag_order(problems: list[Problem], names: Sequence[str]) -> list[Problem]:
    """Sort problems by the order of the tags in the file, then key."""
    rank = {f"tags.{toml_key(n)}": i for i, n in enumerate(names)}

    def key(p: Problem) -> tuple[int, str]:
        head = ".".join(p.key_path.split(".")[:2])
        return (rank.get(head, -1), "")

    return sorted(problems, key=key)


def validate_map(raw: dict[str, Any], protocol: Protocol, shown: str, context: str = ""
                 ) -> tuple[MapConfig | None, tuple[TagSpec, ...], list[Problem]]:
    """Check parsed map TOML for ``protocol``: (config or None, the usable tags' specs,
    problems). ``context`` is appended to address problems (which device uses the map)."""
    problems: list[Problem] = []
    config: MapConfig | None = None
    try:
        config = MapConfig.model_validate(raw)
    except ValidationError as exc:
        problems.extend(pydantic_problems(exc, MapConfig, shown))
    header: MapConfig | None = config
    if header is None:
        # defaults for the tags even when the map header is broken
        try:
            header = MapConfig.model_validate({k: v for k, v in raw.items() if k != "tags"})
        except ValidationError:
            header = None
    tags_raw = raw.get("tags", {})
    specs: list[TagSpec] = []
    names: list[str] = []
    if isinstance(tags_raw, dict):
        names = list(tags_raw)
        for name, tag_raw in tags_raw.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                problems.append(Problem(shown, f"tags.{toml_key(name)}",
                                        f"tag name {name!r} is not a plain snake_case name",
                                        "e.g. [tags.zone1_temp]"))
            skip: set[str] = set()
            if config is not None:
                tag = config.tags[name]
            else:
                # already reported against the whole map; check the rest of the tag
                # without its broken keys so its other problems show up too
                maybe, skip = _tag_without_broken_keys(tag_raw)
                if maybe is None:
                    continue
                tag = maybe
            spec, tag_problems = _check_tag(name, tag, header, protocol, shown, context)
            if skip:
                spec = None
                tag_problems = [p for p in tag_problems
                                if p.key_path.rsplit(".", 1)[-1] not in skip]
            problems.extend(tag_problems)
            if spec is not None:
                specs.append(spec)
    if not names and config is not None:
        problems.append(Problem(shown, "tags", "the map has no tags",
                                'e.g. [tags.part_count] address = "HR100"'))
    problems.extend(_overlaps(specs, shown))
    problems = _tag_order(problems, names)
    return (config if not problems else None), tuple(specs), problems


def _tag_without_broken_keys(tag_raw: Any) -> tuple[TagConfig | None, set[str]]:
    return without_broken_keys(TagConfig, tag_raw, {"address", "type"})


def compile_map(map_config: MapConfig, protocol: Protocol, *, file: str = "<map>"
                ) -> tuple[TagSpec, ...]:
    """The map's tags as TagSpecs for ``protocol``, in the map's order.

    Pure; raises ConfigError with every problem (bad addresses, overlaps, roles).
    """
    raw = map_config.model_dump(exclude_none=True)
    _, specs, problems = validate_map(raw, protocol, file)
    if problems:
        raise ConfigError(problems)
    return specs


def parse_map_text(text: str, protocol: Protocol | None, shown: str
                   ) -> tuple[MapConfig | None, Protocol, tuple[TagSpec, ...], list[Problem]]:
    """Validate map TOML text. Returns (config or None, protocol used, specs, problems)."""
    raw, problems = parse_toml(text, shown)
    if raw is None:
        return None, protocol or "modbus-tcp", (), problems
    return validate_raw_map(raw, protocol, shown)


def validate_raw_map(raw: dict[str, Any], protocol: Protocol | None, shown: str,
                     context: str = ""
                     ) -> tuple[MapConfig | None, Protocol, tuple[TagSpec, ...], list[Problem]]:
    """validate_map, for ``protocol`` or (None) the one the map's addresses imply.
    Returns (config or None, protocol used, specs, problems)."""
    if protocol is None:
        protocol = infer_protocol(raw_addresses(raw))
    config, specs, problems = validate_map(raw, protocol, shown, context)
    return config, protocol, specs, problems


def raw_addresses(raw: Mapping[str, Any]) -> list[str]:
    """The address texts of parsed map TOML, whatever else is wrong with it."""
    tags = raw.get("tags")
    if not isinstance(tags, dict):
        return []
    return [t["address"] for t in tags.values()
            if isinstance(t, dict) and isinstance(t.get("address"), str)]
