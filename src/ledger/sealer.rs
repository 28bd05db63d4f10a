//! The sealer: a background worker per database named in `koherent.seal_databases` that calls
//! `koherent.create_partitions()` and `koherent.seal()` every `koherent.seal_interval` seconds, so that sealing happens without
//! anyone calling it. Started by the postmaster when koherent is in `shared_preload_libraries`
//! (a worker registered at startup is the only kind that survives restarts and crashes without a
//! client to start it again). It runs as the bootstrap superuser, which owns nothing of the
//! application's and may run seal(); an error (a database without koherent is skipped, one that
//! does not exist ends the worker) logs and the postmaster restarts it after ten seconds.

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;
use std::time::Duration;

use crate::guc;

/// Register one sealer per database named (only while the postmaster loads the library).
pub fn init() {
    if unsafe { !pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    for db in guc::seal_databases() {
        BackgroundWorkerBuilder::new(&format!("koherent sealer {db}"))
            .set_type("koherent sealer")
            .set_function("koherent_sealer_main")
            .set_library("koherent")
            .set_extra(&db)
            .enable_spi_access()
            .set_start_time(BgWorkerStartTime::RecoveryFinished)
            .set_restart_time(Some(Duration::from_secs(10)))
            .load();
    }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn koherent_sealer_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let db = BackgroundWorker::get_extra().to_string();
    BackgroundWorker::connect_worker_to_spi(Some(&db), None);
    // seal() runs in READ COMMITTED (it reads what committed after its lock): whatever the
    // database's or the server's default_transaction_isolation, a reload included
    unsafe {
        pg_sys::SetConfigOption(
            c"default_transaction_isolation".as_ptr(),
            c"read committed".as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        );
    }
    log!(
        "koherent sealer: sealing database {db} every koherent.seal_interval ({} s)",
        guc::seal_interval()
    );
    loop {
        let every = guc::seal_interval();
        // 0 turns sealing off: look at the setting again a minute later (or at a reload)
        let wait = Duration::from_secs(if every > 0 { every as u64 } else { 60 });
        if !BackgroundWorker::wait_latch(Some(wait)) {
            break;
        }
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            continue;
        }
        if guc::seal_interval() == 0 {
            continue;
        }
        BackgroundWorker::transaction(|| {
            let installed = Spi::get_one::<bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'koherent')",
            );
            if let Ok(Some(true)) = installed {
                if let Err(e) = Spi::run("SELECT koherent.seal()") {
                    warning!("koherent sealer: {e}");
                }
            }
        });
        // history partitions ahead of the writes that need them (koherent.set_retention), in a
        // transaction of their own after the seal (an error here ends the worker, which the
        // postmaster starts again, after sealing)
        BackgroundWorker::transaction(|| {
            let present = Spi::get_one::<bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n \
                 ON n.oid = p.pronamespace WHERE n.nspname = 'koherent' \
                 AND p.proname = 'create_partitions')",
            );
            if let Ok(Some(true)) = present {
                if let Err(e) = Spi::run("SELECT koherent.create_partitions()") {
                    warning!("koherent sealer: {e}");
                }
            }
        });
    }
}
