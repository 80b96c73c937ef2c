"""Datacreek code location. Thin: the definitions are built by datacreek_assets.defs
when Dagster loads this module, from the profile in $DATACREEK_PROFILE."""

import dagster as dg

from datacreek_assets.defs import build_definitions


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
