//! Every koherent setting, documented in one place.
//!
//! | setting | type | default | who may set it |
//! |---|---|---|---|
//! | `koherent.audience` | text | unset | superuser, `ALTER DATABASE/ROLE ... SET` by a superuser |
//! | `koherent.clock_skew` | int (s) | 0 | superuser, as above |
//! | `koherent.accept_eddsa_alg` | bool | off | superuser, as above |
//! | `koherent.task_token` | text | unset | anyone (it carries a token in, never a verdict out); like `organization` and `app_user`, taken only from the writing transaction (a session value an earlier transaction set, or a role's or database's default, is refused: `setting_carried_over`) |
//! | `koherent.seal_databases` | text | unset | postgresql.conf, read at server start: the databases a background sealer seals (comma-separated; koherent in `shared_preload_libraries`) |
//! | `koherent.seal_interval` | int (s) | 60 | postgresql.conf (reload): how often the sealer calls `koherent.seal()`; 0 stops it |
//! | `koherent.row_key_lookup` | bool | on | anyone: off stops the planner deriving `pk = value` from `row_key = '{...}'` (src/planner.rs) |
//! | `koherent.organization_claim` | text | unset | superuser, as `koherent.audience`: the token claim that names a task's organization |
//! | `koherent.organization` | text | unset | anyone: the organization the application says this transaction writes in (`set_config(..., true)`, PostGraphile's `pgSettings`), where the token names none |
//! | `koherent.app_user` | text | unset | anyone: the user the application says the transaction acts for, recorded in its context (`app_user`) |
//!
//! The local user resolver is no setting: `koherent.set_user_resolver(regprocedure)`, the
//! extension owner's, stores it in `koherent.user_resolver`.
//!
//! The first three and `organization_claim` weaken or define verification, so they are `PGC_SUSET`: an application
//! session cannot change them. A value a non-superuser set as a placeholder before the library
//! was loaded is refused by PostgreSQL when the library defines the setting.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

pub static AUDIENCE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static CLOCK_SKEW: GucSetting<i32> = GucSetting::<i32>::new(0);
pub static ACCEPT_EDDSA: GucSetting<bool> = GucSetting::<bool>::new(false);
pub static TASK_TOKEN: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static SEAL_DATABASES: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static SEAL_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(60);
pub static ROW_KEY_LOOKUP: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static ORGANIZATION_CLAIM: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);
pub static ORGANIZATION: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static APP_USER: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

pub fn init() {
    GucRegistry::define_bool_guc(
        c"koherent.row_key_lookup",
        c"Look a history entry's row_key = '{...}' up through the row index (a derived key condition).",
        c"Off leaves such a condition as PostgreSQL plans it: a scan of the history table.",
        &ROW_KEY_LOOKUP,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"koherent.audience",
        c"The audience this database accepts provenance tokens for ('*' accepts any).",
        c"While unset, every provenance token is refused.",
        &AUDIENCE,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"koherent.clock_skew",
        c"Seconds of clock leeway allowed when checking exp, iat and nbf of provenance tokens.",
        c"",
        &CLOCK_SKEW,
        0,
        3600,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_bool_guc(
        c"koherent.accept_eddsa_alg",
        c"Accept provenance tokens whose header says alg EdDSA (older issuers) as well as Ed25519.",
        c"",
        &ACCEPT_EDDSA,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"koherent.task_token",
        c"A provenance token for the current transaction, verified at its first tracked write.",
        c"Set it with set_config('koherent.task_token', token, true), as PostGraphile's pgSettings does.",
        &TASK_TOKEN,
        GucContext::Userset,
        GucFlags::NO_SHOW_ALL,
    );
    GucRegistry::define_string_guc(
        c"koherent.seal_databases",
        c"The databases a koherent background sealer seals (comma-separated; needs koherent in shared_preload_libraries).",
        c"One worker per database calls koherent.seal() every koherent.seal_interval seconds.",
        &SEAL_DATABASES,
        // (read when the postmaster starts; Postmaster context cannot be defined by a library
        // loaded after startup, which is how koherent loads without shared_preload_libraries)
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"koherent.seal_interval",
        c"How often the background sealer seals (seconds; 0 stops it).",
        c"A change is unsealed at most this long plus one seal's duration after it commits.",
        &SEAL_INTERVAL,
        0,
        86400,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_string_guc(
        c"koherent.organization_claim",
        c"The provenance token claim that names the organization a task runs in.",
        c"Unset: tasks take their organization from koherent.organization, set by the application.",
        &ORGANIZATION_CLAIM,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"koherent.organization",
        c"The organization this transaction writes in, as the application says (where the token names none).",
        c"Set it with set_config('koherent.organization', org, true), as PostGraphile's pgSettings does.",
        &ORGANIZATION,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"koherent.app_user",
        c"The user the application says this transaction acts for: recorded in its context (app_user).",
        c"Set it with set_config('koherent.app_user', user, true).",
        &APP_USER,
        GucContext::Userset,
        GucFlags::default(),
    );
    #[cfg(any(feature = "pg15", feature = "pg16", feature = "pg17"))]
    unsafe {
        pgrx::pg_sys::MarkGUCPrefixReserved(c"koherent".as_ptr());
    }
}

/// The databases named in `koherent.seal_databases`.
pub fn seal_databases() -> Vec<String> {
    SEAL_DATABASES
        .get()
        .and_then(|c| c.into_string().ok())
        .map(|s| {
            s.split(',')
                .map(|d| d.trim().to_string())
                .filter(|d| !d.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

pub fn row_key_lookup() -> bool {
    ROW_KEY_LOOKUP.get()
}

pub fn seal_interval() -> i32 {
    SEAL_INTERVAL.get()
}

pub fn audience() -> Option<String> {
    AUDIENCE
        .get()
        .and_then(|c| c.into_string().ok())
        .filter(|s| !s.is_empty())
}

fn text_setting(s: &GucSetting<Option<CString>>) -> Option<String> {
    s.get()
        .and_then(|c| c.into_string().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

pub fn organization_claim() -> Option<String> {
    text_setting(&ORGANIZATION_CLAIM)
}

/// (as set, not trimmed: a row-level-security policy compares the setting as it is)
fn exact_setting(s: &GucSetting<Option<CString>>) -> Option<String> {
    s.get()
        .and_then(|c| c.into_string().ok())
        .filter(|s| !s.is_empty())
}

/// `koherent.organization`, `koherent.app_user`, `koherent.task_token`: what the transaction
/// that writes says, and nothing else. A value this transaction did not set is refused
/// (`setting_carried_over`): one set for the session by an earlier transaction (`SET` without
/// `LOCAL`, `set_config(..., false)`) is, behind a transaction pooler, another client's, whose
/// server connection this transaction got; a default (`ALTER ROLE/DATABASE ... SET`, which a
/// role may set for itself, the connection's options, postgresql.conf) would be every
/// client's. Values set in this transaction at any level (`SET LOCAL`, `SET`, a function's `SET`
/// clause) are taken.
pub fn organization() -> Option<String> {
    exact_setting(&ORGANIZATION).inspect(|_| refuse_carried_over(c"koherent.organization"))
}

pub fn app_user() -> Option<String> {
    exact_setting(&APP_USER).inspect(|_| refuse_carried_over(c"koherent.app_user"))
}

pub fn task_token() -> Option<String> {
    TASK_TOKEN
        .get()
        .and_then(|c| c.into_string().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .inspect(|_| refuse_carried_over(c"koherent.task_token"))
}

fn refuse_carried_over(name: &'static std::ffi::CStr) {
    if carried_over(name) {
        crate::error::KoherentError::SettingCarriedOver {
            name: name.to_str().expect("ascii"),
        }
        .raise();
    }
}

thread_local! {
    /// Each setting's entry in PostgreSQL's GUC table, found once (a custom setting's entry
    /// stays where it was made for the backend's life).
    static ENTRIES: std::cell::RefCell<Vec<(&'static std::ffi::CStr, usize)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether the setting's value was not set by this transaction: no transaction level of this
/// one set it (PostgreSQL keeps a stack of the values a setting had before each level of the
/// open transaction changed it), so it is a default or a session's value.
fn carried_over(name: &'static std::ffi::CStr) -> bool {
    use pgrx::pg_sys;
    let entry = ENTRIES.with(|e| {
        if let Some(&(_, p)) = e.borrow().iter().find(|(n, _)| *n == name) {
            return p;
        }
        let p = unsafe { find_entry(name) } as usize;
        if p != 0 {
            e.borrow_mut().push((name, p));
        }
        p
    });
    if entry == 0 {
        return false;
    }
    let g = entry as *const pg_sys::config_generic;
    unsafe { (*g).stack.is_null() }
}

#[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15"))]
unsafe fn find_entry(name: &std::ffi::CStr) -> *mut pgrx::pg_sys::config_generic {
    let vars = pgrx::pg_sys::get_guc_variables();
    for i in 0..pgrx::pg_sys::GetNumConfigOptions().max(0) as usize {
        let g = *vars.add(i);
        if !g.is_null() && std::ffi::CStr::from_ptr((*g).name) == name {
            return g;
        }
    }
    std::ptr::null_mut()
}

#[cfg(not(any(feature = "pg13", feature = "pg14", feature = "pg15")))]
unsafe fn find_entry(name: &std::ffi::CStr) -> *mut pgrx::pg_sys::config_generic {
    pgrx::pg_sys::find_option(name.as_ptr(), false, true, pgrx::pg_sys::ERROR as _)
}

/// PostgREST's per-request headers (`request.headers`, a JSON object with lowercased names).
pub fn request_header_token() -> Option<String> {
    let raw = unsafe {
        let p = pgrx::pg_sys::GetConfigOption(c"request.headers".as_ptr(), true, false);
        if p.is_null() {
            return None;
        }
        std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
    };
    let v = koherent_token::json::parse(&raw).ok()?;
    v.get("rekuest-task")
        .and_then(|t| t.as_str())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}
