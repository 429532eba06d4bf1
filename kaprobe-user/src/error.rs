//! Fatal errors: one line on stderr and a distinct exit status per kind.
use std::fmt;

/// Exit statuses (2 is clap's, for bad flags).
pub(crate) mod exit {
    pub(crate) const RUNTIME: i32 = 1;
    pub(crate) const USAGE: i32 = 2;
    pub(crate) const PERMISSION: i32 = 3;
    pub(crate) const UNSUPPORTED_KERNEL: i32 = 4;
    pub(crate) const OUTPUT: i32 = 5;
    /// The metrics address cannot be listened on (in use, not local, no permission).
    pub(crate) const METRICS: i32 = 6;
}

#[derive(Debug)]
pub struct Fatal {
    pub(crate) code: i32,
    pub(crate) message: String,
}

impl Fatal {
    pub(crate) fn new(code: i32, message: impl fmt::Display) -> Self {
        Fatal {
            code,
            message: message.to_string(),
        }
    }

    pub fn code(&self) -> i32 {
        self.code
    }
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One line, always.
        f.write_str(&self.message.replace('\n', " "))
    }
}

impl std::error::Error for Fatal {}
