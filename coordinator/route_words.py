"""The literal words of the API's paths that stand where a process name stands.

`GET /api/v1/process/batch_keys/<name>` lists a process's keys, and `GET
/api/v1/process/<name>/events` its history: for a process named `batch_keys` both would be one
path, and the router takes the first route. So app.py spells its routes with these words, and
registration refuses them as names (validation.new_process_name) on every client path.
"""

from __future__ import annotations

from collections.abc import Iterable

# The grant and lease routes: POST /process/batch_keys, .../batch_keys/<external_id>, ...
LEASES = "batch_keys"
ROUTE_WORDS = (LEASES,)

_NAME = "{process_name}"


def words_where_names_stand(paths: Iterable[str]) -> set[str]:
    """The literal segments of `paths` that stand where `{process_name}` stands in another of
    them (after the same segments): the names whose paths two routes would share."""
    split = [path.strip("/").split("/") for path in paths]
    return {
        other[place]
        for named in split
        for place, segment in enumerate(named)
        if segment == _NAME
        for other in split
        if len(other) > place
        and other[:place] == named[:place]
        # A segment in braces is a variable, which any name may fill: not a word.
        and not other[place].startswith("{")
    }
