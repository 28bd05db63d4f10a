//! A verified task, as verification builds it and the transaction context keeps it.

use koherent_token::Claims;
use pgrx::pg_sys;
use pgrx::JsonB;
use serde_json::Value;
use std::rc::Rc;

use crate::datum::FlatJsonb;

/// A verified task: its claims and the signed token they came from.
#[derive(Debug)]
pub struct Task {
    pub claims: Claims,
    pub token: String,
    /// The key that verified it: (kid, public key), checked again at every write.
    pub kid: String,
    pub key: [u8; 32],
    /// The claims as a flat jsonb value, made on first use (set_task returns it every time).
    claims_jsonb: std::cell::OnceCell<Rc<[u8]>>,
}

impl Task {
    pub fn new(claims: Claims, token: String, kid: String, key: [u8; 32]) -> Task {
        Task {
            claims,
            token,
            kid,
            key,
            claims_jsonb: std::cell::OnceCell::new(),
        }
    }

    /// The claims as a JSON value (the token's payload).
    pub fn claims_json(&self) -> JsonB {
        JsonB(Value::Object(self.claims.payload.clone()))
    }

    /// The claims as jsonb, flattened once per verified token.
    pub fn claims_jsonb(&self) -> FlatJsonb {
        use pgrx::IntoDatum;
        let bytes = self.claims_jsonb.get_or_init(|| unsafe {
            let d = self
                .claims_json()
                .into_datum()
                .expect("jsonb_in returns a value");
            let flat = pg_sys::pg_detoast_datum(d.cast_mut_ptr::<pg_sys::varlena>());
            let bytes: Rc<[u8]> = crate::datum::varlena_bytes(pg_sys::Datum::from(flat)).into();
            bytes
        });
        FlatJsonb(bytes.clone())
    }

    pub fn label(&self) -> String {
        format!(
            "task \"{}\" of issuer \"{}\"",
            self.claims.tsk, self.claims.iss
        )
    }
    pub fn key(&self) -> (String, String) {
        (self.claims.iss.clone(), self.claims.tsk.clone())
    }
    pub fn same_as(&self, other: &Task) -> bool {
        self.claims.tsk == other.claims.tsk && self.claims.iss == other.claims.iss
    }
}
