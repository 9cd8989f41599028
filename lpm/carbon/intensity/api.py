"""The Electricity Maps API v3 (needs a token and the network)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from lpm.carbon.intensity.base import Intensity
from lpm.carbon.intensity.periods import span

ELECTRICITYMAPS_URL = "https://api.electricitymap.org/v3"


class ElectricityMapsApi:
    """Electricity Maps API v3: latest reading, or the past hour containing `when`."""

    def __init__(
        self,
        token: str,
        base_url: str = ELECTRICITYMAPS_URL,
        timeout_s: float = 10,
    ) -> None:
        self.token, self.base_url, self.timeout_s = token, base_url.rstrip("/"), timeout_s

    def _get(self, path: str, params: Mapping[str, str], zone: str) -> Any:
        query = urllib.parse.urlencode(params)
        url = f"{self.base_url}/{path}" + (f"?{query}" if query else "")
        request = urllib.request.Request(url, headers={"auth-token": self.token})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.load(response)
        except urllib.error.HTTPError as e:
            body = e.read().decode("utf-8", "replace")[:200]
            raise RuntimeError(
                f"Electricity Maps API, zone {zone!r}: HTTP {e.code} {e.reason}: {body}"
            ) from e
        except urllib.error.URLError as e:
            raise RuntimeError(f"Electricity Maps API, zone {zone!r}: {e.reason}") from e

    def zones(self) -> list[str]:
        return sorted(self._get("zones", {}, "*"))

    def lookup(self, zone: str, when: datetime | str | None = None) -> Intensity:
        params = {"zone": zone.strip()}
        if when is None:
            path = "carbon-intensity/latest"
        else:
            start, _, span_kind = span(when)
            if span_kind is not None:
                # The API prices one hour; a month's mean needs the data portal's export.
                raise ValueError(
                    f"the Electricity Maps API takes an ISO time, not {when!r}; for monthly "
                    "means export the zone's CSV from the data portal and use source=csv"
                )
            path = "carbon-intensity/past"
            params["datetime"] = start.strftime("%Y-%m-%dT%H:%M:%SZ")
        data = self._get(path, params, zone)
        if data.get("carbonIntensity") is None:
            raise RuntimeError(f"Electricity Maps API, zone {zone!r}: no carbonIntensity in {data}")
        estimated = " (estimated)" if data.get("isEstimated") else ""
        return Intensity(
            float(data["carbonIntensity"]),
            data.get("zone", zone),
            data.get("datetime", params.get("datetime", "")),
            f"Electricity Maps API{estimated}",
            "live" if when is None else "hourly",
            data.get("emissionFactorType", "lifecycle"),
        )
