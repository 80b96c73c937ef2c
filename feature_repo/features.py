"""Datacreek's Feast feature repository: what the feature store holds.

Vectors are keyed by (tenant_id, embedding_hash): two entities, so a lookup
must name the tenant and one tenant's key never matches another's vector.
The data source path is the deployment's (a local directory or an S3 prefix),
so the objects are built by a function rather than at import.
"""

from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Bool, Bytes, Float32, String

FEATURE_VIEW = "chunk_embeddings"
TOPOLOGY_VIEW = "chunk_topology"


def definitions(offline_dir: str, s3_endpoint: str | None = None) -> list:
    """Entities and feature views; each view reads ``<offline_dir>/<view name>/``."""
    tenant = Entity(name="tenant", join_keys=["tenant_id"], value_type=ValueType.STRING,
                    description="validated tenant id")
    embedding = Entity(name="embedding", join_keys=["embedding_hash"], value_type=ValueType.STRING,
                       description="SHA-256 of the embedding model id and the chunk's normalised text")
    source = FileSource(name="chunk_embeddings_source", path=f"{offline_dir}/{FEATURE_VIEW}",
                        timestamp_field="event_timestamp", s3_endpoint_override=s3_endpoint)
    view = FeatureView(
        name=FEATURE_VIEW,
        entities=[tenant, embedding],
        ttl=timedelta(0),  # vectors do not expire
        schema=[
            Field(name="vector_fp8", dtype=Bytes, description="384 float8 e4m3 values, raw bytes"),
            Field(name="scale", dtype=Float32, description="per-vector scale: value = fp8 * scale"),
            Field(name="deleted", dtype=Bool, description="soft-deleted chunk: excluded from lookups"),
            Field(name="chunk_id", dtype=String),
            Field(name="doc_id", dtype=String),
        ],
        source=source,
        online=True,
    )
    topology = FeatureView(
        name=TOPOLOGY_VIEW,
        entities=[tenant, embedding],
        ttl=timedelta(0),
        schema=[
            Field(name="doc_signature", dtype=Bytes,
                  description="512-bit MinHash of the chunk's document persistence diagram (H0-H2)"),
            Field(name="deleted", dtype=Bool),
            Field(name="chunk_id", dtype=String),
            Field(name="doc_id", dtype=String),
        ],
        source=FileSource(name="chunk_topology_source", path=f"{offline_dir}/{TOPOLOGY_VIEW}",
                          timestamp_field="event_timestamp", s3_endpoint_override=s3_endpoint),
        online=True,
    )
    return [tenant, embedding, view, topology]
