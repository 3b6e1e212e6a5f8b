"""Device specs as the user gives them: ``--device-spec`` values, ``@file``s and the config.

Every source is read and parsed before discovery runs, so a typo stops the command with a
usage error that says which spec is wrong, and never yields a half-configured report. The
error names the source (``--device-spec #2``, ``@specs.txt line 3``, ``[pci] device_spec[0]``)
before the parser's own message, which names the key and the problem.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pcipass.errors import InvalidDeviceSpec
from pcipass.pci.devspec import DeviceSpec, DeviceSpecSet, parse_device_spec_json, split_spec_lines


@dataclass(frozen=True, slots=True)
class SpecText:
    source: str  # where the user wrote it, for error messages
    text: str


def spec_texts(args: Sequence[str], config: Sequence[str] = ()) -> list[SpecText]:
    """The texts of every spec, in order: the config's first, then the command line's."""
    texts = [SpecText(f"[pci] device_spec[{i}]", t) for i, t in enumerate(config)]
    for n, arg in enumerate(args, start=1):
        if arg.startswith("@"):
            path = Path(arg[1:]).expanduser()
            try:
                content = path.read_text()
            except OSError as exc:
                raise InvalidDeviceSpec(
                    f"--device-spec {arg}: cannot read {path}: {exc.strerror or exc}",
                    field="device_spec",
                ) from None
            for line, raw in enumerate(content.splitlines(), start=1):
                texts.extend(SpecText(f"{arg} line {line}", t) for t in split_spec_lines(raw))
        else:
            texts.append(SpecText(f"--device-spec #{n}", arg))
    return texts


def load_specs(texts: Sequence[SpecText]) -> DeviceSpecSet:
    """Parse all of them; the first bad one is raised, prefixed by where it came from."""
    specs: list[DeviceSpec] = []
    for position, spec in enumerate(texts):
        try:
            specs.extend(parse_device_spec_json(spec.text, position=position))
        except InvalidDeviceSpec as exc:
            raise InvalidDeviceSpec(f"{spec.source}: {exc.message}", field=exc.field) from None
    return DeviceSpecSet(tuple(specs))
