# SPDX-License-Identifier: Apache-2.0
"""What this probe offers: the enabled, available measurements and their capabilities."""

import importlib
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from probe_daemon.measurements.base import CapabilityTemplate, Measurement
from probe_daemon.model import Statement
from probe_daemon.registry import (
    MEASUREMENT_MODULES,
    ParameterError,
    check_parameter,
    declared_elements,
    primitive,
)
from probe_daemon.settings import Config
from probe_daemon.when import When, WhenError, within

log = logging.getLogger(__name__)

# The RI supervisor relabels a specification "<capability label>-<serial>".
_SERIAL_SUFFIX = re.compile(r"-\d+$")


class SpecificationError(ValueError):
    """A specification this probe will not run; the text goes to the client."""


@dataclass(frozen=True)
class Offer:
    measurement: Measurement
    template: CapabilityTemplate
    statement: Statement


def load_measurements(config: Config) -> list[Measurement]:
    measurements: list[Measurement] = []
    for name, target in MEASUREMENT_MODULES.items():
        if not config.measurement_enabled(name):
            log.info("%s: switched off in the configuration", name)
            continue
        module_name, class_name = target.split(":")
        module = importlib.import_module(module_name)
        options = dict(config.measurement_sections.get(name, {}))
        options.pop("enabled", None)
        measurements.append(getattr(module, class_name)(options))
    return measurements


# Core registry element naming the probe a capability belongs to. The RI supervisor knows a
# capability by a hash of its content: without it, two probes with the same measurements
# would offer one capability between them, and a client could not choose the probe.
DEVICE_ELEMENT = "source.device"


class Catalog:
    def __init__(self, measurements: list[Measurement], device: str = "") -> None:
        self.elements = declared_elements()
        self.offers: dict[str, Offer] = {}
        self.withheld: dict[str, str] = {}
        for measurement in measurements:
            reason = measurement.unavailable()
            if reason:
                self.withheld[measurement.name] = reason
                log.warning("%s: not offered: %s", measurement.name, reason)
                continue
            for template in measurement.capabilities():
                statement = Statement(
                    kind="capability", label=template.label, when=template.when,
                    parameters=dict(template.parameters), results=list(template.results),
                    registry=template.registry, link="",
                    metadata={**({DEVICE_ELEMENT: device} if device else {}),
                              **template.metadata})
                statement.token = statement.schema_token()
                self.offers[template.label] = Offer(measurement, template, statement)

    def capabilities(self) -> list[Statement]:
        return [offer.statement for offer in self.offers.values()]

    def match(self, spec: Statement) -> tuple[Offer, When]:
        """The offer a specification is for, with its checked scope; or SpecificationError."""
        offer = self.offers.get(spec.label) or self.offers.get(_SERIAL_SUFFIX.sub("", spec.label))
        if offer is None:
            raise SpecificationError(f"no capability {spec.label!r} on this probe")
        template = offer.template
        unknown = set(spec.parameters) - set(template.parameters)
        if unknown:
            raise SpecificationError(f"unknown parameters: {', '.join(sorted(unknown))}")
        for name, constraint in template.parameters.items():
            if name not in spec.parameters:
                raise SpecificationError(f"missing parameter {name}")
            try:
                check_parameter(name, primitive(name, self.elements), constraint,
                                spec.parameters[name])
            except ParameterError as exc:
                raise SpecificationError(str(exc)) from None
        try:
            when = When.parse(spec.when)
            offered = When.parse(template.when)
        except WhenError as exc:
            raise SpecificationError(f"when: {exc}") from None
        if not within(offered, when):
            raise SpecificationError(f"when {spec.when!r} is not within {template.when!r}")
        if when.ended(datetime.now(UTC)):
            # As the RI: a scope over before it arrives is not run (nor run at another time).
            raise SpecificationError(f"when {spec.when!r} is not within {template.when!r}: "
                                     "it ended before the specification arrived")
        return offer, when
