-- koherent: tasks and transaction contexts, the SQL side (the Rust functions verify; these take
-- JSON as jsonb and hand its text to Rust).

CREATE FUNCTION koherent.current_task() RETURNS koherent.task
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    SELECT ROW(c->>'iss', c->>'tsk', c->>'ptk', c->>'rtk', c->>'rcb', c->>'sub',
               c->'act'->>'sub', c->'act'->>'cid', c->>'jti', c->>'ahs', c->>'aha',
               c - '__token', c->>'__token', NULL, NULL, NULL)::koherent.task
      FROM koherent._current_task_claims() c
     WHERE c IS NOT NULL
$$;
COMMENT ON FUNCTION koherent.current_task() IS
  'The verified task of the current transaction (null when none); created_at, organization and assigner_user are null until its row is written.';

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

-- The local user resolver: a function (issuer text, sub text) RETURNS jsonb that finds the local
-- user of a new task's assigner (rcb), for example {"table": "auth_user", "id": 7}. Called once
-- when a task row is made, as its own owner (never with koherent's rights), in a subtransaction:
-- an error or a null leaves task.assigner_user null, and never fails the write. Only the
-- extension owner (and superusers) may call this; null removes the resolver.
CREATE FUNCTION koherent.set_user_resolver(resolver regprocedure) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p pg_proc;
BEGIN
    IF resolver IS NULL THEN
        DELETE FROM koherent.user_resolver;
        RETURN;
    END IF;
    SELECT * INTO p FROM pg_proc WHERE oid = resolver;
    IF p.prokind <> 'f' OR p.proretset OR p.prorettype <> 'jsonb'::regtype OR p.pronargs <> 2
       OR p.proargtypes[0] <> 'text'::regtype OR p.proargtypes[1] <> 'text'::regtype THEN
        RAISE EXCEPTION 'koherent: a user resolver takes (issuer text, sub text) and returns jsonb; % does not', resolver
            USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%') THEN
        RAISE EXCEPTION 'koherent: the user resolver % does not pin its search_path', resolver
            USING ERRCODE = '22023',
                  HINT = 'ALTER FUNCTION ... SET search_path = pg_catalog, pg_temp, and name its tables with their schema: it runs inside other roles'' writes.';
    END IF;
    INSERT INTO koherent.user_resolver (resolver) VALUES (resolver)
        ON CONFLICT (one) DO UPDATE SET resolver = EXCLUDED.resolver, set_by = current_user, set_at = now();
END $$;
COMMENT ON FUNCTION koherent.set_user_resolver(regprocedure) IS
  'Name the function (issuer text, sub text) RETURNS jsonb that finds a new task''s local assigner (null: none). Extension owner only.';

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
