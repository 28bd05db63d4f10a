//! Entry points of earlier releases' install scripts (0.1.0 to 0.3.0 declare these C symbols;
//! an upgrade starts by creating an old version with the current library). 0.4.0's SQL does not
//! use them: the upgrade script replaces each by its 0.4.0 form.

use pgrx::prelude::*;
use pgrx::JsonB;

use crate::context;
use crate::datum::{FlatJsonb, JsonbText};
use crate::error::{KoherentError, OrRaise};

// (jsonb arguments read by koherent's JSON reader, as the current functions read them)
#[pg_extern(sql = false)]
fn set_task_with_args(token: &str, args: Option<JsonbText>) -> FlatJsonb {
    context::set_task(token, Some(args.map(|a| JsonB(a.value()))))
}

#[pg_extern(sql = false)]
fn set_context(metadata: JsonbText) {
    context::set_context(JsonB(metadata.value()))
}

#[pg_extern(sql = false)]
fn canonical_args(args: JsonbText) -> String {
    koherent_token::canonical_json(&args.value())
}

#[pg_extern(sql = false)]
fn args_hash(args: Option<JsonbText>) -> String {
    koherent_token::args_hash(args.map(|a| a.value()).as_ref())
}

#[pg_extern(sql = false)]
fn _parse_jwks(jwks: JsonbText) -> TableIterator<'static, (name!(kid, String), name!(x, Vec<u8>))> {
    let keys = koherent_token::keys::parse_jwks(&jwks.value())
        .map_err(KoherentError::from)
        .or_raise();
    TableIterator::new(
        keys.into_iter()
            .map(|(kid, k)| (kid, k.as_bytes().to_vec())),
    )
}

#[pg_extern(sql = false)]
fn _parse_public_key(
    public_key: &str,
) -> TableIterator<'static, (name!(kid, Option<String>), name!(x, Vec<u8>))> {
    let (kid, key) = koherent_token::keys::parse_public_key(public_key)
        .map_err(KoherentError::from)
        .or_raise();
    TableIterator::once((kid, key.as_bytes().to_vec()))
}
