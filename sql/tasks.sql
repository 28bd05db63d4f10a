-- koherent: tasks and transaction contexts, the SQL side (the Rust functions verify; these take
-- JSON as jsonb and hand its text to Rust).

CREATE FUNCTION koherent.current_task() RETURNS koherent.task
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    SELECT ROW(c->>'iss', c->>'tsk', c->>'ptk', c->>'rtk', c->>'rcb', c->>'sub',
               c->'act'->>'sub', c->'act'->>'cid', c->>'jti', c->>'ahs', c->>'aha',
               c - '__token', c->>'__token', NULL)::koherent.task
      FROM koherent._current_task_claims() c
     WHERE c IS NOT NULL
$$;
COMMENT ON FUNCTION koherent.current_task() IS
  'The verified task of the current transaction (null when none); created_at is null until its row is written.';

-- Functions that take JSON from clients take it as jsonb and hand its text to Rust, which
-- parses it with a nesting limit: malformed or too deeply nested input is 22023, never a panic.
CREATE FUNCTION koherent.set_task(token text, args jsonb) RETURNS jsonb
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    SELECT koherent._set_task_args(token, args::text)
$$;
COMMENT ON FUNCTION koherent.set_task(text, jsonb) IS
  'As set_task(token), and refuse the token unless its ahs claim is the sha256-canonical-v1 hash of args.';

CREATE FUNCTION koherent.set_context(metadata jsonb) RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    SELECT koherent._set_context(metadata::text)
$$;
COMMENT ON FUNCTION koherent.set_context(jsonb) IS
  'Add free-form metadata (a JSON object, merged) to the current transaction''s auth context.';

CREATE FUNCTION koherent.canonical_args(args jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT koherent._canonical_args(args::text)
$$;
COMMENT ON FUNCTION koherent.canonical_args(jsonb) IS
  'The sha256-canonical-v1 canonical JSON text of task arguments.';

CREATE FUNCTION koherent.args_hash(args jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT koherent._args_hash(args::text)
$$;
COMMENT ON FUNCTION koherent.args_hash(jsonb) IS
  'The sha256-canonical-v1 hash of task arguments (what a token''s ahs claim holds; null hashes as {}).';
