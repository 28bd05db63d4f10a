-- koherent: catalog tables. Loaded first (bootstrap); functions and views follow in history.sql.
--
-- Nothing here is writable by PUBLIC. History, task and context rows are written only by the
-- history triggers (SECURITY DEFINER, owned by the extension owner); keys only by the owner.

CREATE SCHEMA IF NOT EXISTS koherent_history;
COMMENT ON SCHEMA koherent_history IS
  'koherent: one typed history table per tracked table (same column names and types).';
REVOKE ALL ON SCHEMA koherent_history FROM PUBLIC;

-- One number for every history entry of every table, in the order entries were recorded.
CREATE SEQUENCE koherent.history_id_seq AS bigint;

CREATE TABLE koherent.task (
    issuer              text NOT NULL,
    task_id             text NOT NULL,
    parent_task_id      text,
    root_task_id        text NOT NULL,
    assigner_sub        text NOT NULL,
    caller_sub          text NOT NULL,
    agent_sub           text NOT NULL,
    agent_client_id     text NOT NULL,
    token_id            text NOT NULL,
    args_hash           text NOT NULL,
    args_hash_algorithm text NOT NULL,
    claims              jsonb NOT NULL,
    token               text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    -- the organization the task ran in (the token's claim koherent.organization_claim names,
    -- else the koherent.organization setting of the transaction that wrote it first), and the
    -- local user the resolver found for assigner_sub (koherent.set_user_resolver); null: none
    organization        text,
    assigner_user       jsonb,
    PRIMARY KEY (task_id, issuer)
);
CREATE INDEX task_parent_idx ON koherent.task (parent_task_id) WHERE parent_task_id IS NOT NULL;
CREATE INDEX task_root_idx ON koherent.task (root_task_id);
COMMENT ON TABLE koherent.task IS
  'koherent: one row per task id (per issuer) that tracked rows were ever written under; created by the first write, reused by every later one. token is the signed token, so anyone can re-verify it.';

CREATE TABLE koherent.transaction_auth_context (
    id               uuid PRIMARY KEY,
    txid             xid8 NOT NULL,
    task_id          text,
    issuer           text,
    changed_by       text,
    client_id        text,
    db_role          text NOT NULL,
    effective_role   text,
    application_name text,
    client_addr      inet,
    backend_pid      integer NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    metadata         jsonb NOT NULL DEFAULT '{}',
    -- the organization the transaction wrote in (its task's, else the koherent.organization
    -- setting) and the user the application says it acts for (the koherent.app_user setting)
    organization     text,
    app_user         text
);
CREATE INDEX transaction_auth_context_task_idx
    ON koherent.transaction_auth_context (task_id, issuer) WHERE task_id IS NOT NULL;
COMMENT ON TABLE koherent.transaction_auth_context IS
  'koherent: one row per transaction that wrote tracked rows: its task (or none), agent, issuer, database role (session user, and effective_role: the role SET ROLE chose) and client.';

CREATE TABLE koherent.issuer_key_store (
    issuer     text NOT NULL CHECK (issuer <> ''),
    kid        text NOT NULL CHECK (kid <> ''),
    public_key bytea NOT NULL CHECK (length(public_key) = 32),
    alg        text CHECK (alg IN ('Ed25519', 'EdDSA')),  -- a JWK's alg binds the key; null: any
    added_at   timestamptz NOT NULL DEFAULT now(),
    added_by   text NOT NULL DEFAULT current_user,
    revoked_at timestamptz,
    PRIMARY KEY (issuer, kid)
);
COMMENT ON TABLE koherent.issuer_key_store IS
  'koherent: trusted Ed25519 public keys per issuer. Write through add_issuer_jwks / add_issuer_key / revoke_issuer_key.';

-- Optional: the database roles that may present the tokens of an agent (per issuer and agent
-- client id, act.cid). With a binding in place, a token of that agent presented by any other
-- role is refused (28000, presenter_not_bound); an agent without one is presented by anyone.
CREATE TABLE koherent.agent_binding_store (
    issuer     text NOT NULL CHECK (issuer <> ''),
    client_id  text NOT NULL CHECK (client_id <> ''),
    role_name  text NOT NULL,
    added_at   timestamptz NOT NULL DEFAULT now(),
    added_by   text NOT NULL DEFAULT current_user,
    PRIMARY KEY (issuer, client_id, role_name)
);
COMMENT ON TABLE koherent.agent_binding_store IS
  'koherent: roles allowed to present the tokens of an agent (issuer, act.cid). Write through bind_agent / unbind_agent.';
SELECT pg_catalog.pg_extension_config_dump('koherent.agent_binding_store', '');

-- The local user resolver (koherent.set_user_resolver): at most one row.
CREATE TABLE koherent.user_resolver (
    one      boolean PRIMARY KEY DEFAULT true CHECK (one),
    resolver regprocedure NOT NULL,
    set_by   text NOT NULL DEFAULT current_user,
    set_at   timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE koherent.user_resolver IS
  'koherent: the function that finds the local user of a new task''s assigner (issuer, sub) -> jsonb. Write through set_user_resolver.';
SELECT pg_catalog.pg_extension_config_dump('koherent.user_resolver', '');

-- What is tracked. One row per tracking of a table (a dropped table keeps its row).
CREATE TABLE koherent.tracked_config (
    id            integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    relid         oid NOT NULL,
    schema_name   name NOT NULL,
    table_name    name NOT NULL,
    history_table name NOT NULL UNIQUE,
    pk_columns    name[] NOT NULL,
    exclude       text[] NOT NULL DEFAULT '{}',
    require_task  boolean NOT NULL DEFAULT false,
    active        boolean NOT NULL DEFAULT true,
    tracked_since timestamptz NOT NULL DEFAULT now(),
    untracked_at  timestamptz,
    dropped_at    timestamptz
);
CREATE UNIQUE INDEX tracked_config_relid_idx ON koherent.tracked_config (relid) WHERE dropped_at IS NULL;

-- The data columns of each history table. A live column is written; a retired one (its source
-- column was dropped or excluded, or changed to an incompatible type) keeps earlier values.
-- live_from / live_until are history_id bounds, so a CREATE entry lists only the fields that
-- existed when it was recorded.
CREATE TABLE koherent.tracked_column (
    config_id   integer NOT NULL REFERENCES koherent.tracked_config ON DELETE CASCADE,
    column_name name NOT NULL,
    attnum      smallint,
    type_sql    text NOT NULL,
    live_from   bigint NOT NULL,
    live_until  bigint,
    -- the column's identity through renames (the ledger keys images by it)
    column_id   bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    PRIMARY KEY (config_id, column_name)
);

SELECT pg_catalog.pg_extension_config_dump('koherent.task', '');
SELECT pg_catalog.pg_extension_config_dump('koherent.transaction_auth_context', '');
SELECT pg_catalog.pg_extension_config_dump('koherent.issuer_key_store', '');
SELECT pg_catalog.pg_extension_config_dump('koherent.tracked_config', '');
SELECT pg_catalog.pg_extension_config_dump('koherent.tracked_column', '');
-- Sequences too: a restored database continues their numbers (history ids stay unique and
-- increasing across a dump and restore; configuration ids stay unique).
SELECT pg_catalog.pg_extension_config_dump('koherent.history_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('koherent.tracked_config_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('koherent.tracked_column_column_id_seq', '');
