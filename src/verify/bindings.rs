//! Optional bindings of agents' tokens to the database roles that may present them
//! (`koherent.bind_agent`), cached per backend from `koherent.agent_binding_store`.

use pgrx::pg_sys;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use super::Task;
use crate::catalog::{koherent_relid, scan_latest};
use crate::error::KoherentError;

/// (issuer, agent client id) -> the roles that may present its tokens.
type Bindings = HashMap<(String, String), Vec<String>>;

thread_local! {
    static BINDINGS: RefCell<Option<Rc<Bindings>>> = const { RefCell::new(None) };
    pub(super) static BINDING_TABLE: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
}

pub(super) fn forget() {
    BINDINGS.with(|b| *b.borrow_mut() = None);
}

fn load_bindings() -> Result<Rc<Bindings>, KoherentError> {
    use pgrx::FromDatum;
    if let Some(b) = BINDINGS.with(|b| b.borrow().clone()) {
        return Ok(b);
    }
    let mut map = Bindings::new();
    unsafe {
        let rel = koherent_relid(c"agent_binding_store");
        if rel == pg_sys::InvalidOid {
            // an older schema under this library (before ALTER EXTENSION UPDATE): no bindings,
            // and nothing cached, so the table is found once the update creates it
            return Ok(Rc::new(map));
        }
        scan_latest(
            rel,
            &["issuer", "client_id", "role_name"],
            &BINDING_TABLE,
            |v, n| {
                let text = |i: usize| String::from_datum(v[i], n[i]).unwrap_or_default();
                map.entry((text(0), text(1))).or_default().push(text(2));
            },
        )?;
    }
    let map = Rc::new(map);
    BINDINGS.with(|b| *b.borrow_mut() = Some(map.clone()));
    Ok(map)
}

/// A token bound to roles (koherent.bind_agent) may be presented only by those roles, or by
/// roles that have their privileges: the presenting role is the one the client acts as (SET
/// ROLE's, else the session user). An agent with no binding: any role, as before.
pub fn check_presenter(task: &Task) -> Result<(), KoherentError> {
    let bindings = load_bindings()?;
    let key = (task.claims.iss.clone(), task.claims.act.cid.clone());
    let Some(roles) = bindings.get(&key) else {
        return Ok(());
    };
    let presenter = unsafe { pg_sys::GetOuterUserId() };
    let allowed = roles.iter().any(|r| unsafe {
        let c = std::ffi::CString::new(r.as_str()).unwrap_or_default();
        let oid = pg_sys::get_role_oid(c.as_ptr(), true);
        oid != pg_sys::InvalidOid && pg_sys::has_privs_of_role(presenter, oid)
    });
    if allowed {
        Ok(())
    } else {
        Err(KoherentError::PresenterNotBound {
            client_id: task.claims.act.cid.clone(),
            role: crate::security::outer_role_name(),
        })
    }
}
