"""Aliases, flavors and images: validated once here, stored by the store.

Aliases come from two places, the ``[pci] alias`` configuration (read once, never deleted
through the API) and the database; entries of one name from either are alternatives, and
every write is validated against all of them together (:func:`pcipass.pci.alias.build_aliases`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pcipass.errors import Conflict, InvalidInput, InvalidPciRequest, NotFound
from pcipass.pci.alias import (
    Alias,
    AliasEntry,
    alias_entry_to_json,
    build_aliases,
    parse_alias_entry,
    parse_aliases,
)
from pcipass.pci.request import (
    ALIAS_PREFERRED_SPEC,
    ALIAS_SPEC,
    parse_alias_counts,
    validate_flavor_specs,
    validate_image_properties,
)
from pcipass.records import FlavorRecord, ImageRecord
from pcipass.store import Store

MAX_NAME = 255


def check_name(name: object, what: str, field: str = "name") -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput(f"a {what} needs a name", field=field)
    if name != name.strip() or len(name) > MAX_NAME or not name.isprintable():
        raise InvalidInput(f"{what} name {name!r} must be printable, at most {MAX_NAME} "
                           "characters, without surrounding spaces", field=field)
    return name


def check_strings(values: object, field: str) -> dict[str, str]:
    if not isinstance(values, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in values.items()):
        raise InvalidInput(f"{field} must map strings to strings", field=field)
    return dict(values)


class Aliases:
    """Config aliases plus the database's, always read fresh from the database."""

    def __init__(self, store: Store, config: Sequence[str]) -> None:
        self.store = store
        self.config_entries: tuple[AliasEntry, ...] = tuple(
            e for a in parse_aliases(list(config)).values() for e in a.entries)
        self.config_names = frozenset(e.name for e in self.config_entries)
        self._cache: tuple[tuple[str, ...], dict[str, Alias]] | None = None

    def combine(self, stored: Sequence[Mapping[str, Any]]) -> dict[str, Alias]:
        """Config and stored entries as aliases (parsed once per distinct set of entries)."""
        key = tuple(json.dumps(e, sort_keys=True) for e in stored)
        cached = self._cache
        if cached is not None and cached[0] == key:
            return cached[1]
        entries = [*self.config_entries, *(parse_alias_entry(e, where=f"alias {e.get('name')!r}")
                                           for e in stored)]
        built = build_aliases(entries)
        self._cache = (key, built)
        return built

    def all(self) -> dict[str, Alias]:
        return self.combine(self.store.alias_entries())

    def create(self, body: object) -> tuple[Alias, ...]:
        parsed = parse_aliases(body)
        new = [alias_entry_to_json(e) for a in parsed.values() for e in a.entries]
        stored = {self._key(e) for e in self.store.alias_entries()}
        known = {self._key(alias_entry_to_json(e)) for e in self.config_entries}
        fresh = [e for e in new if self._key(e) not in stored | known]
        result: dict[str, Alias] = {}

        def check(everything: list[dict[str, Any]]) -> None:
            result.update(self.combine(everything))

        self.store.add_aliases(fresh, check)
        return tuple(result[name] for name in parsed)

    @staticmethod
    def _key(entry: Mapping[str, Any]) -> str:
        return repr(sorted(entry.items()))

    def get(self, name: str) -> Alias:
        alias = self.all().get(name)
        if alias is None:
            raise NotFound(f"alias {name!r} not found", field="alias")
        return alias

    def delete(self, name: str) -> None:
        if name in self.config_names:
            raise Conflict(f"alias {name!r} comes from the [pci] alias configuration: remove "
                           "it there", field="alias")

        def check(flavors: tuple[FlavorRecord, ...]) -> None:
            users = sorted(f.name for f in flavors if name in flavor_aliases(f.extra_specs))
            if users:
                raise Conflict(f"alias {name!r} is used by flavor{'s' if len(users) > 1 else ''} "
                               f"{', '.join(users)}", field="alias")

        if not self.store.delete_alias(name, check):
            raise NotFound(f"alias {name!r} not found", field="alias")


def flavor_aliases(extra_specs: Mapping[str, str]) -> set[str]:
    """The alias names a flavor asks for, hard or soft (unparseable specs name none)."""
    names: set[str] = set()
    for key in (ALIAS_SPEC, ALIAS_PREFERRED_SPEC):
        if key in extra_specs:
            try:
                names.update(n for n, _c in parse_alias_counts(extra_specs[key], key=key))
            except InvalidPciRequest:
                continue
    return names


def create_flavor(store: Store, aliases: Aliases, *, name: str, vcpus: int, ram_mb: int,
                  disk_gb: int, extra_specs: object, is_public: bool,
                  projects: Sequence[str]) -> FlavorRecord:
    check_name(name, "flavor")
    for field, value, least in (("vcpus", vcpus, 1), ("ram_mb", ram_mb, 1),
                                ("disk_gb", disk_gb, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise InvalidInput(f"{field} must be a whole number of at least {least}",
                               field=field)
    specs = check_strings(extra_specs, "extra_specs")
    listed = [check_name(p, "project", "projects") for p in projects]
    if is_public and listed:
        raise InvalidInput("a public flavor is open to every project: give projects only "
                           "with is_public false", field="projects")

    def check(entries: list[dict[str, Any]]) -> None:
        validate_flavor_specs(specs, aliases.combine(entries), vcpus=vcpus, ram_mb=ram_mb)

    return store.create_flavor(name=name, vcpus=vcpus, ram_mb=ram_mb, disk_gb=disk_gb,
                               extra_specs=specs, is_public=is_public, projects=listed,
                               check=check)


def create_image(store: Store, *, name: str, source: str, properties: object,
                 project: str | None) -> ImageRecord:
    check_name(name, "image")
    if not isinstance(source, str) or not source.strip():
        raise InvalidInput("an image needs a source: the disk file's path on the hosts",
                           field="source")
    props = check_strings(properties, "properties")
    validate_image_properties(props, image=name)
    return store.create_image(name=name, source=source, properties=props, project=project)
