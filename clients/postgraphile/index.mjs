// koherent for an existing PostGraphile 4 app: an import, one more schema and pgSettings.
//
//   import { koherentPgSettings, koherentOptions, KOHERENT_SCHEMA } from "koherent-postgraphile";
//   postgraphile(DATABASE_URL, ["public", KOHERENT_SCHEMA], {
//     ...yourOptions,
//     ...koherentOptions,
//     pgSettings: koherentPgSettings,            // or: (req) => ({ ...yours(req), ...koherentPgSettings(req) })
//   });
//
// pgSettings: the agent's `Rekuest-Task` header (name configurable) becomes the transaction-local
// setting `koherent.task_token`; PostGraphile applies pgSettings with set_config(..., true) at
// the start of every request's transaction, and the extension verifies the token at the first
// tracked write (an invalid token fails that write: the mutation fails, nothing is written).

export const KOHERENT_HEADER = "rekuest-task";

// Options: `organization(req)` and `appUser(req)` give, from your own authentication of the
// request (never from a header the client chooses), the organization the request writes and
// reads in (koherent.organization: a task keeps to the organization it was recorded in, and a
// row-level-security policy on the contexts can keep each organization's history to itself) and
// the user it acts for (koherent.app_user, recorded in the transaction's context).
export function makeKoherentPgSettings(header = KOHERENT_HEADER, { organization, appUser } = {}) {
  const name = header.toLowerCase();
  return function koherentPgSettings(req) {
    const value = req.headers[name];
    const token = Array.isArray(value) ? value[0] : value;
    const settings = token && String(token).trim() ? { "koherent.task_token": String(token).trim() } : {};
    for (const [setting, of] of [["koherent.organization", organization], ["koherent.app_user", appUser]]) {
      const v = of ? of(req) : undefined;
      if (v !== undefined && v !== null && String(v) !== "") settings[setting] = String(v);
    }
    return settings;
  };
}

export const koherentPgSettings = makeKoherentPgSettings();

// The schema koherent's GraphQL types live in (the types expose()'s functions return, and their
// computed columns effectiveChanges and task): introspect it beside your own. koherent's objects
// there belong to no extension, so PostGraphile's defaults show them; includeExtensionResources
// stays off (it would show every extension's functions and types).
export const KOHERENT_SCHEMA = "koherent_graphql";

// Recommended, not required: setofFunctionsContainNulls off (provenance lists hold no nulls),
// extendedErrors hands clients koherent's SQLSTATE, DETAIL (reason: ...) and HINT.
export const koherentOptions = Object.freeze({
  setofFunctionsContainNulls: false,
  extendedErrors: ["errcode", "detail", "hint"],
});
