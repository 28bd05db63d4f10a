//! A progress bar on stderr, only when stderr is a terminal (large packages).

use std::io::{IsTerminal, Write};
use std::time::Instant;

pub struct Progress {
    what: &'static str,
    pub total: u64,
    on: bool,
    last: Instant,
}

impl Progress {
    pub fn new(what: &'static str) -> Progress {
        Progress {
            what,
            total: 0,
            on: std::io::stderr().is_terminal(),
            last: Instant::now(),
        }
    }

    /// `n` entries done (drawn at most ten times a second).
    pub fn tick(&mut self, n: u64) {
        if !self.on || !n.is_multiple_of(1024) || self.last.elapsed().as_millis() < 100 {
            return;
        }
        self.last = Instant::now();
        self.draw(n);
    }

    fn draw(&self, n: u64) {
        let width = 30usize;
        let frac = if self.total > 0 {
            (n as f64 / self.total as f64).min(1.0)
        } else {
            0.0
        };
        let filled = (frac * width as f64) as usize;
        eprint!(
            "\r{} [{}{}] {n}/{} entries",
            self.what,
            "#".repeat(filled),
            " ".repeat(width - filled),
            self.total
        );
        let _ = std::io::stderr().flush();
    }

    pub fn done(&self, n: u64) {
        if self.on && n >= 1024 {
            self.draw(n);
            eprintln!();
        }
    }
}
