-- koherent: trusted issuer keys and the optional agent-to-role bindings.

CREATE VIEW koherent.issuer_key AS
SELECT issuer, kid,
       jsonb_strip_nulls(jsonb_build_object('kty', 'OKP', 'crv', 'Ed25519', 'kid', kid, 'use', 'sig', 'alg', alg,
                          'x', translate(rtrim(encode(public_key, 'base64'), '='), '+/', '-_'))) AS jwk,
       added_at, added_by, revoked_at, revoked_at IS NULL AS active
  FROM koherent.issuer_key_store;
COMMENT ON VIEW koherent.issuer_key IS 'koherent: trusted issuer keys (public), revoked ones included.';

CREATE FUNCTION koherent.add_issuer_jwks(issuer text, jwks jsonb) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    n integer;
BEGIN
    IF coalesce(issuer, '') = '' THEN
        RAISE EXCEPTION 'koherent.add_issuer_jwks: issuer must be a non-empty text' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO koherent.issuer_key_store AS s (issuer, kid, public_key, alg)
    SELECT add_issuer_jwks.issuer, k.kid, k.x, k.alg FROM koherent._parse_jwks(jwks::text) k
    ON CONFLICT ON CONSTRAINT issuer_key_store_pkey DO UPDATE
       SET public_key = EXCLUDED.public_key, alg = EXCLUDED.alg, revoked_at = NULL, added_at = now(),
           added_by = current_user;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;
COMMENT ON FUNCTION koherent.add_issuer_jwks(text, jsonb) IS
  'Trust the Ed25519 keys of a JWKS for an issuer; returns the number of keys added or replaced.';

CREATE FUNCTION koherent.add_issuer_key(issuer text, kid text, public_key text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    IF coalesce(issuer, '') = '' OR coalesce(kid, '') = '' THEN
        RAISE EXCEPTION 'koherent.add_issuer_key: issuer and kid must be non-empty texts' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO koherent.issuer_key_store AS s (issuer, kid, public_key, alg)
    SELECT add_issuer_key.issuer, add_issuer_key.kid, k.x, k.alg FROM koherent._parse_public_key(public_key) k
    ON CONFLICT ON CONSTRAINT issuer_key_store_pkey DO UPDATE
       SET public_key = EXCLUDED.public_key, alg = EXCLUDED.alg, revoked_at = NULL, added_at = now(),
           added_by = current_user;
END $$;
COMMENT ON FUNCTION koherent.add_issuer_key(text, text, text) IS
  'Trust one Ed25519 public key (a JWK JSON text or an SPKI PEM) for an issuer under a kid.';

CREATE FUNCTION koherent.revoke_issuer_key(issuer text, kid text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    UPDATE koherent.issuer_key_store s SET revoked_at = now()
     WHERE s.issuer = revoke_issuer_key.issuer AND s.kid = revoke_issuer_key.kid AND s.revoked_at IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'koherent.revoke_issuer_key: no active key "%" for issuer "%"', kid, issuer
            USING ERRCODE = 'undefined_object';
    END IF;
END $$;
COMMENT ON FUNCTION koherent.revoke_issuer_key(text, text) IS
  'Stop trusting a key; tokens it signed are refused from the next transaction on, in every session.';

CREATE FUNCTION koherent._keys_changed() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM koherent._invalidate_keys(TG_RELID);
    RETURN NULL;
END $$;
CREATE TRIGGER koherent_keys_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON koherent.issuer_key_store FOR EACH STATEMENT EXECUTE FUNCTION koherent._keys_changed();

CREATE FUNCTION koherent.bind_agent(issuer text, client_id text, role regrole) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    IF coalesce(issuer, '') = '' OR coalesce(client_id, '') = '' OR role IS NULL THEN
        RAISE EXCEPTION 'koherent.bind_agent: issuer, client_id and role must be given' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO koherent.agent_binding_store (issuer, client_id, role_name)
    VALUES (bind_agent.issuer, bind_agent.client_id, (SELECT rolname::text FROM pg_roles WHERE oid = bind_agent.role))
    ON CONFLICT DO NOTHING;
END $$;
COMMENT ON FUNCTION koherent.bind_agent(text, text, regrole) IS
  'Allow role (and roles with its privileges) to present the tokens of agent client_id of issuer; once an agent has a binding, no other role may.';

CREATE FUNCTION koherent.unbind_agent(issuer text, client_id text, role regrole DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    n integer;
BEGIN
    DELETE FROM koherent.agent_binding_store s
     WHERE s.issuer = unbind_agent.issuer AND s.client_id = unbind_agent.client_id
       AND (unbind_agent.role IS NULL
            OR s.role_name = (SELECT rolname::text FROM pg_roles WHERE oid = unbind_agent.role));
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;
COMMENT ON FUNCTION koherent.unbind_agent(text, text, regrole) IS
  'Remove a binding (all of the agent''s when role is null); returns how many were removed.';

CREATE VIEW koherent.agent_binding AS
SELECT issuer, client_id, role_name, added_at, added_by FROM koherent.agent_binding_store;
COMMENT ON VIEW koherent.agent_binding IS 'koherent: which roles may present which agents'' tokens.';

CREATE TRIGGER koherent_bindings_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON koherent.agent_binding_store FOR EACH STATEMENT EXECUTE FUNCTION koherent._keys_changed();

-------------------------------------------------------------------------------------------------
