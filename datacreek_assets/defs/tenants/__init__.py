import dagster as dg


def definitions() -> dg.Definitions:
    from datacreek_assets.automation import automation_sensor
    from datacreek_assets.defs.tenants.sensors import tenant_partitions_sync

    return dg.Definitions(sensors=[tenant_partitions_sync, automation_sensor])
