"""Per-tenant credentials, where the store can scope them to one tenant.

A tenant's run and step pods get these instead of the platform's: a pod of one tenant then holds
nothing that reaches another tenant's rows, graph or documents.

- PostgreSQL (tenant registry, credit ledger, release store): one login role per tenant,
  ``dc_tenant_<id>`` ('-' written '_'; ids have no '_', so the name maps back). Row-level
  security on every table holding tenant rows lets the role read and write only rows whose
  ``tenant_id`` is its own; the platform's role owns the tables and is not subject to it. The
  role gets only what a run does (``TABLE_GRANTS``): it bills itself, it does not top itself
  up. A trigger refuses it a higher balance, other prices or a new account, and a restrictive
  policy lets it book debits only.
- FalkorDB: a Redis ACL user per tenant allowed the graph commands on the tenant's graph key and
  nothing else (no SCAN, KEYS or GRAPH.LIST to learn other tenants' names), saved to the ACL file.
- Kafka: a SCRAM user per tenant on the tenant listener, whose ACLs allow writing (and
  describing) the graph events topic and nothing else: no reading any topic, no other topic, no
  consumer group. Kafka cannot scope a write to a key, so the tenant also gets its event signing
  key, and the stream job refuses events not signed with their tenant's (``streaming.event_auth``).
- Serving: a token for the serving control API (``serving.control_api``), which releases the
  tenant's models and nobody else's; the tenant's pods hold no Ray credentials.
- S3 and Neo4j Enterprise: the tenant chart renders the IAM policy (the tenant's prefixes only)
  and the Cypher that creates a user for the tenant's database.

What stays shared, and why, is in the README (Deploying, per-tenant credentials).
"""

from __future__ import annotations

import secrets

from datacreek_assets.settings import ConfigError
from datacreek_assets.tenancy import validate_tenant_id

ROLE_PREFIX = "dc_tenant_"
TENANT_SECRET = "datacreek-tenant"  # in the tenant's namespace; run and step pods read it after the platform's
# every table whose rows carry a tenant_id (each store creates its own), and what a tenant's run
# may do there: read its registration, bill its meters, read its releases (the serving control
# API records them: a role that could write one could skip the canary policy or name any file)
TABLE_GRANTS = {
    "tenants": "SELECT", "tenant_changes": "SELECT",
    "credit_accounts": "SELECT, INSERT, UPDATE",  # INSERT: the ledger's ON CONFLICT DO NOTHING needs it
    "credit_transactions": "SELECT, INSERT", "meters": "SELECT, INSERT, UPDATE",
    "serving_api_keys": "SELECT", "serving_releases": "SELECT",
    # its review queue, rewritten by its run; curator keys are the platform's alone
    "edge_review_queue": "SELECT, INSERT, DELETE", "curation_settings": "SELECT", "edge_repair_log": "SELECT",
}
TENANT_ROW_TABLES = tuple(TABLE_GRANTS)
# the tenant id of the connected role ('' for the platform's own role, which matches no row)
_ROLE_TENANT = (f"(CASE WHEN current_user LIKE '{ROLE_PREFIX}%' "
                f"THEN replace(substr(current_user, {len(ROLE_PREFIX) + 1}), '_', '-') ELSE '' END)")
_GUARD = f"""
CREATE OR REPLACE FUNCTION datacreek_tenant_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF current_user NOT LIKE '{ROLE_PREFIX}%' THEN
    RETURN NEW;
  END IF;
  IF TG_OP = 'INSERT' THEN
    -- ON CONFLICT DO NOTHING on an open account: skip quietly; a new account is the platform's to open
    IF EXISTS (SELECT 1 FROM credit_accounts WHERE tenant_id = NEW.tenant_id) THEN
      RETURN NULL;
    END IF;
  ELSIF NEW.balance_micro <= OLD.balance_micro AND NEW.gpu_price_micro = OLD.gpu_price_micro
      AND NEW.cpu_price_micro = OLD.cpu_price_micro THEN
    RETURN NEW;
  END IF;
  RAISE EXCEPTION 'a tenant''s credentials may spend its credits, not add to them, open its account or change its prices'
    USING ERRCODE = 'insufficient_privilege';
END $$
"""


class CredentialError(ConfigError):
    """The stores cannot hold per-tenant credentials as configured (SQLite, say)."""


def postgres_role(tenant_id: str) -> str:
    return ROLE_PREFIX + validate_tenant_id(tenant_id).replace("-", "_")


def enable_tenant_row_security(engine) -> list[str]:
    """Row-level security on this database's tenant-row tables (idempotent); returns the tables."""
    from sqlalchemy import inspect, text

    with engine.begin() as conn:
        tables = sorted(set(inspect(conn).get_table_names()) & set(TENANT_ROW_TABLES))
        for table in tables:
            conn.execute(text(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY"))
            conn.execute(text(f"DROP POLICY IF EXISTS tenant_rows ON {table}"))
            conn.execute(text(f"CREATE POLICY tenant_rows ON {table} USING (tenant_id = {_ROLE_TENANT}) "
                              f"WITH CHECK (tenant_id = {_ROLE_TENANT})"))
        if "credit_accounts" in tables:
            conn.execute(text(_GUARD))
            conn.execute(text("DROP TRIGGER IF EXISTS tenant_guard ON credit_accounts"))
            conn.execute(text("CREATE TRIGGER tenant_guard BEFORE INSERT OR UPDATE ON credit_accounts "
                              "FOR EACH ROW EXECUTE FUNCTION datacreek_tenant_guard()"))
        if "credit_transactions" in tables:  # restrictive: AND-ed with tenant_rows, debits only
            conn.execute(text("DROP POLICY IF EXISTS debits_only ON credit_transactions"))
            conn.execute(text(f"CREATE POLICY debits_only ON credit_transactions AS RESTRICTIVE FOR INSERT "
                              f"WITH CHECK (current_user NOT LIKE '{ROLE_PREFIX}%' OR amount_micro <= 0)"))
    return tables


def new_password() -> str:
    return secrets.token_hex(24)  # hex: safe inside a SQL literal and an ACL rule


def grant_postgres_role(engine, tenant_id: str, password: str | None = None) -> str:
    """Create the tenant's role (or set its password), allowed the tenant-row tables of this
    database under row-level security; returns the password. Needs CREATEROLE. The role is the
    server's, not the database's: grant it in each store's database with the same password."""
    from sqlalchemy import text

    if engine.dialect.name != "postgresql":
        raise CredentialError("per-tenant roles need PostgreSQL (SQLite has no roles)")
    role, password = postgres_role(tenant_id), password or new_password()
    if not all(c in "0123456789abcdef" for c in password):
        raise ValueError("passwords here are hex (new_password())")
    tables = enable_tenant_row_security(engine)
    with engine.begin() as conn:
        exists = _role_exists(conn, role)
        # DDL takes no bound parameters: the role name is a validated id, the password hex
        conn.execute(text(f"{'ALTER' if exists else 'CREATE'} ROLE {role} LOGIN NOSUPERUSER NOCREATEDB "
                          f"NOCREATEROLE NOBYPASSRLS NOINHERIT PASSWORD '{password}'"))
        database = conn.execute(text("SELECT current_database()")).scalar()
        conn.execute(text(f'GRANT CONNECT ON DATABASE "{database}" TO {role}'))
        conn.execute(text(f"GRANT USAGE ON SCHEMA public TO {role}"))
        for table in tables:  # exactly these: a right an earlier issue granted goes with a rotation
            conn.execute(text(f"REVOKE ALL ON {table} FROM {role}"))
            conn.execute(text(f"GRANT {TABLE_GRANTS[table]} ON {table} TO {role}"))
        conn.execute(text(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}"))
    return password


def revoke_postgres_role(engine, tenant_id: str) -> bool:
    """Take back the tenant role's rights in this database (DROP OWNED works one database at a
    time); ``drop_postgres_role`` then drops the role, once every store's database is done."""
    return _if_role_exists(engine, tenant_id, "DROP OWNED BY {role}")


def drop_postgres_role(engine, tenant_id: str) -> bool:
    return _if_role_exists(engine, tenant_id, "DROP ROLE {role}")


def _role_exists(conn, role: str) -> bool:
    from sqlalchemy import text

    return bool(conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :role"), {"role": role}).scalar())


def _if_role_exists(engine, tenant_id: str, statement: str) -> bool:
    """Run ``statement`` (DDL naming ``{role}``) when the tenant's role exists; whether it did."""
    from sqlalchemy import text

    role = postgres_role(tenant_id)
    with engine.begin() as conn:
        if not _role_exists(conn, role):
            return False
        conn.execute(text(statement.format(role=role)))
    return True


def role_url(url: str, tenant_id: str, password: str) -> str:
    """The store's SQLAlchemy URL with the tenant's role and password instead of the platform's."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(username=postgres_role(tenant_id), password=password).render_as_string(
        hide_password=False)


def falkordb_user(tenant_id: str) -> str:
    return "tenant-" + validate_tenant_id(tenant_id)


def grant_falkordb_user(client, tenant_id: str) -> str:
    """A Redis ACL user allowed graph commands on the tenant's graph key only; returns its password.
    ``client`` is a redis.Redis connected as an administrator."""
    from datacreek_assets.hot_graph import hot_graph_name

    password = new_password()
    # an allow-list ("reset" starts from -@all): the graph commands, EXISTS for scope checks, and
    # what a client sends on connecting (INFO: the FalkorDB client reads the server's mode)
    client.execute_command("ACL", "SETUSER", falkordb_user(tenant_id), "reset", "on", f">{password}",
                           f"~{hot_graph_name(tenant_id)}", "+graph.query", "+graph.ro_query", "+graph.delete",
                           "+graph.explain", "+graph.profile", "+exists", "+ping", "+info", "+hello", "+auth",
                           "+client|setinfo", "+client|setname")
    _save_acl(client)
    return password


def revoke_falkordb_user(client, tenant_id: str) -> bool:
    deleted = bool(client.execute_command("ACL", "DELUSER", falkordb_user(tenant_id)))
    if deleted:
        _save_acl(client)
    return deleted


def _save_acl(client) -> None:
    """Users not in the ACL file are gone at the server's next restart, and the tenant's pods
    with them: a server without one is refused."""
    import redis

    try:
        client.execute_command("ACL", "SAVE")
    except redis.ResponseError as err:
        raise CredentialError(f"FalkorDB cannot keep its users across restarts ({err}): start it with "
                              "--aclfile") from None


def kafka_user(tenant_id: str) -> str:
    return "tenant-" + validate_tenant_id(tenant_id)


def tenant_of_kafka_user(username: str) -> str:
    if not username.startswith("tenant-"):
        raise ConfigError(f"Kafka user {username!r} is not a tenant's (tenant-<id>)")
    return validate_tenant_id(username[len("tenant-"):])


def _kafka_admin(bootstrap: str):
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})


def _kafka_acls(tenant_id: str) -> list:
    from confluent_kafka.admin import AclBinding, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

    from datacreek_assets.streaming.events import EVENTS_TOPIC

    return [AclBinding(ResourceType.TOPIC, EVENTS_TOPIC, ResourcePatternType.LITERAL, f"User:{kafka_user(tenant_id)}",
                       "*", operation, AclPermissionType.ALLOW)
            for operation in (AclOperation.WRITE, AclOperation.DESCRIBE)]


def _wait_all(futures, what: str, timeout: float = 30.0) -> list:
    from confluent_kafka import KafkaException

    try:
        return [future.result(timeout=timeout) for future in futures]
    except KafkaException as err:
        raise CredentialError(f"Kafka refused to {what}: {err}") from None
    except TimeoutError:
        raise CredentialError(f"Kafka did not answer within {timeout:.0f}s when asked to {what}") from None


def grant_kafka_user(bootstrap: str, tenant_id: str) -> str:
    """Create (or rotate) the tenant's SCRAM user and its ACLs; returns its password. ``bootstrap``
    is the platform's listener (its principal may manage users and ACLs)."""
    from confluent_kafka.admin import ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

    admin, password = _kafka_admin(bootstrap), new_password()
    upsert = UserScramCredentialUpsertion(kafka_user(tenant_id), ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512,
                                                                                      8192), password.encode())
    _wait_all(admin.alter_user_scram_credentials([upsert]).values(), "set the tenant's Kafka user")
    _wait_all(admin.create_acls(_kafka_acls(tenant_id)).values(), "grant the tenant's Kafka ACLs")
    return password


def revoke_kafka_user(bootstrap: str, tenant_id: str) -> bool:
    """Delete the tenant's ACLs and SCRAM user; whether the user existed."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import (AclBindingFilter, AclOperation, AclPermissionType, ResourcePatternType,
                                       ResourceType, ScramMechanism, UserScramCredentialDeletion)

    admin, user = _kafka_admin(bootstrap), kafka_user(tenant_id)
    every_acl = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, f"User:{user}", None,
                                 AclOperation.ANY, AclPermissionType.ANY)
    _wait_all(admin.delete_acls([every_acl]).values(), "delete the tenant's Kafka ACLs")
    try:
        described = admin.describe_user_scram_credentials([user])[user].result(timeout=30)
    except KafkaException as err:
        if err.args[0].code() == KafkaError.RESOURCE_NOT_FOUND:  # never issued, or revoked before
            return False
        raise CredentialError(f"Kafka refused to describe the tenant's Kafka user: {err}") from None
    if not described.scram_credential_infos:
        return False
    deletion = UserScramCredentialDeletion(user, ScramMechanism.SCRAM_SHA_512)
    _wait_all(admin.alter_user_scram_credentials([deletion]).values(), "delete the tenant's Kafka user")
    return True


def _sql_urls(resources: dict) -> dict[str, str]:
    """The environment variable and URL of each SQL store that holds tenant rows."""
    return {"DATACREEK_POSTGRES_URL": resources["tenant_registry"].url,
            "DATACREEK_LEDGER_URL": resources["credit_ledger"].url,
            "DATACREEK_SERVING_STORE_URL": resources["serving"].store_url,
            "DATACREEK_CURATION_STORE_URL": resources["curation"].url}


def issue_credentials(resources: dict, tenant_id: str) -> dict[str, str]:
    """Create or rotate the tenant's PostgreSQL role (in each store's database) and FalkorDB user;
    returns the variables that replace the platform's in the tenant's pods."""
    from sqlalchemy import create_engine

    tenant_id = validate_tenant_id(tenant_id)
    urls = _sql_urls(resources)
    if any(not url.startswith("postgresql") for url in urls.values()):
        raise CredentialError("per-tenant credentials need the prod profile's PostgreSQL stores")
    resources["credit_ledger"].ledger().open_account(tenant_id)  # the platform opens it, the tenant bills it
    resources["curation"].review_store(), resources["curation"].repair_log()  # their tables, to grant on
    password, env = new_password(), {}
    for name, url in urls.items():
        engine = create_engine(url)
        try:
            grant_postgres_role(engine, tenant_id, password)
        finally:
            engine.dispose()
        env[name] = role_url(url, tenant_id, password)
    falkordb = resources["hot_graph"].store().client.connection
    env["DATACREEK_FALKORDB_USER"] = falkordb_user(tenant_id)
    env["DATACREEK_FALKORDB_PASSWORD"] = grant_falkordb_user(falkordb, tenant_id)
    env.update(kafka_credentials(resources["event_log"], falkordb, tenant_id))
    env.update(serving_control_credentials(resources["serving"], tenant_id))
    return env


def serving_control_credentials(serving, tenant_id: str) -> dict[str, str]:
    """The tenant's token for the serving control API, where the platform runs one (its release
    steps go there, not to Ray: `serving.control_api`)."""
    from datacreek_assets.serving.control_api import control_token

    if not serving.control_secret:
        return {}
    # blanked: the platform's secret (it makes every tenant's token), Ray and the router's admin
    # token, should the platform's variables a tenant's pods read still name them
    return {"DATACREEK_SERVING_CONTROL_TOKEN": control_token(serving.control_secret, tenant_id),
            "DATACREEK_SERVING_CONTROL_SECRET": "", "DATACREEK_RAY_ADDRESS": "", "DATACREEK_SERVING_ADMIN_TOKEN": ""}


def kafka_credentials(event_log, falkordb, tenant_id: str) -> dict[str, str]:
    """The tenant's Kafka user on the tenant listener, and a new generation of its event signing
    key in place of the platform's secret: the key issued before is refused from now on
    (``event_log``: the platform's EventLogResource; ``falkordb``: a redis.Redis as the platform,
    where the generations are kept)."""
    from datacreek_assets.streaming.event_auth import KeyGenerations, tenant_signing_key

    if not event_log.tenant_bootstrap_servers:
        raise CredentialError("the event log has no tenant listener (DATACREEK_KAFKA_TENANT_BOOTSTRAP)")
    if not event_log.signing_secret:
        raise CredentialError("the event log has no signing secret (DATACREEK_EVENT_SIGNING_SECRET)")
    password = grant_kafka_user(event_log.bootstrap_servers, tenant_id)
    generation = KeyGenerations(falkordb).rotate(tenant_id)
    return {"DATACREEK_KAFKA_BOOTSTRAP": event_log.tenant_bootstrap_servers,
            "DATACREEK_KAFKA_TENANT_BOOTSTRAP": event_log.tenant_bootstrap_servers,
            "DATACREEK_KAFKA_USERNAME": kafka_user(tenant_id),
            "DATACREEK_KAFKA_PASSWORD": password,
            "DATACREEK_EVENT_SIGNING_KEY": tenant_signing_key(event_log.signing_secret, tenant_id, generation),
            "DATACREEK_EVENT_SIGNING_SECRET": ""}  # the platform's, which signs for every tenant


def revoke_credentials(resources: dict, tenant_id: str) -> list[str]:
    """Drop what ``issue_credentials`` made (where it exists); returns what was dropped."""
    from datacreek_assets.streaming.event_auth import KeyGenerations

    from sqlalchemy import create_engine

    dropped, engine = [], None
    for name, url in _sql_urls(resources).items():
        if url.startswith("postgresql"):
            engine = create_engine(url)
            try:
                if revoke_postgres_role(engine, tenant_id):
                    dropped.append(f"postgres grants in {name}")
            finally:
                engine.dispose()
    if engine is not None and drop_postgres_role(engine, tenant_id):
        dropped.append("postgres role")
    if revoke_falkordb_user(resources["hot_graph"].store().client.connection, tenant_id):
        dropped.append("falkordb user")
    if revoke_kafka_user(resources["event_log"].bootstrap_servers, tenant_id):
        dropped.append("kafka user")
    keys = KeyGenerations(resources["hot_graph"].store().client.connection)
    if keys.current(tenant_id):  # its key is retired: a new generation, issued to nobody
        dropped.append(f"event signing key (generation {keys.rotate(tenant_id) - 1})")
    return dropped


def secret_manifest(tenant_id: str, env: dict[str, str]) -> dict:
    """The Kubernetes Secret the tenant's run and step pods read (after the platform's secret, so
    its variables win)."""
    from datacreek_assets.k8s_launcher import tenant_namespace

    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": TENANT_SECRET, "namespace": tenant_namespace(tenant_id),
                         "labels": {"app.kubernetes.io/part-of": "datacreek", "datacreek/tenant": tenant_id}},
            "stringData": env}
