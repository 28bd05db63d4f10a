// clients/postgraphile: what an existing PostGraphile app imports.
import { test } from "node:test";
import assert from "node:assert/strict";
import { KOHERENT_SCHEMA, koherentOptions, koherentPgSettings, makeKoherentPgSettings } from "../clients/postgraphile/index.mjs";

test("the Rekuest-Task header becomes koherent.task_token, nothing else does", () => {
  assert.deepEqual(koherentPgSettings({ headers: { "rekuest-task": "  eyJ.a.b " } }), { "koherent.task_token": "eyJ.a.b" });
  assert.deepEqual(koherentPgSettings({ headers: {} }), {});
  assert.deepEqual(koherentPgSettings({ headers: { "rekuest-task": "   " } }), {});
  assert.deepEqual(koherentPgSettings({ headers: { "rekuest-task": ["t1", "t2"] } }), { "koherent.task_token": "t1" });
  const custom = makeKoherentPgSettings("X-Task-Token");
  assert.deepEqual(custom({ headers: { "x-task-token": "t" } }), { "koherent.task_token": "t" });
  assert.deepEqual(custom({ headers: { "rekuest-task": "t" } }), {});
});

test("the organization and user come from the application's own authentication", () => {
  const settings = makeKoherentPgSettings(undefined, {
    organization: (req) => req.user?.org, appUser: (req) => req.user?.email });
  assert.deepEqual(settings({ headers: { "rekuest-task": "t" }, user: { org: "acme", email: "ana@acme" } }),
    { "koherent.task_token": "t", "koherent.organization": "acme", "koherent.app_user": "ana@acme" });
  assert.deepEqual(settings({ headers: {} }), {});
  // a client's own header names no organization
  assert.deepEqual(koherentPgSettings({ headers: { "koherent-organization": "acme" } }), {});
});

test("the options koherent needs", () => {
  // nothing that widens what PostGraphile shows: koherent's types are in a schema of their own
  assert.deepEqual(koherentOptions, { setofFunctionsContainNulls: false, extendedErrors: ["errcode", "detail", "hint"] });
  assert.equal(KOHERENT_SCHEMA, "koherent_graphql");
  assert.throws(() => { koherentOptions.includeExtensionResources = true; });
});
