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

export function makeKoherentPgSettings(header = KOHERENT_HEADER) {
  const name = header.toLowerCase();
  return function koherentPgSettings(req) {
    const value = req.headers[name];
    const token = Array.isArray(value) ? value[0] : value;
    return token && String(token).trim() ? { "koherent.task_token": String(token).trim() } : {};
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
